"""Plugins for the trial tests of the conformance kit (tests/core/test_kit_trial.py), registered there
through a temporary ``*.dist-info`` (entry points ``kit_plugins:Toy`` ...). Each passes the
contract; two break only in training:

* ``toy``: a valid generative modality (``b"1,2,3"`` -> (3,) float; linear encoder and decoder);
* ``growing``: its decoder appends to a buffer while training, so a checkpoint holds a buffer
  of another shape than a freshly built decoder: resuming fails;
* ``lazynorm``: its decoder fits a normaliser on the first batch it trains on and keeps it
  outside ``state_dict``: a resumed run fits it again on another batch (resume is not exact).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

import lzn_core
from lzn_core.modality import ModalitySpec


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dim: int = 3


def _decode(name: str):  # noqa: ANN202
    def decode(raw: bytes) -> torch.Tensor:
        try:
            return torch.tensor([float(v) for v in raw.decode().split(",")])
        except (UnicodeDecodeError, ValueError):
            raise ValueError(f"{name}: cannot parse {raw[:20]!r}") from None

    return decode


def _items(n: int) -> list[bytes]:
    return [f"{i % 5},{i % 3},{(7 * i) % 11}".encode() for i in range(n)]


class Encoder(nn.Module):
    def __init__(self, cfg: Config, q: int) -> None:
        super().__init__()
        self.lin = nn.Linear(cfg.dim, q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


class Decoder(nn.Module):
    kind = "generative"

    def __init__(self, cfg: Config, q: int) -> None:
        super().__init__()
        self.lin = nn.Linear(q, cfg.dim)

    def target(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def loss(self, z, x, cond=None, *, generator=None, rows=None):  # noqa: ANN001, ANN201
        return ((self.lin(z) - self.target(x)) ** 2).mean()

    def sample(self, z, cond=None, *, steps=None, generator=None):  # noqa: ANN001, ANN201
        return self.lin(z)


class GrowingDecoder(Decoder):
    """Keeps every training batch's mean in a buffer that grows (its shape is data, not config)."""

    def __init__(self, cfg: Config, q: int) -> None:
        super().__init__(cfg, q)
        self.register_buffer("seen", torch.zeros(0))

    def target(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            self.seen = torch.cat([self.seen, x.detach().mean().reshape(1)])
        return x


class LazyNormDecoder(Decoder):
    """Scales targets by a normaliser fitted on the first batch, kept in a plain attribute."""

    def __init__(self, cfg: Config, q: int) -> None:
        super().__init__(cfg, q)
        self.scale: torch.Tensor | None = None

    def target(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            self.scale = x.detach().abs().mean() + 1.0
        return x / self.scale


def _spec(name: str, decoder: type[Decoder]) -> ModalitySpec:
    return ModalitySpec(
        name=name,
        config=Config,
        build_encoder=Encoder,
        build_decoder=decoder,
        shard_keys=(name,),
        decode_sample=_decode(name),
        example_items=_items,
    )


class Toy:
    @staticmethod
    @lzn_core.hookimpl
    def lzn_register_modalities(register) -> None:  # noqa: ANN001
        register(_spec("toy", Decoder))


class Growing:
    @staticmethod
    @lzn_core.hookimpl
    def lzn_register_modalities(register) -> None:  # noqa: ANN001
        register(_spec("growing", GrowingDecoder))


class LazyNorm:
    @staticmethod
    @lzn_core.hookimpl
    def lzn_register_modalities(register) -> None:  # noqa: ANN001
        register(_spec("lazynorm", LazyNormDecoder))
