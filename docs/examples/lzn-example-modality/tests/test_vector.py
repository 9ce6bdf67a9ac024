"""The package's own tests: the LZN conformance kit (a pytest fixture that comes with lzn)."""

import pytest


def test_vector_obeys_the_modality_contract(lzn_check_modality):
    # static checks, then a few real training steps beside a label modality, export, and serving
    report = lzn_check_modality("vector", latent_dim=8)
    assert report.decoder_kind == "generative" and report.partner == "label"
    assert "vector -> label" in report.edges  # the trained model classifies vectors


def test_decode_rejects_garbage():
    from lzn_example_modality import decode

    with pytest.raises(ValueError, match="vector: 'npy' value is not a .npy array"):
        decode(b"not an array")
