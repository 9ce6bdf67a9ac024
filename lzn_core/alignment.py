"""Latent alignment: max-over-time soft-assignment losses, class weights, anchor gathering.

Align(X, Y) (docs/method.md §3): Y's latents run through the reverse flow over X's anchors
(:func:`lzn_core.zoning.assign` with ``targets``); the loss wants the paired anchor k_i:

    loss = −mean_i log max_{t ≥ u} P_t(a_{k_i} | s_t^i)   ("log", Eq. 5)
    loss = −mean_i     max_{t ≥ u} P_t(a_{k_i} | s_t^i)   ("prob", Eq. 2)

with the early-step cutoff u = ⌊cutoff·steps⌋.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.distributed._functional_collectives import AsyncCollectiveTensor

try:  # torch >= 2.12 (the name its deprecation of torch.distributed.nn.functional.all_gather gives)
    from torch.distributed._functional_collectives import all_gather_single
except ImportError:  # torch 2.11 (the GPU image): the same collective and backward under its older name
    from torch.distributed._functional_collectives import all_gather_tensor as all_gather_single

from .errors import checks_values

__all__ = ["alignment_loss", "class_weights", "gather_anchors"]

_KINDS = ("log", "prob")


def alignment_loss(target_probs: torch.Tensor, *, cutoff: float = 0.2, kind: str = "log") -> torch.Tensor:
    """Max-over-time alignment loss with an early-step cutoff.

    Args:
        target_probs: (steps, B) P_t(a_{k_i} | s_t^i) per reverse step (``Assignment.target_probs``).
        cutoff: fraction of the first steps left out of the max, 0 <= cutoff < 1; u = ⌊cutoff·steps⌋.
        kind: ``"log"`` (−mean log max, P clamped at ``finfo.tiny`` first) or ``"prob"`` (−mean max).

    Returns:
        Scalar loss (differentiable).

    Raises:
        ValueError: on a bad shape, cutoff or kind.
    """
    if not isinstance(target_probs, torch.Tensor) or target_probs.dim() != 2:
        shape = (
            tuple(target_probs.shape)
            if isinstance(target_probs, torch.Tensor)
            else type(target_probs).__name__
        )
        raise ValueError(f"target_probs must be a 2-D tensor (steps, B), got {shape}")
    steps, batch = target_probs.shape
    if steps < 1 or batch < 1:
        raise ValueError(f"target_probs must be non-empty (steps, B), got {(steps, batch)}")
    if not target_probs.is_floating_point():
        raise ValueError(f"target_probs must be floating point, got {target_probs.dtype}")
    if not (isinstance(cutoff, (int, float)) and 0.0 <= cutoff < 1.0):
        raise ValueError(f"cutoff must be in [0, 1), got {cutoff!r}")
    if kind not in _KINDS:
        raise ValueError(f"unknown alignment loss kind {kind!r}; choose one of {', '.join(_KINDS)}")
    u = math.floor(cutoff * steps)
    best = target_probs[u:].max(dim=0).values
    if kind == "log":
        return -torch.log(best.clamp_min(torch.finfo(best.dtype).tiny)).mean()
    return -best.mean()


def _distributed() -> bool:

    return dist.is_available() and dist.is_initialized()


def class_weights(
    labels: torch.Tensor, num_classes: int, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Class shares of the (global) batch, the label flow's training mixture weights.

    Counts are summed over ranks (``all_reduce(SUM)``) when ``torch.distributed`` is
    initialised, so every rank gets the shares of the global batch.

    Args:
        labels: (B,) int64 class ids in [0, num_classes).
        num_classes: C >= 1.
        dtype: floating dtype of the result.

    Returns:
        w: (C,) non-negative, sums to 1 (0 for classes absent from the global batch).

    Raises:
        ValueError: on bad labels or num_classes, or an empty global batch.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point():
        desc = (
            f"{labels.dtype} {tuple(labels.shape)}"
            if isinstance(labels, torch.Tensor)
            else type(labels).__name__
        )
        raise ValueError(f"labels must be a 1-D integer tensor (B,), got {desc}")
    checked = checks_values(labels)  # index values on an accelerator: only with LZN_DEBUG_CHECKS=1
    if labels.numel() and checked and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes}), got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    # a scatter, not bincount: CUDA's bincount reads the largest label back to size its output
    ones = torch.ones(labels.shape, dtype=dtype, device=labels.device)
    counts = torch.zeros(num_classes, dtype=dtype, device=labels.device).scatter_add_(0, labels.long(), ones)
    if _distributed():
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    total = counts.sum()
    if checked and not float(total) > 0:
        raise ValueError("class_weights needs at least one label in the (global) batch")
    return counts / total


def gather_anchors(anchors: torch.Tensor) -> torch.Tensor:
    """All anchors of the global batch, keeping gradients to each rank's own rows.

    Args:
        anchors: (B, q) this rank's anchors.

    Returns:
        (world·B, q), rank-major (rank r's rows at r·B ... (r+1)·B − 1), via
        ``torch.distributed._functional_collectives.all_gather_single`` (what torch 2.14
        recommends in place of the deprecated ``torch.distributed.nn.functional.all_gather``;
        its backward, a sum reduce-scatter, sums the gradients of all ranks into the owner's
        rows); ``anchors`` itself when ``torch.distributed`` is not initialised.

    Raises:
        ValueError: when ``anchors`` is not 2-D.
    """
    if not isinstance(anchors, torch.Tensor) or anchors.dim() != 2:
        shape = tuple(anchors.shape) if isinstance(anchors, torch.Tensor) else type(anchors).__name__
        raise ValueError(f"anchors must be a 2-D tensor (B, q), got {shape}")
    if not _distributed():
        return anchors

    world = dist.group.WORLD
    assert world is not None  # initialised (checked above)
    gathered = all_gather_single(anchors.contiguous(), 0, world)
    return gathered.wait() if isinstance(gathered, AsyncCollectiveTensor) else gathered
