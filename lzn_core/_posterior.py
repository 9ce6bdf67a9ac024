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


def _probs(
    xc: torch.Tensor, anchors: torch.Tensor, bias: torch.Tensor, beta: float, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """P (b, N) for a row block xc (b, q), and the index (b, 1) of each row's largest logit."""
    logits = torch.addmm(bias, xc, anchors.t(), beta=1.0, alpha=beta)
    top, idx = logits.max(dim=1, keepdim=True)
    floor = math.log(torch.finfo(logits.dtype).tiny) + 1.0  # exactly log(tiny) rounds to a denormal
    p = logits.sub_(top).clamp_(min=floor).exp_()
    if mask is not None:
        p.mul_(mask)
    p.div_(p.sum(dim=1, keepdim=True))
    return p, idx


def _bias(anchors: torch.Tensor, log_w: torch.Tensor | None, gamma: float) -> torch.Tensor:
    bias = (anchors * anchors).sum(dim=1).mul_(-gamma)
    if log_w is not None:
        bias = bias + log_w
    return bias


class _PosteriorMean(torch.autograd.Function):
    """(x, A, log w) -> (m (B, q), p_target (B,) or empty, P (B, N) or empty)."""

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
        mask = (
            None if log_w is None or bool(torch.isfinite(log_w).all()) else torch.isfinite(log_w).to(x.dtype)
        )
        m = torch.empty_like(x)
        pt = x.new_empty(x.shape[0] if targets is not None else 0)
        probs = x.new_empty((x.shape[0], anchors.shape[0]) if want_probs else (0,))
        for lo, hi in _blocks(x.shape[0], anchors.shape[0], chunk):
            p, _ = _probs(x[lo:hi], anchors, bias, beta, mask)
            torch.mm(p, anchors, out=m[lo:hi])
            if targets is not None:
                pt[lo:hi] = p.gather(1, targets[lo:hi, None]).squeeze(1)
            if want_probs:
                probs[lo:hi] = p
        ctx.save_for_backward(x, anchors, log_w, targets, mask)
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
        x, anchors, log_w, targets, mask = ctx.saved_tensors
        need_x, need_a, need_w = ctx.needs_input_grad[:3]
        beta, gamma = _coefs(ctx.tau)
        bias = _bias(anchors, log_w, gamma)
        dx = torch.empty_like(x) if need_x else None
        da = torch.zeros_like(anchors) if need_a else None
        dcol = anchors.new_zeros(anchors.shape[0])  # Σ_i dlogits_ij: grad of the (N,) bias
        if dprobs is not None and dprobs.numel() == 0:
            dprobs = None
        for lo, hi in _blocks(x.shape[0], anchors.shape[0], ctx.chunk):
            xc = x[lo:hi]
            p, idx = _probs(xc, anchors, bias, beta, mask)
            dlogits = _softmax_backward(
                p, idx, anchors, _sl(dm, lo, hi), _sl(dpt, lo, hi), targets, lo, hi, _sl(dprobs, lo, hi)
            )
            if need_x:
                torch.mm(dlogits, anchors, out=dx[lo:hi]).mul_(beta)
            if need_a:
                da.addmm_(dlogits.t(), xc, alpha=beta)
                if dm is not None:
                    da.addmm_(p.t(), dm[lo:hi])
            dcol += dlogits.sum(dim=0)
        if need_a:
            da.addcmul_(dcol[:, None], anchors, value=-2.0 * gamma)
        dw = dcol if (need_w and log_w is not None) else None
        return dx, da, dw, None, None, None, None


def _sl(t: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor | None:
    return None if t is None else t[lo:hi]


def _softmax_backward(
    p: torch.Tensor,
    idx: torch.Tensor,
    anchors: torch.Tensor,
    dm: torch.Tensor | None,
    dpt: torch.Tensor | None,
    targets: torch.Tensor | None,
    lo: int,
    hi: int,
    dprobs: torch.Tensor | None,
) -> torch.Tensor:
    """dlogits (b, N) = p ⊙ (G − Σ_j p_j·G_j) with G = dP the total upstream grad of P.

    G is first shifted by its value at the row's dominant entry ``idx`` (exact for a
    softmax), so the dominant term is 0 and Σ_j p_j·G_j sums only small terms.
    """
    if dm is not None:
        grad = torch.mm(dm, anchors.t())
        if dprobs is not None:
            grad.add_(dprobs)
    elif dprobs is not None:
        grad = dprobs.clone()
    else:
        grad = torch.zeros_like(p)
    if dpt is not None and targets is not None:
        grad.scatter_add_(1, targets[lo:hi, None], dpt[:, None])
    grad.sub_(grad.gather(1, idx))
    grad.mul_(p)
    row = grad.sum(dim=1, keepdim=True)
    return grad.addcmul_(p, row, value=-1.0)


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
