"""The one kernel of the zoning solver: posterior mean m = P·A with recompute-in-backward.

For points x: (B, q) at time τ, anchors A: (N, q) and log-weights log w: (N,)

    logits = β·x·Aᵀ − γ·‖a‖² + log w,    β = (1 − τ)/τ²,  γ = (1 − τ)²/(2τ²)
    P = softmax(logits) (B, N),           m = P·A (B, q)

computed in row blocks of ``chunk`` rows. :class:`_PosteriorMean` saves only x (and A,
log w) and recomputes the logits in backward, so a solver step costs O(B·q) memory in
the autograd graph.

Numerics (see DESIGN.md §3): shifted logits are clamped from below at log(finfo.tiny) + 1
before ``exp`` (denormal results make ``exp`` ~40x slower, measured; exactly log(tiny) still
rounds to a denormal in float32; the probabilities are ~0 anyway); the softmax backward
first subtracts, per row, the upstream gradient at the row's dominant entry (exact, since
the softmax Jacobian annihilates constants) and then forms p ⊙ (dP − Σ_j p_j·dP_j): in the
saturated regime (τ ≈ 1e-4, logits × 1e8) this keeps the tiny differences exact instead of
cancelling two large numbers as the flash-attention form dO·O does.
"""

from __future__ import annotations

import math
from typing import Any

import torch

# entries of one (rows, N) work buffer when chunk=None
_AUTO_CHUNK_ELEMENTS = 1 << 25


def _coefs(tau: float) -> tuple[float, float]:
    return (1.0 - tau) / tau**2, (1.0 - tau) ** 2 / (2.0 * tau**2)


def _blocks(rows: int, n: int, chunk: int | None) -> list[tuple[int, int]]:
    size = chunk if chunk is not None else max(1, _AUTO_CHUNK_ELEMENTS // max(n, 1))
    return [(i, min(i + size, rows)) for i in range(0, rows, size)]


def _unnormalised(
    xc: torch.Tensor,
    anchors: torch.Tensor,
    bias: torch.Tensor,
    beta: float,
    mask: torch.Tensor | None,
    top: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """E = exp(logits − top) (b, N) for a row block xc (b, q); P = E / Σ_j E_j.

    ``top`` (b, 1) is the row max of the logits; computed (with its index) when not given.
    """
    logits = torch.addmm(bias, xc, anchors.t(), beta=1.0, alpha=beta)
    idx = None
    if top is None:
        top, idx = logits.max(dim=1, keepdim=True)
    floor = math.log(torch.finfo(logits.dtype).tiny) + 1.0  # exactly log(tiny) rounds to a denormal
    e = logits.sub_(top).clamp_(min=floor).exp_()
    if mask is not None:
        e.mul_(mask)
    return e, top, idx


def _bias(anchors: torch.Tensor, log_w: torch.Tensor | None, gamma: float) -> torch.Tensor:
    bias = (anchors * anchors).sum(dim=1).mul_(-gamma)
    if log_w is not None:
        bias = bias + log_w
    return bias


def _with_ones(t: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """[scale·t, 1] (rows, q + 1): one matmul then also gives the row/column sums."""
    return torch.cat([t * scale if scale != 1.0 else t, t.new_ones(t.shape[0], 1)], dim=1)


class _PosteriorMean(torch.autograd.Function):
    """(x, A, log w) -> (m (B, q), p_target (B,) or empty, P (B, N) or empty).

    Saves x (B, q) and, per row, the logit max, its index and the normaliser Z (3 numbers).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        anchors: torch.Tensor,
        log_w: torch.Tensor | None,
        tau: float,
        targets: torch.Tensor | None,
        want_probs: bool,
        chunk: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        beta, gamma = _coefs(tau)
        bias = _bias(anchors, log_w, gamma)
        finite = None if log_w is None else torch.isfinite(log_w)
        mask = None if finite is None or bool(finite.all()) else finite.to(x.dtype)
        rows, q = x.shape
        m = torch.empty_like(x)
        tops, norms = x.new_empty(rows, 1), x.new_empty(rows, 1)
        idxs = torch.empty(rows, 1, dtype=torch.long, device=x.device)
        pt = x.new_empty(rows if targets is not None else 0)
        probs = x.new_empty((rows, anchors.shape[0]) if want_probs else (0,))
        a_ones = _with_ones(anchors)
        for lo, hi in _blocks(rows, anchors.shape[0], chunk):
            e, top, idx = _unnormalised(x[lo:hi], anchors, bias, beta, mask)
            tops[lo:hi], idxs[lo:hi] = top, idx  # type: ignore[assignment]
            mz = torch.mm(e, a_ones)  # [Σ_j E_j a_j, Z]
            norms[lo:hi] = z = mz[:, q:]
            torch.div(mz[:, :q], z, out=m[lo:hi])
            if targets is not None:
                pt[lo:hi] = (e.gather(1, targets[lo:hi, None]) / z).squeeze(1)
            if want_probs:
                torch.div(e, z, out=probs[lo:hi])
        ctx.save_for_backward(x, anchors, log_w, targets, mask, tops, idxs, norms)
        ctx.tau, ctx.chunk = tau, chunk
        ctx.set_materialize_grads(False)
        if not want_probs:
            ctx.mark_non_differentiable(probs)
        if targets is None:
            ctx.mark_non_differentiable(pt)
        return m, pt, probs

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, dm: torch.Tensor | None, dpt: torch.Tensor | None, dprobs: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        x, anchors, log_w, targets, mask, tops, idxs, norms = ctx.saved_tensors
        need_x, need_a, need_w = ctx.needs_input_grad[:3]
        beta, gamma = _coefs(ctx.tau)
        bias = _bias(anchors, log_w, gamma)
        q = x.shape[1]
        dx = torch.empty_like(x)
        da_ones = anchors.new_zeros(anchors.shape[0], q + 1)  # [dA from the logits' x·a term, Σ_i dlogits_ij]
        if dprobs is not None and dprobs.numel() == 0:
            dprobs = None
        if targets is None:
            dpt = None
        for lo, hi in _blocks(x.shape[0], anchors.shape[0], ctx.chunk):
            xc, inv_z = x[lo:hi], 1.0 / norms[lo:hi]
            e, _, _ = _unnormalised(xc, anchors, bias, beta, mask, top=tops[lo:hi])
            dm_z = None if dm is None else dm[lo:hi] * inv_z
            grad = _upstream(e, anchors, dm_z, None if dprobs is None else dprobs[lo:hi] * inv_z)
            if dpt is not None:
                grad.scatter_add_(1, targets[lo:hi, None], dpt[lo:hi, None] * inv_z)
            dlogits = _softmax_backward(e, inv_z, idxs[lo:hi], grad)
            if need_x:
                torch.mm(dlogits, anchors, out=dx[lo:hi]).mul_(beta)
            da_ones.addmm_(dlogits.t(), _with_ones(xc, beta))
            if need_a and dm_z is not None:
                da_ones[:, :q].addmm_(e.t(), dm_z)
        dcol = da_ones[:, q]  # gradient of the (N,) bias: Σ_i dlogits_ij
        da = da_ones[:, :q].addcmul(dcol[:, None], anchors, value=-2.0 * gamma) if need_a else None
        dw = dcol.clone() if (need_w and log_w is not None) else None
        return dx if need_x else None, da, dw, None, None, None, None


def _upstream(
    e: torch.Tensor, anchors: torch.Tensor, dm_z: torch.Tensor | None, dprobs_z: torch.Tensor | None
) -> torch.Tensor:
    """G/Z (b, N): the gradient reaching P through m = P·A (dm·Aᵀ) and directly (dprobs), over Z."""
    if dm_z is not None:
        grad = torch.mm(dm_z, anchors.t())
        return grad.add_(dprobs_z) if dprobs_z is not None else grad
    return dprobs_z.clone() if dprobs_z is not None else torch.zeros_like(e)


def _softmax_backward(
    e: torch.Tensor, inv_z: torch.Tensor, idx: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    """dlogits (b, N) = p ⊙ (G − Σ_j p_j·G_j), p = E/Z, from ``grad`` = G/Z (overwritten).

    G is first shifted by its value at the row's dominant entry ``idx`` (b, 1) (exact for a
    softmax), so the dominant term is 0 and Σ_j p_j·G_j sums only small terms; never the
    flash-attention form dO·O, which cancels two large numbers when p saturates.
    """
    grad.sub_(grad.gather(1, idx))
    grad.mul_(e)  # = p ⊙ G (shifted)
    row = grad.sum(dim=1, keepdim=True).mul_(inv_z)  # = Σ_j p_j G_j / Z
    return grad.addcmul_(e, row, value=-1.0)


def mean(
    x: torch.Tensor,
    anchors: torch.Tensor,
    log_w: torch.Tensor | None,
    tau: float,
    *,
    targets: torch.Tensor | None = None,
    want_probs: bool = False,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Posterior mean m (B, q), P(a_targets | x) (B,) and optionally P (B, N); arguments pre-validated."""
    return _PosteriorMean.apply(x, anchors, log_w, tau, targets, want_probs, chunk)
