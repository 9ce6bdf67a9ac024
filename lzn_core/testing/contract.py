"""The contract part of the conformance kit: every call the framework makes on a modality, made
the way the framework makes it, in this process, without training (:func:`check_modality`).

1. config: ``spec.example_config`` is valid; unknown keys are rejected;
2. data: ``decode_sample`` decodes ``spec.example_items`` (and ``validate_item`` accepts them),
   rejects corrupt bytes with a ``ValueError`` naming the modality or a shard key; ``collate``
   keeps the batch length; ``as_batch`` makes one item a batch of one and keeps a batch (a
   sampled one too);
3. signatures: ``decoder.loss`` takes ``(z, batch, cond, *, generator, rows)`` and
   ``decoder.sample`` ``(z, cond, *, steps, generator)``; a missing parameter is named;
4. the encoder gives finite float anchors (B, q) with gradients to its parameters; every
   declared capability is called (``bank()``, ``condition()`` against ``spec.condition_dim``,
   ``features()``); the decoder's loss (generative: a finite scalar, gradients to its
   parameters and to z, the same value for the same generator, conditioned too when
   ``accepts_condition``), ``sample`` (B items; zonal: (B,) int64 bank indices),
   ``reconstruct``, ``save_preview`` and ``judge_samples`` where declared;
   micro-batches (``train.micro_batch_size``, :mod:`lzn_core.train.passes`): ``batch[lo:hi]``
   cuts a batch into rows, the encoder treats rows independently (no batch statistics), and a
   generative loss over all rows is the row-weighted sum of its losses over row blocks drawn
   from the same generator state with ``rows`` shifted;
   batches: a custom batch type (:mod:`lzn_core.modality`) keeps its rows through pickling
   (loader workers) and slicing, and one that holds tensors has ``to(device)``, which returns a
   batch of the same type with every tensor moved; ``to("meta")`` stands in for a GPU on the CPU:
   the encoder runs on the meta device with a moved batch, so a tensor made on the CPU inside it
   fails here as it would on a GPU; and a spy batch checks that the framework's own entry points
   (training's step, ``LZNModel.encode``, compose) hand encoders and losses moved batches only
   (:func:`check_framework_moves_batches`).

The first violation raises :class:`~lzn_core.errors.ContractError` saying what is wrong and
what was expected. Training and serving are the trial's (:mod:`lzn_core.testing.trial`).
Importing this module does not import torch.
"""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ContractError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..modality import ModalitySpec

CORRUPT_SAMPLES: tuple[bytes, ...] = (b"", b"\x89\x00\xff\xfe\x13 lzn corrupt \x00\xd8")
"""Raw values every ``decode_sample`` must reject with a ``ValueError``."""

KIT_CONDITION_DIM = 3
"""Size of the conditioning vector the kit builds a decoder with (``accepts_condition``)."""


@dataclass
class ConformanceReport:
    """What :func:`check_modality` verified (it raises on the first failure)."""

    modality: str
    latent_dim: int
    batch_size: int
    decoder_kind: str
    checks: list[str] = field(default_factory=list)


def _fail(spec: ModalitySpec, msg: str) -> ContractError:
    return ContractError(f"modality {spec.name!r} breaks the contract: {msg}")


def _resolve(spec_or_name: ModalitySpec | str) -> ModalitySpec:
    from ..modality import ModalitySpec
    from ..plugins import get_modality

    if isinstance(spec_or_name, str):
        return get_modality(spec_or_name)
    if not isinstance(spec_or_name, ModalitySpec):
        raise TypeError(
            f"check_modality takes a ModalitySpec or a modality name, got {type(spec_or_name).__name__}"
        )
    return spec_or_name


# ----------------------------------------------------------------------------- static checks


def _check_config(spec: ModalitySpec, rep: ConformanceReport) -> Any:
    from pydantic import ValidationError

    try:
        config = spec.config(**dict(spec.example_config))
    except ValidationError as exc:
        raise _fail(
            spec, f"example_config {dict(spec.example_config)!r} is not a valid config: {exc}"
        ) from exc
    try:
        spec.config(**dict(spec.example_config), lzn_conformance_unknown_key=1)
    except ValidationError:
        rep.checks.append("config rejects unknown keys")
    else:
        raise _fail(spec, "config accepts an unknown key; set model_config = ConfigDict(extra='forbid')")
    return config


def _raw_items(spec: ModalitySpec, n: int) -> list[bytes]:
    if spec.example_items is None:
        raise _fail(
            spec,
            "ModalitySpec.example_items is not set; give a function n -> list[bytes] of raw "
            "shard values so the kit can test decode_sample and collate",
        )
    raw = list(spec.example_items(n))
    if len(raw) != n or not all(isinstance(r, bytes) for r in raw):
        raise _fail(spec, f"example_items({n}) must return {n} bytes values")
    return raw


def _check_decode(spec: ModalitySpec, config: Any, batch_size: int, rep: ConformanceReport) -> Any:
    items = [spec.decode_sample(r) for r in _raw_items(spec, batch_size)]
    if spec.validate_item is not None:
        for item in items:
            try:
                spec.validate_item(item, config)
            except ValueError as exc:
                raise _fail(
                    spec, f"validate_item rejects an example item under example_config: {exc}"
                ) from exc
        rep.checks.append("validate_item accepts the example items")
    for bad in CORRUPT_SAMPLES:
        try:
            spec.decode_sample(bad)
        except ValueError as exc:
            msg = str(exc).lower()
            if not any(w.lower() in msg for w in (spec.name, *spec.shard_keys)):
                raise _fail(
                    spec,
                    f"decode_sample({bad!r}) raised ValueError({str(exc)!r}); the message must "
                    f"name the modality {spec.name!r} or a shard key {spec.shard_keys}",
                ) from exc
        except Exception as exc:
            raise _fail(
                spec,
                f"decode_sample({bad!r}) raised {type(exc).__name__} ({exc}); corrupt input "
                "must raise ValueError with a clear message",
            ) from exc
        else:
            raise _fail(spec, f"decode_sample accepted corrupt bytes {bad!r}; it must raise ValueError")
    rep.checks.append("decode_sample decodes example_items and rejects corrupt bytes with ValueError")
    batch = spec.collate(items)
    if _batch_len(batch) != batch_size:
        raise _fail(spec, f"collate of {batch_size} items gave a batch of length {_batch_len(batch)}")
    rep.checks.append("collate")
    if spec.as_batch is not None:
        one = spec.as_batch(items[0])
        if _batch_len(one) != 1:
            raise _fail(
                spec, f"as_batch of one decoded item gave a batch of length {_batch_len(one)}, expected 1"
            )
        if _batch_len(spec.as_batch(batch)) != batch_size:
            raise _fail(
                spec, f"as_batch of a batch of {batch_size} changed its length: a batch must pass unchanged"
            )
        rep.checks.append("as_batch: one item -> a batch of one; a batch passes unchanged")
    if spec.transform is not None:
        _check_transform(spec, config, batch, rep)
    return batch


def _check_transform(spec: ModalitySpec, config: Any, batch: Any, rep: ConformanceReport) -> None:
    """``transform(batch, config, generator=, rows=)``: same length, same result for the same seed."""
    import torch

    b = _batch_len(batch) or 0
    transform: Any = spec.transform
    outs = [
        transform(batch, config, generator=torch.Generator().manual_seed(3), rows=(0, b)) for _ in range(2)
    ]
    if _batch_len(outs[0]) != b:
        raise _fail(spec, f"transform of a batch of {b} returned a batch of length {_batch_len(outs[0])}")
    same = (
        all(torch.equal(x, y) for x, y in zip(outs[0], outs[1], strict=True))
        if isinstance(outs[0], torch.Tensor)
        else outs[0] == outs[1]
    )
    if not same:
        raise _fail(
            spec,
            "transform gave two results for the same seeded generator: draw its randomness from `generator`",
        )
    rep.checks.append("transform: same length, seeded by generator")


def _batch_len(batch: Any) -> int | None:
    try:
        return len(batch)
    except TypeError:
        return None


def _check_signature(
    spec: ModalitySpec,
    method: Callable[..., Any],
    call: str,
    positional: tuple[str, ...],
    keywords: tuple[str, ...],
) -> None:
    """``method`` must accept ``positional`` arguments and the keyword-only-able ``keywords``."""
    params = inspect.signature(method).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        names = [n for n in params if params[n].kind is not inspect.Parameter.VAR_KEYWORD]
    else:
        names = list(params)
    free = [
        n
        for n in names
        if params[n].kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    takes_star = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params.values())
    if len(free) < len(positional) and not takes_star:
        raise _fail(
            spec,
            f"{call}: {method.__qualname__} takes {len(free)} positional arguments, the framework passes {len(positional)} ({', '.join(positional)})",
        )
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for kw in keywords:
        if kw not in params and not has_var_kw:
            raise _fail(
                spec,
                f"{method.__qualname__} has no parameter {kw!r}; the framework calls {call} "
                "(see lzn_core.modality.Decoder)",
            )


def _check_tensor(spec: ModalitySpec, what: str, t: Any, shape: tuple[int, ...]) -> torch.Tensor:
    import torch

    if not isinstance(t, torch.Tensor):
        raise _fail(spec, f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise _fail(spec, f"{what} has shape {tuple(t.shape)}, expected {shape}")
    if not t.dtype.is_floating_point:
        raise _fail(spec, f"{what} has dtype {t.dtype}, expected a floating dtype")
    if not bool(torch.isfinite(t).all()):
        raise _fail(spec, f"{what} has non-finite values")
    return t


def _check_grads(spec: ModalitySpec, what: str, module: Any) -> None:
    import torch

    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise _fail(spec, f"{what} has no trainable parameters")
    grads = [p.grad for p in params if p.grad is not None]
    if not any(bool((g != 0).any()) for g in grads):
        raise _fail(spec, f"no gradient reaches the {what} parameters")
    if not all(bool(torch.isfinite(g).all()) for g in grads):
        raise _fail(spec, f"non-finite gradient in the {what} parameters")


def _check_encoder(
    spec: ModalitySpec, config: Any, encoder: Any, batch: Any, q: int, rep: ConformanceReport
) -> None:
    import torch

    from ..modality import AnchorBank, BackboneFeatures, ConditionProvider

    b = _batch_len(batch) or 0
    anchors = _check_tensor(spec, "encoder(batch)", encoder(batch), (b, q))
    (anchors * torch.randn_like(anchors)).sum().backward()
    _check_grads(spec, "encoder", encoder)
    rep.checks.append(f"encoder -> anchors ({b}, {q}) float, finite, gradients reach its parameters")
    if isinstance(encoder, AnchorBank):
        bank = encoder.bank()
        rows = bank.shape[0] if isinstance(bank, torch.Tensor) and bank.dim() == 2 else -1
        _check_tensor(spec, "encoder.bank()", bank, (rows, q))
        rep.checks.append(f"AnchorBank: bank() ({rows}, {q})")
    if isinstance(encoder, ConditionProvider) != (spec.condition_dim is not None):
        raise _fail(
            spec,
            "an encoder with condition(batch) needs ModalitySpec.condition_dim (config -> int), and "
            "condition_dim needs an encoder with condition(batch)",
        )
    if isinstance(encoder, ConditionProvider):
        d = int(spec.condition_dim(config))  # type: ignore[misc]
        _check_tensor(spec, "encoder.condition(batch)", encoder.condition(batch), (b, d))
        rep.checks.append(f"ConditionProvider: condition(batch) -> ({b}, {d}) = spec.condition_dim(config)")
    if isinstance(encoder, BackboneFeatures):
        feats = encoder.features(batch)
        rows = feats.shape[1] if isinstance(feats, torch.Tensor) and feats.dim() == 2 else -1
        _check_tensor(spec, "encoder.features(batch)", feats, (b, rows))
        rep.checks.append(f"BackboneFeatures: features(batch) -> ({b}, {rows})")


def _check_loss(spec: ModalitySpec, decoder: Any, batch: Any, q: int, cond: Any, what: str) -> None:
    import torch

    b = _batch_len(batch) or 0
    z = torch.randn(b, q, requires_grad=True)
    gen = torch.Generator().manual_seed(1)
    loss = decoder.loss(z, batch, cond, generator=gen, rows=(0, b))
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise _fail(spec, f"{what} must return a scalar tensor, got {getattr(loss, 'shape', type(loss))}")
    if not bool(torch.isfinite(loss)):
        raise _fail(spec, f"{what} is not finite ({float(loss.detach())})")
    loss.backward()
    _check_grads(spec, "decoder", decoder)
    if z.grad is None or not bool((z.grad != 0).any()):
        raise _fail(spec, f"{what} does not depend on z (no gradient reaches the latents)")
    again = decoder.loss(z.detach(), batch, cond, generator=torch.Generator().manual_seed(1), rows=(0, b))
    if not torch.allclose(loss.detach(), again.detach(), rtol=1e-5, atol=1e-6):
        raise _fail(
            spec,
            f"{what} gave {float(loss):.6g} and {float(again):.6g} for the same z and the same seeded "
            "generator: draw every random number of the loss from `generator` (resume and ranks need it)",
        )


def _check_decoder(
    spec: ModalitySpec,
    config: Any,
    encoder: Any,
    decoder: Any,
    batch: Any,
    q: int,
    steps: int,
    rep: ConformanceReport,
) -> None:
    import torch

    from ..modality import AnchorBank, PreviewWriter, Reconstructs, SampleJudge

    b = _batch_len(batch) or 0
    kind = decoder.kind
    if kind == "none":
        rep.checks.append("decoder kind 'none': encoder-only modality")
        return
    _check_signature(
        spec,
        decoder.loss,
        "decoder.loss(z, batch, cond, generator=..., rows=...)",
        ("z", "batch", "cond"),
        ("generator", "rows"),
    )
    _check_signature(
        spec,
        decoder.sample,
        "decoder.sample(z, cond, steps=..., generator=...)",
        ("z", "cond"),
        ("steps", "generator"),
    )
    rep.checks.append("decoder.loss / decoder.sample take the framework's arguments")
    z = torch.randn(b, q)
    if kind == "generative":
        _check_loss(spec, decoder, batch, q, None, "decoder.loss")
        rep.checks.append(
            "decoder.loss: finite scalar, gradients reach the decoder and z, seeded by generator"
        )
        out = decoder.sample(z, None, steps=steps, generator=torch.Generator().manual_seed(0))
        if _batch_len(out) != b:
            raise _fail(spec, f"decoder.sample of {b} latents returned a batch of length {_batch_len(out)}")
        if spec.as_batch is not None and _batch_len(spec.as_batch(out)) != b:
            raise _fail(
                spec,
                f"as_batch of decoder.sample's batch of {b} has length {_batch_len(spec.as_batch(out))}: "
                "compose feeds a decoder's output to the next edge of a chain through as_batch",
            )
        rep.checks.append(f"decoder.sample returns a batch of {b}")
        if spec.accepts_condition:
            _, conditioned = spec.build(config, q, KIT_CONDITION_DIM)
            cond = torch.randn(b, KIT_CONDITION_DIM)
            _check_loss(
                spec, conditioned, batch, q, cond, f"decoder.loss with cond ({b}, {KIT_CONDITION_DIM})"
            )
            out_c = conditioned.sample(z, cond, steps=steps, generator=torch.Generator().manual_seed(0))
            if _batch_len(out_c) != b:
                raise _fail(
                    spec, f"a conditioned decoder.sample returned a batch of length {_batch_len(out_c)}"
                )
            rep.checks.append(
                f"accepts_condition: built with condition_dim={KIT_CONDITION_DIM}, loss and sample read cond"
            )
        if isinstance(decoder, Reconstructs):
            for clip in (True, False):
                rec = decoder.reconstruct(batch, z, None, steps=steps, clip=clip)
                if _batch_len(rec) != b:
                    raise _fail(
                        spec, f"decoder.reconstruct(clip={clip}) returned a batch of length {_batch_len(rec)}"
                    )
            rep.checks.append("Reconstructs: reconstruct(batch, z, clip=True|False) returns a batch of B")
        if isinstance(decoder, PreviewWriter):
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp) / "samples"  # as training: a fresh folder the framework made
                folder.mkdir()
                asked = folder / f"{spec.name}-step-000001.png"
                written = Path(decoder.save_preview(out, asked, nrow=2))
                if written.parent.resolve() != folder.resolve() or not written.is_file():
                    raise _fail(
                        spec, f"save_preview was asked for {asked} and returned {written}, no file there"
                    )
                if written.stat().st_size == 0:
                    raise _fail(spec, f"save_preview wrote an empty file {written}")
            rep.checks.append("PreviewWriter: save_preview writes the file asked for in a fresh folder")
        if isinstance(decoder, SampleJudge):
            _check_judge(spec, decoder, out, batch, rep)
    elif kind == "zonal":
        if not isinstance(encoder, AnchorBank):
            raise _fail(
                spec, "a zonal decoder flows latents to the modality's bank: the encoder must define bank()"
            )
        labels = decoder.sample(z, None, steps=steps, generator=None)
        m = encoder.bank().shape[0]
        if not isinstance(labels, torch.Tensor) or labels.shape != (b,) or labels.dtype != torch.int64:
            raise _fail(spec, f"a zonal decoder.sample must return (B,) int64 bank indices, got {labels!r}")
        if int(labels.min()) < 0 or int(labels.max()) >= m:
            raise _fail(spec, f"zonal decoder.sample returned indices outside the bank [0, {m})")
        rep.checks.append(f"zonal decoder.sample returns ({b},) int64 indices into the bank of {m}")


def _check_judge(spec: ModalitySpec, decoder: Any, samples: Any, batch: Any, rep: ConformanceReport) -> None:
    """``judge_samples`` as training (class-conditional) and ``lzn eval`` (also drawn from the prior,
    with the held-out items) call it; the values are numbers or strings; unknown options fail."""
    import torch

    _check_signature(
        spec,
        decoder.judge_samples,
        "decoder.judge_samples(samples, classes, real, real_classes, held_out=..., options=...)",
        ("samples", "classes", "real", "real_classes"),
        ("held_out", "options"),
    )
    classes = torch.arange(_batch_len(batch) or 0) % 2
    names = []
    for kind, kw in (
        ("class-conditional", dict(classes=classes)),
        ("drawn from the prior", dict(classes=None, held_out=batch)),
    ):
        cls = kw.pop("classes")
        scores = decoder.judge_samples(samples, cls, batch, classes, **kw)
        bad = {
            k: v
            for k, v in dict(scores).items()
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float, str))
        }
        if bad:
            raise _fail(
                spec,
                f"judge_samples ({kind}) must return a mapping of names to numbers or strings, got {bad!r}",
            )
        names += list(scores)
    try:
        decoder.judge_samples(samples, classes, batch, classes, options={"lzn_conformance_unknown": "1"})
    except ValueError:
        pass
    else:
        raise _fail(
            spec, "judge_samples accepted an unknown option; raise ValueError naming the options it reads"
        )
    rep.checks.append(
        f"SampleJudge: judge_samples -> {', '.join(names) or 'nothing'}; unknown options rejected"
    )


def _check_micro_batches(
    spec: ModalitySpec, encoder: Any, decoder: Any, batch: Any, q: int, rep: ConformanceReport
) -> None:
    """What a two-pass step (``train.micro_batch_size``) relies on; modules in eval mode (no dropout)."""
    import torch

    b = _batch_len(batch) or 0
    if b < 2:
        return
    blocks = [(0, 1), (1, b)]
    hint = "(train.micro_batch_size encodes and decodes a batch in row blocks; lzn_core.train.passes)"
    for lo, hi in blocks:
        if _batch_len(batch[lo:hi]) != hi - lo:
            raise _fail(
                spec, f"batch[{lo}:{hi}] has length {_batch_len(batch[lo:hi])}, expected {hi - lo} {hint}"
            )
    modes = encoder.training, getattr(decoder, "training", False)
    encoder.eval()
    if hasattr(decoder, "eval"):
        decoder.eval()
    try:
        with torch.no_grad():
            whole = encoder(batch)
            parts = torch.cat([encoder(batch[lo:hi]) for lo, hi in blocks])
            gap = float((parts - whole).abs().max())
            if gap > 1e-4 * (1.0 + float(whole.abs().max())):
                raise _fail(
                    spec,
                    f"encoder(batch[1:{b}]) differs from rows 1:{b} of encoder(batch) by {gap:.3g}: encode "
                    f"each row independently (no batch statistics) {hint}",
                )
            if decoder.kind == "generative":
                z = torch.randn(b, q, generator=torch.Generator().manual_seed(2))
                full = decoder.loss(z, batch, None, generator=torch.Generator().manual_seed(3), rows=(0, b))
                split = sum(
                    decoder.loss(
                        z[lo:hi], batch[lo:hi], None, generator=torch.Generator().manual_seed(3), rows=(lo, b)
                    )
                    * ((hi - lo) / b)
                    for lo, hi in blocks
                )
                if not torch.allclose(full, split, rtol=1e-4, atol=1e-6):
                    raise _fail(
                        spec,
                        f"decoder.loss over rows 0:{b} is {float(full):.6g}, but its row blocks 0:1 and 1:{b} "
                        f"(same generator state, rows=(lo, {b})) average to {float(split):.6g}: draw the "
                        f"global batch's randoms from `generator` and take rows[0]:rows[0]+len(z); the loss "
                        f"is a mean over rows {hint}",
                    )
    finally:
        encoder.train(modes[0])
        if hasattr(decoder, "train"):
            decoder.train(modes[1])
    rep.checks.append(
        "micro-batches: batch[lo:hi] cuts rows, rows encode independently"
        + (", the loss of row blocks adds up to the whole batch's" if decoder.kind == "generative" else "")
    )


# ----------------------------------------------------------------------------- batches and devices

META = "meta"
"""The device that stands in for a GPU on the CPU: tensors there have shapes and no data, and an
operation that mixes them with CPU tensors fails as one that mixes CUDA and CPU tensors does."""


def _tensors_in(obj: Any, depth: int = 0) -> list[torch.Tensor]:
    """The tensors a batch holds: itself, its items (list, tuple, dict) and attributes, 3 levels deep."""
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    if depth >= 3 or isinstance(obj, (str, bytes, int, float, bool)) or obj is None:
        return []
    if isinstance(obj, dict):
        items: list[Any] = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        items = list(obj)
    else:
        items = list(vars(obj).values()) if hasattr(obj, "__dict__") else []
        items += [getattr(obj, n) for n in getattr(type(obj), "__slots__", ()) if hasattr(obj, n)]
    return [t for x in items for t in _tensors_in(x, depth + 1)]


def _check_batch_type(spec: ModalitySpec, encoder: Any, batch: Any, q: int, rep: ConformanceReport) -> None:
    """A custom batch type: pickling, slicing, ``to(device)``; every batch: the encoder on another device."""
    import copy
    import pickle

    import torch

    from ..modality import MovesToDevice, move_batch

    b = _batch_len(batch) or 0
    custom = not isinstance(batch, (torch.Tensor, list, tuple))
    hint = "(custom batch types: lzn_core.modality)"
    if custom:
        name = type(batch).__name__
        try:
            back = pickle.loads(pickle.dumps(batch))
        except Exception as exc:
            raise _fail(
                spec, f"a {name} batch cannot be pickled ({exc}); loader workers send batches {hint}"
            ) from exc
        held, back_held = _tensors_in(batch), _tensors_in(back)
        if type(back) is not type(batch) or _batch_len(back) != b or len(held) != len(back_held):
            raise _fail(spec, f"a {name} batch does not survive pickling with its {b} rows {hint}")
        if not all(torch.equal(x, y) for x, y in zip(held, back_held, strict=True)):
            raise _fail(spec, f"a pickled {name} batch holds other values than the original {hint}")
        if b >= 2 and type(batch[0:1]) is not type(batch):
            raise _fail(spec, f"{name}[0:1] is a {type(batch[0:1]).__name__}, expected a {name} {hint}")
        if held and not isinstance(batch, MovesToDevice):
            raise _fail(
                spec,
                f"a {name} batch holds tensors but has no to(device): the framework cannot move it to a "
                f"GPU, and the encoder would get CPU tensors there; add `def to(self, device)` returning "
                f"a {name} with every tensor moved {hint}",
            )
        rep.checks.append(f"batch type {name}: pickled and sliced with its rows")
    moved: Any = batch
    if isinstance(batch, MovesToDevice):
        try:
            moved = move_batch(batch, torch.device(META))
        except ContractError as exc:
            raise _fail(spec, str(exc)) from exc
        if type(moved) is not type(batch) or _batch_len(moved) != b:
            raise _fail(
                spec, f"batch.to(device) returned {type(moved).__name__} of length {_batch_len(moved)}"
            )
        left = [tuple(t.shape) for t in _tensors_in(moved) if t.device.type != META]
        if left:
            raise _fail(spec, f"batch.to(device) left tensors of shapes {left} on the CPU {hint}")
        if any(t.device.type == META for t in _tensors_in(batch)):
            raise _fail(spec, f"batch.to(device) moved the original batch in place: return a new one {hint}")
        if custom and b >= 2 and any(t.device.type != META for t in _tensors_in(moved[0:1])):  # type: ignore[index]
            raise _fail(spec, f"rows [0:1] of a moved batch are not on its device {hint}")
        if custom:
            rep.checks.append("batch.to(device) moves every tensor (meta device), slices stay there")
    try:
        on_meta = copy.deepcopy(encoder).to(META)
        with torch.no_grad():
            anchors = on_meta(moved)
    except RuntimeError as exc:
        msg = str(exc)
        if "meta" in msg and ("cpu" in msg.lower() or "device" in msg.lower()):
            raise _fail(
                spec,
                "encoder(batch) mixes devices when the model and the batch are on another device (the "
                "meta device stands in for a GPU): a tensor made inside the encoder needs "
                f"device=... of the batch or the parameters ({msg.splitlines()[0]})",
            ) from exc
        rep.checks.append(
            f"encoder on another device: not checked (the meta device cannot run it: {msg.splitlines()[0][:80]})"
        )
        return
    except (NotImplementedError, TypeError) as exc:
        rep.checks.append(
            f"encoder on another device: not checked (the meta device cannot run it: {str(exc)[:80]})"
        )
        return
    if not isinstance(anchors, torch.Tensor) or anchors.device.type != META or tuple(anchors.shape) != (b, q):
        where = anchors.device if isinstance(anchors, torch.Tensor) else type(anchors).__name__
        raise _fail(
            spec, f"encoder(batch) on another device returned anchors on {where}, expected ({b}, {q}) there"
        )
    rep.checks.append(
        "encoder on another device (meta): the batch and every tensor it makes follow the parameters"
    )


class SpyBatch:
    """The kit's spy: a custom batch type that records where ``to`` put it (:func:`check_framework_moves_batches`).

    ``moved_to`` is the device of the last ``to`` call (None: never moved); slices keep it, as a
    moved batch's rows stay on its device. ``log`` (shared with every slice and copy) lists each
    ``to`` call. On the CPU, where a real move changes nothing, the marker is what a GPU would
    check: a batch that reaches the spy's encoder or loss unmoved fails.
    """

    def __init__(self, rows: torch.Tensor, moved_to: Any = None, log: list[str] | None = None) -> None:
        self.rows, self.moved_to = rows, moved_to
        self.log: list[str] = [] if log is None else log

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __getitem__(self, rows: slice) -> SpyBatch:
        return SpyBatch(self.rows[rows], self.moved_to, self.log)

    def to(self, device: Any) -> SpyBatch:
        import torch

        self.log.append(str(device))
        return SpyBatch(self.rows.to(device), torch.device(device), self.log)


def _require_moved(batch: Any, device: Any, where: str) -> None:
    moved = getattr(batch, "moved_to", None)
    if not isinstance(batch, SpyBatch) or moved != device:
        raise ContractError(
            f"the framework handed the {where} a batch that was not moved to the model's device "
            f"({device}; the batch: {moved}): batches must go through lzn_core.modality.move_batch"
        )


def _spy_spec() -> ModalitySpec:
    import torch
    from pydantic import BaseModel, ConfigDict
    from torch import nn

    from ..modality import ModalitySpec

    class SpyConfig(BaseModel):
        model_config = ConfigDict(extra="forbid")
        dim: int = 3

    class SpyEncoder(nn.Module):
        def __init__(self, config: SpyConfig, q: int) -> None:
            super().__init__()
            self.lin = nn.Linear(config.dim, q)

        def forward(self, batch: SpyBatch) -> torch.Tensor:
            _require_moved(batch, self.lin.weight.device, "encoder")
            return self.lin(batch.rows)

        def condition(self, batch: SpyBatch) -> torch.Tensor:
            _require_moved(batch, self.lin.weight.device, "encoder's condition()")
            return batch.rows

    class SpyDecoder(nn.Module):
        kind = "generative"

        def __init__(self, config: SpyConfig, q: int, condition_dim: int = 0) -> None:
            super().__init__()
            self.lin = nn.Linear(q, config.dim)

        def loss(
            self, z: Any, batch: SpyBatch, cond: Any = None, *, generator: Any = None, rows: Any = None
        ) -> Any:
            _require_moved(batch, self.lin.weight.device, "decoder's loss")
            return (self.lin(z) - batch.rows).square().mean()

        def sample(self, z: Any, cond: Any = None, *, steps: Any = None, generator: Any = None) -> Any:
            return SpyBatch(self.lin(z))

    def decode(raw: bytes) -> torch.Tensor:
        return torch.tensor([float(v) for v in raw.split()])

    return ModalitySpec(
        name=SPY_MODALITY,
        config=SpyConfig,
        build_encoder=SpyEncoder,
        build_decoder=SpyDecoder,
        shard_keys=("spy",),
        decode_sample=decode,
        collate=lambda items: SpyBatch(torch.stack(list(items))),
        condition_dim=lambda config: config.dim,
        accepts_condition=True,
    )


SPY_MODALITY = "lzn_kit_spy"
"""Name of the kit's spy modality (never registered outside :func:`check_framework_moves_batches`)."""


def check_framework_moves_batches() -> list[str]:
    """Check, with :class:`SpyBatch`, that the framework moves custom batches before a plugin sees them.

    A model with the kit's spy modality (its encoder, condition and loss fail on a batch that
    ``to`` did not move to the parameters' device) runs what training, evaluation and compose do:
    ``LZNModel.encode`` and ``condition``, one training step of ``recipes/train.py``
    (``to_device``, ``task_losses``, the two-pass micro-batches of
    :mod:`lzn_core.train.passes` and their backward), and a compose request. The spy itself is
    checked first: an unmoved batch handed to its encoder must fail.

    Returns:
        the paths checked, one line each.

    Raises:
        ContractError: a path handed the spy an unmoved batch.
    """
    import torch

    from ..graphs import compose
    from ..model import LZNModel
    from ..plugins import PluginRegistry, registry, reset_plugins
    from ..recipe import Recipe
    from ..train.passes import TwoPass

    try:
        from lzn_recipes import train as script
    except ImportError as exc:  # pragma: no cover - lzn_recipes ships with lzn
        raise ContractError(f"the training script lzn_recipes.train cannot be imported ({exc})") from exc

    from types import ModuleType, SimpleNamespace

    from ..hookspecs import hookimpl

    def register_spy(register: Callable[[ModalitySpec], None]) -> None:
        register(_spy_spec())

    plugin = ModuleType(f"{__name__}.spy_plugin")  # pluggy keeps plugins in sets: a hashable object
    plugin.lzn_register_modalities = hookimpl(register_spy)  # type: ignore[attr-defined]
    spy_ep = SimpleNamespace(name=SPY_MODALITY, value=__name__, group="lzn", dist=None, load=lambda: plugin)
    previous = registry()
    reset_plugins(PluginRegistry([spy_ep], environ={}))
    checked: list[str] = []
    try:
        recipe = Recipe.model_validate(
            {
                "name": "spy",
                "latent": {"dim": 4, "steps": 3, "g": 1e-3},
                "modalities": {"spy": {"plugin": SPY_MODALITY, "config": {"dim": 3}}},
                "tasks": [{"kind": "generate", "target": "spy"}],
                "data": {"train": "unused-*.tar"},
                "train": {"batch_size": 6, "iterations": 1, "micro_batch_size": 2},
            }
        )
        torch.manual_seed(0)
        model = LZNModel(recipe)
        batch = SpyBatch(torch.randn(6, 3))
        try:
            model.encoders["spy"](batch)
        except ContractError:
            pass
        else:  # pragma: no cover - the spy would check nothing
            raise ContractError("the kit's spy accepted an unmoved batch")
        model.encode("spy", batch)
        model.condition("spy", batch)
        checked.append("LZNModel.encode and LZNModel.condition move the batch")
        moved = script.to_device({"spy": batch}, model.device)
        nets = TwoPass(model, 2)
        losses = script.task_losses(model, recipe, moved, 0, 0, 1, nets)
        surrogate = nets.loss_for_backward(sum(losses.values()))
        surrogate.backward()
        checked.append("training: to_device, task_losses over two-pass micro-batches of 2 rows, backward")
        model.set_bank("spy", torch.randn(8, 4))
        compose("spy -> latent", model=model)(batch, seed=0)
        checked.append("compose: the request is moved")
        if not batch.log:  # pragma: no cover - the paths above all call to()
            raise ContractError("no path called to() on the spy batch")
    finally:
        reset_plugins(previous)
    return checked


def check_modality(
    spec_or_name: ModalitySpec | str,
    latent_dim: int = 8,
    *,
    batch_size: int = 4,
    sample_steps: int = 4,
    seed: int = 0,
) -> ConformanceReport:
    """Check that a modality obeys the contract of :mod:`lzn_core.modality` (the module doc's
    list), in this process, in seconds; nothing is trained (that is :func:`~lzn_core.testing.run_trial`).

    Args:
        spec_or_name: a ``ModalitySpec`` (registered or not) or a registered modality name.
        latent_dim: q.
        batch_size: B, number of example items.
        sample_steps: ``steps`` passed to ``decoder.sample``.
        seed: torch seed, for a reproducible check.

    Returns:
        a :class:`ConformanceReport` listing the checks that passed.

    Raises:
        ContractError: the first violation, naming the modality and what was expected.
    """
    import torch

    spec = _resolve(spec_or_name)
    torch.manual_seed(seed)
    rep = ConformanceReport(spec.name, latent_dim, batch_size, "?")
    config = _check_config(spec, rep)
    batch = _check_decode(spec, config, batch_size, rep)
    try:
        encoder, decoder = spec.build(config, latent_dim)
    except ContractError as exc:
        raise _fail(spec, str(exc)) from exc
    rep.decoder_kind = str(decoder.kind)
    _check_encoder(spec, config, encoder, batch, latent_dim, rep)
    _check_decoder(spec, config, encoder, decoder, batch, latent_dim, sample_steps, rep)
    _check_micro_batches(spec, encoder, decoder, batch, latent_dim, rep)
    _check_batch_type(spec, encoder, batch, latent_dim, rep)
    if not isinstance(batch, (torch.Tensor, list, tuple)):
        try:
            moves = check_framework_moves_batches()
        except ContractError as exc:
            raise _fail(spec, f"the installed framework does not move custom batches: {exc}") from exc
        rep.checks.append("framework (spy batch): " + "; ".join(moves))
    return rep
