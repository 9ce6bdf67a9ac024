"""The GPU path of a training step, on CPU: two passes over micro-batches, bf16 autocast, host syncs.

* ``train.micro_batch_size``: the two-pass step (lzn_core/train/passes.py) gives the gradient of
  the whole batch (float64, to 1e-10), redraws pass 1's dropout masks in pass 2, and needs the
  activation memory of one micro-batch (peak RSS of a step in a subprocess);
* ``train.precision: bf16``: the networks run under autocast; the zoning solver and the alignment
  give exactly their float32 values (the solver switches autocast and TF32 off for its matmuls);
* a step makes one host sync, the engine's skip decision: no value is read back from the device
  in the solver loops, the losses or the backward (counted by patching the reading methods).

(Two ranks through DeepSpeed's own reduction: tests/e2e/test_distributed.py.) This file is also the worker
of the memory test: ``python tests/train/test_passes.py memory MICRO``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from paths import ROOT, with_support
from tiny_runs import load_train_script

RGB8 = [  # cifar_joint's tasks (conditioned decoder, class-weighted label flow, flips) at 8x8 RGB
    "modalities.image.config.preset=tiny",
    "modalities.image.config.channels=3",
    "modalities.image.config.flip=true",
    "latent.dim=8",
    "train.batch_size=8",
    "tasks.1.steps=5",
    "deepspeed=ds/cpu.json",
]
RECIPES = {
    "cifar_joint": RGB8,
    "cifar_gen": RGB8[:4] + ["train.batch_size=8", "deepspeed=ds/cpu.json"],
    "imagenet_repr": [  # two augmented views through a GroupNorm ResNet
        "modalities.image.config.resolution=32",
        "modalities.image.config.encoder=resnet18",
        "modalities.image.config.proj_hidden=32",
        "latent.dim=8",
        "latent.chunk=null",
        "train.batch_size=8",
        "deepspeed=ds/cpu.json",
    ],
}


def _batch(recipe, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    cfg = recipe.modalities["image"].config
    g = torch.Generator().manual_seed(1)
    side, c = cfg.resolution, cfg.channels
    out = {"image": (torch.rand(8, c, side, side, generator=g) * 2 - 1).to(dtype)}
    if "label" in recipe.modalities:
        out["label"] = torch.tensor([0, 1, 1, 2, 3, 3, 3, 9])
    return out


def _model(name: str, extra: list[str] = (), dtype: torch.dtype = torch.float32):
    from lzn_core.model import LZNModel
    from lzn_core.recipe import load_recipe

    recipe = load_recipe(f"{name}.yaml", [*RECIPES[name], *extra])
    torch.manual_seed(0)
    return LZNModel(recipe).to(dtype), recipe


def _gradient(train, model, recipe, batch, nets) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The step's total loss and d total / d parameters, taken as the engine takes it."""
    model.zero_grad(set_to_none=True)
    losses = train.task_losses(model, recipe, dict(batch), 3, 0, 1, nets)
    total = sum(t.weight * v for t, v in zip(recipe.tasks, losses.values(), strict=True))
    nets.loss_for_backward(total).backward()
    return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _flat(grads: dict[str, torch.Tensor], keys) -> torch.Tensor:
    return torch.cat([grads[k].flatten() for k in keys])


# ----------------------------------------------------------------------------- exact gradient


@pytest.mark.parametrize(
    "name",  # imagenet_repr's ResNet-18 in float64: 7 s (load 3)
    [pytest.param(n, marks=pytest.mark.slow) if n == "imagenet_repr" else n for n in sorted(RECIPES)],
)
def test_two_passes_give_the_whole_batch_gradient_in_float64(train, name: str) -> None:
    """Micro-batches of 1, 3 (3 + 3 + 2) and 8 rows: the loss and the gradient of every parameter
    (encoders through the gathered anchors, decoders through the cached terms, the label anchors in
    the head) are those of one pass over the 8 rows, to 1e-10 (measured ~1e-13)."""
    from lzn_core.train.passes import OnePass, TwoPass, network_passes

    model, recipe = _model(name, dtype=torch.float64)
    batch = _batch(recipe, torch.float64)
    total, ref = _gradient(train, model, recipe, batch, OnePass(model))
    assert any(k.startswith("encoders.image.") for k in ref)
    if recipe.tasks[0].kind == "generate":
        assert any(k.startswith("decoders.image.") for k in ref)
    if "label" in recipe.modalities and len(recipe.tasks) > 1:
        assert "encoders.label.anchors" in ref
    for micro in (1, 3, 8):
        got_total, got = _gradient(train, model, recipe, batch, TwoPass(model, micro))
        assert got.keys() == ref.keys()
        rel = float((_flat(got, ref) - _flat(ref, ref)).norm() / _flat(ref, ref).norm())
        assert rel < 1e-10, (micro, rel)
        torch.testing.assert_close(got_total, total, rtol=1e-12, atol=0)
    recipe.train.micro_batch_size = 3
    assert isinstance(network_passes(model, recipe.train), TwoPass)
    assert type(network_passes(model, recipe.train, world_size=4)) is OnePass  # 2 rows a rank: one pass


def test_pass_two_redraws_the_dropout_masks_of_pass_one(train) -> None:
    """Dropout 0.3 in the encoder and decoder U-Nets: pass 2 encodes every micro-batch to exactly
    the anchors pass 1 gave (the same masks), the step leaves torch's generator where one pass
    leaves it, and with a single micro-batch its gradient is one pass's exactly."""
    from lzn_core.train.passes import OnePass, TwoPass

    model, recipe = _model("cifar_joint", ["modalities.image.config.dropout=0.3"])
    batch = _batch(recipe)
    seen: list[tuple[bool, torch.Tensor]] = []
    encode = model.encode

    def recording(name, x):
        a = encode(name, x)
        if name == "image":
            seen.append((torch.is_grad_enabled(), a.detach().clone()))
        return a

    model.encode = recording
    torch.manual_seed(5)
    _gradient(train, model, recipe, batch, TwoPass(model, 3))
    first = [a for grad, a in seen if not grad]
    second = [a for grad, a in seen if grad]
    assert [len(a) for a in first] == [3, 3, 2] and len(second) == 3
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], encode("image", batch["image"][:3]).detach())  # the masks are random

    torch.manual_seed(5)
    total, ref = _gradient(train, model, recipe, batch, OnePass(model))
    after_one = torch.get_rng_state()
    torch.manual_seed(5)
    got_total, got = _gradient(train, model, recipe, batch, TwoPass(model, 8))
    assert torch.equal(torch.get_rng_state(), after_one)
    assert torch.equal(got_total, total)
    for k, g in ref.items():
        torch.testing.assert_close(got[k], g, rtol=1e-5, atol=1e-7, msg=k)


def test_a_skipped_step_forgets_its_micro_batches(train, tmp_path) -> None:
    """A non-finite loss skips the step on the engine (nothing reaches DeepSpeed), and the next
    step's gradient is its own: the two-pass state of the skipped step is discarded."""
    from lzn_core.train.engine import Engine, setup_distributed
    from lzn_core.train.passes import TwoPass

    setup_distributed()
    model, recipe = _model("cifar_joint")
    engine = Engine(model, recipe, tmp_path / "ckpt")
    nets = TwoPass(engine.model, 3)
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    losses = train.task_losses(engine.model, recipe, _batch(recipe), 0, 0, 1, nets)
    assert nets._encoded and nets._terms
    assert engine.step(sum(losses.values()) * float("nan"), nets) is False
    assert not nets._encoded and not nets._terms and engine.skipped == 1
    assert all(torch.equal(p, before[n]) for n, p in engine.model.named_parameters())
    losses = train.task_losses(engine.model, recipe, _batch(recipe), 1, 0, 1, nets)
    assert engine.step(sum(losses.values()), nets) is True
    assert any(not torch.equal(p, before[n]) for n, p in engine.model.named_parameters())


# ----------------------------------------------------------------------------- memory


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def _peak_rss_above_start() -> Iterator[dict[str, int]]:
    """Peak resident memory of the block above the resident memory at its start, sampled every
    millisecond. Free heap kept from earlier work is returned to the system first (malloc_trim), so
    the block cannot hide its activations in memory an earlier peak left behind."""
    import ctypes
    import threading
    import time

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    out, stop = {"start": _rss_now(), "peak": 0}, threading.Event()

    def sample() -> None:
        while not stop.is_set():
            out["peak"] = max(out["peak"], _rss_now())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out["peak"] = max(out["peak"], _rss_now()) - out["start"]


def _memory_worker(micro: int) -> None:
    """Peak RSS added by one step's gradient of a small32 cifar_joint model at batch 64."""
    from lzn_core.train.passes import OnePass, TwoPass

    torch.set_num_threads(1)
    train = load_train_script()
    model, recipe = _model(
        "cifar_joint",
        [
            "modalities.image.config.preset=small32",
            "train.batch_size=64",
            "modalities.image.config.dropout=0",
        ],
    )
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(64, 3, 32, 32, generator=g) * 2 - 1, "label": torch.arange(64) % 10}
    nets = TwoPass(model, micro) if micro else OnePass(model)
    with _peak_rss_above_start() as rss:
        _gradient(train, model, recipe, batch, nets)
    print(json.dumps({"micro": micro, "peak_bytes": rss["peak"]}))


@pytest.mark.slow
def test_micro_batches_need_the_activation_memory_of_one_micro_batch(tmp_path) -> None:
    """Peak resident memory above its start of one step (gradient of a small32 cifar_joint model,
    batch 64), each in a fresh process: one pass vs micro-batches of 8. The activations of 64 images dominate
    one pass; two passes keep those of 8 (measured 1000 vs 159 MiB on this machine)."""
    env = with_support({**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"})
    peaks = {}
    for micro in (0, 8):
        done = subprocess.run(
            [sys.executable, __file__, "memory", str(micro)],
            env=env,
            cwd=ROOT / "recipes",
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        peaks[micro] = json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"]
    print(
        f"step peak RSS: one pass {peaks[0] / 2**20:.0f} MiB, micro-batches of 8 {peaks[8] / 2**20:.0f} MiB"
    )
    assert peaks[0] > 100 * 2**20  # the measurement sees the activations
    assert peaks[8] < peaks[0] / 3


# ----------------------------------------------------------------------------- mixed precision


def _far_anchors(n: int = 48, q: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, q, generator=g) * 3 + 2


@pytest.mark.parametrize("solver", ["euler", "dpm"])
def test_latents_and_their_gradients_do_not_move_under_cpu_autocast(solver: str) -> None:
    """zoning.latents inside torch.autocast("cpu", bfloat16) (which would run its addmm/mm in bf16)
    and under TF32-like matmul precision gives bit-identical latents and anchor gradients, and puts
    the matmul precision back."""
    from lzn_core import zoning

    anchors = _far_anchors()
    noise = torch.randn(anchors.shape, generator=torch.Generator().manual_seed(1))
    g = 1e-3 if solver == "dpm" else 1e-4

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        a = anchors.clone().requires_grad_()
        z = zoning.latents(a, noise, g=g, steps=10, solver=solver)
        (z * noise).sum().backward()
        return z.detach(), a.grad

    z_ref, grad_ref = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.mm(anchors, anchors.t()).dtype == torch.bfloat16  # autocast is on around the solver
        z_ac, grad_ac = run()
    assert torch.equal(z_ac, z_ref) and torch.equal(grad_ac, grad_ref)
    torch.set_float32_matmul_precision("medium")
    try:
        z_tf, grad_tf = run()
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision("highest")
    assert torch.equal(z_tf, z_ref) and torch.equal(grad_tf, grad_ref)


def test_alignment_loss_does_not_move_under_cpu_autocast() -> None:
    """The reverse flow's per-step target probabilities, both alignment losses and their gradients
    (latents and anchors) are bit-identical inside bf16 autocast."""
    from lzn_core import zoning
    from lzn_core.alignment import alignment_loss

    anchors, z = _far_anchors(10), torch.randn(32, 8, generator=torch.Generator().manual_seed(2))
    targets = torch.arange(32) % 10
    weights = torch.linspace(1.0, 2.0, 10)

    def run(kind: str) -> tuple[torch.Tensor, ...]:
        a, x = anchors.clone().requires_grad_(), z.clone().requires_grad_()
        out = zoning.assign(x, a, steps=20, weights=weights, targets=targets)
        loss = alignment_loss(out.target_probs, cutoff=0.2, kind=kind)
        loss.backward()
        return loss.detach(), out.target_probs.detach(), x.grad, a.grad

    for kind in ("log", "prob"):
        ref = run(kind)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = run(kind)
        assert all(torch.equal(u, v) for u, v in zip(got, ref, strict=True)), kind


@pytest.mark.parametrize("micro", ["null", "3"])
def test_bf16_precision_autocasts_the_networks_only(train, tmp_path, micro: str) -> None:
    """train.precision: bf16 on cifar_joint (one and two passes): the encoder's and decoder's
    convolutions run in bf16, the solver gets float32 anchors and returns what it returns outside
    autocast for them, the alignment likewise; weights and EMA stay float32 after a step."""
    from lzn_core import model as model_mod
    from lzn_core.train.engine import Engine, setup_distributed
    from lzn_core.train.passes import network_passes

    setup_distributed()
    model, recipe = _model("cifar_joint", ["train.precision=bf16", f"train.micro_batch_size={micro}"])
    engine = Engine(model, recipe, tmp_path / "ckpt")
    nets = network_passes(engine.model, recipe.train)
    assert nets.precision == "bf16"
    conv_dtypes: set[torch.dtype] = set()
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: conv_dtypes.add(out.dtype))
        for m in engine.model.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    calls: list[tuple[str, tuple, dict, object]] = []
    real = {k: getattr(model_mod.zoning, k) for k in ("latents", "assign")}

    def spy(kind):
        def call(*args, **kwargs):
            out = real[kind](*args, **kwargs)
            calls.append((kind, args, kwargs, out))
            return out

        return call

    for kind in real:
        setattr(model_mod.zoning, kind, spy(kind))
    try:
        losses = train.task_losses(engine.model, recipe, _batch(recipe), 0, 0, 1, nets)
    finally:
        for kind, fn in real.items():
            setattr(model_mod.zoning, kind, fn)
        for h in hooks:
            h.remove()
    assert conv_dtypes == {torch.bfloat16}
    assert [c[0] for c in calls] == ["latents", "assign"]  # the image latents are computed once
    for kind, args, kwargs, out in calls:
        assert args[0].dtype == args[1].dtype == torch.float32
        again = real[kind](*[a.detach() for a in args], **kwargs)
        if kind == "latents":
            assert torch.equal(again, out.detach())
        else:
            assert torch.equal(again.target_probs, out.target_probs.detach())
    assert all(v.dtype == torch.float32 for v in losses.values())
    assert engine.step(sum(losses.values()), nets) is True
    assert all(p.dtype == torch.float32 for p in engine.model.parameters())
    assert all(v.dtype == torch.float32 for v in engine.ema_state_dict().values() if v.is_floating_point())


# ----------------------------------------------------------------------------- host syncs

_READS = ("item", "__bool__", "__int__", "__float__", "__index__", "tolist", "numpy", "cpu")


@contextlib.contextmanager
def _counting_reads() -> Iterator[dict[str, int]]:
    """Patch torch.Tensor's value-reading methods and count the calls made from this project's code
    and from torch.nn (what the networks call); on a GPU each one waits for the device (a host sync).
    torch's optimisers read their step counters, host tensors on a GPU too: not counted."""
    counts: dict[str, int] = {}
    places = (str(ROOT / "lzn_core"), str(ROOT / "plugins"), str(ROOT / "recipes"))
    places += (os.sep.join(("", "torch", "nn", "")),)
    real = {name: getattr(torch.Tensor, name) for name in _READS}

    def reader(name: str):
        def read(self, *args, **kwargs):
            frame = sys._getframe(1)
            if any(p in frame.f_code.co_filename for p in places):
                key = f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {name}"
                counts[key] = counts.get(key, 0) + 1
            return real[name](self, *args, **kwargs)

        return read

    for name in _READS:
        setattr(torch.Tensor, name, reader(name))
    try:
        yield counts
    finally:
        for name, fn in real.items():
            setattr(torch.Tensor, name, fn)


@pytest.mark.parametrize("micro", ["null", "3"])
@pytest.mark.parametrize("name", ["cifar_joint", "cifar_gen"])
def test_a_step_reads_the_device_once_for_the_skip_decision(
    train, monkeypatch, tmp_path, name, micro
) -> None:
    """A whole step (flips, encoder, zoning, label flow with class weights, conditioned decoder,
    backward, DeepSpeed step, EMA) with its tensors treated as on an accelerator: the one value read
    back is the engine's skip flag. (On the CPU the value checks run: they read index ranges.)"""
    from lzn_core import errors
    from lzn_core.train.engine import Engine, setup_distributed
    from lzn_core.train.passes import network_passes

    setup_distributed()
    model, recipe = _model(name, [f"train.micro_batch_size={micro}"])
    engine = Engine(model, recipe, tmp_path / "ckpt")
    nets = network_passes(engine.model, recipe.train)
    batch = _batch(recipe)
    with _counting_reads() as on_cpu:
        train.task_losses(engine.model, recipe, dict(batch), 0, 0, 1, nets)
    nets.discard()
    monkeypatch.setattr(errors, "_FREE_DEVICES", ())  # what an accelerator's tensors see
    with _counting_reads() as on_device:
        losses = train.task_losses(engine.model, recipe, dict(batch), 1, 0, 1, nets)
        assert engine.step(sum(losses.values()), nets) is True
    assert len(on_device) == 1 and sum(on_device.values()) == 1, on_device
    assert next(iter(on_device)).startswith("engine.py")
    if name == "cifar_joint":
        assert sum(on_cpu.values()) > 0  # the value checks are there on the CPU, and skipped on a device


def test_simclr_views_read_their_crop_boxes_once_per_view() -> None:
    """Crop boxes are host values (the crops slice host images): all of a view's boxes are drawn in
    one call from the generator and read back once, not once per image (B syncs on a device
    generator); the boxes are those of one draw per image."""
    from lzn_image.augment import random_resized_crop, resized_crop_box

    g = torch.Generator().manual_seed(0)
    imgs = [torch.rand(3, 40 + 3 * i, 50 - 2 * i, generator=g) for i in range(6)]
    with _counting_reads() as reads:
        out = random_resized_crop(imgs, 16, (0.08, 1.0), torch.Generator().manual_seed(3))
    assert out.shape == (6, 3, 16, 16) and sum(reads.values()) == 2, reads  # one .cpu(), one .tolist()
    g = torch.Generator().manual_seed(3)
    boxes = [resized_crop_box(int(x.shape[1]), int(x.shape[2]), (0.08, 1.0), g) for x in imgs]
    for x, box, crop in zip(imgs, boxes, out, strict=True):
        top, left, h, w = box
        ref = torch.nn.functional.interpolate(
            x[None, :, top : top + h, left : left + w], size=(16, 16), mode="bilinear", antialias=True
        )[0]
        torch.testing.assert_close(crop, ref, rtol=0, atol=1e-6)


if __name__ == "__main__":
    if sys.argv[1:2] == ["memory"]:
        _memory_worker(int(sys.argv[2]))
