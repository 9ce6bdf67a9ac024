"""Figures and the markdown report of ``benchmarks/digits.py`` (JSON in, PNG + markdown out)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

# What the paper reports at full scale (PAPER.md §3), per claim row of the report.
PAPER = {
    "ce": "no same-encoder CE run; CIFAR-10 RF+LZN 94.47 vs CE-trained ResNet-50 93.62, DLA 95.47 (Table 3)",
    "joint": "joint 94.47 vs alignment only 93.59 (CIFAR-10, Table 3)",
    "recon": "RF (cond.) 0.69 -> RF+LZN 0.38 (CIFAR-10, Table 4); uncond. 0.83 -> 0.41 (Table 1)",
    "cutoff": "u = 5: 94.42 / recon 0.36 vs u = 20: 94.47 / recon 0.38 (Table 8)",
    "cw": "no ablation number in the paper (code uses batch class weights; should matter at small batches)",
    "sweep": "smaller α and larger inference batch help: best setting +2.9 over batch 2000, α = 1 (Fig. 25)",
    "fid": "FID RF (cond.) 2.47 vs RF+LZN 2.40 (Inception features, CIFAR-10, Table 4)",
    "probe": "backbone > anchor > latent α=0 > latent (ImageNet, Fig. 19)",
}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show(ax: Any, img: Any) -> None:
    x = (img.float().clamp(-1, 1) * 0.5 + 0.5).cpu()
    ax.imshow((x[0] if x.shape[0] == 1 else x.permute(1, 2, 0)).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def sample_grid_png(images: Any, per_row: int, path: Path) -> Path:
    """Grid of images (n, C, H, W): one row per class when images are grouped by class."""
    plt = _plt()
    rows = (images.shape[0] + per_row - 1) // per_row
    fig, axes = plt.subplots(rows, per_row, figsize=(per_row * 0.5, rows * 0.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        _show(ax, images[i]) if i < images.shape[0] else ax.axis("off")
    fig.subplots_adjust(wspace=0.05, hspace=0.05, left=0, right=1, top=1, bottom=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def recon_rows_png(originals: Any, recs: dict[str, Any], path: Path) -> Path:
    """Rows: the originals, then one row of reconstructions per model."""
    plt = _plt()
    rows = [("original", originals), *recs.items()]
    n = originals.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.55 + 1.2, len(rows) * 0.6), squeeze=False)
    for r, (name, imgs) in enumerate(rows):
        for c in range(n):
            _show(axes[r][c], imgs[c])
        axes[r][0].set_ylabel(name.replace("_", " "), rotation=0, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(wspace=0.05, hspace=0.05, left=0.2, right=1, top=1, bottom=0)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sweep_png(sweep: list[dict[str, float]], path: Path) -> Path:
    """Accuracy against α, one line per inference batch size."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for b in sorted({r["batch_size"] for r in sweep}):
        pts = sorted((r["alpha"], r["accuracy"]) for r in sweep if r["batch_size"] == b)
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "o-", label=f"batch {b}")
    ax.set(
        xlabel="α (noise scale of the test latents)",
        ylabel="test accuracy (%)",
        title="label-flow accuracy vs α and inference batch",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def losses_png(runs: Path, names: list[str], path: Path) -> Path:
    """Training loss terms of every run (from its metrics.jsonl)."""
    plt = _plt()
    fig, axes = plt.subplots(
        2, (len(names) + 1) // 2, figsize=(3.2 * ((len(names) + 1) // 2), 5), squeeze=False
    )
    for ax, name in zip(axes.flat, names, strict=False):
        f = runs / name / "metrics.jsonl"
        rows = [json.loads(s) for s in f.read_text().splitlines() if s.strip()] if f.exists() else []
        rows = [r for r in rows if "loss" in r]
        for key in [k for k in (rows[-1] if rows else {}) if k == "loss" or k.startswith(("gen_", "align_"))]:
            pts = [
                (r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and r[key] == r[key]
            ]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key, lw=1)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        if rows:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _verdict(ok: bool | None, close: bool = False) -> str:
    """ "yes"/"no", or "within noise" (saying which way it leans) when the gap is below ~3 test images."""
    if ok is None:
        return "n/a"
    if close:
        return "within noise (" + ("leans the claimed way" if ok else "leans against the claim") + ")"
    return "yes" if ok else "no"


def _recon_verdict(rf: float | None, lz: float | None) -> str:
    if not rf or not lz:
        return "n/a"
    return "yes" if lz < 0.7 * rf else ("partly (a smaller drop)" if lz < 0.95 * rf else "no")


def _fid_verdict(j: dict[str, Any], rf: dict[str, Any]) -> str:
    fj, frf, floor = j.get("fid"), rf.get("fid"), j.get("fid_real_test_vs_train")
    if fj is None or frf is None:
        return "n/a"
    if floor is not None and max(fj, frf) <= 1.5 * floor:
        return "within noise (both at the real-test-vs-train floor)"
    return "yes" if fj <= 1.1 * frf else "no"


def _sweep_points(sweep: list[dict[str, float]]) -> tuple[float, float, float, int, int] | None:
    """(acc at α_min & largest batch, at α = 1 & largest batch, at α_min & smallest batch, small, big)."""
    acc = {(r["alpha"], r["batch_size"]): r["accuracy"] for r in sweep}
    sizes, alphas = sorted({b for _, b in acc}), sorted({a for a, _ in acc})
    if not sizes or 1.0 not in alphas:
        return None
    a0, small, big = alphas[0], sizes[0], sizes[-1]
    return acc[(a0, big)], acc[(1.0, big)], acc[(a0, small)], small, big


def _sweep_text(sweep: list[dict[str, float]]) -> str:
    pts = _sweep_points(sweep)
    if pts is None:
        return "–"
    best = max(sweep, key=lambda r: r["accuracy"])
    lo = min(r["alpha"] for r in sweep)
    return (
        f"α={lo}: {_pct(pts[0])} vs α=1: {_pct(pts[1])} (batch {pts[4]}); batch {pts[3]}: {_pct(pts[2])} "
        f"(α={lo}); best {_pct(best['accuracy'])} at α={best['alpha']}, batch {best['batch_size']}"
    )


def _sweep_verdict(sweep: list[dict[str, float]]) -> str:
    pts = _sweep_points(sweep)
    if pts is None:
        return "n/a"
    alpha_ok, batch_ok = pts[0] > pts[1], pts[0] > pts[2]
    if alpha_ok and batch_ok:
        return "yes"
    return f"α: {'yes' if alpha_ok else 'no'}; batch: {'yes' if batch_ok else 'no'}"


def claim_rows(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(claim, paper at full scale, measured here, reproduces?) rows."""
    j, n_test = res["joint"], res["joint"]["n_test"]
    noise = 1.0 / n_test * 3  # ~3 test images: differences below this are within run-to-run noise
    acc = {k: res[k]["accuracy"] for k in ("joint", "align_only", "cutoff05", "cw_on", "cw_off")}
    ce = res["ce"]["accuracy"]
    sweep = j.get("sweep", [])
    rf, lz = res["rf_baseline"].get("recon_error"), j.get("recon_error")
    probe = j.get("linear_probe", {})
    order = ["backbone", "anchor", "latent0", "latent"]
    rows = [
        (
            "LZN classifier vs same encoder + CE head",
            PAPER["ce"],
            f"LZN {_pct(acc['joint'])} vs CE {_pct(ce)}",
            _verdict(acc["joint"] >= ce, ce - acc["joint"] < noise),
        ),
        (
            "8: joint beats alignment only",
            PAPER["joint"],
            f"joint {_pct(acc['joint'])} vs alignment only {_pct(acc['align_only'])}",
            _verdict(acc["joint"] > acc["align_only"], abs(acc["joint"] - acc["align_only"]) < noise),
        ),
        (
            "6/9: latent cuts reconstruction error",
            PAPER["recon"],
            f"RF {rf:.4g} -> RF+LZN {lz:.4g} ({100 * (1 - lz / rf):.0f}% lower)" if rf and lz else "–",
            _recon_verdict(rf, lz),
        ),
        (
            "10: cutoff 5 vs 20 of 100 steps barely matters",
            PAPER["cutoff"],
            f"u=0.05: {_pct(acc['cutoff05'])} / recon {res['cutoff05'].get('recon_error', float('nan')):.4g}; "
            f"u=0.2: {_pct(acc['joint'])} / recon {lz:.4g}"
            if lz
            else "–",
            _verdict(abs(acc["cutoff05"] - acc["joint"]) <= max(0.01, noise)),
        ),
        (
            "11: class weights help at a small batch",
            PAPER["cw"],
            f"on {_pct(acc['cw_on'])} vs off {_pct(acc['cw_off'])} (batch {res['settings']['small_batch']})",
            _verdict(acc["cw_on"] > acc["cw_off"], abs(acc["cw_on"] - acc["cw_off"]) < noise),
        ),
        (
            "7: smaller α / larger inference batch help",
            PAPER["sweep"],
            _sweep_text(sweep),
            _sweep_verdict(sweep),
        ),
        (
            "9: generation quality kept (FID)",
            PAPER["fid"],
            f"digit-feature FID RF {res['rf_baseline'].get('fid', float('nan')):.2f} vs RF+LZN "
            f"{j.get('fid', float('nan')):.2f} (real test vs train: {j.get('fid_real_test_vs_train', float('nan')):.2f})",
            _fid_verdict(j, res["rf_baseline"]),
        ),
        (
            "12: probe order backbone > anchor > latent α=0 > latent",
            PAPER["probe"],
            ", ".join(f"{k} {_pct(probe[k])}" for k in order if k in probe) or "–",
            _verdict(all(probe[a] >= probe[b] for a, b in zip(order, order[1:], strict=False)))
            if len(probe) == 4
            else "n/a",
        ),
    ]
    return rows


def _table(header: list[str], rows: list[tuple[Any, ...]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _rel(path: str | Path, docs: Path) -> str:
    return os.path.relpath(Path(path).resolve(), docs.parent.resolve())


def _command() -> str:
    """The command line of this process, with the benchmark script's path relative to the repository."""
    args = [Path(a).name if a.endswith("digits.py") else a for a in sys.argv[1:]]
    return (
        " ".join(["python benchmarks/digits.py", *args])
        if sys.argv[0].endswith("digits.py")
        else ("python benchmarks/digits.py")
    )


def markdown(res: dict[str, Any], figs: dict[str, str], docs: Path) -> str:
    """The docs/results.md text."""
    s, j, rf = res["settings"], res["joint"], res["rf_baseline"]
    sweep = j.get("sweep", [])
    alphas, sizes = sorted({r["alpha"] for r in sweep}), sorted({r["batch_size"] for r in sweep})
    accs = {(r["alpha"], r["batch_size"]): r["accuracy"] for r in sweep}
    lines = [
        "# Results: the paper's claims at toy scale",
        "",
        f"Generated by `{res.get('command') or _command()}` (`make bench` runs `python benchmarks/digits.py`) on "
        f"{time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} CPU cores ({platform.machine()}), {res['wall_minutes']} min in all. "
        "Data: scikit-learn's bundled 8×8 digits (1497 train / 300 test, `lzn shards digits`). "
        f"Every variant trains {s['iterations']} iterations at batch {s['batch_size']} (the `make run` default "
        "recipe trains longer), one seed, no error bars — like the paper. A difference of ~3 test images "
        "(1%) is within run-to-run noise here. Raw numbers: `benchmarks/results/digits.json`.",
        "",
        "## The claims",
        "",
        _table(
            ["claim (PAPER.md §6)", "paper, full scale", "measured here, toy scale", "reproduces?"],
            claim_rows(res),
        ),
        "",
        "Variants: "
        + "; ".join(f"`{k}`: {v}" for k, v in res["descriptions"].items())
        + "; `ce`: the digits image encoder + Linear(q→10), cross-entropy, same batch / iterations / lr.",
        "",
        "Caveats: training uses 50 label-flow steps (the paper: 100), so the cutoffs are the same "
        "fractions (u = 0.05 / 0.2 of the steps); claim 12 is about case 2 (two-view alignment on ImageNet) "
        "and is probed here on the digits_joint (case 3) encoder, train split -> test split; FID/KID use "
        "digit-classifier features, not Inception, so their scale is not comparable with the paper's.",
        "",
        "## Classification: accuracy against α and the inference batch",
        "",
        "Test latents of a batch of b test images at noise scale α, reverse label flow (100 Euler steps, "
        "uniform weights), nearest anchor (model `joint`).",
        "",
        _table(
            ["α \\ batch", *map(str, sizes)], [(a, *(_pct(accs.get((a, b))) for b in sizes)) for a in alphas]
        ),
        "",
        f"![accuracy vs alpha]({_rel(figs['sweep'], docs)})",
        "",
        "## Calibration and out-of-distribution rejection (not in the paper)",
        "",
        "The label flow's last-step assignment probability is ≈ 1 for every input (the flow ends on an "
        'anchor), so it is no confidence. The confidence `compose("image -> label")` reports is the zone '
        f"vote: draw ε {j['vote_setting']['draws']} times at α = {j['vote_setting']['alpha']} (sampling the "
        "image's latent zone), run the label flow for each draw, confidence = share of the draws that land "
        "in the predicted class. OOD: AUROC of "
        "the zone-vote confidence for test digits vs uniform noise / inverted digits, either shuffled into "
        "the same inference batches (mixed) or zoned in batches of their own (separate: the zoning maps any "
        "batch to ≈ N(0, I), so an all-OOD batch can look in-distribution to the label flow).",
        "",
        _table(
            ["metric", "value"],
            [
                (f"test accuracy (α = {j['setting']['alpha']})", _pct(j["accuracy"])),
                ("mean zone-vote confidence", f"{j['mean_confidence']:.3f}"),
                ("ECE of the zone vote (15 bins)", f"{j['ece']:.3f}"),
                *((f"OOD AUROC {k}", f"{v:.3f}") for k, v in j["ood_auroc"].items()),
            ],
        ),
        "",
        f"![reliability diagram]({_rel(figs['reliability'], docs)})",
        "",
        "## Generation",
        "",
        "FID/KID on the penultimate features of a small MLP classifier fitted on the real training digits "
        f"({s['samples']} unconditional samples vs the training set; Inception features are meaningless at "
        "8×8). Class consistency: share of class-k samples an SVC fitted on real training pixels calls k.",
        "",
        _table(
            ["model", "FID (digit features)", "KID", "class consistency", "recon error ℓ2"],
            [
                (
                    name,
                    f"{r.get('fid', float('nan')):.2f}",
                    f"{r.get('kid', float('nan')):.3f} ± {r.get('kid_std', float('nan')):.3f}",
                    _pct(r.get("class_consistency")),
                    f"{r.get('recon_error', float('nan')):.4g}",
                )
                for name, r in (("RF+LZN (joint)", j), ("RF (rf_baseline)", rf))
            ],
        ),
        "",
        f"Reference: FID of the real test set vs the training set {j.get('fid_real_test_vs_train', 0):.2f}; "
        f"the SVC judge scores {_pct(j.get('judge_test_accuracy'))} on real test digits. Reconstruction: "
        f"{s['recon_images']} test images, {s['draws']} draws of ε each, {s['recon_steps']} Euler steps in "
        "each direction (the paper: RK45; with an exact solver inversion is exact for any model, so the "
        "error measures how straight the conditioned flow is).",
        "",
        "Class-conditional samples of RF+LZN (one row per class, zone latents of the class):",
        "",
        f"![samples joint]({_rel(figs['samples_joint'], docs)})",
        "",
        "and of the RF baseline (one-hot conditioning only):",
        "",
        f"![samples rf]({_rel(figs['samples_rf_baseline'], docs)})",
        "",
        "Reconstructions (top: test images; then RF+LZN; then RF without the latent):",
        "",
        f"![reconstructions]({_rel(figs['recon'], docs)})",
        "",
        "## Training",
        "",
        _table(
            ["run", "minutes"],
            [(k, "reused" if v is None else v) for k, v in res["train_minutes"].items()]
            + [("ce (in process)", round(res["ce"]["seconds"] / 60, 2))],
        ),
        "",
        f"![loss curves]({_rel(figs['losses'], docs)})",
        "",
    ]
    return "\n".join(lines)


def rewrite_docs(out: Path, docs: Path) -> None:
    """Rewrite the markdown page from an existing ``out/digits.json`` (no training, no evaluation)."""
    res = json.loads((out / "digits.json").read_text())
    figs = {k: str(out / v) for k, v in res["figures"].items()}
    docs.write_text(markdown(res, figs, docs))


def write_report(res: dict[str, Any], runs: Path, out: Path, docs: Path | None) -> None:
    """Write digits.json, the sweep and loss figures, and (when ``docs``) the markdown page."""
    res.setdefault("command", _command())
    out.mkdir(parents=True, exist_ok=True)
    figs = dict(res.get("figures", {}))
    figs["sweep"] = str(sweep_png(res["joint"].get("sweep", []), out / "digits_sweep.png"))
    figs["losses"] = str(losses_png(runs, list(res["descriptions"]), out / "digits_losses.png"))
    figs["reliability"] = str(out / "joint" / "reliability-image-label.png")
    res["figures"] = {k: os.path.relpath(v, out) for k, v in figs.items()}
    (out / "digits.json").write_text(json.dumps(res, indent=2) + "\n")
    if docs is not None:
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(markdown(res, figs, docs))
