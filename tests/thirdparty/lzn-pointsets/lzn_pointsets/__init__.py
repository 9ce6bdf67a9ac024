"""pointset: a variable number of weighted 2-D points per item, ``[[x, y, w], ...]`` as JSON.

A batch is a :class:`~lzn_pointsets.batch.PointSets`: the points padded to the longest set of the
batch and a mask of the real ones. The encoder pools a per-point MLP over the real points (rows
are independent); the decoder places ``slots`` weighted points and is scored by a weighted
Chamfer distance to the set, so a sample is a set of ``slots`` points with weights.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

import lzn_core
from lzn_core.modality import ModalitySpec


class PointSetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_points: int = Field(64, ge=1)  # longer sets are refused (validate_item)
    slots: int = Field(16, ge=1)  # points the decoder places
    hidden: int = Field(48, ge=4)


def decode(raw: bytes):
    import torch

    try:
        values = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"pointset: 'pts' value is not JSON ({exc})") from None
    if (
        not isinstance(values, list)
        or not values
        or not all(isinstance(p, list) and len(p) == 3 for p in values)
        or not all(isinstance(v, (int, float)) for p in values for v in p)
    ):
        raise ValueError("pointset: 'pts' value must be a non-empty list of [x, y, weight] triples")
    return torch.tensor(values, dtype=torch.float32)


def validate(item, config: PointSetConfig) -> None:
    if len(item) > config.max_points:
        raise ValueError(f"pointset: {len(item)} points, the config allows {config.max_points}")


def collate(items):
    from .batch import PointSets

    return PointSets.of(items)


def as_batch(request):
    """A compose request as a batch: a PointSets as it is, one set (k, 3) as a batch of one, a list
    of sets (what ``batch[i]`` gives: evaluation gathers rows that way) collated."""
    from .batch import PointSets

    if isinstance(request, PointSets):
        return request
    return PointSets.of(list(request) if isinstance(request, (list, tuple)) else [request])


def build_encoder(config: PointSetConfig, latent_dim: int):
    from .nets import PointSetEncoder

    return PointSetEncoder(config, latent_dim)


def build_decoder(config: PointSetConfig, latent_dim: int, condition_dim: int = 0):
    from .nets import PointSetDecoder

    return PointSetDecoder(config, latent_dim, condition_dim)


def example_items(n: int) -> list[bytes]:
    """n sets of 3..10 points, different lengths."""
    sets = []
    for i in range(n):
        k = 3 + (i * 5) % 8
        sets.append(
            [[((i + j) % 7) / 3.5 - 1.0, ((i * j) % 5) / 2.5 - 1.0, 0.1 + (j % 4) / 4] for j in range(k)]
        )
    return [json.dumps(s).encode() for s in sets]


@lzn_core.hookimpl
def lzn_register_modalities(register):
    register(
        ModalitySpec(
            name="pointset",
            config=PointSetConfig,
            build_encoder=build_encoder,
            build_decoder=build_decoder,
            shard_keys=("pts",),
            decode_sample=decode,
            validate_item=validate,
            collate=collate,
            as_batch=as_batch,
            accepts_condition=True,
            description="test: variable-length weighted point sets (JSON), padded batch + mask",
            example_items=example_items,
        )
    )
