"""Model-free metrics (tensors in, numbers out): accuracy, calibration, OOD AUROC, FID/KID,
probes of frozen features. The protocols that run a model are in :mod:`lzn_core.eval.protocol`.

Probes: :func:`linear_probe_topk` is the paper's protocol (the authors' ``LinearProbing``: one
linear layer trained with AdamW, lr 3e-4, no weight decay, 300 epochs, batch 8192, top-1/top-5);
:func:`knn_accuracy` the cheap weighted kNN check (cosine, k = 20, τ = 0.07, as InstDisc/DINO);
:func:`linear_probe` a quick scikit-learn logistic regression (the digits benchmark's, not the
paper's protocol).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = [
    "accuracy",
    "expected_calibration_error",
    "reliability_diagram",
    "auroc",
    "frechet_distance",
    "sqrtm_psd",
    "kernel_inception_distance",
    "linear_probe",
    "linear_probe_topk",
    "knn_accuracy",
    "topk_accuracy",
]


def _as_1d(x: Any, what: str) -> torch.Tensor:

    t = torch.as_tensor(x)
    if t.dim() != 1:
        raise ValueError(f"{what} must be 1-D, got shape {tuple(t.shape)}")
    return t


def accuracy(pred: Any, target: Any) -> float:
    """Fraction of ``pred (n,)`` equal to ``target (n,)``."""
    p, t = _as_1d(pred, "pred"), _as_1d(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target differ in length: {p.shape[0]} vs {t.shape[0]}")
    if p.numel() == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float((p == t).float().mean())


def expected_calibration_error(confidence: Any, correct: Any, *, bins: int = 15) -> dict[str, Any]:
    """Expected calibration error with equal-width confidence bins.

    ECE = Σ_b (n_b / n) · |acc_b − conf_b| over bins b of (0, 1].

    Args:
        confidence: (n,) predicted probability of the predicted class, in [0, 1].
        correct: (n,) bool/0-1, whether the prediction was right.
        bins: number of equal-width bins.

    Returns:
        ``{"ece", "bins": [{"lo", "hi", "count", "confidence", "accuracy"}, ...]}``
        (empty bins are listed with count 0 and ``None`` means).
    """

    c = _as_1d(confidence, "confidence").double()
    k = _as_1d(correct, "correct").double()
    if c.shape != k.shape:
        raise ValueError(f"confidence and correct differ in length: {c.shape[0]} vs {k.shape[0]}")
    if c.numel() == 0:
        raise ValueError("expected_calibration_error of an empty set is undefined")
    if bool(((c < 0) | (c > 1) | c.isnan()).any()):
        raise ValueError("confidence must lie in [0, 1]")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    idx = torch.clamp((c * bins).ceil().long() - 1, 0, bins - 1)  # bin b = (b/bins, (b+1)/bins]
    ece, table = 0.0, []
    for b in range(bins):
        m = idx == b
        n = int(m.sum())
        conf = float(c[m].mean()) if n else None
        acc = float(k[m].mean()) if n else None
        if n:
            ece += n / c.numel() * abs(acc - conf)  # type: ignore[operator]
        table.append({"lo": b / bins, "hi": (b + 1) / bins, "count": n, "confidence": conf, "accuracy": acc})
    return {"ece": ece, "bins": table}


def reliability_diagram(ece: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Write a reliability diagram (accuracy vs confidence per bin) of an ECE result as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    full = [b for b in ece["bins"] if b["count"]]
    width = ece["bins"][0]["hi"] - ece["bins"][0]["lo"]
    ax.bar(
        [b["lo"] for b in full],
        [b["accuracy"] for b in full],
        width=width,
        align="edge",
        edgecolor="k",
        alpha=0.7,
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="confidence",
        ylabel="accuracy",
        title=title or f"ECE = {ece['ece']:.3f}",
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def auroc(positive: Any, negative: Any) -> float:
    """Area under the ROC curve of a score separating ``positive`` from ``negative``.

    Equals P(s_pos > s_neg) + ½ P(s_pos = s_neg) (Mann-Whitney U with ties),
    computed from average ranks.

    Args:
        positive: (n,) scores of in-distribution inputs (should be high).
        negative: (m,) scores of out-of-distribution inputs.
    """

    p = _as_1d(positive, "positive").double()
    n = _as_1d(negative, "negative").double()
    if p.numel() == 0 or n.numel() == 0:
        raise ValueError("auroc needs at least one positive and one negative score")
    s = torch.cat([p, n])
    if bool(s.isnan().any()):
        raise ValueError("auroc: scores contain NaN")
    order = torch.argsort(s)
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, s.numel() + 1, dtype=s.dtype)
    uniq, inverse = torch.unique(s, return_inverse=True)  # average the ranks of ties
    sums = torch.zeros(uniq.numel(), dtype=s.dtype).index_add_(0, inverse, ranks)
    counts = torch.zeros(uniq.numel(), dtype=s.dtype).index_add_(0, inverse, torch.ones_like(s))
    ranks = (sums / counts)[inverse]
    u = ranks[: p.numel()].sum() - p.numel() * (p.numel() + 1) / 2
    return float(u / (p.numel() * n.numel()))


def _check_feats(a: Any, b: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:

    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{what}: expected features (n, d) and (m, d), got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"{what}: needs at least 2 samples per set, got {a.shape[0]} and {b.shape[0]}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError(f"{what}: features contain NaN or inf")
    return a, b


def sqrtm_psd(s: torch.Tensor) -> torch.Tensor:
    """The square root of a symmetric positive semi-definite matrix: the symmetric PSD R with R·R = S.

    From the eigendecomposition S = V diag(λ) Vᵀ (``torch.linalg.eigh`` of the symmetrised
    (S + Sᵀ)/2): R = V diag(√max(λ, 0)) Vᵀ. A covariance is PSD in exact arithmetic; the tiny
    negative eigenvalues that round-off gives a singular one (fewer samples than dimensions)
    are clamped to 0, so R is always real and finite. Unlike a general matrix square root
    (``scipy.linalg.sqrtm``: Schur form, complex round-off on non-symmetric input), nothing
    here depends on scipy.

    Args:
        s: (d, d) symmetric PSD matrix (float64 recommended).

    Returns:
        (d, d) symmetric PSD R with R·R = S (up to round-off).
    """
    vals, vecs = torch.linalg.eigh((s + s.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(feats_a: Any, feats_b: Any) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID when the features are Inception's).

    d² = ‖μ_a − μ_b‖² + tr Σ_a + tr Σ_b − 2 tr (Σ_a Σ_b)^½, in float64, with the unbiased
    covariances (``np.cov``'s, as clean-fid and the TTUR code use). The cross term: Σ_a Σ_b =
    Σ_a^½ (Σ_a^½ Σ_b) and M = (Σ_a^½ Σ_b) Σ_a^½ = Σ_a^½ Σ_b Σ_a^½ share their eigenvalues (AB
    and BA do), and M is symmetric PSD, so tr (Σ_a Σ_b)^½ = Σ_i √λ_i(M): one
    :func:`sqrtm_psd` and one ``eigvalsh``, real at every step. clean-fid computes the same
    term with ``scipy.linalg.sqrtm(Σ_a Σ_b)`` (a general, complex square root whose real part
    it keeps); its values agree with these to 1e-8 relative on full-rank and singular
    covariances (``tests/eval/test_metrics.py``), and nothing here needs scipy or clean-fid.

    Args:
        feats_a: (n, d) features; feats_b: (m, d) features.
    """

    a, b = _check_feats(feats_a, feats_b, "frechet_distance")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root = sqrtm_psd(cov_a)
    cross = torch.linalg.eigvalsh(root @ cov_b @ root).clamp_min(0).sqrt().sum()
    d2 = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return float(d2.clamp_min(0))


def kernel_inception_distance(
    feats_a: Any, feats_b: Any, *, subsets: int = 50, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel distance (KID): unbiased MMD² with the kernel k(x, y) = (xᵀy / d + 1)³.

    Averaged over ``subsets`` random subsets of ``min(subset_size, n, m)`` rows of each set.

    Args:
        feats_a: (n, d); feats_b: (m, d).

    Returns:
        (mean, std) of the subset estimates.
    """

    a, b = _check_feats(feats_a, feats_b, "kernel_inception_distance")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    m = min(subset_size, a.shape[0], b.shape[0])
    d = a.shape[1]
    gen = torch.Generator().manual_seed(seed)
    est = []
    for _ in range(subsets):
        x = a[torch.randperm(a.shape[0], generator=gen)[:m]]
        y = b[torch.randperm(b.shape[0], generator=gen)[:m]]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        off = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        est.append(off - 2 * kxy.mean())
    t = torch.stack(est)
    return float(t.mean()), float(t.std()) if subsets > 1 else 0.0


def linear_probe(
    train_x: Any, train_y: Any, test_x: Any, test_y: Any, *, c: float = 1.0, max_iter: int = 2000
) -> float:
    """Test accuracy of a logistic-regression probe on frozen, standardised features.

    Args:
        train_x: (n, d) features; train_y: (n,) labels; test_x: (m, d); test_y: (m,).
        c: inverse L2 strength (sklearn's ``C``).
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xs = [
        np.asarray(t.detach().cpu() if hasattr(t, "detach") else t, dtype=np.float64)
        for t in (train_x, test_x)
    ]
    ys = [
        np.asarray(t.detach().cpu() if hasattr(t, "detach") else t).astype(np.int64)
        for t in (train_y, test_y)
    ]
    for x, y, name in ((xs[0], ys[0], "train"), (xs[1], ys[1], "test")):
        if x.ndim != 2 or y.shape != (x.shape[0],):
            raise ValueError(
                f"linear_probe: {name} features must be (n, d) with labels (n,), got {x.shape}, {y.shape}"
            )
    if xs[0].shape[1] != xs[1].shape[1]:
        raise ValueError(
            f"linear_probe: train and test feature sizes differ: {xs[0].shape[1]} vs {xs[1].shape[1]}"
        )
    if len(np.unique(ys[0])) < 2:
        raise ValueError("linear_probe: the training labels hold a single class")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    probe.fit(xs[0], ys[0])
    return float((probe.predict(xs[1]) == ys[1]).mean())


def _probe_data(x: Any, y: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    xt, yt = torch.as_tensor(x).float(), torch.as_tensor(y)
    if xt.dim() != 2 or yt.shape != (xt.shape[0],) or xt.shape[0] == 0:
        raise ValueError(
            f"{what}: features must be (n, d) with labels (n,), n > 0; got {tuple(xt.shape)}, {tuple(yt.shape)}"
        )
    if yt.is_floating_point() or yt.dtype == torch.bool or bool((yt < 0).any()):
        raise ValueError(f"{what}: labels must be non-negative class indices (int), got {yt.dtype}")
    if not bool(torch.isfinite(xt).all()):
        raise ValueError(f"{what}: features contain NaN or inf")
    return xt, yt.long()


def topk_accuracy(
    scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """``{"top1": ..., "top5": ...}``: share of rows whose label is among the k highest scores (B, C)."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hit = top == labels.view(-1, 1).to(top.device)
    return {f"top{k}": float(hit[:, :k].any(dim=1).float().mean()) for k in ks}


def linear_probe_topk(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    num_classes: int | None = None,
    epochs: int = 300,
    lr: float = 3e-4,
    weight_decay: float = 0.0,
    batch_size: int = 8192,
    ks: tuple[int, ...] = (1, 5),
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """The paper's linear probe on frozen features: top-k test accuracy of a trained linear layer.

    As the authors' ``LinearProbing``: ``nn.Linear(d, C)`` (torch's default init) on the raw
    features, cross-entropy, AdamW(lr, weight_decay), ``epochs`` passes over the training
    features in shuffled batches of ``batch_size`` (seeded; the last, shorter batch is kept, so
    a set smaller than one batch still trains), then top-k accuracy of the test features.

    Args:
        train_x: (n, d) features; train_y: (n,) class indices; test_x: (m, d); test_y: (m,).
        num_classes: C (default: 1 + the largest label seen).
        device: where to train (default: the features' device).

    Returns:
        ``{"top1", "top5", "train_loss"}`` (``train_loss``: mean cross-entropy of the last epoch).
    """
    xtr, ytr = _probe_data(train_x, train_y, "linear_probe_topk train")
    xte, yte = _probe_data(test_x, test_y, "linear_probe_topk test")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(
            f"linear_probe_topk: train and test feature sizes differ: {xtr.shape[1]} vs {xte.shape[1]}"
        )
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    c = int(num_classes or max(int(ytr.max()), int(yte.max())) + 1)
    if int(ytr.max()) >= c or int(yte.max()) >= c:
        raise ValueError(f"linear_probe_topk: a label is >= num_classes = {c}")
    dev = torch.device(device) if device is not None else xtr.device
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = torch.nn.Linear(xtr.shape[1], c).to(dev)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    xtr, ytr = xtr.to(dev), ytr.to(dev)
    loss_sum = torch.zeros((), device=dev)
    with torch.enable_grad():
        for _ in range(epochs):
            loss_sum.zero_()
            perm = torch.randperm(xtr.shape[0], generator=gen).to(dev)
            for rows in perm.split(batch_size):
                loss = torch.nn.functional.cross_entropy(head(xtr[rows]), ytr[rows])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach() * rows.numel()
    with torch.no_grad():
        scores = torch.cat([head(chunk.to(dev)) for chunk in xte.split(batch_size)])
    return {**topk_accuracy(scores, yte, ks), "train_loss": float(loss_sum) / xtr.shape[0]}


def knn_accuracy(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    ks: tuple[int, ...] = (1, 5),
    chunk: int = 1024,
) -> dict[str, float]:
    """Weighted k-nearest-neighbour accuracy of frozen features (InstDisc / DINO's kNN monitor).

    Features are L2-normalised; each test row votes its k most cosine-similar training rows
    with weight exp(similarity / temperature) per class; top-k of the class votes.

    Returns:
        ``{"top1", "top5"}``.
    """
    xtr, ytr = _probe_data(train_x, train_y, "knn_accuracy train")
    xte, yte = _probe_data(test_x, test_y, "knn_accuracy test")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(
            f"knn_accuracy: train and test feature sizes differ: {xtr.shape[1]} vs {xte.shape[1]}"
        )
    if k < 1 or temperature <= 0:
        raise ValueError(f"k must be >= 1 and temperature > 0, got {k}, {temperature}")
    c = int(num_classes or max(int(ytr.max()), int(yte.max())) + 1)
    bank = torch.nn.functional.normalize(xtr, dim=1)
    ytr = ytr.to(bank.device)
    votes = []
    for q in xte.split(chunk):
        sim = torch.nn.functional.normalize(q.to(bank.device), dim=1) @ bank.T
        top, idx = sim.topk(min(k, bank.shape[0]), dim=1)
        v = torch.zeros(q.shape[0], c, device=bank.device)
        votes.append(v.scatter_add_(1, ytr[idx], (top / temperature).exp()))
    return topk_accuracy(torch.cat(votes), yte, ks)
