"""The image "decoder" of a representation-only recipe (``decoder: false``, paper case 2).

Case 2 trains the encoder by two-view alignment alone and never decodes, so building the
rectified-flow U-Net would only add unused parameters to the optimiser, the EMA and the
checkpoints. :class:`AbsentDecoder` has no parameters; ``kind`` is "none", and ``loss`` /
``sample`` raise :class:`~lzn_core.errors.ContractError` saying how to turn the decoder on.
"""

from __future__ import annotations

from typing import Any, NoReturn

from torch import nn

from lzn_core.errors import ContractError

_HINT = (
    "the image decoder is disabled (modalities.<image>.config.decoder: false); set decoder: true "
    "to train or sample it, or remove the generate task"
)


class AbsentDecoder(nn.Module):
    """A parameter-free placeholder decoder: ``kind == "none"``; ``loss``/``sample`` raise."""

    kind = "none"

    def loss(
        self,
        z: Any,
        batch: Any,
        cond: Any = None,
        *,
        generator: Any = None,
        rows: tuple[int, int] | None = None,
    ) -> NoReturn:
        """Always raises :class:`ContractError` (there is no decoder to train)."""
        raise ContractError(f"cannot compute a decoder loss: {_HINT}")

    def sample(
        self, z: Any, cond: Any = None, *, steps: int | None = None, generator: Any = None, **kw: Any
    ) -> NoReturn:
        """Always raises :class:`ContractError` (there is no decoder to sample from)."""
        raise ContractError(f"cannot sample images: {_HINT}")
