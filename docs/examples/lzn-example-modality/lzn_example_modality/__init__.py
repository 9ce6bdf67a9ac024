"""A toy LZN modality, "vector": fixed-length float vectors stored as .npy bytes."""

from __future__ import annotations

import io

from pydantic import BaseModel, ConfigDict

import lzn_core
from lzn_core.modality import ModalitySpec


class VectorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")  # typos in a recipe become errors
    dim: int = 4  # length of every vector
    hidden: int = 32  # width of the MLPs


def decode(raw: bytes):
    """One `npy` shard value -> float tensor (dim,); ValueError on anything else."""
    import numpy as np
    import torch

    try:
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"vector: 'npy' value is not a .npy array ({type(exc).__name__}: {exc})") from None
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"vector: expected a 1-D numeric array, got {array.dtype} {array.shape}")
    return torch.from_numpy(array.astype(np.float32))


def examples(n: int) -> list[bytes]:
    """n raw `npy` values that fit the default config (used by the conformance kit)."""
    import numpy as np

    out = []
    for i in range(n):
        buf = io.BytesIO()
        np.save(buf, np.arange(4, dtype=np.float32) * (i + 1))
        out.append(buf.getvalue())
    return out


def build_encoder(config: VectorConfig, latent_dim: int):
    from .model import VectorEncoder  # torch code is imported only when a model is built

    return VectorEncoder(config, latent_dim)


def build_decoder(config: VectorConfig, latent_dim: int):
    from .model import VectorDecoder

    return VectorDecoder(config, latent_dim)


@lzn_core.hookimpl
def lzn_register_modalities(register):
    register(
        ModalitySpec(
            name="vector",
            config=VectorConfig,
            build_encoder=build_encoder,
            build_decoder=build_decoder,
            shard_keys=("npy",),
            decode_sample=decode,
            description="toy: fixed-length float vectors (.npy), MLP encoder and decoder",
            example_items=examples,
        )
    )
