"""Evaluation metrics (lzn_core/eval/metrics.py): checked against scipy / scikit-learn references and closed forms."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

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
