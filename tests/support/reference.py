"""Naive reference of the zoning math, written the obvious way (for tests only).

Broadcasts (B, N, q), uses plain autograd and no custom Function, and follows the
formulas of docs/method.md §8 literally: logits_j = −‖x − (1−τ)a_j‖² / (2τ²) + log w_j.
DPM-Solver++ (3M) is written in the phi-function form of Lu et al. (2022), independent
of the exponential-integral form used by ``lzn_core.zoning``.
"""

from __future__ import annotations

import math

import torch


def log_weights(weights: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    if weights is None:
        return torch.full((n,), -math.log(n), dtype=like.dtype, device=like.device)
    w = weights.to(like.dtype)
    return torch.log(w / w.sum())


def probs(
    x: torch.Tensor, tau: float, anchors: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """P(a_j | x_τ): (B, N) via the (B, N, q) broadcast."""
    diff = x[:, None, :] - (1.0 - tau) * anchors[None, :, :]
    logits = -(diff**2).sum(-1) / (2.0 * tau**2) + log_weights(weights, anchors.shape[0], x)
    return torch.softmax(logits, dim=1)


def mean(
    x: torch.Tensor, tau: float, anchors: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    p = probs(x, tau, anchors, weights)
    return (p[:, :, None] * anchors[None, :, :]).sum(1)


def velocity(x, tau, anchors, weights=None):
    """dx/dτ = E[ε − a | x] with ε_j = (x − (1−τ)a_j)/τ, written per anchor then averaged."""
    p = probs(x, tau, anchors, weights)
    eps = (x[:, None, :] - (1.0 - tau) * anchors[None]) / tau
    return (p[:, :, None] * (eps - anchors[None])).sum(1)


def latents_euler(anchors, noise, *, g, alpha=1.0, steps, weights=None, index=None):
    start = anchors if index is None else anchors[index]
    x = (1.0 - g) * start + g * alpha * noise
    h = (1.0 - g) / steps
    for k in range(steps):
        tau = g + k * h
        x = x + h * velocity(x, tau, anchors, weights)
    return x


def latents_dpm(anchors, noise, *, g, alpha=1.0, steps, weights=None, d2_scale=1.0):
    """DPM-Solver++ multistep (orders 1, 2, 3, 3, ...) in the phi form; the τ = 1 step as its limit.

    With h = λ_t − λ_s, r0 = h_0/h, r1 = h_1/h (h_0, h_1 the previous λ steps):
    D1_0 = (m0 − m1)/r0, D1_1 = (m1 − m2)/r1, D1 = D1_0 + r0/(r0 + r1)·(D1_0 − D1_1) ≈ h·x̂0',
    D2 = 2·(D1_0 − D1_1)/(r0 + r1) ≈ h²·x̂0'' (``d2_scale`` scales it, to test the order), and
    x_t = (σ_t/σ_s)·x − α_t·φ1·m0 + α_t·φ2·D1 − α_t·φ3·D2 with φ1 = expm1(−h), φ2 = φ1/h + 1,
    φ3 = φ2/h − 1/2. At τ_t = 1 (α_t = 0, h = −∞) the limits are α_t·φ1 → α_s/σ_s,
    α_t·φ2·D1 → (α_s/σ_s)·D1/h, α_t·φ3·D2 → (α_s/σ_s)·D2/h².
    """
    x = (1.0 - g) * anchors + g * alpha * noise
    taus = [g + k * (1.0 - g) / steps for k in range(steps)] + [1.0]
    lam = [math.log((1 - t) / t) for t in taus[:-1]]
    ms: list[torch.Tensor] = []
    for k in range(steps):
        s, t = taus[k], taus[k + 1]
        ms.insert(0, mean(x, s, anchors, weights))
        order = min(3, k + 1)
        h = math.log((1 - t) / t) - lam[k] if t < 1.0 else -1.0  # at τ = 1 only D1/h, D2/h² matter
        d1 = d2 = torch.zeros_like(x)
        if order >= 2:
            r0 = (lam[k] - lam[k - 1]) / h
            d1_0 = (ms[0] - ms[1]) / r0
            d1 = d1_0
        if order == 3:
            r1 = (lam[k - 1] - lam[k - 2]) / h
            d1_1 = (ms[1] - ms[2]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = d2_scale * 2.0 * (d1_0 - d1_1) / (r0 + r1)
        if t < 1.0:
            phi1 = math.expm1(-h)
            phi2 = phi1 / h + 1.0
            phi3 = phi2 / h - 0.5
            at = 1.0 - t
            x = (t / s) * x - at * phi1 * ms[0] + at * phi2 * d1 - at * phi3 * d2
        else:
            x = x / s - _last_step_integral(taus[max(k - 2, 0) : k + 1][::-1], ms)
    return x


def _last_step_integral(taus, ms, points=101):
    """∫_0^{u_s} p(u) du (Simpson) for the Lagrange interpolant p of ms over u = (1 − τ)/τ (newest first)."""
    us = [(1.0 - t) / t for t in taus]
    grid = torch.linspace(0.0, us[0], points, dtype=torch.float64).tolist()
    vals = []
    for u in grid:
        v = torch.zeros_like(ms[0])
        for i, ui in enumerate(us):
            basis = 1.0
            for j, uj in enumerate(us):
                if j != i:
                    basis *= (u - uj) / (ui - uj)
            v = v + basis * ms[i]
        vals.append(v)
    step = us[0] / (points - 1)
    coef = [1.0 if i in (0, points - 1) else (4.0 if i % 2 else 2.0) for i in range(points)]
    return step / 3.0 * sum(c * v for c, v in zip(coef, vals, strict=True))


def assign(x, anchors, *, steps, weights=None, targets=None):
    """Reverse Euler τ = 1 → 0; returns (final, probs at τ = 1/steps, target probs (steps, B))."""
    rows = []
    p = None
    for k in range(steps):
        tau = 1.0 - k / steps
        p = probs(x, tau, anchors, weights)
        if targets is not None:
            rows.append(p.gather(1, targets[:, None]).squeeze(1))
        x = x - (1.0 / steps) * velocity(x, tau, anchors, weights)
    return x, p, (torch.stack(rows) if targets is not None else None)


def alignment_loss(target_probs, *, cutoff=0.2, kind="log"):
    u = int(math.floor(cutoff * target_probs.shape[0]))
    best = target_probs[u:].max(dim=0).values
    if kind == "log":
        return -torch.log(best.clamp_min(torch.finfo(best.dtype).tiny)).mean()
    return -best.mean()
