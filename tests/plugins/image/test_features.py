"""The image plugin's feature extractors for FID/KID (plugins/lzn_image/features.py): the digit
features (fit, cache, errors) and the clean-fid path (a stub Inception; its weights are never
downloaded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lzn_image import features as fe

from lzn_core.data.digits import real_digits
from lzn_core.errors import LZNError
from lzn_core.eval import metrics as ev


def test_digit_features_fit_cache_and_separation(tmp_path) -> None:
    x, y = real_digits()
    assert x.shape == (1797, 1, 8, 8) and float(x.min()) == -1.0 and float(x.max()) == 1.0
    f1 = fe.digit_features(x[:1400], y[:1400], seed=0, cache_dir=tmp_path)
    assert f1 is fe.digit_features(x[:1400], y[:1400], seed=0)  # in-process cache
    assert f1.train_accuracy > 0.98
    assert ev.accuracy(f1.predict(x[1400:]), y[1400:]) > 0.9
    fe._CACHE.clear()
    f2 = fe.digit_features(x[:1400], y[:1400], seed=0, cache_dir=tmp_path)  # from disk
    assert f2 is not f1 and torch.equal(f1(x[1400:1450]), f2(x[1400:1450]))
    feats_real, feats_test = f1(x[:700]), f1(x[1400:])
    assert feats_real.shape == (700, 64)
    noise = torch.rand(397, 1, 8, 8) * 2 - 1
    assert ev.frechet_distance(feats_real, feats_test) < 0.2 * ev.frechet_distance(feats_real, f1(noise))


def test_digit_features_errors() -> None:
    x, y = real_digits()
    with pytest.raises(ValueError, match=r"labels must have shape \(20,\)"):
        fe.DigitFeatures.fit(x[:20], y[:10], epochs=1)
    with pytest.raises(ValueError, match="at least 3 classes"):
        fe.DigitFeatures.fit(x[:4], torch.tensor([0, 1, 1, 0]), epochs=1)
    with pytest.raises(ValueError, match=r"must cover 0..9"):
        fe.DigitFeatures.fit(x[:4], torch.tensor([0, 1, 2, 9]), epochs=1)
    f = fe.DigitFeatures.fit(x[:20], y[:20], epochs=1)
    with pytest.raises(ValueError, match=r"fitted on images of shape \(1, 8, 8\)"):
        f(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, C, H, W\)"):
        f(torch.zeros(2, 64))


class _StubNetwork:
    """Stands in for clean-fid's Inception: records its input, returns per-channel means and stds."""

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x)
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def test_clean_fid_path_with_a_stub_feature_extractor() -> None:
    """clean-fid's preprocessing (the authors' to_uint8, then clean-fid's PIL-bicubic resizer to
    299x299 in [0, 255]) feeds the network."""
    pytest.importorskip("cleanfid", reason="the clean-fid path needs `pip install 'lzn[fid]'`")
    from cleanfid.resize import build_resizer
    from lzn_image.features import CLEAN_FID, CleanFIDFeatures

    stub = _StubNetwork()
    ext = CleanFIDFeatures(network=stub, batch_size=3)
    assert ext.name == CLEAN_FID
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=g) * 2.2 - 1.1  # some values outside [-1, 1]: clipped
    feats = ext(x)
    assert feats.shape == (4, 6) and [t.shape[0] for t in stub.inputs] == [3, 1]
    seen = torch.cat(stub.inputs)
    assert seen.shape == (4, 3, 299, 299) and seen.dtype == torch.float32
    assert float(seen.min()) >= 0 and float(seen.max()) <= 255
    u8 = np.around(np.clip((x.numpy() + 1) / 2 * 255, 0, 255)).astype(np.uint8)
    ref = build_resizer("clean")(u8[2].transpose(1, 2, 0)).transpose(2, 0, 1)
    np.testing.assert_array_equal(seen[2].numpy(), ref)
    gray = ext(x[:2, :1])
    torch.testing.assert_close(gray[:, 0], gray[:, 1])  # a gray image is fed as three equal channels
    torch.testing.assert_close(gray[:, 1], gray[:, 2])
    with pytest.raises(ValueError, match="1 or 3 channels"):
        ext(torch.zeros(1, 2, 8, 8))


def test_clean_fid_weights_are_read_from_a_path_or_its_cache_and_never_downloaded(
    tmp_path, monkeypatch
) -> None:
    pytest.importorskip("cleanfid", reason="the clean-fid path needs `pip install 'lzn[fid]'`")
    from lzn_image.features import WEIGHTS_FILE, CleanFIDFeatures, find_inception_weights

    monkeypatch.setenv("LZN_CLEANFID_CACHE", str(tmp_path / "cache"))
    with pytest.raises(
        LZNError, match=r"inception-2015-12-05.pt not found .*nothing is downloaded.*fid_weights=FILE"
    ):
        CleanFIDFeatures(tmp_path / "missing.pt")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / WEIGHTS_FILE).write_bytes(b"x")
    assert find_inception_weights() == tmp_path / "cache" / WEIGHTS_FILE  # clean-fid's cache folder
    given = tmp_path / "mine.pt"
    given.write_bytes(b"x")
    assert find_inception_weights(given) == given and find_inception_weights(tmp_path / "cache") == (
        tmp_path / "cache" / WEIGHTS_FILE
    )
