"""Rectified-flow image decoder conditioned on the LZN latent (docs/method.md §4, case 1 and 3).

Time convention of this module (the rectified-flow one): t = 0 is noise, t = 1 is data;
x_t = t·x + (1 − t)·ε, and the U-Net v(x_t, t, z, c) predicts x − ε. The time embedding
e(t) is concatenated with z: (B, q) and an optional condition c: (B, d) (case 3's one-hot; d is
given by the framework, ``build_decoder(config, q, condition_dim=d)``) and mapped by
Linear(|e| + q + d -> 4nf), SiLU, Linear(4nf -> 4nf) to the ``temb`` every ResNet block reads.
The embedding is of the NCSN++ noise level σ = 999·t (sinusoidal of σ, or Fourier features of
log σ); ``scale_by_sigma`` divides the output by σ.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import ImageConfig
from .io import fit_batch, save_grid
from .sampling import SolveStats, dopri5, euler
from .unet import DownPath, UpPath, ncsnpp_init, timestep_embedding


class ImageDecoder(nn.Module):
    """Rectified-flow U-Net decoder: ``loss`` for training, ``sample``/``invert``/``reconstruct``.

    Capabilities (:mod:`lzn_core.modality`): ``Reconstructs``, ``PreviewWriter`` (PNG grids),
    ``SampleJudge`` (class consistency).

    Args:
        config: an :class:`ImageConfig`.
        latent_dim: q.
        condition_dim: d, size of the conditioning vector (0: unconditioned).
    """

    kind = "generative"

    def __init__(self, config: ImageConfig, latent_dim: int, condition_dim: int = 0) -> None:
        super().__init__()
        if condition_dim < 0:
            raise ValueError(f"condition_dim must be >= 0, got {condition_dim}")
        self.config = config
        self.latent_dim = latent_dim
        self.condition_dim = condition_dim
        nf = config.nf
        if config.time_embedding == "fourier":
            self.register_buffer("fourier_w", torch.randn(nf) * config.fourier_scale)
            emb_dim = 2 * nf
        else:
            emb_dim = nf
        self.emb_dim = emb_dim
        self.temb = nn.Sequential(  # NCSN++ Dense layers: variance scaling, zero bias
            ncsnpp_init(nn.Linear(emb_dim + latent_dim + condition_dim, 4 * nf)),
            nn.SiLU(),
            ncsnpp_init(nn.Linear(4 * nf, 4 * nf)),
        )
        self.down = DownPath(config, temb_dim=4 * nf)
        self.up = UpPath(config, self.down, temb_dim=4 * nf)
        self.last_stats = SolveStats()

    # ----------------------------------------------------------------- network
    def _time_features(self, t: torch.Tensor) -> torch.Tensor:
        """e(σ), σ = 999·t (the noise level of the NCSN++ code): sinusoidal of σ or Fourier of log σ."""
        sigma = t * 999.0
        if self.config.time_embedding == "fourier":
            proj = torch.log(sigma.float())[:, None] * self.fourier_w[None] * 2 * torch.pi
            return torch.cat([torch.sin(proj), torch.cos(proj)], dim=1)
        return timestep_embedding(sigma, self.emb_dim)

    def _check_inputs(self, z: torch.Tensor, b: int, cond: torch.Tensor | None) -> torch.Tensor | None:
        if z.ndim != 2 or z.shape != (b, self.latent_dim):
            raise ValueError(f"z must be (B, q) = ({b}, {self.latent_dim}), got {tuple(z.shape)}")
        d = self.condition_dim
        if d == 0:
            if cond is not None:
                raise ValueError(
                    "image decoder: a condition was given but the decoder was built without one "
                    "(add condition: to the recipe's generate task)"
                )
            return None
        if cond is None:
            raise ValueError(f"image decoder: needs cond (B, {d}) (it was built with condition_dim = {d})")
        if cond.shape != (b, d):
            raise ValueError(f"image decoder: cond must be (B, {d}) = ({b}, {d}), got {tuple(cond.shape)}")
        return cond.to(z.dtype)

    def velocity(
        self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The predicted x − ε. x: (B, C, H, W), t: (B,) in [0, 1], z: (B, q), cond: (B, d) -> (B, C, H, W)."""
        cond = self._check_inputs(z, x.shape[0], cond)
        if not self.config.use_latent:  # the RF baseline: same network, no latent information
            z = torch.zeros_like(z)
        parts = [self._time_features(t).to(z.dtype), z] + ([cond] if cond is not None else [])
        temb = self.temb(torch.cat(parts, dim=1))
        hs, h = self.down(x, temb)
        out = self.up(h, hs, temb)
        if self.config.scale_by_sigma:
            out = out / (999.0 * t).to(out.dtype).view(-1, 1, 1, 1)
        return out

    forward = velocity

    # ---------------------------------------------------------------- training
    def loss(
        self,
        z: torch.Tensor,
        images: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        rows: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Rectified-flow loss: mean over pixels and batch of ‖v(x_t, t, z, c) − (x − ε)‖².

        t ~ U[rf_t_min, 1] and ε ~ N(0, I) are drawn from ``generator`` (global RNG when None),
        t first, then ε. With ``rows = (start, total)`` they are drawn for ``total`` rows and rows
        [start, start + B) are used, so a rank holding rows [start, start + B) of a global batch sees
        the same randomness as a single process over the whole batch.

        Args:
            z: latents (B, q).
            images: (B, C, H, W) in [-1, 1].
            cond: optional (B, d).
        """
        x = fit_batch(images, self.config).to(device=z.device, dtype=z.dtype)
        b = x.shape[0]
        start, total = rows if rows is not None else (0, b)
        if not (0 <= start and start + b <= total):
            raise ValueError(f"rows=(start, total)={rows} does not contain a batch of {b} rows")
        dev = generator.device if generator is not None else x.device
        t_min = self.config.rf_t_min
        t = torch.rand(total, generator=generator, device=dev, dtype=x.dtype) * (1 - t_min) + t_min
        noise = torch.randn((total, *x.shape[1:]), generator=generator, device=dev, dtype=x.dtype)
        t, noise = t[start : start + b].to(x.device), noise[start : start + b].to(x.device)
        tb = t.view(-1, 1, 1, 1)
        xt = tb * x + (1 - tb) * noise
        pred = self.velocity(xt, t, z, cond)
        return F.mse_loss(pred, x - noise)

    # --------------------------------------------------------------- inference
    def _solve(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        cond: torch.Tensor | None,
        t0: float,
        t1: float,
        steps: int | None,
        method: str | None,
        rtol: float | None,
        atol: float | None,
    ) -> torch.Tensor:
        cfg = self.config
        method = method or cfg.sample_method

        def f(xx: torch.Tensor, t: float) -> torch.Tensor:
            return self.velocity(xx, xx.new_full((xx.shape[0],), t), z, cond)

        with torch.no_grad():
            if method == "euler":
                out, self.last_stats = euler(f, x, t0, t1, steps or cfg.sample_steps)
            elif method == "rk45":
                out, self.last_stats = dopri5(f, x, t0, t1, rtol=rtol or cfg.rtol, atol=atol or cfg.atol)
            else:
                raise ValueError(f"unknown sampling method {method!r}; choose 'euler' or 'rk45'")
        return out

    def sample(
        self,
        z: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        steps: int | None = None,
        method: str | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        clip: bool = True,
    ) -> torch.Tensor:
        """Generate images (B, C, H, W) in [-1, 1] from latents z: (B, q), integrating t: rf_t_min -> 1.

        Runs without autograd, in the module's current mode (call ``.eval()`` to switch dropout off).

        Args:
            z: latents (B, q).
            cond: optional (B, d).
            steps: Euler steps (default ``config.sample_steps``); ignored by "rk45".
            method: "euler" or "rk45" (adaptive Dormand–Prince; default ``config.sample_method``).
            noise: the starting ε (B, C, H, W); drawn from ``generator`` when None.
            rtol, atol: RK45 tolerances (default from the config, paper 1e-5).
            clip: clamp the result to [-1, 1] (False: the ODE's end point as it is).
        """
        cfg = self.config
        shape = (z.shape[0], cfg.channels, cfg.resolution, cfg.resolution)
        if noise is None:
            dev = generator.device if generator is not None else z.device
            noise = torch.randn(shape, generator=generator, device=dev, dtype=z.dtype).to(z.device)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must be {shape}, got {tuple(noise.shape)}")
        x = self._solve(noise.to(z.dtype), z, cond, cfg.rf_t_min, 1.0, steps, method, rtol, atol)
        return x.clamp(-1.0, 1.0) if clip else x

    def save_preview(self, images: torch.Tensor, path: str | Path, *, nrow: int | None = None) -> Path:
        """``PreviewWriter``: a PNG grid of images (B, C, H, W) in [-1, 1] (see :func:`lzn_image.io.save_grid`)."""
        return save_grid(images, path, nrow=nrow)

    def judge_samples(
        self,
        samples: torch.Tensor,
        classes: torch.Tensor | None,
        real: torch.Tensor,
        real_classes: torch.Tensor | None,
        *,
        held_out: torch.Tensor | None = None,
        options: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """``SampleJudge``: class consistency of class-conditional samples, FID/KID of samples drawn
        from the prior (:func:`lzn_image.judge.judge_images`)."""
        from .judge import judge_images  # scikit-learn and the feature extractors only when judging

        return judge_images(
            self.config, samples, classes, real, real_classes, held_out=held_out, options=options
        )

    def invert(
        self,
        images: torch.Tensor,
        z: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        steps: int | None = None,
        method: str | None = None,
    ) -> torch.Tensor:
        """Run the ODE backwards (t: 1 -> rf_t_min): images (B, C, H, W) -> noise (B, C, H, W)."""
        x = fit_batch(images, self.config).to(device=z.device, dtype=z.dtype)
        return self._solve(x, z, cond, 1.0, self.config.rf_t_min, steps, method, None, None)

    def reconstruct(
        self,
        images: torch.Tensor,
        z: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        steps: int | None = None,
        method: str | None = None,
        clip: bool = True,
    ) -> torch.Tensor:
        """``Reconstructs``: invert then sample with the same z: (B, C, H, W) -> (B, C, H, W).

        ``clip=False`` returns the regenerated images unclamped (the authors score those).
        """
        noise = self.invert(images, z, cond, steps=steps, method=method)
        return self.sample(z, cond, steps=steps, method=method, noise=noise, clip=clip)
