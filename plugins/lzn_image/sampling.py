"""ODE integrators for the rectified-flow decoder: fixed-step Euler and adaptive Dormand–Prince (RK45).

Both integrate dx/dt = f(x, t) for a batch x: (B, ...) with a scalar time shared by the
batch, in either direction (t1 < t0 integrates backwards). The adaptive solver uses one
step size for the whole batch, chosen from the RMS of the scaled local error over every
element (as scipy's ``RK45`` does for one flattened state vector).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Field = Callable[[torch.Tensor, float], torch.Tensor]
"""f(x, t) -> dx/dt, x: (B, ...), t: float."""

# Dormand–Prince 5(4) tableau.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4, strict=True))


@dataclass
class SolveStats:
    """What the last solve did: function evaluations, accepted and rejected steps."""

    nfe: int = 0
    accepted: int = 0
    rejected: int = 0


def euler(f: Field, x: torch.Tensor, t0: float, t1: float, steps: int) -> tuple[torch.Tensor, SolveStats]:
    """Integrate from t0 to t1 with ``steps`` equal Euler steps. x: (B, ...) -> (B, ...)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    dt = (t1 - t0) / steps
    for i in range(steps):
        x = x + dt * f(x, t0 + i * dt)
    return x, SolveStats(nfe=steps, accepted=steps)


def _error_norm(err: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, rtol: float, atol: float) -> float:
    scale = atol + rtol * torch.maximum(x0.abs(), x1.abs())
    return float(torch.sqrt(torch.mean((err / scale) ** 2)))


def _initial_step(
    f: Field, x: torch.Tensor, t0: float, k0: torch.Tensor, direction: float, rtol: float, atol: float
) -> float:
    """Hairer–Wanner's starting step estimate (one extra evaluation)."""
    scale = atol + rtol * x.abs()
    d0 = float(torch.sqrt(torch.mean((x / scale) ** 2)))
    d1 = float(torch.sqrt(torch.mean((k0 / scale) ** 2)))
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    k1 = f(x + direction * h0 * k0, t0 + direction * h0)
    d2 = float(torch.sqrt(torch.mean(((k1 - k0) / scale) ** 2))) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
    return min(100 * h0, h1)


def dopri5(
    f: Field,
    x: torch.Tensor,
    t0: float,
    t1: float,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 10_000,
) -> tuple[torch.Tensor, SolveStats]:
    """Adaptive Dormand–Prince 5(4) from t0 to t1 with a batch-wide step size. x: (B, ...) -> (B, ...).

    Raises:
        RuntimeError: when more than ``max_steps`` steps (accepted + rejected) are needed.
    """
    direction = 1.0 if t1 >= t0 else -1.0
    span = abs(t1 - t0)
    stats = SolveStats()
    k0 = f(x, t0)
    h = min(_initial_step(f, x, t0, k0, direction, rtol, atol), span)
    stats.nfe = 2
    done = 0.0  # |t - t0|
    while done < span * (1 - 1e-12):
        if stats.accepted + stats.rejected >= max_steps:
            raise RuntimeError(
                f"RK45 needed more than {max_steps} steps (rtol={rtol}, atol={atol}); loosen the tolerances"
            )
        h = min(h, span - done)
        t = t0 + direction * done
        ks = [k0]
        for i in range(1, 7):
            xi = x + (direction * h) * sum(a * k for a, k in zip(_A[i], ks, strict=False))
            ks.append(f(xi, t + direction * h * _C[i]))
        stats.nfe += 6
        x_new = xi  # stage 7 is evaluated at the 5th-order solution (FSAL)
        err = (direction * h) * sum(e * k for e, k in zip(_E, ks, strict=True))
        norm = _error_norm(err, x, x_new, rtol, atol)
        if norm <= 1.0:
            x, k0, done = x_new, ks[6], done + h
            stats.accepted += 1
            factor = 10.0 if norm == 0 else min(10.0, 0.9 * norm**-0.2)
        else:
            stats.rejected += 1
            factor = max(0.2, 0.9 * norm**-0.2)
        h = h * factor
    return x, stats
