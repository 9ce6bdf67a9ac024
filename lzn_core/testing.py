"""Conformance kit for modality plugins (also a pytest plugin, entry point ``pytest11``).

A plugin author's whole test can be::

    def test_conformance(lzn_check_modality):
        lzn_check_modality("vector")          # or a ModalitySpec

The fixture ``lzn_plugins`` gives a test a fresh plugin registry.

:func:`check_modality` builds both sides on CPU from ``spec.example_config``,
decodes ``spec.example_items(n)`` and checks the contract of
:mod:`lzn_core.modality`; the first violation raises :class:`ContractError`
saying what is wrong and what was expected. Importing this module does not
import torch (pytest loads it in every session).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ContractError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .modality import ModalitySpec

CORRUPT_SAMPLES: tuple[bytes, ...] = (b"", b"\x89\x00\xff\xfe\x13 lzn corrupt \x00\xd8")
"""Raw values every ``decode_sample`` must reject with a ``ValueError``."""


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
    from .modality import ModalitySpec

    if isinstance(spec_or_name, str):
        from .plugins import get_modality

        return get_modality(spec_or_name)
    if not isinstance(spec_or_name, ModalitySpec):
        raise TypeError(
            f"check_modality takes a ModalitySpec or a modality name, got {type(spec_or_name).__name__}"
        )
    return spec_or_name


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


def _check_decode(spec: ModalitySpec, batch_size: int, rep: ConformanceReport) -> Any:
    if spec.example_items is None:
        raise _fail(
            spec,
            "ModalitySpec.example_items is not set; give a function n -> list[bytes] of raw "
            "shard values so the kit can test decode_sample and collate",
        )
    raw = list(spec.example_items(batch_size))
    if len(raw) != batch_size or not all(isinstance(r, bytes) for r in raw):
        raise _fail(spec, f"example_items({batch_size}) must return {batch_size} bytes values")
    items = [spec.decode_sample(r) for r in raw]
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
    return batch


def _batch_len(batch: Any) -> int | None:
    try:
        return len(batch)
    except TypeError:
        return None


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


def _check_encoder(spec: ModalitySpec, encoder: Any, batch: Any, q: int, rep: ConformanceReport) -> Any:
    import torch

    b = _batch_len(batch) or 0
    anchors = _check_tensor(spec, "encoder(batch)", encoder(batch), (b, q))
    (anchors * torch.randn_like(anchors)).sum().backward()
    _check_grads(spec, "encoder", encoder)
    rep.checks.append(f"encoder -> anchors ({b}, {q}) float, finite, gradients reach its parameters")
    if hasattr(encoder, "bank"):
        bank = encoder.bank()
        rows = bank.shape[0] if getattr(bank, "dim", lambda: 0)() == 2 else -1  # -1: fails the shape check
        _check_tensor(spec, "encoder.bank()", bank, (rows, q))
        rep.checks.append("encoder.bank() (M, q)")
    if hasattr(encoder, "condition"):
        d = getattr(encoder, "condition_dim", None)
        if not isinstance(d, int):
            raise _fail(spec, "encoder has condition() but no integer condition_dim")
        _check_tensor(spec, "encoder.condition(batch)", encoder.condition(batch), (b, d))
        rep.checks.append(f"encoder.condition -> ({b}, {d})")
    return anchors


def _check_decoder(
    spec: ModalitySpec, decoder: Any, batch: Any, q: int, steps: int, rep: ConformanceReport
) -> None:
    import torch

    b = _batch_len(batch) or 0
    kind = getattr(decoder, "kind", None)
    if kind not in ("generative", "zonal"):
        raise _fail(spec, f"decoder.kind must be 'generative' or 'zonal', got {kind!r}")
    z = torch.randn(b, q, requires_grad=True)
    if kind == "generative":
        loss = decoder.loss(z, batch)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise _fail(
                spec, f"decoder.loss must return a scalar tensor, got {getattr(loss, 'shape', type(loss))}"
            )
        if not bool(torch.isfinite(loss)):
            raise _fail(spec, f"decoder.loss is not finite ({float(loss.detach())})")
        loss.backward()
        _check_grads(spec, "decoder", decoder)
        if z.grad is None or not bool((z.grad != 0).any()):
            raise _fail(spec, "decoder.loss does not depend on z (no gradient reaches the latents)")
        rep.checks.append("decoder.loss: finite scalar, gradients reach the decoder and z")
    out = decoder.sample(z.detach(), steps=steps)
    first = out[0] if isinstance(out, tuple) else out
    if _batch_len(first) != b:
        raise _fail(spec, f"decoder.sample of {b} latents returned a batch of length {_batch_len(first)}")
    rep.checks.append(f"decoder.sample ({kind}) returns a batch of {b}")


def check_modality(
    spec_or_name: ModalitySpec | str,
    latent_dim: int = 8,
    *,
    batch_size: int = 4,
    sample_steps: int = 4,
    seed: int = 0,
) -> ConformanceReport:
    """Check that a modality obeys the contract of :mod:`lzn_core.modality`, on CPU.

    Checks, in order: the config built from ``spec.example_config`` is valid and
    rejects unknown keys; ``decode_sample`` decodes ``spec.example_items`` and
    rejects corrupt bytes (:data:`CORRUPT_SAMPLES`) with a ``ValueError`` naming the
    modality or shard key; ``collate`` keeps the batch length; the encoder returns
    finite float anchors (B, q) whose gradients reach its parameters (and
    ``bank()`` / ``condition()`` when present); a generative decoder's ``loss`` is a
    finite scalar with gradients to its parameters and to z; ``sample(z, steps=...)``
    returns a batch of B.

    Args:
        spec_or_name: a ``ModalitySpec`` or a registered modality name.
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
    batch = _check_decode(spec, batch_size, rep)
    encoder = spec.build_encoder(config, latent_dim)
    decoder = spec.build_decoder(config, latent_dim)
    for what, m in (("encoder", encoder), ("decoder", decoder)):
        if not isinstance(m, torch.nn.Module):
            raise _fail(spec, f"build_{what} must return a torch.nn.Module, got {type(m).__name__}")
    if hasattr(decoder, "bind"):
        decoder.bind(encoder)
    rep.decoder_kind = str(getattr(decoder, "kind", "?"))
    _check_encoder(spec, encoder, batch, latent_dim, rep)
    _check_decoder(spec, decoder, batch, latent_dim, sample_steps, rep)
    return rep


try:  # the pytest11 plugin part: a fixture for plugin authors' test suites
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed to run tests
    pass
else:

    @pytest.fixture
    def lzn_check_modality() -> Callable[..., ConformanceReport]:
        """The conformance kit :func:`lzn_core.testing.check_modality` as a fixture."""
        return check_modality

    @pytest.fixture
    def lzn_plugins() -> Iterator[Callable[..., None]]:
        """A fresh plugin registry for one test: discovery runs again on first use and is forgotten
        afterwards. Yields :func:`lzn_core.plugins.reset_plugins`; call it with a
        ``PluginRegistry(entry_points, environ={...})`` to install a registry of your own."""
        from .plugins import reset_plugins

        reset_plugins()
        yield reset_plugins
        reset_plugins()
