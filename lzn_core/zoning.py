"""The zoning solver: the closed-form flow between anchors and N(0, I).

Time τ: 0 at the anchors ``A: (N, q)``, 1 at the prior; x_τ = (1 − τ)·a + τ·ε.
Given mixture weights w (N,), the posterior over anchors at (x, τ) is

    p_j = softmax_j( [(1 − τ)·x·a_j − ½(1 − τ)²‖a_j‖²] / τ² + log w_j )     (attention form)

and the velocity is dx/dτ = E[ε − a | x_τ] = (x − m)/τ with m = Σ_j p_j a_j.

* :func:`latents` (data → latent, the paper's IFM): τ = g → 1, Euler or DPM-Solver++ (3M).
* :func:`assign` (latent → anchors, the paper's FM): τ = 1 → 0, Euler, with the soft
  assignment P(a_j | x_τ) at every step (these feed :mod:`lzn_core.alignment`).

All steps go through one custom autograd function that saves x (B, q) and recomputes the
(B, N) logits in backward (the paper's custom checkpointing): training memory is
O(B·q·steps + chunk·N); nothing of size (B, N, q) or (steps, B, N) is ever built. The
kernel keeps its (chunk, N) blocks free of subnormal numbers (posterior entries below √tiny
are exact zeros; see :mod:`lzn_core._posterior`): at small τ they would be most of each block,
and subnormal arithmetic is many times slower on common CPUs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import _posterior
from .errors import checks_values
from .latent import time_grid

__all__ = ["Assignment", "latents", "assign", "velocity", "posterior"]

_SOLVERS = ("euler", "dpm")


@dataclass(frozen=True)
class Assignment:
    """Result of :func:`assign`.

    Attributes:
        final: (B, q) end point of the reverse flow (τ = 0).
        probs: (B, N) P(a_j | x_τ) at the last step, τ = 1/steps.
        target_probs: (steps, B) P(a_{targets[i]} | x_{τ_k}) with τ_k = 1 − k/steps
            (row 0 is τ = 1, where P = w); ``None`` when no targets were given.
    """

    final: torch.Tensor
    probs: torch.Tensor
    target_probs: torch.Tensor | None


# ----------------------------------------------------------------------------- validation


def _check_anchors(anchors: torch.Tensor) -> torch.Tensor:
    if not isinstance(anchors, torch.Tensor) or anchors.dim() != 2:
        shape = tuple(anchors.shape) if isinstance(anchors, torch.Tensor) else type(anchors).__name__
        raise ValueError(f"anchors must be a 2-D tensor (N, q), got {shape}")
    if anchors.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"anchors must be float32 or float64, got {anchors.dtype}")
    if anchors.shape[0] < 1 or anchors.shape[1] < 1:
        raise ValueError(f"anchors must be non-empty (N, q), got {tuple(anchors.shape)}")
    return anchors


def _check_rows(name: str, x: torch.Tensor, anchors: torch.Tensor, rows: int | None = None) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != anchors.shape[1]:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be (B, q) with q = {anchors.shape[1]} like the anchors, got {shape}")
    if rows is not None and x.shape[0] != rows:
        raise ValueError(f"{name} must have {rows} rows, got {x.shape[0]}")
    if x.dtype != anchors.dtype or x.device != anchors.device:
        raise ValueError(
            f"{name} ({x.dtype}, {x.device}) must match the anchors' dtype and device "
            f"({anchors.dtype}, {anchors.device})"
        )


def _check_index(name: str, idx: torch.Tensor, n: int, anchors: torch.Tensor, rows: int | None) -> None:
    if not isinstance(idx, torch.Tensor) or idx.dim() != 1 or idx.dtype not in (torch.int64, torch.int32):
        desc = f"{idx.dtype} {tuple(idx.shape)}" if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"{name} must be a 1-D integer tensor, got {desc}")
    if rows is not None and idx.shape[0] != rows:
        raise ValueError(f"{name} must have {rows} entries (one per row), got {idx.shape[0]}")
    if idx.device != anchors.device:
        raise ValueError(f"{name} is on {idx.device}, the anchors on {anchors.device}")
    if idx.numel() and checks_values(idx) and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"{name} must be in [0, {n}), got values in [{int(idx.min())}, {int(idx.max())}]")


def _log_weights(weights: torch.Tensor | None, anchors: torch.Tensor) -> torch.Tensor | None:
    """log of the normalised mixture weights (N,), ``-inf`` where a weight is 0; None for uniform."""
    if weights is None:
        return None
    n = anchors.shape[0]
    if not isinstance(weights, torch.Tensor) or weights.shape != (n,):
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(f"weights must be a 1-D tensor with one entry per anchor ({n},), got {shape}")
    if weights.device != anchors.device:
        raise ValueError(f"weights are on {weights.device}, the anchors on {anchors.device}")
    w = weights.to(anchors.dtype)
    wd = w.detach()
    if checks_values(wd) and (
        not bool(torch.isfinite(wd).all()) or bool((wd < 0).any()) or not float(wd.sum()) > 0
    ):
        raise ValueError("weights must be finite, non-negative and not all zero")
    w = w / w.sum()
    tiny = torch.finfo(w.dtype).tiny
    return torch.where(w > 0, torch.log(w.clamp_min(tiny)), torch.full_like(w, -math.inf))


def _check_chunk(chunk: int | None) -> None:
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be a positive int or None, got {chunk!r}")


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")


def _check_tau(tau: float) -> float:
    tau = float(tau)
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1] (the velocity divides by tau), got {tau!r}")
    return tau


# ----------------------------------------------------------------------------- public API


def posterior(
    x: torch.Tensor, tau: float, anchors: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Soft assignment P(a_j | x_τ) (differentiable).

    Args:
        x: (B, q) points at time τ.
        tau: τ in (0, 1]; at τ = 1 the result is the (normalised) weights.
        anchors: (N, q) anchors.
        weights: optional (N,) non-negative mixture weights (normalised here; default uniform).

    Returns:
        probs: (B, N), rows sum to 1.
    """
    _check_anchors(anchors)
    _check_rows("x", x, anchors)
    _, _, probs = _posterior.mean(
        x, anchors, _log_weights(weights, anchors), _check_tau(tau), want_probs=True
    )
    return probs


def velocity(
    x: torch.Tensor, tau: float, anchors: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """The flow's velocity dx/dτ = (x − m)/τ, m = Σ_j P(a_j | x_τ)·a_j (attention form).

    Args:
        x: (B, q) points at time τ.
        tau: τ in (0, 1].
        anchors: (N, q) anchors.
        weights: optional (N,) non-negative mixture weights.

    Returns:
        v: (B, q).
    """
    _check_anchors(anchors)
    _check_rows("x", x, anchors)
    tau = _check_tau(tau)
    m, _, _ = _posterior.mean(x, anchors, _log_weights(weights, anchors), tau)
    return (x - m) / tau


def latents(
    anchors: torch.Tensor,
    noise: torch.Tensor | None = None,
    *,
    g: float = 1e-4,
    alpha: float = 1.0,
    steps: int = 20,
    solver: str = "euler",
    weights: torch.Tensor | None = None,
    chunk: int | None = None,
    index: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Latents of anchors: the forward flow τ = g → 1 (data → latent, the paper's IFM).

    Row i starts at x_g = (1 − g)·anchors[index[i]] + g·α·noise[i] and is integrated
    to τ = 1 against the mixture over **all** N anchors.

    Args:
        anchors: (N, q) anchors (float32 or float64); gradients reach them.
        noise: (B, q) ε (default: N(0, I) draws); gradients reach it when it requires grad.
        g: start time, 0 < g < 1 (1e-4 for Euler, 1e-3 is the usual choice for ``"dpm"``).
        alpha: noise scale α >= 0 (α = 0: the zone centre).
        steps: solver steps.
        solver: ``"euler"`` (fixed step (1 − g)/steps) or ``"dpm"`` (DPM-Solver++ order 3,
            multistep, time-uniform grid; the last step lands on τ = 1 exactly in closed form).
        weights: optional (N,) non-negative mixture weights (normalised; default uniform).
        chunk: rows per block of the (chunk, N) work buffers (None: automatic, ~32M entries).
        index: optional (B,) int64 start anchors; default ``arange(N)``.
        generator: random generator for the default noise.

    Returns:
        z: (B, q) latents, ≈ N(0, I) over a batch.
    """
    _check_anchors(anchors)
    _check_steps(steps)
    _check_chunk(chunk)
    if not 0.0 < g < 1.0:
        raise ValueError(f"g must be in (0, 1), got {g!r}")
    if not alpha >= 0.0:
        raise ValueError(f"alpha must be >= 0, got {alpha!r}")
    if solver not in _SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(_SOLVERS)}")
    n = anchors.shape[0]
    start = anchors
    if index is not None:
        _check_index("index", index, n, anchors, None)
        start = anchors[index]
    if noise is None:
        noise = torch.randn(start.shape, generator=generator, dtype=anchors.dtype, device=anchors.device)
    _check_rows("noise", noise, anchors, start.shape[0])
    log_w = _log_weights(weights, anchors)
    x = (1.0 - g) * start + (g * alpha) * noise
    grid = time_grid(steps, g, "forward")
    if solver == "euler":
        for k in range(steps):
            tau, h = grid[k], grid[k + 1] - grid[k]
            m, _, _ = _posterior.mean(x, anchors, log_w, tau, chunk=chunk)
            x = x + (h / tau) * (x - m)
        return x
    return _dpm(x, anchors, log_w, grid, chunk)


def assign(
    x: torch.Tensor,
    anchors: torch.Tensor,
    *,
    steps: int = 20,
    weights: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    chunk: int | None = None,
) -> Assignment:
    """Reverse flow τ = 1 → 0 (latent → anchors, the paper's FM), Euler.

    Step k (k = 0..steps−1) evaluates the posterior and velocity at τ_k = 1 − k/steps and
    moves x by −(1/steps)·(x − m)/τ_k; the last step is evaluated at τ = 1/steps, never 0.

    Args:
        x: (B, q) latents.
        anchors: (N, q) anchors.
        steps: Euler steps.
        weights: optional (N,) non-negative mixture weights (velocity and probabilities).
        targets: optional (B,) int64 anchor index per row; fills ``target_probs``.
        chunk: rows per block (None: automatic).

    Returns:
        :class:`Assignment` (final (B, q), probs (B, N) at τ = 1/steps, target_probs (steps, B)).
    """
    _check_anchors(anchors)
    _check_rows("x", x, anchors)
    _check_steps(steps)
    _check_chunk(chunk)
    n = anchors.shape[0]
    if targets is not None:
        _check_index("targets", targets, n, anchors, x.shape[0])
    log_w = _log_weights(weights, anchors)
    rows: list[torch.Tensor] = []
    probs = x.new_empty(0)
    for k in range(steps):
        tau = 1.0 - k / steps
        last = k == steps - 1
        m, pt, p = _posterior.mean(x, anchors, log_w, tau, targets=targets, want_probs=last, chunk=chunk)
        if targets is not None:
            rows.append(pt)
        if last:
            probs = p
        x = x - (1.0 / (steps * tau)) * (x - m)
    target_probs = torch.stack(rows) if targets is not None else None
    return Assignment(final=x, probs=probs, target_probs=target_probs)


# ----------------------------------------------------------------------------- DPM-Solver++


def _dpm_integrals(h: float, order: int) -> list[float]:
    """I_k(h) = ∫_0^h e^v v^k / k! dv for k < order (λ-Taylor terms of one DPM-Solver++ step)."""
    if abs(h) < 0.1:  # series: I_k = Σ_n h^(n+k+1) / ((n+k+1)·n!·k!)
        return [
            sum(h ** (n + k + 1) / ((n + k + 1) * math.factorial(n) * math.factorial(k)) for n in range(25))
            for k in range(order)
        ]
    e = math.exp(h)
    return [math.expm1(h), (h - 1.0) * e + 1.0, e * (0.5 * h * h - h + 1.0) - 1.0][:order]


def _dpm_taylor(lams: list[float]) -> list[list[float]]:
    """Taylor coefficients c_k = p^(k)(λ_0) of the polynomial through the last data predictions.

    ``lams`` = [λ_0, λ_1, λ_2] (newest first, 1 to 3 of them). Returns, per k, the weights of
    [m_0, m_1, m_2] (Newton divided differences; c_1·h and c_2·h² are DPM-Solver++'s D1, D2).
    """
    coef = [[1.0, 0.0, 0.0]]
    if len(lams) == 1:
        return coef
    d01 = lams[0] - lams[1]
    f01 = [1.0 / d01, -1.0 / d01, 0.0]
    if len(lams) == 2:
        return [*coef, f01]
    d12, d02 = lams[1] - lams[2], lams[0] - lams[2]
    f12 = [0.0, 1.0 / d12, -1.0 / d12]
    f012 = [(a - b) / d02 for a, b in zip(f01, f12, strict=True)]
    c1 = [a + d01 * b for a, b in zip(f01, f012, strict=True)]
    return [*coef, c1, [2.0 * b for b in f012]]


def _lagrange_integrals(nodes: list[float], lo: float, hi: float) -> list[float]:
    """∫_lo^hi L_i(u) du for the Lagrange basis polynomials L_i on ``nodes`` (1 to 3 nodes)."""
    out = []
    for i, ui in enumerate(nodes):
        poly = [1.0]  # coefficients, lowest degree first
        for j, uj in enumerate(nodes):
            if j != i:
                poly = [
                    (poly[d - 1] if d else 0.0) - uj * (poly[d] if d < len(poly) else 0.0)
                    for d in range(len(poly) + 1)
                ]
                poly = [c / (ui - uj) for c in poly]
        out.append(sum(c * (hi ** (d + 1) - lo ** (d + 1)) / (d + 1) for d, c in enumerate(poly)))
    return out


def _dpm_weights(grid: list[float], k: int, order: int) -> tuple[float, list[float]]:
    """Step k of DPM-Solver++ (multistep, data prediction) as x_t = a·x_s + Σ_i b_i·m_{k−i}.

    With α_τ = 1 − τ, σ_τ = τ, λ = log(α/σ), the exact solution is
        x_t = (σ_t/σ_s)·x_s + σ_t·∫_{λ_s}^{λ_t} e^λ x̂_0(λ) dλ.
    Interior steps replace x̂_0 by its polynomial in λ through the last ``order`` predictions
    (DPM-Solver++ 1M/2M/3M, Taylor form): x_t = (σ_t/σ_s)·[x_s + α_s·Σ_j c_j·I_j(λ_t − λ_s)].
    The last step ends at τ = 1 where λ = −∞; with u = e^λ = α/σ the integral is
    σ_t·∫_{u_s}^{0} x̂_0(u) du over a finite interval, so that step interpolates in u instead.
    """
    s, t = grid[k], grid[k + 1]
    if t >= 1.0:
        nodes = [(1.0 - grid[k - i]) / grid[k - i] for i in range(order)]
        return 1.0 / s, _lagrange_integrals(nodes, nodes[0], 0.0)
    lam = [math.log((1.0 - grid[k - i]) / grid[k - i]) for i in range(order)]
    taylor = _dpm_taylor(lam)
    integ = _dpm_integrals(math.log((1.0 - t) / t) - lam[0], order)
    scale = (1.0 - s) * t / s  # (σ_t/σ_s)·α_s
    return t / s, [scale * sum(integ[j] * taylor[j][i] for j in range(order)) for i in range(order)]


def _dpm(
    x: torch.Tensor, anchors: torch.Tensor, log_w: torch.Tensor | None, grid: list[float], chunk: int | None
) -> torch.Tensor:
    """DPM-Solver++ (multistep, orders 1, 2, 3, 3, ...) along ``grid`` (τ = g → 1); see :func:`_dpm_weights`."""
    hist: list[torch.Tensor] = []
    for k in range(len(grid) - 1):
        m, _, _ = _posterior.mean(x, anchors, log_w, grid[k], chunk=chunk)
        hist = [m, *hist][:3]
        a, b = _dpm_weights(grid, k, len(hist))
        x = a * x
        for b_i, m_i in zip(b, hist, strict=True):
            x = x + b_i * m_i
    return x
