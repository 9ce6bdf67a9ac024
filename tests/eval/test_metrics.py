"""Evaluation metrics: checked against scipy / scikit-learn references and closed forms."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import torch
from lzn_image import features as fe

from lzn_core.data.digits import real_digits
from lzn_core.errors import LZNError
from lzn_core.eval import metrics as ev

# ---------------------------------------------------------------- accuracy, ECE, AUROC


def test_accuracy_and_errors() -> None:
    assert ev.accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 4])) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="differ in length"):
        ev.accuracy(torch.tensor([1, 2]), torch.tensor([1]))
    with pytest.raises(ValueError, match="must be 1-D"):
        ev.accuracy(torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="empty"):
        ev.accuracy(torch.tensor([]), torch.tensor([]))


def test_ece_hand_computed() -> None:
    conf = torch.tensor([0.95, 0.95, 0.95, 0.95, 0.55, 0.55])
    correct = torch.tensor([1, 1, 1, 0, 1, 0])
    out = ev.expected_calibration_error(conf, correct, bins=10)
    # bin (0.9, 1]: acc 0.75 vs conf 0.95 (4/6); bin (0.5, 0.6]: acc 0.5 vs conf 0.55 (2/6)
    assert out["ece"] == pytest.approx(4 / 6 * 0.2 + 2 / 6 * 0.05)
    assert sum(b["count"] for b in out["bins"]) == 6
    assert out["bins"][9]["accuracy"] == pytest.approx(0.75)
    assert out["bins"][0]["confidence"] is None
    # perfectly calibrated in expectation: confidence 1 and always right
    assert ev.expected_calibration_error(torch.ones(5), torch.ones(5))["ece"] == 0.0


def test_ece_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        ev.expected_calibration_error(torch.tensor([1.5]), torch.tensor([1]))
    with pytest.raises(ValueError, match="differ in length"):
        ev.expected_calibration_error(torch.tensor([0.5, 0.4]), torch.tensor([1]))
    with pytest.raises(ValueError, match="bins must be"):
        ev.expected_calibration_error(torch.tensor([0.5]), torch.tensor([1]), bins=0)
    out = ev.expected_calibration_error(torch.rand(50), torch.rand(50) > 0.5)
    png = ev.reliability_diagram(out, tmp_path / "r.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_auroc_matches_sklearn_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 5, (40,), generator=g).double()
    neg = torch.randint(0, 4, (30,), generator=g).double()  # many ties
    ref = roc_auc_score(np.r_[np.ones(40), np.zeros(30)], np.r_[pos.numpy(), neg.numpy()])
    assert ev.auroc(pos, neg) == pytest.approx(ref, abs=1e-12)
    assert ev.auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert ev.auroc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5
    with pytest.raises(ValueError, match="at least one positive"):
        ev.auroc(torch.tensor([]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="NaN"):
        ev.auroc(torch.tensor([float("nan")]), torch.tensor([1.0]))


# ---------------------------------------------------------------- FID / KID


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_distance_against_scipy_and_closed_form() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(400, 6, generator=g, dtype=torch.float64) @ torch.randn(
        6, 6, generator=g, dtype=torch.float64
    )
    b = torch.randn(300, 6, generator=g, dtype=torch.float64) * 2 + 1
    assert ev.frechet_distance(a, b) == pytest.approx(_scipy_fid(a.numpy(), b.numpy()), rel=1e-8)
    assert ev.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # diagonal Gaussians (population moments): Σ (√s1 − √s2)² + ‖Δμ‖²
    x = torch.tensor(
        [[-1.0, -2.0], [1.0, 2.0], [-1.0, 2.0], [1.0, -2.0]], dtype=torch.float64
    )  # cov diag(4/3, 16/3)
    y = 3 * x + torch.tensor([1.0, 0.0], dtype=torch.float64)
    want = 1.0 + (4 / 3) * (1 - 3) ** 2 + (16 / 3) * (1 - 3) ** 2
    assert ev.frechet_distance(x, y) == pytest.approx(want, rel=1e-10)


def test_frechet_distance_rank_deficient_is_finite() -> None:
    a = torch.randn(10, 64, dtype=torch.float64)  # fewer samples than dimensions: singular covariances
    d = ev.frechet_distance(a, a + 0.1)
    assert np.isfinite(d) and d == pytest.approx(0.64, abs=1e-4)  # only the mean shift (64 * 0.01) remains


def test_feature_errors() -> None:
    with pytest.raises(ValueError, match=r"expected features \(n, d\)"):
        ev.frechet_distance(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(ValueError, match="at least 2 samples"):
        ev.frechet_distance(torch.randn(1, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="NaN or inf"):
        ev.kernel_inception_distance(torch.full((3, 2), float("nan")), torch.randn(3, 2))
    with pytest.raises(ValueError, match="subsets must be"):
        ev.kernel_inception_distance(torch.randn(3, 2), torch.randn(3, 2), subsets=0)


def _naive_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]

    def k(u: np.ndarray, v: np.ndarray) -> float:
        return (u @ v / d + 1) ** 3

    m = len(x)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return sxx + syy - 2 * sxy


def test_kid_matches_naive_unbiased_mmd() -> None:
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(12, 4, generator=g), torch.randn(12, 4, generator=g) + 0.5
    mean, std = ev.kernel_inception_distance(a, b, subsets=1, subset_size=12)
    assert mean == pytest.approx(_naive_mmd2(a.double().numpy(), b.double().numpy()), rel=1e-9)
    assert std == 0.0
    same, _ = ev.kernel_inception_distance(
        torch.randn(500, 4, generator=g), torch.randn(500, 4, generator=g), subsets=5, subset_size=200
    )
    shifted, _ = ev.kernel_inception_distance(
        torch.randn(500, 4, generator=g), torch.randn(500, 4, generator=g) + 1, subsets=5, subset_size=200
    )
    assert abs(same) < 0.05 < shifted  # unbiased: ≈ 0 for one distribution, clearly > 0 for two


# ---------------------------------------------------------------- linear probe


def test_linear_probe_separable_vs_noise() -> None:
    g = torch.Generator().manual_seed(3)
    y = torch.arange(200) % 4
    centres = torch.randn(4, 8, generator=g) * 4
    x = centres[y] + torch.randn(200, 8, generator=g)
    assert ev.linear_probe(x[:150], y[:150], x[150:], y[150:]) > 0.95
    noise = torch.randn(200, 8, generator=g)
    assert ev.linear_probe(noise[:150], y[:150], noise[150:], y[150:]) < 0.5


def test_linear_probe_errors() -> None:
    with pytest.raises(ValueError, match="single class"):
        ev.linear_probe(torch.randn(4, 2), torch.zeros(4), torch.randn(2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="feature sizes differ"):
        ev.linear_probe(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), torch.randn(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="train features must be"):
        ev.linear_probe(torch.randn(4, 2), torch.tensor([0, 1, 0]), torch.randn(2, 2), torch.zeros(2))


# ---------------------------------------------------------------- feature extractors


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


def _sine_features(n: int, d: int, shift: float) -> np.ndarray:
    """Deterministic features without a random generator (the same numbers on any numpy/torch)."""
    i = np.arange(n, dtype=np.float64)[:, None]
    j = np.arange(d, dtype=np.float64)[None]
    return np.sin(i * (j + 1) * 0.6180339887 + shift) + shift * np.cos(j * 0.7)


# clean-fid 0.1.35's frechet_distance on _sine_features (scipy 1.17.1, numpy 2.4.6, Python 3.11;
# recorded 2026-12-07): full rank d = 16 and d = 256, and singular covariances (n < d, d = 64).
CLEAN_FID_VALUES = [
    ((300, 250, 16, 0.7), 4.116586643798598),
    ((1000, 800, 256, 0.3), 15.69692167383215),
    ((60, 50, 64, 0.2), 3.264404905399118),
]


@pytest.mark.parametrize(("sizes", "want"), CLEAN_FID_VALUES)
def test_frechet_distance_equals_clean_fids_recorded_values(sizes, want) -> None:
    """The project's FID (no scipy, no clean-fid) against values clean-fid computed on the same
    features where it still runs (scipy < 1.18 keeps sqrtm's `disp`)."""
    n, m, d, shift = sizes
    got = ev.frechet_distance(_sine_features(n, d, 0.0), _sine_features(m, d, shift))
    assert got == pytest.approx(want, rel=1e-7)


def _clean_fid_runs() -> bool:
    try:
        from cleanfid.fid import frechet_distance

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # scipy 1.16-1.17: sqrtm's disp
            frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))
    except ImportError:
        return False
    except TypeError:  # scipy >= 1.18: sqrtm() got an unexpected keyword argument 'disp'
        return False
    return True


@pytest.mark.skipif(not _clean_fid_runs(), reason="clean-fid is missing or cannot run on this scipy")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # scipy 1.16-1.17 deprecate sqrtm's disp
def test_frechet_distance_equals_clean_fid_live() -> None:
    from cleanfid.fid import frechet_distance as theirs

    for (n, m, d, shift), _ in CLEAN_FID_VALUES:
        a, b = _sine_features(n, d, 0.0), _sine_features(m, d, shift)
        want = theirs(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
        assert ev.frechet_distance(a, b) == pytest.approx(float(want), rel=1e-7)


def test_sqrtm_psd_squares_back_and_stays_real_on_singular_input() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 12, generator=g, dtype=torch.float64)
    s = x.T @ x  # (12, 12) of rank 5
    r = ev.sqrtm_psd(s)
    assert not r.is_complex() and torch.allclose(r, r.T)
    torch.testing.assert_close(r @ r, s, rtol=0, atol=1e-10)
    assert float(torch.linalg.eigvalsh(r).min()) > -1e-10


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


# ---------------------------------------------------------------- model-based metrics (tiny random model)

from lzn_core.eval import protocol as em  # noqa: E402


def _tiny_model(cond: bool = True, **image: object):
    from lzn_core.model import LZNModel
    from lzn_core.recipe import Recipe

    torch.manual_seed(0)
    gen_task: dict = {"kind": "generate", "target": "image"}
    if cond:
        gen_task["condition"] = "label"
    recipe = Recipe.model_validate(
        {
            "latent": {"dim": 8, "solver": "euler", "steps": 10},
            "modalities": {
                "image": {
                    "plugin": "image",
                    "config": {"preset": "tiny", "sample_steps": 4, **image},
                },
                "label": {"plugin": "label", "config": {"num_classes": 10}},
            },
            "tasks": [gen_task, {"kind": "align", "source": "image", "target": "label"}],
            "data": {"train": "unused-*.tar"},
            "train": {"batch_size": 8, "iterations": 1},
        }
    )
    return LZNModel(recipe).eval()


class _OracleEncoder(torch.nn.Module):
    """Reads the class from the image's mean pixel and returns that class's label anchor."""

    def __init__(self, label_encoder: torch.nn.Module, scramble: bool = False) -> None:
        super().__init__()
        self.lab = label_encoder
        self.scramble = scramble

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        k = ((images.mean(dim=(1, 2, 3)) + 1) * 5).round().long().clamp(0, 9)
        a = self.lab.bank()[k]
        return torch.randn(a.shape, generator=torch.Generator().manual_seed(1)) * 3 if self.scramble else a


def _class_images(per_class: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(10).repeat_interleave(per_class)
    return (y.float() / 5 - 1).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).clone(), y


def test_batches_cover_everything_in_full_batches() -> None:
    g = torch.Generator().manual_seed(0)
    batches = em._batches(10, 4, g)
    kept = torch.cat([rows[-k:] for rows, k in batches])
    assert sorted(kept.tolist()) == list(range(10))
    assert all(len(rows) == 4 for rows, _ in batches)
    assert [len(r) for r, _ in em._batches(3, 8, g)] == [3]
    with pytest.raises(ValueError, match="batch size must be >= 1"):
        em._batches(3, 0, g)


def test_label_flow_accuracy_with_an_oracle_encoder() -> None:
    model = _tiny_model()
    with torch.no_grad():
        model.encoders["label"].anchors.mul_(3.0)  # well separated class anchors
    model.encoders["image"] = _OracleEncoder(model.encoders["label"])
    x, y = _class_images()
    rows = em.alpha_batch_sweep(model, "image", "label", x, y, alphas=(0.0,), batch_sizes=(100,))
    assert rows == [{"alpha": 0.0, "batch_size": 100, "accuracy": pytest.approx(1.0, abs=0.03)}]
    pred, conf = em.zonal_predict(model, "image", "label", x, alpha=0.0, batch_size=100, draws=4)
    assert conf.shape == (100,) and float(conf.min()) >= 0 and float(conf.max()) <= 1 + 1e-6
    assert em.classification_edges(model) == [("image", "label")] and em.generation_targets(model) == [
        "image"
    ]
    model.encoders["image"] = _OracleEncoder(model.encoders["label"], scramble=True)
    assert (
        em.alpha_batch_sweep(model, "image", "label", x, y, alphas=(0.0,), batch_sizes=(100,))[0]["accuracy"]
        < 0.4
    )


def test_label_flow_predict_deterministic_and_errors() -> None:
    model = _tiny_model()
    x = torch.rand(12, 1, 8, 8) * 2 - 1
    p1, c1 = em.zonal_predict(model, "image", "label", x, alpha=1.0, batch_size=5, seed=3, steps=10, draws=2)
    p2, c2 = em.zonal_predict(model, "image", "label", x, alpha=1.0, batch_size=5, seed=3, steps=10, draws=2)
    assert torch.equal(p1, p2) and torch.equal(c1, c2) and p1.shape == (12,)
    assert (
        em.zonal_predict(model, "image", "label", x, batch_size=5)[1].isnan().all()
    )  # no draws: no confidence
    with pytest.raises(ValueError, match="evaluation batch is empty"):
        em.zonal_predict(model, "image", "label", torch.zeros(0, 1, 8, 8))
    with pytest.raises(ValueError, match=r"labels must have shape \(12,\)"):
        em.alpha_batch_sweep(model, "image", "label", x, torch.zeros(3, dtype=torch.long))


def test_reconstruction_error_value_and_draws(monkeypatch) -> None:
    model = _tiny_model()
    x, y = _class_images(2)
    dec = model.decoders["image"]
    calls = []

    def fake(images, z, cond, **kw):
        calls.append((z.clone(), cond, kw))
        return images + 0.1

    monkeypatch.setattr(dec, "reconstruct", fake)
    err = em.reconstruction_error(model, "image", x, y, draws=3)
    assert err == pytest.approx(0.1 * 8, rel=1e-5)  # ‖0.1·1‖₂ over 64 pixels
    assert len(calls) == 3 and not torch.equal(calls[0][0], calls[1][0])  # fresh ε per draw
    assert torch.equal(calls[0][1], torch.nn.functional.one_hot(y, 10).float())  # true-label one-hot
    assert calls[0][2]["clip"] is False  # the paper scores the unclipped regeneration
    calls.clear()
    zoned = []
    real_latents = model.latents
    monkeypatch.setattr(model, "latents", lambda a, **kw: zoned.append(len(a)) or real_latents(a, **kw))
    em.reconstruction_error(model, "image", x, y, draws=2, batch_size=8, chunk=6, clip=True)
    assert zoned == [8, 8, 4, 8, 8, 4]  # latents over inference batches of 8 (20 items), per draw
    assert [len(c[0]) for c in calls] == [6, 6, 6, 2] * 2 and calls[0][2]["clip"] is True
    with pytest.raises(ValueError, match="conditioned on 'label': pass its items"):
        em.reconstruction_error(model, "image", x, None, draws=1)
    with pytest.raises(ValueError, match="draws, batch_size and chunk must be >= 1"):
        em.reconstruction_error(model, "image", x, y, draws=0)


def test_reconstruction_error_real_decoder_runs() -> None:
    from lzn_image.unet import variance_scaling_

    model = _tiny_model(cond=False)
    variance_scaling_(model.decoders["image"].up.conv_out.weight, 0.01)  # NCSN++ starts it at ~0: x̂ = x
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    err = em.reconstruction_error(model, "image", x, draws=2, steps=3)
    assert np.isfinite(err) and 0 < err < 2 * 8  # bounded by the [-1, 1] range


def test_samples_shapes_and_conditioning() -> None:
    model = _tiny_model()
    imgs = em.class_samples(model, "label", "image", torch.tensor([0, 3, 3]), steps=2, seed=1)
    assert imgs.shape == (3, 1, 8, 8) and float(imgs.abs().max()) <= 1
    assert torch.equal(
        imgs, em.class_samples(model, "label", "image", torch.tensor([0, 3, 3]), steps=2, seed=1)
    )
    assert em.unconditional_samples(model, "image", 4, steps=2).shape == (4, 1, 8, 8)
    assert em.unconditional_samples(_tiny_model(cond=False), "image", 2, steps=2).shape == (2, 1, 8, 8)


def test_ood_confidences_modes_and_errors() -> None:
    model = _tiny_model()
    x = torch.rand(10, 1, 8, 8) * 2 - 1
    for mode in ("mixed", "separate"):
        c_in, c_out = em.ood_confidences(
            model, "image", "label", x, "inverted", mode=mode, batch_size=8, draws=2
        )
        assert c_in.shape == c_out.shape == (10,)
    assert torch.equal(em.ood_inputs(x, "inverted"), -x)
    noise = em.ood_inputs(x, "noise")
    assert noise.shape == x.shape and float(noise.abs().max()) <= 1
    with pytest.raises(ValueError, match="unknown OOD kind"):
        em.ood_inputs(x, "blur")
    with pytest.raises(ValueError, match="unknown OOD mode"):
        em.ood_confidences(model, "image", "label", x, "noise", mode="both")


def test_zone_vote_confidence() -> None:
    """The confidence of a prediction is the share of draws from the item's zone classified the same."""
    model = _tiny_model()
    with torch.no_grad():
        model.encoders["label"].anchors.mul_(3.0)
    model.encoders["image"] = _OracleEncoder(model.encoders["label"])
    x, y = _class_images(4)
    pred, conf = em.zonal_predict(
        model, "image", "label", x, alpha=0.0, draws=3, vote_alpha=0.0, batch_size=40
    )
    assert torch.equal(conf, torch.ones(40))  # α = 0: every draw is the zone centre
    assert ev.accuracy(pred, y) > 0.9
    pred, conf = em.zonal_predict(model, "image", "label", x, draws=8, vote_alpha=1.0, batch_size=40)
    assert float(conf.min()) >= 0 and float(conf.max()) <= 1 and conf.shape == (40,)
    assert ((conf * 8) - (conf * 8).round()).abs().max() < 1e-6  # vote shares are multiples of 1/draws


def test_probe_features_kinds() -> None:
    model = _tiny_model()
    x = torch.rand(10, 1, 8, 8) * 2 - 1
    shapes = {
        k: em.probe_features(model, "image", x, k, batch_size=4).shape
        for k in ("backbone", "anchor", "latent")
    }
    assert shapes["anchor"] == shapes["latent"] == (10, 8) and shapes["backbone"][0] == 10
    a0 = em.probe_features(model, "image", x, "latent0", seed=0)
    assert torch.allclose(a0, em.probe_features(model, "image", x, "latent0", seed=5))  # α = 0: no noise
    assert not torch.allclose(
        em.probe_features(model, "image", x, "latent", seed=0),
        em.probe_features(model, "image", x, "latent", seed=5),
    )
    with pytest.raises(ValueError, match="unknown probe feature"):
        em.probe_features(model, "image", x, "head")


def test_rf_baseline_decoder_ignores_the_latent(monkeypatch) -> None:
    model = _tiny_model(cond=False, use_latent=False)
    dec = model.decoders["image"]
    x, t = torch.rand(3, 1, 8, 8), torch.full((3,), 0.5)
    with torch.no_grad():
        assert torch.equal(dec.velocity(x, t, torch.randn(3, 8)), dec.velocity(x, t, torch.randn(3, 8)))
    lzn = _tiny_model(cond=False)
    with torch.no_grad():
        assert not torch.equal(
            lzn.decoders["image"].velocity(x, t, torch.randn(3, 8)),
            lzn.decoders["image"].velocity(x, t, torch.randn(3, 8)),
        )
    calls = []
    monkeypatch.setattr(dec, "reconstruct", lambda images, z, cond, **kw: calls.append(1) or images)
    assert em.reconstruction_error(model, "image", x, draws=5) == 0.0 and len(calls) == 5


# ---------------------------------------------------------------- lzn eval


@pytest.fixture(scope="module")
def digits_shards(tmp_path_factory):
    from lzn_core.data.digits import write_digits

    out = tmp_path_factory.mktemp("digits")
    write_digits(out, progress=False)
    return out


def test_cli_eval_end_to_end(tmp_path, digits_shards, capsys, monkeypatch) -> None:
    import json

    from lzn_image.features import DIGIT_FEATURES

    from lzn_core.cli import main
    from lzn_core.io.files import write_model

    monkeypatch.setenv("LZN_CLEANFID_CACHE", str(tmp_path / "no-cache"))  # auto: the digit features

    model = _tiny_model()
    model.recipe.data.train = str(digits_shards / "train-*.tar")
    model.recipe.data.eval = str(digits_shards / "test-*.tar")
    run = tmp_path / "run"
    write_model(model, run / "final")
    out = tmp_path / "eval"
    argv = [
        "eval",
        str(run),
        "--json",
        "--out",
        str(out),
        "--alphas",
        "0,1",
        "--batch-sizes",
        "50",
        "--samples",
        "80",
        "--per-class",
        "2",
        "--limit",
        "100",
        "--steps",
        "2",
        "--recon",
        "8",
        "--draws",
        "2",
    ]
    assert main(argv) == 0
    full = json.loads(capsys.readouterr().out)
    res, gen = full["classification"]["image -> label"], full["generation"]["image"]
    assert full["n_test"] == 100 and len(res["sweep"]) == 2
    assert {r["batch_size"] for r in res["sweep"]} == {50}
    assert 0 <= res["accuracy"] <= 1 and 0 <= res["ece"] <= 1
    assert set(res["ood_auroc"]) == {"noise_mixed", "noise_separate", "inverted_mixed", "inverted_separate"}
    assert 0 <= gen["class_consistency"] <= 1
    assert gen["fid_features"] == DIGIT_FEATURES and gen["fid"] > gen["fid_real_test_vs_train"]
    assert gen["fid_samples"] == 80 and gen["fid_real"] == 1497
    assert gen["recon_error"] > 0  # the paper's setting: training items, unclipped, inference batch 2000
    assert gen["recon_setting"] == {
        "items": 8,
        "split": "train",
        "draws": 2,
        "batch_size": 2000,
        "clipped": False,
    }
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["classification"]["image -> label"]["accuracy"] == res["accuracy"]
    assert (out / "reliability-image-label.png").exists() and (out / "samples-image.png").exists()
    assert (
        main(
            [
                "eval",
                str(run / "final"),
                "--alphas",
                "0",
                "--batch-sizes",
                "100",
                "--samples",
                "0",
                "--per-class",
                "0",
                "--limit",
                "100",
                "--recon",
                "0",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "accuracy (α=0.0, batch 100)" in table and "OOD AUROC noise_mixed" in table
    argv = ["eval", str(run), "--preset", "quick", "--samples", "40", "--per-class", "0", "--steps", "2"]
    assert main([*argv, "--limit", "100", "--recon", "4", "--batch-sizes", "50"]) == 0
    table = capsys.readouterr().out
    assert f"fid_features                             {DIGIT_FEATURES}" in table
    assert (
        "fid_samples                              40" in table
        and "fid_real                                 1497" in table
    )
    assert "recon_error (4 test items, 4 draws, batch 256, clipped)" in table  # the quick preset
    assert main([*argv, "--limit", "100", "--recon", "0", "--judge", "image.fid=clean-fid"]) == 1
    err = capsys.readouterr().err
    if importlib.util.find_spec("cleanfid") is None:  # without the extra: the error names it
        assert "clean-fid needs the optional extra: pip install 'lzn[fid]'" in err
    else:  # with it: the weights are never downloaded
        assert "inception-2015-12-05.pt not found" in err and "nothing is downloaded" in err
    assert main([*argv, "--limit", "100", "--recon", "0", "--judge", "image.fid=inception"]) == 1
    assert (
        "image judge: unknown fid 'inception'; choose one of auto, clean-fid, digits, none"
        in capsys.readouterr().err
    )
    assert main([*argv, "--limit", "100", "--recon", "0", "--judge", "label.fid=none"]) == 1
    assert "judge options for label: no trained decoder of that name judges samples (judges: image)" in (
        capsys.readouterr().err
    )
    assert main([*argv, "--judge", "fid=none"]) == 1
    assert "--judge 'fid=none': expected MODALITY.KEY=VALUE" in capsys.readouterr().err


def test_cli_eval_errors(tmp_path, capsys) -> None:
    from lzn_core.cli import main
    from lzn_core.io.files import resolve_model_dir

    assert main(["eval", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="export a run with `lzn export"):
        resolve_model_dir(tmp_path)
    assert main(["eval", str(tmp_path), "--alphas", "a,b"]) == 1
    assert "--alphas: expected comma-separated numbers" in capsys.readouterr().err


def test_training_creates_the_samples_folder_before_a_preview_writer_writes(tmp_path, monkeypatch) -> None:
    """The framework makes run/samples/; the plugin only writes its file (the protocol says so)."""
    from pathlib import Path

    from lzn_core.eval.training import TrainingEvaluator

    model = _tiny_model()
    model.recipe.data.eval = None  # no test items: grids only
    decoder = model.decoders["image"]

    def bare_writer(items, path, *, nrow=None):  # no mkdir: what a minimal plugin does
        Path(path).write_bytes(b"grid")
        return Path(path)

    monkeypatch.setattr(decoder, "save_preview", bare_writer)
    run = tmp_path / "run"
    out = TrainingEvaluator(model, run)(model, 3, accuracy=False)
    assert out["grid/image"] == str(run / "samples" / "image-step-000003.png")
    assert (run / "samples" / "image-step-000003.png").read_bytes() == b"grid"


# benchmarks/digits.py pieces: tests/test_benchmarks.py


def test_evaluate_without_classification_or_data(tmp_path) -> None:
    from lzn_core.eval.report import evaluate

    model = _tiny_model()
    x, y = _class_images(2)
    res = evaluate(
        model,
        {"image": x, "label": y},
        {"image": x, "label": y},
        samples=0,
        per_class=0,
        recon=0,
        classify=False,
    )
    assert res == {"n_test": 20, "classification": {}, "generation": {"image": {}}}
    assert evaluate(model, {}, {}) == {"n_test": 0, "classification": {}, "generation": {}}


def test_rf_baseline_recipe_is_digits_joint_without_the_latent() -> None:
    from lzn_core.recipe import load_recipe

    joint, rf = load_recipe("digits_joint.yaml"), load_recipe("digits_rf_baseline.yaml")
    assert rf.modalities["image"].config == joint.modalities["image"].config.model_copy(
        update={"use_latent": False}
    )
    assert [t.kind for t in rf.tasks] == ["generate"] and rf.tasks[0] == joint.tasks[0]
    same = ("latent", "data", "train", "eval", "deepspeed", "seed")
    assert {k: getattr(rf, k) for k in same} == {k: getattr(joint, k) for k in same}
