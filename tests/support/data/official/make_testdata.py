"""Write the files of tests/support/data/official/ with the authors' own code (see README.md beside this file).

    LZN_OFFICIAL_SRC=path/to/latent-zoning-networks OMP_NUM_THREADS=1 python make_testdata.py OUT_DIR

``LZN_OFFICIAL_SRC`` names a copy of github.com/microsoft/latent-zoning-networks (commit
``17a8529``; its root, holding ``lzn/``), e.g. ``git archive`` of it into a directory outside this
repository. Their modules are imported from there at run time; nothing of theirs is copied here.
They need only torch and numpy. One stub: ``torch.utils.cpp_extension.load`` becomes a no-op before
the import, because ``lzn/model/ncsnpp_lib/op`` compiles CUDA kernels at import time; on the CPU
their ``upfirdn2d`` runs its pure-PyTorch path, which the FIR model uses.

Tiny networks with the authors' configuration fields, weights moved away from their init, saved in
the layout of their trainers' ``save_checkpoint``, and the outputs of their EMA networks for fixed
inputs. The same command twice writes the same bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

OFFICIAL_ENV = "LZN_OFFICIAL_SRC"
Q = 8  # latent dimension of the tiny models
LRS = (2.5e-5, 1e-3, 1e-4)  # encoder, decoder, label anchors (their CIFAR-10 case study 1 / label anchor)


def _import_official() -> None:
    """Put the authors' repository on the path (from :data:`OFFICIAL_ENV`); stub the CUDA build."""
    src = os.environ.get(OFFICIAL_ENV)
    if not src or not (Path(src) / "lzn" / "model" / "ncsnpp.py").is_file():
        raise SystemExit(
            f"set {OFFICIAL_ENV} to a copy of github.com/microsoft/latent-zoning-networks (holding lzn/)"
        )
    import torch.utils.cpp_extension

    torch.utils.cpp_extension.load = lambda *args, **kwargs: None  # their op/ compiles CUDA at import
    sys.path.insert(0, str(Path(src).resolve()))


def _ns(**kw: Any) -> SimpleNamespace:
    return SimpleNamespace(**kw)


def model_config(case: str) -> SimpleNamespace:
    """``config.encoder.params.config`` of their configs/lzn1/*.py with tiny sizes (README.md)."""
    model = dict(
        name="ncsnpp",
        scale_by_sigma=False,
        ema_rate=0.999999,
        normalization="GroupNorm",
        nonlinearity="swish",
        nf=4,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(4,),
        resamp_with_conv=True,
        conditional=True,
        fir=False,
        fir_kernel=[1, 3, 3, 1],
        skip_rescale=True,
        resblock_type="biggan",
        progressive="none",
        progressive_input="none",
        progressive_combine="sum",
        attention_type="ddpm",
        init_scale=0.0,
        embedding_type="positional",
        fourier_scale=16,
        conv_size=3,
        sigma_min=0.01,
        sigma_max=50,
        num_scales=1000,
        beta_min=0.1,
        beta_max=20.0,
        dropout=0.15,
        num_classes=10,
    )
    size = 8
    if case == "case1_256":  # the 256² configuration (configs/lzn1/case_study_1_celebahq.py), tiny
        model.update(
            ch_mult=(1, 1, 2),
            fir=True,
            progressive="output_skip",
            progressive_input="input_skip",
            embedding_type="fourier",
            scale_by_sigma=True,
            dropout=0.0,
            sigma_max=378,
            num_scales=2000,
        )
        size = 16
    data = _ns(image_size=size, num_channels=3, channels=3, centered=True)
    return _ns(model=_ns(**model), data=data, training=_ns(sde="rectified_flow", continuous=True))


def _perturb(modules: list[torch.nn.Module], gen: torch.Generator) -> None:
    """Every trainable parameter (modules in order, ``parameters()`` order) += 0.05·N(0, 1)."""
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _one_process_group() -> None:
    if not torch.distributed.is_initialized():
        with socket.socket() as s:  # a free port: never a fixed one
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        torch.distributed.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1
        )


def generation_case(case: str, out: Path) -> None:
    """``case1`` / ``case1_256`` (unconditional) and ``case3`` (one-hot + label anchors)."""
    from lzn.label_anchor.label_anchor import LabelAnchor
    from lzn.latent_flow.euler_latent_flow import EulerLatentFlow
    from lzn.model.ema import ExponentialMovingAverage
    from lzn.model.ncsnpp import NCSNPPDecoder, NCSNPPEncoder
    from lzn.model.ncsnpp_lib.layers import get_timestep_embedding
    from lzn.optimizer import from_config, lr_scheduler_from_config
    from lzn.prior.gaussian import Gaussian
    from lzn.pytorch_utils.data_parallel import CustomDistributedDataParallel
    from safetensors.torch import save_file
    from torch.amp import GradScaler

    conditional = case == "case3"
    cfg = model_config(case)
    resolutions = [8, 4] if case == "case1_256" else None
    torch.manual_seed(0)
    encoder = NCSNPPEncoder(cfg, latent_dim=Q, num_base_channels=1, num_base_units=6,
                            num_latent_transformation_layers=2, latent_transformation_resolutions=resolutions)  # fmt: skip
    decoder = NCSNPPDecoder(cfg, latent_dim=Q, num_classes=10 if conditional else 0)
    label = LabelAnchor(z_dim=Q, num_classes=10) if conditional else None
    modules = [m for m in (encoder, decoder, label) if m is not None]
    gen = torch.Generator().manual_seed(0)
    _perturb(modules, gen)  # their init zeroes biases and shrinks last layers: hide nothing
    _one_process_group()
    wrapped = [CustomDistributedDataParallel(m) for m in modules]
    emas = [ExponentialMovingAverage(w.parameters(), decay=0.999999, use_num_updates=True) for w in wrapped]
    optimizer = from_config(list(zip(wrapped, LRS, strict=False)), _ns(name="torch.optim.Adam", params={}))
    scheduler = lr_scheduler_from_config(
        optimizer,
        _ns(
            name="torch.optim.lr_scheduler.LinearLR",
            params=dict(start_factor=1 / 5000, end_factor=1.0, total_iters=5000),
        ),
    )
    _perturb(wrapped, gen)  # the weights move (instead of an optimiser step) ...
    for ema, w in zip(emas, wrapped, strict=True):
        ema.update(w.parameters())  # ... and the EMA follows once
    state: dict[str, Any] = {
        "encoder": wrapped[0].state_dict(),
        "decoder": wrapped[1].state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "epoch": 0,
        "iteration": 1,
    }
    if conditional:
        state["label_anchor"] = wrapped[2].state_dict()
    state["decoder_ema"] = emas[1].state_dict()
    state["encoder_ema"] = emas[0].state_dict()
    if conditional:
        state["label_anchor_ema"] = emas[2].state_dict()
    state["grad_scalar"] = GradScaler("cpu", enabled=False).state_dict()
    torch.save(state, out / f"{case}.pt")

    # the outputs of their EMA networks, eval mode
    for ema, w in zip(emas, wrapped, strict=True):
        ema.copy_to(w.parameters())
        w.eval()
    s = cfg.data.image_size
    g = torch.Generator().manual_seed(1)
    res = {"x": torch.rand(4, 3, s, s, generator=g) * 2 - 1}
    res["xt"] = torch.randn(4, 3, s, s, generator=g)
    res["t"] = torch.tensor([1e-3, 0.3, 0.7, 1.0])
    res["z"] = torch.randn(4, Q, generator=g)
    onehot = None
    if conditional:
        onehot = torch.nn.functional.one_hot(torch.tensor([0, 3, 7, 9]), 10).float()
        res["onehot"] = onehot
    with torch.no_grad():
        res["anchors"] = encoder(res["x"])
        res["velocity"] = decoder(res["z"], onehot, res["t"], res["xt"])
        if case == "case1":
            res["temb_sigma"] = 999 * torch.tensor([1e-3, 0.25, 0.5, 0.999, 1.0])
            res["temb_128"] = get_timestep_embedding(res["temb_sigma"], 128)
        if conditional:
            anchors = label(None).detach().clone()
            res["label_anchors"] = anchors
            res["label_latents"] = torch.cat(
                [torch.randn(6, Q, generator=g), anchors[:2] + 0.1 * torch.randn(2, Q, generator=g)]
            )
            flow = EulerLatentFlow(SimpleNamespace(prior=Gaussian(Q)), eps=1e-4)
            final, _ = flow(
                reverse=True, full_encoded=anchors, initial_point=res["label_latents"], num_steps=100
            )
            res["label_final"] = final
            res["label_pred"] = label.get_label(final)
    save_file({k: v.contiguous() for k, v in res.items()}, str(out / f"{case}.outputs.safetensors"))


def resnet_fill(index: int, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The formula weights of case 2 (README.md); tests/plugins/image/test_official.py repeats it."""
    n = math.prod(shape)
    s = torch.sin(torch.arange(n, dtype=torch.float64) * 0.7 + 1.3 * index)
    if len(shape) > 1:  # conv / linear weights
        value = s * math.sqrt(3.0 / (n // shape[0]))
    elif name.endswith("weight"):  # GroupNorm weight
        value = 1 + 0.2 * s
    else:  # GroupNorm bias
        value = 0.1 * s
    return value.reshape(shape).float()


def contrastive_case(out: Path) -> None:
    """``case2``: the keys and shapes of their ResNet-50 and its outputs for the formula weights."""
    from lzn.model.resnet import get_resnet
    from safetensors.torch import save_file

    net = get_resnet(depth=50, width_multiplier=1, sk_ratio=0, head_out_dim=256, head_num_layers=2)
    assert not list(net.buffers()), "their GroupNorm ResNet has no buffers"
    keys = []
    with torch.no_grad():
        for i, (name, p) in enumerate(net.named_parameters()):
            p.copy_(resnet_fill(i, name, tuple(p.shape)))
            keys.append([f"model.module.{name}", list(p.shape)])
    (out / "case2_keys.json").write_text("[\n" + ",\n".join(json.dumps(k) for k in keys) + "\n]\n")
    net.eval()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        res = {"x": x, "anchors": net(x), "features": net(x, apply_head=False)}
    save_file(res, str(out / "case2.outputs.safetensors"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="output directory")
    args = p.parse_args(argv)
    _import_official()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    for case in ("case1", "case3", "case1_256"):
        generation_case(case, args.out)
    contrastive_case(args.out)
    print(f"wrote {', '.join(sorted(f.name for f in args.out.iterdir()))} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
