"""The shared Gaussian latent: prior samples and the solver's time grids.

Time convention of the code (τ): τ = 0 at the anchors, τ = 1 at the prior N(0, I);
the flow interpolates x_τ = (1 − τ)·a + τ·ε. The forward direction (data → latent,
the paper's IFM) runs τ = g → 1, the reverse direction (latent → anchors, the
paper's FM) runs τ = 1 → 0.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["time_grid", "sample_prior"]


def time_grid(
    steps: int, g: float = 1e-4, direction: Literal["forward", "reverse"] = "forward"
) -> list[float]:
    """The τ grid of a fixed-step solver, as Python floats (steps + 1 points).

    Args:
        steps: number of solver steps (>= 1).
        g: start time of the forward direction (0 < g < 1); unused for ``"reverse"``.
        direction: ``"forward"`` gives τ_k = g + k·(1 − g)/steps (g → 1);
            ``"reverse"`` gives τ_k = 1 − k/steps (1 → 0).

    Returns:
        The ``steps + 1`` grid points; the first and last are exactly the end points.

    Raises:
        ValueError: on a bad ``steps``, ``g`` or ``direction``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if direction == "forward":
        if not 0.0 < g < 1.0:
            raise ValueError(f"g must be in (0, 1), got {g!r}")
        h = (1.0 - g) / steps
        grid = [g + k * h for k in range(steps)]
        return [*grid, 1.0]
    if direction == "reverse":
        return [1.0 - k / steps for k in range(steps)] + [0.0]
    raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")


def sample_prior(
    n: int,
    q: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw ``n`` latents from the prior N(0, I_q).

    Args:
        n: number of samples.
        q: latent dimension.
        generator: optional ``torch.Generator`` for reproducibility.
        dtype: floating dtype of the result.
        device: device of the result.

    Returns:
        z: (n, q) standard normal samples.

    Raises:
        ValueError: when ``n`` or ``q`` is negative / not positive.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if q < 1:
        raise ValueError(f"q must be >= 1, got {q}")
    return torch.randn(n, q, generator=generator, dtype=dtype, device=device)
