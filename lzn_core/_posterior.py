"""The one kernel of the zoning solver: posterior mean m = P·A with recompute-in-backward.

For points x: (B, q) at time τ, anchors A: (N, q) and log-weights log w: (N,)

    logits = β·x·Aᵀ − γ·‖a‖² + log w,    β = (1 − τ)/τ²,  γ = (1 − τ)²/(2τ²)
    P = softmax(logits) (B, N),           m = P·A (B, q)

computed in row blocks of ``chunk`` rows. :class:`_PosteriorMean` saves only x (and A,
log w) and recomputes the logits in backward, so a solver step costs O(B·q) memory in
the autograd graph.

Numerics (see docs/method.md §8):

* Softmax backward: G (the gradient reaching P) is first shifted, per row, by its value at
  the row's dominant entry (exact, since the softmax Jacobian annihilates constants); the row
  term r = Σ_j p_j·G_j is then summed over small terms only, and dlogits = p ⊙ (G − r). In the
  saturated regime (τ ≈ 1e-4, logits × 1e8) this keeps the tiny differences exact instead of
  cancelling two large numbers as the flash-attention form dO·O does.
* No subnormal numbers in any GEMM or elementwise op, forward or backward. At small τ most
  entries of a (chunk, N) block are exp of a hugely negative number. Subnormal operands and
  results of the GEMMs cost ~20x on some CPUs (issue 15: a training iteration at N = 1024 took
  28x the time of its bare GEMMs), and subnormal results make the vectorised ``exp`` 10-40x
  slower. The old floor (clamp at log(tiny) + 1 before ``exp``) left most entries at ~3e-38,
  whose products with the anchors and the gradients are subnormal. Now:
  - E = exp(shifted logit) is evaluated on arguments clamped at log √tiny − 1, so ``exp``
    never underflows, and every E <= √tiny (float32 2^-63 ≈ 1.1e-19, float64 2^-511) is then
    set to exactly 0. Each nonzero E exceeds √tiny, so its product with any operand of
    magnitude >= √tiny (anchors, points, upstream gradients: O(1) and O(1/B) in practice) is
    normal. The dropped mass is < N·√tiny of Z >= 1, far below rounding in either dtype.
  - The backward subtracts the row term before multiplying by p (p ⊙ (G − r), never p ⊙ G − p·r:
    p·r is a product of two small numbers in nearly saturated rows); a row term with
    |r/Z| < √tiny is put on the dominant entry alone (see :func:`_softmax_backward`).
  - The target probability P(a_t | x) is E_t/Z where E_t was kept; a target below the floor
    gets exp(s_t − log Z), clamped at log(tiny) + 1 (normal, and the log loss still sees a
    gradient), and its backward term p_t·dP_t (O(1/B) under the log loss, which amplifies by
    1/p_t) is added back from the log domain, floored like E.
  What is left: a product of a kept E and an operand below √tiny (an anchor coordinate of
  1e-20, say), or of two operands that cancel to below √tiny by coincidence, can still
  underflow; such entries are single values, not the bulk of a block.
* No flush-to-zero: ``torch.set_flush_denormal`` sets the floating-point control of the
  calling thread only (measured with 2 OpenMP threads: in a parallel elementwise op the worker
  still produced subnormals), and OpenMP workers started while it is on keep it after it is
  restored, so a "scoped" use can leak out of the kernel.
* Full float32 whatever the caller set (:func:`exact_float32`, forward and backward): autocast
  is off for the kernel's device type and float32 matmuls run in IEEE precision, not TF32.
  Under bf16 autocast ``addmm``/``mm`` would run in bf16 (latents off by up to 11.8 at std 1,
  measured on CPU) and TF32 moves them by up to 1.33: the logits are scaled by 1/τ² (10⁶ at
  τ = 10⁻³), so the inputs' rounding is amplified. Mixed-precision training autocasts the
  networks only; the anchors reach the solver in float32.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

# entries of one (rows, N) work buffer when chunk=None
_AUTO_CHUNK_ELEMENTS = 1 << 25
# entries of the product buffer of one slice in _row_dot
_ROW_DOT_ELEMENTS = 1 << 20


@contextlib.contextmanager
def exact_float32(device_type: str) -> Iterator[None]:
    """Autocast off for ``device_type`` and float32 matmuls in IEEE precision (no TF32) inside.

    ``torch.set_float32_matmul_precision`` is the switch both of torch's TF32 APIs read (the
    legacy ``allow_tf32`` flag and ``fp32_precision``), so it is safe whichever one a user set;
    it is touched only when it is not already ``"highest"`` (the default), and restored.
    """
    previous = torch.get_float32_matmul_precision()
    if previous != "highest":
        torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    finally:
        if previous != "highest":
            torch.set_float32_matmul_precision(previous)


def _coefs(tau: float) -> tuple[float, float]:
    return (1.0 - tau) / tau**2, (1.0 - tau) ** 2 / (2.0 * tau**2)


def _blocks(rows: int, n: int, chunk: int | None) -> list[tuple[int, int]]:
    size = chunk if chunk is not None else max(1, _AUTO_CHUNK_ELEMENTS // max(n, 1))
    return [(i, min(i + size, rows)) for i in range(0, rows, size)]


def _floor(dtype: torch.dtype) -> float:
    """√tiny: the smallest E the kernel keeps (float32 2^-63, float64 2^-511)."""
    return math.sqrt(torch.finfo(dtype).tiny)


def _floored_exp_(s: torch.Tensor) -> torch.Tensor:
    """exp(s) in place, every result <= √tiny set to exactly 0 (−inf gives 0); never subnormal.

    The argument is clamped at log √tiny − 1 first, so ``exp`` itself never underflows.
    """
    floor = _floor(s.dtype)
    return torch.threshold_(s.clamp_(min=math.log(floor) - 1.0).exp_(), floor, 0.0)


def _unnormalised(
    xc: torch.Tensor,
    anchors: torch.Tensor,
    bias: torch.Tensor,
    beta: float,
    targets: torch.Tensor | None,
    top: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """E = floored exp(logits − top) (b, N) for a row block xc (b, q); P = E / Σ_j E_j.

    ``top`` (b, 1) is the row max of the logits; computed (with its index) when not given.
    Also returns the shifted logits s_t = logits − top at ``targets`` (b, 1), or None.
    Entries of zero weight (log w = −inf) come out as exact zeros.
    """
    logits = torch.addmm(bias, xc, anchors.t(), beta=1.0, alpha=beta)
    idx = None
    if top is None:
        top, idx = logits.max(dim=1, keepdim=True)
    logits.sub_(top)
    shifted_t = None if targets is None else logits.gather(1, targets)
    return _floored_exp_(logits), top, idx, shifted_t


def _log_target_prob(shifted_t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log P(a_t | x) = s_t − log Z (b, 1), clamped at log(tiny) + 1; −inf for a zero-weight target."""
    low = math.log(torch.finfo(z.dtype).tiny) + 1.0  # exactly log(tiny) rounds to a subnormal
    return torch.where(shifted_t == -math.inf, shifted_t, (shifted_t - z.log()).clamp_(min=low))


def _target_prob(shifted_t: torch.Tensor, e_t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """P(a_t | x) (b, 1): E_t/Z where E_t was kept, else from the log domain (never subnormal)."""
    return torch.where(e_t > 0, e_t / z, _log_target_prob(shifted_t, z).exp())


def _far_target_term(
    shifted_t: torch.Tensor, e_t: torch.Tensor, z: torch.Tensor, dpt: torch.Tensor
) -> torch.Tensor:
    """p_t·dP_t (b, 1) for rows whose target was floored out of E (0 in the others).

    E_t = 0 there, so the backward through E drops this term; under the log loss it is O(1/B)
    (dP_t = −1/(B·p_t)). Computed as exp(log p_t + log|dP_t|), floored like E.
    """
    term = _floored_exp_(_log_target_prob(shifted_t, z) + dpt.abs().log()).mul_(dpt.sign())
    return term.masked_fill_(e_t > 0, 0.0)


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
        with exact_float32(x.device.type):
            return _PosteriorMean._forward(ctx, x, anchors, log_w, tau, targets, want_probs, chunk)

    @staticmethod
    def _forward(
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
        rows, q = x.shape
        m = torch.empty_like(x)
        tops, norms = x.new_empty(rows, 1), x.new_empty(rows, 1)
        idxs = torch.empty(rows, 1, dtype=torch.long, device=x.device)
        pt = x.new_empty(rows if targets is not None else 0)
        probs = x.new_empty((rows, anchors.shape[0]) if want_probs else (0,))
        a_ones = _with_ones(anchors)
        for lo, hi in _blocks(rows, anchors.shape[0], chunk):
            tc = None if targets is None else targets[lo:hi, None]
            e, top, idx, shifted_t = _unnormalised(x[lo:hi], anchors, bias, beta, tc)
            tops[lo:hi], idxs[lo:hi] = top, idx  # type: ignore[assignment]
            mz = torch.mm(e, a_ones)  # [Σ_j E_j a_j, Z]
            norms[lo:hi] = z = mz[:, q:]
            torch.div(mz[:, :q], z, out=m[lo:hi])
            if tc is not None and shifted_t is not None:
                pt[lo:hi] = _target_prob(shifted_t, e.gather(1, tc), z).squeeze(1)
            if want_probs:
                torch.div(e, z, out=probs[lo:hi])
        ctx.save_for_backward(x, anchors, log_w, targets, tops, idxs, norms)
        ctx.tau, ctx.chunk, ctx.device_type = tau, chunk, x.device.type
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
        with exact_float32(ctx.device_type):
            return _PosteriorMean._backward(ctx, dm, dpt, dprobs)

    @staticmethod
    def _backward(
        ctx: Any, dm: torch.Tensor | None, dpt: torch.Tensor | None, dprobs: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        x, anchors, log_w, targets, tops, idxs, norms = ctx.saved_tensors
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
            xc, z = x[lo:hi], norms[lo:hi]
            inv_z = 1.0 / z
            tc = None if dpt is None else targets[lo:hi, None]
            e, _, _, shifted_t = _unnormalised(xc, anchors, bias, beta, tc, top=tops[lo:hi])
            dm_z = None if dm is None else dm[lo:hi] * inv_z
            grad = _upstream(e, anchors, dm_z, None if dprobs is None else dprobs[lo:hi] * inv_z)
            far = None
            if tc is not None and shifted_t is not None and dpt is not None:
                dpt_c = dpt[lo:hi, None]
                grad.scatter_add_(1, tc, dpt_c * inv_z)
                far = _far_target_term(shifted_t, e.gather(1, tc), z, dpt_c)
            dlogits = _softmax_backward(e, inv_z, idxs[lo:hi], grad, tc, far)
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


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_j a_ij·b_ij (rows, 1), a slice of rows at a time (the product buffer stays small)."""
    size = max(1, _ROW_DOT_ELEMENTS // max(a.shape[1], 1))
    out = a.new_empty(a.shape[0])
    for i in range(0, a.shape[0], size):
        torch.linalg.vecdot(a[i : i + size], b[i : i + size], out=out[i : i + size])
    return out[:, None]


def _softmax_backward(
    e: torch.Tensor,
    inv_z: torch.Tensor,
    idx: torch.Tensor,
    grad: torch.Tensor,
    targets: torch.Tensor | None = None,
    far: torch.Tensor | None = None,
) -> torch.Tensor:
    """dlogits (b, N) = p ⊙ (G − Σ_j p_j·G_j), p = E/Z, from ``grad`` = G/Z (overwritten).

    G is first shifted by its value at the row's dominant entry ``idx`` (b, 1) (exact for a
    softmax), so the dominant term is 0 and Σ_j p_j·G_j sums only small terms; never the
    flash-attention form dO·O, which cancels two large numbers when p saturates. The row term
    r is subtracted before the product with p, so no product of two small numbers (p·r, which
    underflows in nearly saturated rows) is formed; a row term with |r/Z| < √tiny is left out
    of the products and put on the dominant entry alone (E = 1 there), an error below √tiny
    per entry that keeps each row summing to 0. ``far`` (b, 1) is p_t·G_t of targets floored
    out of E (see :func:`_far_target_term`): it joins r and is added at ``targets``.
    """
    grad.sub_(grad.gather(1, idx))
    row = _row_dot(e, grad)  # r = Σ_j p_j G_j (shifted)
    if far is not None:
        row.add_(far)
    rho = row * inv_z
    small = rho.abs() < _floor(e.dtype)  # E·r/Z could underflow: r goes to the dominant entry alone
    grad.sub_(rho.masked_fill_(small, 0.0)).mul_(e)  # = p ⊙ (G − r)
    grad.scatter_add_(1, idx, row.masked_fill_(~small, 0.0).neg_())  # rows still sum to 0
    if far is not None and targets is not None:
        grad.scatter_add_(1, targets, far)
    return grad


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
