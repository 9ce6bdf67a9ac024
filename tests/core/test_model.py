"""The model container (lzn_core/model.py): conditions, fixed banks, encode and latents, and its errors."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TINY, tiny_digits_joint

from lzn_core.errors import LZNError


@pytest.fixture(scope="module")
def model():
    return tiny_digits_joint()


def test_model_container_api(model) -> None:
    assert model.condition_source("image") == "label" and model.condition_source("label") is None
    assert model.has_fixed_bank("label") and not model.has_fixed_bank("image")
    assert model.bank("label").shape == (10, 8)
    assert model.condition("label", torch.tensor([2])).argmax().item() == 2
    assert model.encode("label", torch.tensor([1, 3])).shape == (2, 8)
    z = model.latents(model.bank("label"), alpha=0.0, index=torch.tensor([4]))  # class 4's zone centre
    assert z.shape == (1, 8)


def test_model_container_errors(model) -> None:
    from lzn_core.model import LZNModel
    from lzn_core.recipe import load_recipe

    with pytest.raises(LZNError, match="unknown modality 'imgae' in this model; did you mean 'image'"):
        model.encode("imgae", torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"bank of 'image' must have shape \(M, 8\), got \(4, 3\)"):
        model.set_bank("image", torch.zeros(4, 3))
    with pytest.raises(LZNError, match="cannot condition a decoder"):
        model.condition("image", torch.zeros(1, 1, 8, 8))
    fresh = LZNModel(load_recipe("digits_joint.yaml", TINY))
    with pytest.raises(LZNError, match="modality 'image' has no anchor bank yet"):
        fresh.bank("image")
