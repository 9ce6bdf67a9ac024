"""rowsum: a list of per-row ink sums (a JSON list of numbers), a denoising MLP decoder."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

import lzn_core
from lzn_core.modality import ModalitySpec


class RowsumConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: int = Field(8, ge=1)
    hidden: int = Field(48, ge=4)
    noise: float = Field(0.1, ge=0.0)  # the decoder denoises x + noise·ε


def decode(raw: bytes):
    import torch

    try:
        values = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"rowsum: 'json' value is not a JSON list ({exc})") from None
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
        raise ValueError("rowsum: 'json' value must be a list of numbers")
    return torch.tensor(values, dtype=torch.float32) / 100.0


def validate(item, config: RowsumConfig) -> None:
    if item.shape != (config.rows,):
        raise ValueError(f"rowsum: {item.shape[0]} values, the config expects {config.rows}")


def build_encoder(config: RowsumConfig, latent_dim: int):
    from .nets import RowsumEncoder

    return RowsumEncoder(config, latent_dim)


def build_decoder(config: RowsumConfig, latent_dim: int, condition_dim: int = 0):
    from .nets import RowsumDecoder

    return RowsumDecoder(config, latent_dim, condition_dim)


def example_items(n: int) -> list[bytes]:
    return [json.dumps([(i * 7 + r * 13) % 100 for r in range(8)]).encode() for i in range(n)]


@lzn_core.hookimpl
def lzn_register_modalities(register):
    register(
        ModalitySpec(
            name="rowsum",
            config=RowsumConfig,
            build_encoder=build_encoder,
            build_decoder=build_decoder,
            shard_keys=("json",),
            decode_sample=decode,
            validate_item=validate,
            accepts_condition=True,
            description="test: per-row ink sums (JSON), denoising MLP decoder",
            example_items=example_items,
        )
    )
