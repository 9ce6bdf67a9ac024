"""The package's own tests: the LZN conformance kit (pytest fixtures that come with lzn)."""

import pytest


def test_vector_obeys_the_modality_contract(lzn_check_modality):
    # every call the framework makes on the modality, made as the framework makes it (seconds)
    report = lzn_check_modality("vector", latent_dim=8)
    assert report.decoder_kind == "generative"


def test_vector_trains_and_serves(lzn_trial):
    # a few real training steps beside a label modality (stopped after a checkpoint, resumed),
    # export, and every compose edge on the trained model
    report = lzn_trial("vector", latent_dim=8)
    assert report.partner == "label"
    assert "vector -> label" in report.edges  # the trained model classifies vectors


def test_decode_rejects_garbage():
    from lzn_example_modality import decode

    with pytest.raises(ValueError, match="vector: 'npy' value is not a .npy array"):
        decode(b"not an array")
