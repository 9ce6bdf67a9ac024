"""The authors' checkpoints (github.com/microsoft/latent-zoning-networks) as exported models.

    import_official("000008000-000200000.pt", 3, "models/cifar_joint", bank="data/cifar10/train-*.tar")
    model = lzn_core.load("models/cifar_joint")

What the official trainers save (``GenerationTrainer.save_checkpoint`` for cases 1 and 3,
``ContrastiveTrainer.save_checkpoint`` for case 2) is one ``torch.save`` dict:

* ``encoder``, ``decoder``, ``label_anchor``: state dicts of the modules, each wrapped in their
  ``CustomDistributedDataParallel`` (keys ``model.module.<name>``);
* ``encoder_ema``, ``decoder_ema``, ``label_anchor_ema``: ``{"decay", "num_updates",
  "shadow_params"}``, ``shadow_params`` one tensor per *trainable* parameter in ``parameters()``
  order (their decoder's ``sigmas`` buffer and frozen Fourier frequencies ``W`` are not in it);
* ``optimizer``, ``lr_scheduler``, ``grad_scalar``, ``epoch``, ``iteration`` (not imported).

The cases (``case``):

1. NCSN++ encoder (down path + latent transformation blocks) and rectified-flow NCSN++ decoder
   conditioned on z: CIFAR-10 at 32² (positional time embedding), and the 256² models (FIR
   resampling, progressive input/output skips, Fourier time embedding of log σ, output / σ,
   latent blocks at 64..4);
2. ResNet-50 with GroupNorm + projection head (ImageNet representation), no decoder;
3. case 1's CIFAR networks with the decoder also conditioned on the class one-hot, plus the
   label anchors (the label flow classifies).

The sizes are read from the tensors; the official configurations decide what tensors cannot
tell (FIR, output scaling: on exactly when the progressive paths are; dropout), and
``image_config`` overrides any of it. Every tensor of the checkpoint must find its place in the
framework's model and every tensor of the model must be filled, with equal shapes, or
:class:`OfficialCheckpointError` lists what does not fit. Nothing is unpickled but tensors,
plain containers and :data:`SAFE_GLOBALS` (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import math
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import weights as _portable  # write_model / fill_banks: the one import of the weights module
from ..errors import LZNError, LZNWarning

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..model import LZNModel

CASES = (1, 2, 3)

SAFE_GLOBALS: tuple[Any, ...] = (OrderedDict,)
"""Non-tensor types allowed in an official checkpoint besides what ``weights_only`` always allows
(dict, list, tuple, str, int, float, bool, None, tensors): the module state dicts are
``OrderedDict``. Anything else in the pickle is refused."""

_PREFIXES = ("model.module.", "module.")  # CustomDistributedDataParallel(DDP(model)), DDP(model)
_NOT_IN_EMA = ("sigmas", "all_modules.0.W")  # their decoder's buffer and frozen Fourier parameter
_IGNORED = {"decoder": ("sigmas",)}  # the SMLD noise table: unused by a rectified flow
_LIST_CAP = 20


class OfficialCheckpointError(LZNError):
    """An official checkpoint that cannot be imported as the requested case.

    Attributes:
        unmapped: their tensors that have no place in the framework's model (``part.key (shape)``).
        misshaped: their tensors whose shape differs from the place they map to.
        missing: tensors of the framework's model that no tensor of theirs fills.
    """

    def __init__(
        self,
        message: str,
        *,
        unmapped: list[str] | None = None,
        misshaped: list[str] | None = None,
        missing: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.unmapped = list(unmapped or [])
        self.misshaped = list(misshaped or [])
        self.missing = list(missing or [])


# ----------------------------------------------------------------------------- reading


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Unpickle an official checkpoint with ``weights_only=True`` and :data:`SAFE_GLOBALS` only.

    Raises:
        FileNotFoundError: no such file.
        OfficialCheckpointError: the pickle holds another type (named), or the file is no checkpoint.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if not found:
            cause = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
            detail = cause.group(1).strip() if cause else str(exc).splitlines()[0]
            raise OfficialCheckpointError(f"{path}: not a readable torch checkpoint ({detail})") from None
        raise OfficialCheckpointError(
            f"{path}: refused to unpickle: it references {', '.join(dict.fromkeys(found))}, which is not "
            f"a tensor, a plain container or one of the allowed types "
            f"({', '.join(_name(t) for t in SAFE_GLOBALS)}); official checkpoints hold nothing else"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise OfficialCheckpointError(f"{path}: not a readable torch checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or "encoder" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise OfficialCheckpointError(
            f"{path}: not a checkpoint of the official trainers (expected a dict with 'encoder', "
            f"'encoder_ema', ...; found {keys})"
        )
    return ckpt


def _name(t: Any) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def _strip(state: Mapping[str, Any], part: str) -> dict[str, torch.Tensor]:
    """Their state dict without the data-parallel wrapper prefix."""
    import torch

    if not isinstance(state, Mapping):
        raise OfficialCheckpointError(f"checkpoint[{part!r}] is a {type(state).__name__}, not a state dict")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise OfficialCheckpointError(f"checkpoint[{part!r}][{key!r}] is not a tensor")
        for p in _PREFIXES:
            if key.startswith(p):
                key = key[len(p) :]
                break
        out[key] = value
    return out


def _part(ckpt: Mapping[str, Any], part: str, ema: bool) -> dict[str, torch.Tensor]:
    """State dict of ``part`` ("encoder", "decoder", "label_anchor"), EMA weights substituted."""
    import torch

    state = _strip(ckpt[part], part)
    if not ema:
        return state
    avg = ckpt.get(f"{part}_ema")
    if avg is None:
        warnings.warn(
            f"the checkpoint has no {part}_ema; importing the raw {part} weights", LZNWarning, stacklevel=3
        )
        return state
    shadow = avg.get("shadow_params") if isinstance(avg, Mapping) else None
    keys = [k for k in state if k not in _NOT_IN_EMA]
    if not isinstance(shadow, list) or len(shadow) != len(keys):
        n = len(shadow) if isinstance(shadow, list) else "no"
        raise OfficialCheckpointError(
            f"checkpoint[{part + '_ema'!r}] has {n} shadow_params for the {len(keys)} trainable tensors "
            f"of checkpoint[{part!r}]; pass ema=False to import the raw weights"
        )
    bad = [
        f"{k} {tuple(state[k].shape)} vs EMA {tuple(s.shape) if isinstance(s, torch.Tensor) else s!r}"
        for k, s in zip(keys, shadow, strict=True)
        if not isinstance(s, torch.Tensor) or s.shape != state[k].shape
    ]
    if bad:
        raise OfficialCheckpointError(
            f"checkpoint[{part + '_ema'!r}] does not line up with checkpoint[{part!r}]: " + "; ".join(bad[:5])
        )
    return {**state, **dict(zip(keys, shadow, strict=True))}


# ----------------------------------------------------------------------------- architecture


def _modules(state: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Their ``all_modules.<i>.<rest>`` tensors grouped by module index i, in index order."""
    groups: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = re.fullmatch(r"all_modules\.(\d+)\.(.+)", key)
        if m:
            groups.setdefault(int(m.group(1)), {})[m.group(2)] = value
    return [groups[i] for i in sorted(groups)]


def _kind(module: Mapping[str, torch.Tensor]) -> str:
    if "NIN_0.W" in module:
        return "attn"
    if "GroupNorm_0.weight" in module:
        return "res"
    if "Conv_0.weight" in module:
        return "combine"
    if set(module) == {"W"}:
        return "fourier"
    if "weight" in module:
        return {1: "norm", 2: "linear", 4: "conv"}.get(module["weight"].dim(), "?")
    return "?"


def _unet_config(enc: Mapping[str, torch.Tensor], dec: Mapping[str, torch.Tensor] | None) -> dict[str, Any]:
    """The image config of their NCSN++ encoder (+ decoder), read from the tensor shapes.

    Returns the image plugin's config fields plus ``"_q"`` (latent dim) and ``"_cond"`` (size of
    the decoder's extra conditioning vector).
    """
    mods = _modules(enc)
    if len(mods) < 4 or _kind(mods[0]) != "conv" or [_kind(m) for m in mods[-3:]] != ["res", "attn", "res"]:
        raise OfficialCheckpointError(
            "checkpoint['encoder'] is not an NCSN++ encoder (all_modules: conv, ResNet blocks, ..., "
            "ResNet, attention, ResNet)"
        )
    nf, channels = int(mods[0]["weight"].shape[0]), int(mods[0]["weight"].shape[1])
    levels: list[list[int]] = [[]]
    attn_levels: set[int] = set()
    progressive = False
    for m in mods[1:-3]:
        kind = _kind(m)
        if kind == "res":
            cin, cout = m["GroupNorm_0.weight"].numel(), int(m["Conv_0.weight"].shape[0])
            if "Conv_2.weight" in m and cin == cout:  # a down-sampling block closes the level
                levels.append([])
            else:
                levels[-1].append(cout)
        elif kind == "attn":
            attn_levels.add(len(levels) - 1)
        elif kind == "combine":
            progressive = True
        else:
            raise OfficialCheckpointError(
                f"checkpoint['encoder']: unexpected module {sorted(m)} in the down path"
            )
    counts = {len(level) for level in levels}
    if len(counts) != 1 or 0 in counts or any(len(set(level)) != 1 for level in levels):
        raise OfficialCheckpointError(
            f"checkpoint['encoder']: levels with unequal ResNet blocks {[len(v) for v in levels]} or widths"
        )
    n_blocks = counts.pop()
    ch_mult = tuple(level[0] // nf for level in levels)
    depth = len(levels)
    # feature maps of the latent blocks: conv_in, every block, every down block, the middle
    level_of = [0]
    for lv in range(depth):
        level_of += [lv] * n_blocks + ([lv + 1] if lv != depth - 1 else [])
    level_of.append(depth - 1)
    sides: dict[int, int] = {}
    latent_channels = latent_hidden = q = 0
    resolution = None
    for i, lv in enumerate(level_of):
        conv = enc.get(f"spatial_transformations.{i}.0.weight")
        first = enc.get(f"latent_transformations.{i}.0.weight")
        if conv is None or first is None:
            continue
        linears = sorted(
            int(hit.group(1))
            for k in enc
            if (hit := re.fullmatch(rf"latent_transformations\.{i}\.(\d+)\.weight", k))
        )
        latent_channels, latent_hidden = int(conv.shape[0]), int(first.shape[0])
        q = int(enc[f"latent_transformations.{i}.{linears[-1]}.weight"].shape[0])
        side = math.isqrt(int(first.shape[1]) // max(latent_channels, 1))
        sides[i] = side
        resolution = resolution or side * 2**lv
    if resolution is None:
        raise OfficialCheckpointError("checkpoint['encoder'] has no latent transformation blocks")
    all_sides = [resolution // 2**lv for lv in range(depth)]
    kept = sorted(set(sides.values()), reverse=True)
    config: dict[str, Any] = dict(
        resolution=resolution,
        channels=channels,
        nf=nf,
        ch_mult=list(ch_mult),
        num_res_blocks=n_blocks,
        attn_resolutions=[all_sides[lv] for lv in sorted(attn_levels)],
        latent_channels=latent_channels,
        latent_hidden=latent_hidden,
        latent_resolutions=None if kept == all_sides else kept,
        dropout=0.0 if progressive else 0.15,  # not in the tensors: the official configurations' value
        time_embedding="positional",
        _q=q,
        _cond=0,
    )
    if progressive:  # not in the tensors either: the official 256² configurations switch all three on
        config.update(fir=True, progressive=True, scale_by_sigma=True)
    if dec is not None:
        dmods = _modules(dec)
        fourier = bool(dmods) and _kind(dmods[0]) == "fourier"
        cond_mlp = dmods[1 if fourier else 0] if dmods else {}
        if _kind(cond_mlp) != "linear":
            raise OfficialCheckpointError(
                "checkpoint['decoder'] is not an NCSN++ decoder (no conditioning MLP)"
            )
        if progressive and not fourier:  # their output / σ would read σ from an SMLD table instead
            raise OfficialCheckpointError(
                "checkpoint['decoder']: progressive paths with the positional time embedding is not an "
                "official configuration (256² models use the Fourier embedding); not supported"
            )
        emb = 2 * nf if fourier else nf
        config["time_embedding"] = "fourier" if fourier else "positional"
        config["_cond"] = int(cond_mlp["weight"].shape[1]) - q - emb
    return config


def _resnet_image_config(enc: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The image config of their ResNet-50-GN encoder + projection head (case 2)."""
    if "net.0.0.weight" not in enc or "head.layers.0.weight" not in enc:
        raise OfficialCheckpointError(
            "checkpoint['encoder'] is not the case-2 ResNet (no net.0.0.weight / head.layers.0.weight)"
        )
    hidden, q = int(enc["head.layers.0.weight"].shape[0]), int(enc["head.layers.3.weight"].shape[0])
    for width in (hidden, q):  # their head GroupNorms have 32 groups; the plugin's pick 32 only here
        if width % 32 or width // 32 < 8:
            raise OfficialCheckpointError(
                f"the projection head has a {width}-wide GroupNorm(32); the framework's head uses 32 "
                "groups only for widths that are multiples of 32 with >= 8 features per group"
            )
    return dict(
        encoder="resnet50",
        proj_hidden=hidden,
        decoder=False,
        resolution=224,
        channels=3,
        augment="simclr",
        _q=q,
        _cond=0,
    )


# ----------------------------------------------------------------------------- recipe


def official_recipe(
    case: int,
    image: Mapping[str, Any],
    *,
    latent_dim: int,
    num_classes: int = 0,
    data: str | None = None,
    bank_size: int | None = None,
) -> dict[str, Any]:
    """The recipe (plain data) of the framework's model matching an official checkpoint.

    The one place that writes recipes for imported models: latent settings, modalities and tasks
    of the paper's configuration of ``case`` (docs/method.md §7), with the image config read from the checkpoint.

    Args:
        case: 1, 2 or 3.
        image: the image plugin's config fields.
        latent_dim: q.
        num_classes: classes of the label anchors (case 3).
        data: training shard pattern (also where the anchor bank is filled from).
        bank_size: anchors kept in the image bank (default: the case's evaluation batch).
    """
    image = dict(image)
    hq = bool(image.get("progressive"))  # the 256² models
    if case == 2:
        latent = dict(dim=latent_dim, solver="euler", steps=20, g=1e-4, alpha=0.45, bank_size=8192)
        modalities = {"image": {"plugin": "image", "config": image}}
        tasks: list[dict[str, Any]] = [
            dict(kind="align", source="image", target="image", loss="log", steps=20, cutoff=0.2, alpha=0.45)
        ]
        train = dict(batch_size=8192, iterations=5_000_000, lr={"default": 8e-4}, warmup=5000, ema=0.9999)
        evaluation = dict(batch_size=8192, alpha=0.0, steps=20, samples_per_class=0)
        default_data = "data/imagenet/train-*.tar"
    else:
        latent = dict(
            dim=latent_dim, solver="dpm", steps=20, g=1e-3, alpha=1.0, bank_size=256 if hq else 2000
        )
        image.setdefault("sample_method", "rk45")
        modalities = {"image": {"plugin": "image", "config": image}}
        tasks = [dict(kind="generate", target="image", weight=1.0)]
        lr = (
            {"image.decoder": 2e-4, "image.encoder": 2e-6}
            if hq
            else {"image.decoder": 1e-3, "image.encoder": 2.5e-5}
        )
        train = dict(
            batch_size=256 if hq else 2000,
            iterations=60_000 if hq else 50_000,
            lr=lr,
            warmup=5000,
            ema=0.999999,
        )
        evaluation = dict(batch_size=256 if hq else 2000, alpha=0.0, steps=100, samples_per_class=10)
        default_data = "data/train-*.tar" if hq else "data/cifar10/train-*.tar"
        if case == 3:
            modalities["label"] = {"plugin": "label", "config": dict(num_classes=num_classes, flow_steps=100)}
            tasks = [
                dict(kind="generate", target="image", weight=1.0, condition="label"),
                dict(
                    kind="align",
                    source="image",
                    target="label",
                    weight=1.0,
                    loss="prob",
                    class_weights=True,
                    steps=100,
                    cutoff=0.2,
                    alpha=1.0,
                ),
            ]
            train.update(
                iterations=200_000,
                lr={"image.decoder": 2e-3, "image.encoder": 5e-5, "label": 1e-4},
                freeze={"image.decoder": 60_000},
            )
    if bank_size is not None:
        latent["bank_size"] = bank_size
    return dict(
        name=f"official_case{case}",
        latent=latent,
        modalities=modalities,
        tasks=tasks,
        data=dict(train=data or default_data),
        train=dict(grad_clip=1.0, **train),
        eval=evaluation,
    )


# ----------------------------------------------------------------------------- tensor mapping


class _Mapping:
    """Their tensors (per part) -> the framework's state dict, recording what does not fit."""

    def __init__(
        self, theirs: Mapping[str, Mapping[str, torch.Tensor]], ours: Mapping[str, torch.Tensor]
    ) -> None:
        self.theirs = theirs
        self.shapes = {k: tuple(v.shape) for k, v in ours.items() if not k.startswith("banks.")}
        self.used: dict[str, set[str]] = {part: set() for part in theirs}
        self.out: dict[str, torch.Tensor] = {}
        self.misshaped: list[str] = []

    def fill(
        self,
        part: str,
        srcs: list[str],
        dst: str,
        fn: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        """ours[dst] = fn(*theirs[part][srcs]) (identity for one source), checking the shape."""
        state = self.theirs[part]
        if dst not in self.shapes or any(s not in state for s in srcs):
            return  # theirs without a place stay unmapped; ours without a source stay missing
        self.used[part].update(srcs)
        tensors = [state[s] for s in srcs]
        shown = ", ".join(f"{part}.{s} {tuple(state[s].shape)}" for s in srcs)
        try:
            value = fn(*tensors) if fn is not None else tensors[0]
        except (RuntimeError, IndexError, ValueError):
            value = None
        if value is None or tuple(value.shape) != self.shapes[dst]:
            self.misshaped.append(f"{shown} -> {dst} {self.shapes[dst]}")
            return
        self.out[dst] = value.detach()

    def same(self, part: str, src_prefix: str, dst_prefix: str, names: Mapping[str, str]) -> None:
        """Copy ``src_prefix.<a>.<weight|bias>`` to ``dst_prefix.<names[a]>.<weight|bias>``."""
        for a, b in names.items():
            for leaf in ("weight", "bias"):
                src = f"{src_prefix}.{a}.{leaf}" if a else f"{src_prefix}.{leaf}"
                dst = f"{dst_prefix}.{b}.{leaf}" if b else f"{dst_prefix}.{leaf}"
                self.fill(part, [src], dst)

    def problems(self, ignored: Mapping[str, tuple[str, ...]]) -> tuple[list[str], list[str], list[str]]:
        unmapped = [
            f"{part}.{k} {tuple(v.shape)}"
            for part, state in self.theirs.items()
            for k, v in state.items()
            if k not in self.used[part] and k not in ignored.get(part, ())
        ]
        missing = [f"{k} {s}" for k, s in self.shapes.items() if k not in self.out]
        return unmapped, list(self.misshaped), missing


_RES = {"GroupNorm_0": "norm0", "Conv_0": "conv0", "Dense_0": "dense", "GroupNorm_1": "norm1",
        "Conv_1": "conv1", "Conv_2": "skip"}  # fmt: skip


def _t(w: torch.Tensor) -> torch.Tensor:
    """Their NIN weight W (in, out) as a Linear weight (out, in)."""
    return w.t()


def _map_attn(m: _Mapping, part: str, src: str, dst: str) -> None:
    """AttnBlockpp (GroupNorm_0, NIN_0..3 = q, k, v, out) -> AttnBlock (norm, fused qkv, out)."""
    import torch

    m.same(part, f"{src}.GroupNorm_0", f"{dst}.norm", {"": ""})
    m.fill(part, [f"{src}.NIN_{i}.W" for i in range(3)], f"{dst}.qkv.weight",
           lambda *w: torch.cat([_t(x) for x in w]))  # fmt: skip
    m.fill(part, [f"{src}.NIN_{i}.b" for i in range(3)], f"{dst}.qkv.bias", lambda *b: torch.cat(b))
    m.fill(part, [f"{src}.NIN_3.W"], f"{dst}.out.weight", _t)
    m.fill(part, [f"{src}.NIN_3.b"], f"{dst}.out.bias")


def _unet_order(image: Mapping[str, Any], *, decoder: bool) -> list[tuple[str, str]]:
    """(kind, our module prefix) in the order of their ``all_modules`` (NCSN++ construction order)."""
    mult, n, attn = image["ch_mult"], image["num_res_blocks"], set(image["attn_resolutions"])
    sides = [image["resolution"] // 2**lv for lv in range(len(mult))]
    prog = bool(image.get("progressive"))
    order: list[tuple[str, str]] = []
    if decoder:
        if image["time_embedding"] == "fourier":
            order.append(("fourier", "fourier_w"))
        order += [("temb_in", "temb.0"), ("linear", "temb.2")]
    order.append(("conv", "down.conv_in"))
    k = 0
    for lv in range(len(mult)):
        for _ in range(n):
            order.append(("res", f"down.layers.{k}.0"))
            if sides[lv] in attn:
                order.append(("attn", f"down.layers.{k}.1"))
            k += 1
        if lv != len(mult) - 1:
            order.append(("res", f"down.layers.{k}.0"))
            k += 1
            if prog:
                order.append(("conv", f"down.combine.{lv}"))
    order += [("res", "down.mid.0"), ("attn", "down.mid.1"), ("res", "down.mid.2")]
    if decoder:
        for j, lv in enumerate(reversed(range(len(mult)))):
            order += [("res", f"up.levels.{j}.0.{b}") for b in range(n + 1)]
            if sides[lv] in attn:
                order.append(("attn", f"up.levels.{j}.1"))
            if prog:
                order += [("norm", f"up.pyramid.{j}.0"), ("conv", f"up.pyramid.{j}.2")]
            if lv != 0:
                order.append(("res", f"up.levels.{j}.2"))
        if not prog:
            order += [("norm", "up.norm_out"), ("conv", "up.conv_out")]
    return order


def _map_unet(m: _Mapping, part: str, dst: str, image: Mapping[str, Any], q: int, cond: int) -> None:
    """Their NCSN++ ``all_modules`` (+ the encoder's latent blocks) onto the plugin's U-Net."""
    import torch

    decoder = part == "decoder"
    order = _unet_order(image, decoder=decoder)
    for i, (kind, ours) in enumerate(order):
        src, to = f"all_modules.{i}", f"{dst}.{ours}"
        if kind == "res":
            m.same(part, src, to, _RES)
        elif kind == "attn":
            _map_attn(m, part, src, to)
        elif kind == "fourier":
            m.fill(part, [f"{src}.W"], to)
        elif kind == "temb_in":  # their input is [z, one-hot, e(t)], ours [e(t), z, one-hot]
            m.fill(
                part,
                [f"{src}.weight"],
                f"{to}.weight",
                lambda w: torch.cat([w[:, q + cond :], w[:, : q + cond]], 1),
            )
            m.fill(part, [f"{src}.bias"], f"{to}.bias")
        elif kind == "conv" and ours.startswith("down.combine."):  # Combine(method="sum").Conv_0
            m.same(part, f"{src}.Conv_0", to, {"": ""})
        else:
            m.same(part, src, to, {"": ""})
    if not decoder:
        blocks = sorted(
            {int(k.split(".")[1]) for k in m.theirs[part] if k.startswith("latent_transformations.")}
        )
        for j, i in enumerate(blocks):
            m.same(part, f"spatial_transformations.{i}.0", f"{dst}.latent_blocks.{j}.conv", {"": ""})
            m.same(part, f"latent_transformations.{i}", f"{dst}.latent_blocks.{j}.mlp", {"0": "0", "2": "2"})


_BOTTLENECK = {"net.0": "conv1", "net.1.0": "bn1", "net.2": "conv2", "net.3.0": "bn2", "net.4": "conv3",
               "net.5.0": "bn3", "projection.shortcut": "downsample.0", "projection.bn.0": "downsample.1"}  # fmt: skip


def _map_resnet(m: _Mapping, dst: str) -> None:
    """Their SimCLRv2-style ResNet (net.0 stem, net.1-4 stages, head.layers) onto torchvision's."""
    state = m.theirs["encoder"]
    m.same("encoder", "net.0.0", f"{dst}.backbone.stem.0", {"": ""})
    m.same("encoder", "net.0.1.0", f"{dst}.backbone.stem.1", {"": ""})
    blocks = sorted(
        {tuple(map(int, g.groups())) for k in state if (g := re.match(r"net\.(\d)\.blocks\.(\d+)\.", k))}
    )
    for stage, block in blocks:
        src, to = f"net.{stage}.blocks.{block}", f"{dst}.backbone.stages.{stage - 1}.{block}"
        for a, b in _BOTTLENECK.items():
            m.same("encoder", f"{src}.{a}", f"{to}.{b}", {"": ""})
    for i in (0, 1, 3, 4):  # Linear, GN, (ReLU), Linear, GN
        m.same("encoder", f"head.layers.{i}", f"{dst}.head.{i}", {"": ""})


# ----------------------------------------------------------------------------- import


def official_model(
    checkpoint: str | Path,
    case: int,
    *,
    ema: bool = True,
    image_config: Mapping[str, Any] | None = None,
    data: str | None = None,
    bank_size: int | None = None,
) -> LZNModel:
    """Build the framework's model for an official checkpoint and load its weights (eval mode, CPU).

    Args:
        checkpoint: a ``.pt`` file written by the official trainers.
        case: 1 (generation), 2 (ResNet-50 representation) or 3 (joint generation + classification).
        ema: load the EMA weights (what the authors evaluate); False: the raw weights.
        image_config: image config fields that override what is read from the checkpoint
            (e.g. ``{"resolution": 32}`` for a ResNet that should accept 32×32 batches).
        data: the recipe's training shard pattern (where :func:`import_official` fills the bank from).
        bank_size: the recipe's ``latent.bank_size``.

    Raises:
        OfficialCheckpointError: the checkpoint is not of this case, or tensors do not fit
            (``.unmapped`` / ``.misshaped`` / ``.missing`` list them).
    """
    from ..model import LZNModel
    from ..recipe import validate_recipe

    if case not in CASES:
        raise OfficialCheckpointError(f"case must be one of {', '.join(map(str, CASES))}, got {case!r}")
    path = Path(checkpoint)
    ckpt = read_checkpoint(path)
    parts = ["encoder"] + (["decoder"] if case != 2 else []) + (["label_anchor"] if case == 3 else [])
    _check_case(ckpt, case, path)
    theirs = {p: _part(ckpt, p, ema) for p in parts}
    if case == 2:
        image = _resnet_image_config(theirs["encoder"])
    else:
        image = _unet_config(theirs["encoder"], theirs["decoder"])
    q, cond = image.pop("_q"), image.pop("_cond")
    num_classes = 0
    if case == 3:
        num_classes = (
            int(theirs["label_anchor"]["anchor"].shape[0]) if "anchor" in theirs["label_anchor"] else 0
        )
        if cond != num_classes:
            raise OfficialCheckpointError(
                f"{path}: the decoder is conditioned on {cond} extra inputs but there are {num_classes} "
                "label anchors; a case-3 checkpoint has one per class"
            )
    elif cond:
        raise OfficialCheckpointError(
            f"{path}: the decoder is conditioned on a {cond}-d vector besides z and t: a case-3 "
            "checkpoint (pass case=3)"
        )
    image.update(image_config or {})
    recipe = validate_recipe(
        official_recipe(case, image, latent_dim=q, num_classes=num_classes, data=data, bank_size=bank_size),
        f"{path.name} (official case {case})",
    )
    model = LZNModel(recipe)
    mapping = _Mapping(theirs, model.state_dict())
    if case == 2:
        _map_resnet(mapping, "encoders.image")
    else:
        _map_unet(mapping, "encoder", "encoders.image", image, q, cond)
        _map_unet(mapping, "decoder", "decoders.image", image, q, cond)
    if case == 3:
        mapping.fill("label_anchor", ["anchor"], "encoders.label.anchors")
    unmapped, misshaped, missing = mapping.problems(_IGNORED)
    if unmapped or misshaped or missing:
        raise _mismatch(path, case, unmapped, misshaped, missing)
    model.load_weights(mapping.out)
    return model.eval()


def _check_case(ckpt: Mapping[str, Any], case: int, path: Path) -> None:
    enc = _strip(ckpt["encoder"], "encoder")
    resnet = "net.0.0.weight" in enc
    if case == 2 and not resnet:
        raise OfficialCheckpointError(
            f"{path}: the encoder is an NCSN++ U-Net, not the case-2 ResNet (case 1 or 3)"
        )
    if case != 2 and resnet:
        raise OfficialCheckpointError(f"{path}: the encoder is the case-2 ResNet (pass case=2)")
    if case != 2 and "decoder" not in ckpt:
        raise OfficialCheckpointError(f"{path}: case {case} needs checkpoint['decoder'], which is absent")
    if case == 1 and "label_anchor" in ckpt:
        raise OfficialCheckpointError(
            f"{path}: the checkpoint has label anchors: a case-3 checkpoint (pass case=3)"
        )
    if case == 3 and "label_anchor" not in ckpt:
        raise OfficialCheckpointError(
            f"{path}: case 3 needs checkpoint['label_anchor'], which is absent (case 1?)"
        )


def _mismatch(
    path: Path, case: int, unmapped: list[str], misshaped: list[str], missing: list[str]
) -> OfficialCheckpointError:
    lines = [f"{path}: the tensors do not fit the framework's case-{case} model:"]
    for title, items in (
        ("unmapped (no place in the framework's model)", unmapped),
        ("mis-shaped (theirs -> ours)", misshaped),
        ("left empty in the framework's model", missing),
    ):
        if items:
            lines.append(f"  {len(items)} {title}:")
            lines += [f"    {s}" for s in items[:_LIST_CAP]]
            if len(items) > _LIST_CAP:
                lines.append(f"    ... and {len(items) - _LIST_CAP} more")
    return OfficialCheckpointError("\n".join(lines), unmapped=unmapped, misshaped=misshaped, missing=missing)


def import_official(
    checkpoint: str | Path,
    case: int,
    out: str | Path,
    *,
    bank: str | None = None,
    ema: bool = True,
    image_config: Mapping[str, Any] | None = None,
    bank_size: int | None = None,
    seed: int = 0,
) -> Path:
    """Convert an official checkpoint into ``out/model.safetensors`` + ``out/recipe.yaml``.

    Args:
        checkpoint: a ``.pt`` file of the official trainers.
        case: 1, 2 or 3 (see the module docstring).
        out: output directory (``lzn_core.load(out)`` reads it).
        bank: shard pattern (``data/cifar10/train-*.tar``) whose images fill the image anchor bank,
            the context that small requests are zoned against; None: no bank (a warning says so).
        ema: import the EMA weights (default) or the raw ones.
        image_config: overrides of the image config read from the checkpoint.
        bank_size: anchors in the bank (default: the case's evaluation batch size).
        seed: seed of the bank's sample.

    Returns:
        ``out``.
    """
    model = official_model(
        checkpoint, case, ema=ema, image_config=image_config, data=bank, bank_size=bank_size
    )
    if bank is not None:
        _portable.fill_banks(model, model.recipe, seed=seed)
    else:
        warnings.warn(
            "imported without an image anchor bank (pass bank=SHARD_PATTERN): small requests will be "
            "zoned without the bank's context",
            LZNWarning,
            stacklevel=2,
        )
    return _portable.write_model(model, out)
