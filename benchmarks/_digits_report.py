"""Figures and pages of ``benchmarks/digits.py``: per-seed results in, mean ± std, tests, verdicts out.

``write_report`` takes what ``digits.py`` collected (``{"variants": {name: {"runs": [result JSON
of each seed]}}, ...}``), computes the claims table, the LZN-vs-CE gap table and the text
comparison, writes ``digits.json``, the figures, ``docs/results.md`` and ``text.md``. A variant
without finished runs is reported as not run (no verdict that needs it, a *Not run* section).
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stats import ALPHA, Summary, Test, directional, equivalent, paired, summary, welch  # noqa: E402

ACC_MARGIN = 0.01  # 1 point = 3 of the 300 test images: "matches" / "barely matters" within it
RECON_MARGIN = 0.05  # relative: reconstruction errors within 5% "barely differ"
FID_MARGIN = 0.10  # relative: FID within 10% of the baseline's "is kept"

# What the paper reports at full scale (docs/method.md §9), per claim row of the report.
PAPER = {
    "ce": "case 3 matches supervised training: CIFAR-10 RF+LZN 94.47 vs CE-trained ResNet-50 93.62, DLA 95.47 "
    "(Table 3; no same-encoder CE run)",
    "joint": "joint 94.47 vs alignment only 93.59 (CIFAR-10, Table 3)",
    "recon": "RF (cond.) 0.69 -> RF+LZN 0.38 (CIFAR-10, Table 4); uncond. 0.83 -> 0.41 (Table 1)",
    "cutoff": "u = 5: 94.42 / recon 0.36 vs u = 20: 94.47 / recon 0.38 (Table 8)",
    "cw": "no ablation number in the paper (code uses batch class weights; should matter at small batches)",
    "sweep": "smaller α and larger inference batch help: best setting +2.9 over batch 2000, α = 1 (Fig. 25)",
    "fid": "FID RF (cond.) 2.47 vs RF+LZN 2.40 (Inception features, CIFAR-10, Table 4)",
    "probe": "backbone > anchor > latent α=0 > latent (ImageNet, Fig. 19)",
}


# ----------------------------------------------------------------------------- per-seed values
def metric(run: dict[str, Any], key: str) -> float | None:
    """A metric of one job's result, ``key`` a "/"-path into its metrics ("probe/anchor")."""
    v: Any = run.get("metrics", {})
    for k in key.split("/"):
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return float(v) if isinstance(v, (int, float)) else None


def vals(res: dict[str, Any], name: str, key: str) -> list[float]:
    """The metric over the seeds of a variant (seed order; seeds without it left out)."""
    runs = res["variants"].get(name, {}).get("runs", [])
    return [x for x in (metric(r, key) for r in runs) if x is not None]


def ran(res: dict[str, Any], name: str) -> bool:
    """Whether at least one seed of the variant finished."""
    return bool(res["variants"].get(name, {}).get("runs"))


NOT_RUN = "not run"


def _mark_not_run(res: dict[str, Any], row: dict[str, str], needs: tuple[str, ...]) -> dict[str, str]:
    """A claim row whose variants did not all run: no test, the verdict says which are missing."""
    missing = [n for n in needs if not ran(res, n)]
    if missing:
        row.update(test="–", verdict=f"{NOT_RUN} (`{'`, `'.join(missing)}` not run)")
    return row


def paired_vals(res: dict[str, Any], name: str, a: str, b: str) -> tuple[list[float], list[float]]:
    """Two metrics of the same runs, only seeds having both (for the paired test)."""
    pairs = [(metric(r, a), metric(r, b)) for r in res["variants"].get(name, {}).get("runs", [])]
    kept = [(x, y) for x, y in pairs if x is not None and y is not None]
    return [x for x, _ in kept], [y for _, y in kept]


def pct(s: Summary) -> str:
    return s.text(".1f", 100, "%")


def num(s: Summary, fmt: str = ".3f") -> str:
    return s.text(fmt)


def test_text(t: Test, scale: float = 100.0, unit: str = " pt", fmt: str = "+.1f") -> str:
    """ "Δ +1.2 pt [−0.3, +2.7], p = 0.08 (Welch)"."""
    if not math.isfinite(t.p):
        return "–"
    ci = f"[{t.low * scale:{fmt}}, {t.high * scale:{fmt}}]"
    return f"Δ {t.diff * scale:{fmt}}{unit} {ci}, p = {t.p:.2g} ({t.kind})"


# ----------------------------------------------------------------------------- claims
def fid_blind(res: dict[str, Any]) -> str:
    """A sentence when the digit-feature FID ranks a model's samples above the real test set by more than
    their seed spread (then it rewards closeness to the training set, not quality), else ""."""
    real = summary(vals(res, "joint", "fid_real_test_vs_train"))
    better = [
        (label, summary(vals(res, name, "fid")))
        for label, name in (("the RF baseline", "rf_baseline"), ("RF+LZN", "joint"))
    ]
    better = [
        (label, s) for label, s in better if s.n and real.n and s.mean + s.std < real.mean
    ]  # beyond its spread
    if not better:
        return ""
    who = " and ".join(f"{label} ({num(s, '.2f')})" for label, s in better)
    return (
        f"the digit-feature FID ranks {who} above the real test set ({num(real, '.2f')}): it rewards samples "
        "close to the training set it is computed against, so it does not rank sample quality at this scale"
    )


def claim_rows(res: dict[str, Any]) -> list[dict[str, str]]:
    """The claims table: claim, paper, measured (mean ± std), test, verdict."""
    acc = {k: vals(res, k, "accuracy") for k in ("joint", "align_only", "cutoff05", "cw_on", "cw_off", "ce")}
    s = {k: summary(v) for k, v in acc.items()}
    rows = []

    t = welch(acc["joint"], acc["ce"])
    rows.append(
        dict(
            claim="case 3: the LZN classifier matches the same encoder + CE head",
            paper=PAPER["ce"],
            measured=f"LZN {pct(s['joint'])} vs CE {pct(s['ce'])}",
            test=test_text(t),
            verdict=equivalent(t, ACC_MARGIN, one_sided=True),
        )
    )
    t = welch(acc["joint"], acc["align_only"])
    rows.append(
        dict(
            claim="8: joint beats alignment only",
            paper=PAPER["joint"],
            measured=f"joint {pct(s['joint'])} vs alignment only {pct(s['align_only'])}",
            test=test_text(t),
            verdict=directional(t, 1),
        )
    )
    rf, lz = vals(res, "rf_baseline", "recon_error"), vals(res, "joint", "recon_error")
    t = welch(lz, rf)
    drop = f" ({100 * (1 - summary(lz).mean / summary(rf).mean):.0f}% lower)" if rf and lz else ""
    rows.append(
        dict(
            claim="6/9: the latent cuts reconstruction error",
            paper=PAPER["recon"],
            measured=f"RF {num(summary(rf))} -> RF+LZN {num(summary(lz))}{drop}",
            test=test_text(t, 1.0, "", "+.3f"),
            verdict=directional(t, -1),
        )
    )
    cut_recon = vals(res, "cutoff05", "recon_error")
    t_acc, t_rec = welch(acc["cutoff05"], acc["joint"]), welch(cut_recon, lz)
    v_acc = equivalent(t_acc, ACC_MARGIN)
    v_rec = equivalent(t_rec, RECON_MARGIN * summary(lz).mean if lz else float("nan"))
    rows.append(
        dict(
            claim="10: cutoff 5 vs 20 of 100 steps barely matters",
            paper=PAPER["cutoff"],
            measured=f"u=0.05: {pct(s['cutoff05'])} / recon {num(summary(cut_recon))}; "
            f"u=0.2: {pct(s['joint'])} / recon {num(summary(lz))}",
            test=f"accuracy {test_text(t_acc)}; recon {test_text(t_rec, 1.0, '', '+.3f')}",
            verdict=v_acc if v_acc == v_rec else f"accuracy: {v_acc}; recon: {v_rec}",
        )
    )
    t = welch(acc["cw_on"], acc["cw_off"])
    rows.append(
        dict(
            claim="11: class weights help at a small batch",
            paper=PAPER["cw"],
            measured=f"on {pct(s['cw_on'])} vs off {pct(s['cw_off'])} (batch {res['settings']['small_batch']})",
            test=test_text(t),
            verdict=directional(t, 1),
        )
    )
    big, small = max(res["settings"]["batch_sizes"]), min(res["settings"]["batch_sizes"])
    best, worst = f"sweep/0.0@{big}", f"sweep/1.0@{big}"
    a0, a1 = paired_vals(res, "joint", best, worst)
    b0, b1 = paired_vals(res, "joint", best, f"sweep/0.0@{small}")
    t_a, t_b = paired(a0, a1), paired(b0, b1)
    v_a, v_b = directional(t_a, 1), directional(t_b, 1)
    rows.append(
        dict(
            claim="7: smaller α / larger inference batch help",
            paper=PAPER["sweep"],
            measured=f"α=0: {pct(summary(a0))} vs α=1: {pct(summary(a1))} (batch {big}); "
            f"batch {small}: {pct(summary(b1))} (α=0)",
            test=f"α: {test_text(t_a)}; batch: {test_text(t_b)}",
            verdict=v_a if v_a == v_b else f"α: {v_a}; batch: {v_b}",
        )
    )
    fj, frf = vals(res, "joint", "fid"), vals(res, "rf_baseline", "fid")
    floor = summary(vals(res, "joint", "fid_real_test_vs_train"))
    t = welch(frf, fj)  # > −margin: RF+LZN's FID is not worse than RF's by more than the margin
    verdict = equivalent(t, FID_MARGIN * summary(frf).mean if frf else float("nan"), one_sided=True)
    blind = fid_blind(res)
    rows.append(
        dict(
            claim="9: generation quality kept (FID)",
            paper=PAPER["fid"],
            measured=f"digit-feature FID RF {num(summary(frf), '.2f')} vs RF+LZN {num(summary(fj), '.2f')} "
            f"(real test vs train: {num(floor, '.2f')})",
            test=test_text(t, 1.0, "", "+.2f").replace("Δ", "Δ (RF − RF+LZN)"),
            verdict=verdict + ("; **not a quality measure here**: " + blind if blind else ""),
        )
    )
    order = ["backbone", "anchor", "latent0", "latent"]
    parts, verdicts = [], []
    for a, b in zip(order, order[1:], strict=False):
        x, y = paired_vals(res, "joint", f"probe/{a}", f"probe/{b}")
        t = paired(x, y)
        parts.append(f"{a} > {b}: {test_text(t)}")
        verdicts.append((a, b, directional(t, 1)))
    same = {v for _, _, v in verdicts}
    rows.append(
        dict(
            claim="12: probe order backbone > anchor > latent α=0 > latent",
            paper=PAPER["probe"],
            measured=", ".join(f"{k} {pct(summary(vals(res, 'joint', f'probe/{k}')))}" for k in order),
            test="; ".join(parts),
            verdict=same.pop() if len(same) == 1 else "; ".join(f"{a} > {b}: {v}" for a, b, v in verdicts),
        )
    )
    needs = (
        ("joint", "ce"),
        ("joint", "align_only"),
        ("joint", "rf_baseline"),
        ("joint", "cutoff05"),
        ("cw_on", "cw_off"),
        ("joint",),
        ("joint", "rf_baseline"),
        ("joint",),
    )
    return [_mark_not_run(res, row, need) for row, need in zip(rows, needs, strict=True)]


# ----------------------------------------------------------------------------- the LZN-vs-CE gap
def gap_rows(res: dict[str, Any]) -> list[dict[str, str]]:
    """One row per change of joint: LZN and CE accuracies, the gap's test, the change's effect on LZN."""
    rows = []
    joint = vals(res, "joint", "accuracy")
    for what, lzn, ce in res["gap_rows"]:
        a, c = vals(res, lzn, "accuracy"), vals(res, ce, "accuracy")
        t = welch(a, c)
        verdict = equivalent(t, ACC_MARGIN, one_sided=True)
        gap = (
            "closed"
            if verdict.startswith("reproduces")
            else ("open" if verdict.startswith("does not") else "within the spread")
        )
        vs_joint = "–" if lzn == "joint" else directional(welch(a, joint), 1)
        missing = [n for n in (lzn, ce) if not ran(res, n)]
        if missing:
            gap, vs_joint = f"{NOT_RUN} (`{'`, `'.join(missing)}`)", "–"
        rows.append(
            dict(
                change=what,
                lzn=lzn,
                ce=ce,
                n=str(len(a)),
                lzn_acc=pct(summary(a)),
                lzn_train=pct(summary(vals(res, lzn, "train_accuracy"))),
                lzn_probe=pct(summary(vals(res, lzn, "probe_anchor"))),
                ce_acc=pct(summary(c)),
                ce_ema=pct(summary(vals(res, ce, "accuracy_ema"))),
                ce_train=pct(summary(vals(res, ce, "train_accuracy"))),
                gap_test=test_text(t),
                gap=gap,
                vs_joint=vs_joint.replace("reproduces", "raises LZN").replace(
                    "does not reproduce (significant, the other way)", "lowers LZN"
                ),
            )
        )
    return rows


def gap_reading(rows: list[dict[str, str]], res: dict[str, Any]) -> list[str]:
    """Sentences that follow from the gap table (which changes close it, which raise LZN)."""
    closed = [r["change"] for r in rows if r["gap"] == "closed"]
    raised = [r["change"] for r in rows if r["vs_joint"] == "raises LZN"]
    lowered = [r["change"] for r in rows if r["vs_joint"] == "lowers LZN"]
    base = rows[0]
    if base["gap"].startswith(NOT_RUN):
        return [f"* The base row did not run ({base['gap']}): no reading."]
    skipped = [r["change"] for r in rows if r["gap"].startswith(NOT_RUN)]
    j_tr, j_te = summary(vals(res, "joint", "train_accuracy")), summary(vals(res, "joint", "accuracy"))
    probe = summary(vals(res, "joint", "probe_anchor"))
    out = [
        f"* Base (digits_joint): LZN {base['lzn_acc']} vs CE {base['ce_acc']}: gap **{base['gap']}** "
        f"({base['gap_test']}).",
        "* Rows where the gap is closed (LZN at most 1 point below CE with 95% confidence): "
        + (", ".join(closed) if closed else "none")
        + ".",
        "* Changes that raise LZN's accuracy significantly over digits_joint: "
        + (", ".join(raised) if raised else "none")
        + "; that lower it: "
        + (", ".join(lowered) if lowered else "none")
        + ".",
        f"* Where the joint model loses: training-split accuracy {pct(j_tr)} vs test {pct(j_te)} "
        f"(CE: {base['ce_train']} vs {base['ce_acc']}); a linear probe on the same anchors reaches "
        f"{pct(probe)} (the label flow reads {pct(j_te)} out of them).",
    ]
    if skipped:
        out.append("* Rows not run (see *Not run* above): " + ", ".join(skipped) + ".")
    return out


# ----------------------------------------------------------------------------- figures
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _errorbar_points(ax: Any, y: float, values: list[float], color: str, label: str | None) -> None:
    s = summary(values)
    if s.n == 0:
        return
    ax.errorbar(100 * s.mean, y, xerr=100 * s.std, fmt="o", color=color, capsize=3, label=label)
    ax.plot([100 * v for v in values], [y] * len(values), "|", color=color, alpha=0.6, markersize=8)


def _saved(plt: Any, fig: Any, path: Path) -> Path:
    """Lay out, write at 100 dpi and close a figure; returns its path."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def sweep_png(res: dict[str, Any], path: Path) -> Path:
    """Accuracy against α, one line per inference batch size: mean ± std over the seeds."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for b in res["settings"]["batch_sizes"]:
        pts = [(a, summary(vals(res, "joint", f"sweep/{a}@{b}"))) for a in res["settings"]["alphas"]]
        pts = [(a, s) for a, s in pts if s.n]
        if pts:
            ax.errorbar(
                [a for a, _ in pts],
                [100 * s.mean for _, s in pts],
                yerr=[100 * s.std for _, s in pts],
                fmt="o-",
                capsize=3,
                label=f"batch {b}",
            )
    ax.set(xlabel="α (noise scale of the test latents)", ylabel="test accuracy (%)")
    ax.set_title("label-flow accuracy vs α and inference batch (mean ± std over seeds)", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _saved(plt, fig, path)


def claims_png(res: dict[str, Any], path: Path) -> Path:
    """Test accuracy of the claim variants: mean ± std (bars) and each seed (ticks)."""
    plt = _plt()
    names = ["joint", "ce", "align_only", "cutoff05", "cw_on", "cw_off"]
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for i, name in enumerate(names):
        _errorbar_points(ax, -i, vals(res, name, "accuracy"), "C0" if name != "ce" else "C3", None)
    ax.set_yticks([-i for i in range(len(names))], names, fontsize=8)
    ax.set_xlabel("test accuracy (%)")
    ax.set_title("claim variants: mean ± std over seeds, ticks = seeds", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    return _saved(plt, fig, path)


def gap_png(res: dict[str, Any], path: Path) -> Path:
    """The gap table as a figure: LZN (blue) and CE (red) test accuracy per change, mean ± std."""
    plt = _plt()
    rows = res["gap_rows"]
    fig, ax = plt.subplots(figsize=(6.5, 0.42 * len(rows) + 1.2))
    for i, (_, lzn, ce) in enumerate(rows):
        _errorbar_points(
            ax, -i + 0.12, vals(res, lzn, "accuracy"), "C0", "LZN (label flow)" if i == 0 else None
        )
        _errorbar_points(
            ax, -i - 0.12, vals(res, ce, "accuracy"), "C3", "CE head, same encoder" if i == 0 else None
        )
    ax.set_yticks([-i for i in range(len(rows))], [r[0] for r in rows], fontsize=8)
    ax.set_xlabel("test accuracy (%)")
    ax.set_title("the LZN-vs-CE gap: one change of digits_joint per row", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3, axis="x")
    return _saved(plt, fig, path)


def text_png(res: dict[str, Any], path: Path) -> Path:
    """Text metrics per caption set: mean ± std over seeds, with the class-only references."""
    from text import SUITE_ROWS, scalar

    plt = _plt()
    sets = text_sets(res)
    keys = [
        (k, w, r)
        for k, w, r in SUITE_ROWS
        if any(scalar(x.get(k)) is not None for v in sets.values() for x in v)
    ]
    fig, ax = plt.subplots(figsize=(7, 0.42 * len(keys) + 1.2))
    for i, (key, _, ref) in enumerate(keys):
        for j, (name, runs) in enumerate(sets.items()):
            got = [scalar(r.get(key)) for r in runs]
            _errorbar_points(
                ax, -i + 0.15 - 0.3 * j, [g for g in got if g is not None], f"C{j}", name if i == 0 else None
            )
        if ref and "attributes" in sets:
            refs = [scalar(r.get(ref)) for r in sets["attributes"]]
            refs = [r for r in refs if r is not None]
            if refs:
                ax.plot(
                    [100 * summary(refs).mean], [-i], "kx", label="class-only reference" if i == 5 else None
                )
    ax.set_yticks([-i for i in range(len(keys))], [k for k, _, _ in keys], fontsize=7)
    ax.set_xlabel("%")
    ax.set_title("digits_text on template vs attribute captions (mean ± std over seeds)", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3, axis="x")
    return _saved(plt, fig, path)


def losses_png(runs: Path, names: list[str], path: Path) -> Path:
    """Training loss terms of seed 0 of every run (from its metrics.jsonl). An existing figure is kept
    when a run directory it was drawn from is gone (a resumed benchmark keeps results, not runs)."""
    if path.is_file() and any(not (runs / n / "seed0" / "metrics.jsonl").is_file() for n in names):
        return path
    plt = _plt()
    cols = (len(names) + 1) // 2
    fig, axes = plt.subplots(2, cols, figsize=(3.2 * cols, 5), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        f = runs / name / "seed0" / "metrics.jsonl"
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
    return _saved(plt, fig, path)


# ----------------------------------------------------------------------------- pages
def _table(header: list[str], rows: list[tuple[Any, ...]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _rel(path: str | Path, docs: Path) -> str:
    return os.path.relpath(Path(path).resolve(), docs.parent.resolve())


def _img(figs: dict[str, str], key: str, docs: Path, alt: str, after: str = "") -> str:
    """A figure's markdown, or a line saying it was not drawn (its model did not run)."""
    if key not in figs or not Path(figs[key]).is_file():
        return f"(figure {alt!r} not drawn: no seed-0 model for it)"
    return f"![{alt}]({_rel(figs[key], docs)}){after}"


def _command() -> str:
    """The command line of this process, with the benchmark script's path relative to the repository."""
    args = [a for a in sys.argv[1:] if a != "--report-only"]
    return " ".join(["python benchmarks/digits.py", *args])


def text_sets(res: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """``{caption set: [metrics of each seed]}`` of the text variants."""
    out = {}
    for name, v in res["variants"].items():
        if v.get("measure") == "text":
            out[name.removeprefix("text_")] = [r["metrics"] for r in v["runs"]]
    return out


def cost(res: dict[str, Any]) -> dict[str, Any]:
    """Training / evaluation time per variant (mean over seeds) and in all; the span of the jobs."""
    per, starts, ends, total, spans = {}, [], [], 0.0, []
    for name, v in res["variants"].items():
        if not v["runs"]:
            continue
        tr = [r.get("train_seconds") or 0.0 for r in v["runs"]]
        ev = [r.get("eval_seconds") or 0.0 for r in v["runs"]]
        if v.get("measure") == "ce":  # trained inside the evaluation job
            ev = [e - t for e, t in zip(ev, tr, strict=True)]
        per[name] = {
            "train_min": summary([t / 60 for t in tr]),
            "eval_min": summary([e / 60 for e in ev]),
            "n": len(tr),
        }
        total += sum(tr) + sum(ev)
        for r in v["runs"]:
            end = r.get("eval_end")
            if end:
                ends.append(end)
                starts.append(r.get("train_start") or end - (r.get("eval_seconds") or 0.0))
                spans.append((starts[-1], end))
    span = (max(ends) - min(starts)) / 60 if ends else float("nan")
    jobs = sum(len(v["runs"]) for v in res["variants"].values())
    return {
        "per_variant": per,
        "job_minutes": total / 60,
        "span_minutes": span,
        "jobs": jobs,
        "first": time.strftime("%Y-%m-%d", time.gmtime(min(starts))) if starts else None,
        "last": time.strftime("%Y-%m-%d", time.gmtime(max(ends))) if ends else None,
        # most jobs running at one moment (from their start and end times)
        "concurrency": max((sum(a <= t < b for a, b in spans) for t, _ in spans), default=0),
    }


def _shipped_text_recipe() -> dict[str, Any]:
    """Iterations and caption length of ``recipes/digits_text.yaml`` as shipped."""
    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / "digits_text.yaml").read_text())
    return {
        "iterations": raw["train"]["iterations"],
        "context": raw["modalities"]["text"]["config"].get("context_length"),
    }


def text_reading(sets: dict[str, list[dict[str, Any]]]) -> list[str]:
    """What the text table shows and what it does not: the attribute rows are the evidence that text
    and image share more than the class; two class-level rows say nothing about it by construction."""
    from text import scalar

    runs = [r for v in sets.values() for r in v]
    same = [
        r
        for r in runs
        if r.get("caption_generation") is not None
        and r.get("caption_generation") == r.get("label_flow_accuracy")
    ]
    attr = sets.get("attributes", [])

    def cell(key: str) -> str:
        return summary([x for x in (scalar(r.get(key)) for r in attr) if x is not None]).text(".1f", 100, "%")

    lines = []
    if attr:
        lines += [
            "**Cross-modal transfer beyond the class (the evidence to read).** The image and text decoders "
            "of digits_text also receive the class one-hot, so a class-level row can be carried by the one-hot "
            "and the label flow alone. What the one-hot cannot carry are the attributes of the attribute "
            "captions (per-class terciles: chance 1/3 each): an image's retrieved caption states its "
            f"attributes {cell('retrieval_attributes')} of the time (class-only reference "
            f"{cell('retrieval_attributes_chance')}), its generated caption {cell('caption_generation_attributes')}, "
            f"and images generated from a caption show the caption's attributes {cell('caption_to_image_attributes')} "
            f"(reference {cell('caption_to_image_attributes_chance')}); these go through z. Retrieval uses no "
            "decoder (the reverse flow over the captions' anchors). For a decoder that reads z alone (no "
            "one-hot), see the z-only variant of `benchmarks/results/batch_scaling.md`.",
            "",
        ]
    if runs:
        lines += [
            "**Two class-level rows are true by construction.** *image -> text generation, class named* equals "
            "*image -> label*: the text decoder is conditioned on the class the label flow reads from the "
            "image's z, and names it; the two are identical in "
            f"{len(same)} of the {len(runs)} runs. *text -> label* at 100% is trivial with captions that name "
            "the class: the text encoder only has to read the digit's word.",
            "",
        ]
    return lines


def text_section(res: dict[str, Any], figs: dict[str, str], docs: Path, level: str = "##") -> list[str]:
    """The text comparison: template vs attribute captions (``docs/results.md`` and ``text.md``)."""
    from text import suite_table

    sets = text_sets(res)
    if not sets:
        return []
    if not any(sets.values()):
        return [
            f"{level} Text: template captions vs captions that need the image",
            "",
            f"{NOT_RUN}: no seed of `"
            + "`, `".join(f"text_{k}" for k in sets)
            + "` finished (see *Not run*).",
            "",
        ]
    seeds = {k: len(v) for k, v in sets.items()}
    shipped = _shipped_text_recipe()
    lines = [
        f"{level} Text: template captions vs captions that need the image",
        "",
        f"digits_text (image + label + text in one latent space) with this benchmark's settings: "
        f"{res['iterations']} iterations and captions up to {res['settings']['text_context']} tokens (the "
        f"recipe as shipped trains {shipped['iterations']} iterations with {shipped['context']} tokens; its "
        "header gives one run of that), trained on each caption set of `lzn shards digits`: "
        '`templates` name the digit only ("a handwritten seven"); `attributes` name it and what its pixels '
        "show beyond the class, computed from the image (`--captions attributes`, lzn_core/data/digits.py): "
        "stroke weight (ink amount), slant (shear of the ink's second moments), width (horizontal spread) "
        "and horizontal position of the centroid, each as the tercile of the image among the training "
        'images of its class ("a thin, upright, narrow 7, left of centre"). So the class predicts none of '
        "the attributes (chance 1/3 each), and agreeing on them needs the image. An attribute agrees when "
        "the level a caption states is the level the same pixel statistics give for the image "
        "(cut points from the training split). Seeds: "
        + ", ".join(f"{k} {n}" for k, n in seeds.items())
        + " (mean ± std); the test split's 300 captions; class-only reference: a random caption / real "
        "training image of the right class. Test: Welch, 5%.",
        "",
        *text_reading(sets),
        *suite_table(sets),
        "",
        _img(figs, "text", docs, "text metrics", ""),
        "",
    ]
    for name in sets:
        key = f"text_{name}"
        if key in figs:
            lines += [
                f"Captions -> images, {name} model (seed 0):",
                "",
                f"![{key}]({_rel(figs[key], docs)})",
                "",
            ]
    ex = (sets.get("attributes") or [{}])[0].get("examples", [])
    if ex:
        lines += [
            "Attribute model, seed 0, the first test images:",
            "",
            "| true caption | retrieved caption | generated caption |",
            "|---|---|---|",
            *(f"| {e.get('caption', '')} | {e['retrieved']} | {e['generated']} |" for e in ex),
            "",
        ]
    return lines


def not_run_section(res: dict[str, Any]) -> list[str]:
    """What the benchmark planned but had not finished when the page was written (empty if none)."""
    missing = res.get("not_run") or {}
    if not missing:
        return []
    planned = sum(len(v["planned"]) for v in res["variants"].values())
    lines = [
        "## Not run",
        "",
        f"Of the {planned} planned jobs, these had not finished when this page was written: the jobs run in "
        "priority order (claims, text, the gap ablations, then the longer iteration runs) and the full set does "
        "not fit the time this page was given on 2 CPU cores. Nothing is extrapolated for them: their cells "
        "read – or *not run*, and a claim that needs them has no verdict. The same command with `--reuse` runs "
        "them and keeps the finished ones.",
        "",
    ]
    for name, seeds in missing.items():
        v = res["variants"][name]
        what = (
            "every seed"
            if not v["seeds"]
            else f"seed(s) {', '.join(map(str, seeds))}; finished: " + ", ".join(map(str, v["seeds"]))
        )
        lines.append(f"* `{name}` ({v['description']}): {what}")
    return [*lines, ""]


def _more_seeds(res: dict[str, Any], seeds: int) -> str:
    """ " (5 for `its2000`, `ce_its2000`)" for the variants planned with another number of seeds."""
    other: dict[int, list[str]] = {}
    for name, v in res["variants"].items():
        n = len(v["planned"])
        if n != seeds and v.get("measure") != "text":
            other.setdefault(n, []).append(f"`{name}`")
    return "".join(f" ({n} for {', '.join(names)})" for n, names in other.items())


def markdown(res: dict[str, Any], figs: dict[str, str], docs: Path) -> str:
    """The docs/results.md text."""
    s = res["settings"]
    c = res.get("cost") or cost(res)
    seeds = len(s["seeds"])
    rows = claim_rows(res)
    gaps = gap_rows(res)
    if res.get("invocation_minutes") is not None:
        resumed = " (resumed: finished jobs of earlier invocations were kept)" if res.get("reused") else ""
        invocation = f"This invocation: {res['invocation_minutes']} min wall{resumed}. "
    else:
        invocation = "Pages written from the finished jobs' results (`--report-only`). "
    lines = [
        "# Results: the paper's claims at toy scale, with error bars",
        "",
        f"Generated by `{res.get('command') or _command()}` on {res.get('date') or time.strftime('%Y-%m-%d')}, "
        f"{res.get('cores') or os.cpu_count()} CPU cores ({platform.machine()}), at most "
        f"{c.get('concurrency', 2)} jobs at a time (from their start and end times), one torch "
        f"thread each. {invocation}Measured over the {c['jobs']} finished jobs (a variant trained with one "
        f"seed, then evaluated): **{c['job_minutes']:.0f} min** of process wall time in all, on cores shared "
        "with other work (busy-machine times); the jobs ran "
        + (
            f"from {c['first']} to {c['last']} across resumed invocations"
            if c.get("first") and c["first"] != c["last"]
            else f"in {c['span_minutes']:.0f} min from the first job's start to the last one's end"
        )
        + ". Resume a stopped run with "
        "`--reuse` (finished jobs are kept). Raw numbers: "
        "`benchmarks/results/digits.json`, per job `benchmarks/results/digits_runs/`.",
        "",
        "Data: scikit-learn's bundled 8×8 digits (1497 train / 300 test, `lzn shards digits`). Every variant "
        f"trains {res['iterations']} iterations at batch {s['batch_size'] or 128} unless noted, with "
        f"**{seeds} seeds**{_more_seeds(res, seeds)} (seed = the recipe's `seed`: initialisation, data order and "
        "noise); tables give "
        "mean ± sample standard deviation over the seeds. Every row here is at one training batch; how the "
        "latent, the z-only decoder and the solver's cost change with it (64 to 1024): "
        "[batch_scaling.md](../benchmarks/results/batch_scaling.md). The method in this project's notation: "
        "[method.md](method.md).",
        "",
        f"**When a claim reproduces.** A difference counts only when it exceeds the seed spread: a two-sided "
        f't-test at {ALPHA:.0%} rejects "no difference" and the difference has the claimed sign. Two '
        "variants (independent seeds): Welch's t-test (unequal variances); two readings of the same trained "
        "models (α, batch, probe features): the paired t-test over seeds. Δ is given with its 95% confidence "
        'interval. Claims of "no difference" / "matches" reproduce when that interval lies inside a margin '
        f'(above −margin for "matches or beats"): {100 * ACC_MARGIN:.0f} accuracy point (3 test images), '
        f"{100 * RECON_MARGIN:.0f}% of the reconstruction error, {100 * FID_MARGIN:.0f}% of the FID. "
        '"Within the spread": neither.',
        "",
        *not_run_section(res),
        "## The claims",
        "",
        _table(
            [
                "claim (docs/method.md §9)",
                "paper, full scale",
                f"measured here ({seeds} seeds)",
                "test",
                "reproduces?",
            ],
            [(r["claim"], r["paper"], r["measured"], r["test"], r["verdict"]) for r in rows],
        ),
        "",
        _img(figs, "claims", docs, "claim variants", ""),
        "",
        "Variants: "
        + "; ".join(
            f"`{k}`: {v['description']}" for k, v in res["variants"].items() if v["group"] == "claims"
        )
        + ". The CE head: same encoder architecture, batch, iterations, encoder learning rate, warm-up and "
        "clip, torch Adam, epoch-shuffled batches; evaluated with its plain weights (and, in the gap table, "
        "with the EMA the LZN model is evaluated with).",
        "",
        "Caveats: training uses 50 label-flow steps (the paper: 100), so the cutoffs are the same fractions "
        "(u = 0.05 / 0.2 of the steps); claim 12 is about case 2 (two-view alignment on ImageNet) and is "
        "probed here on the digits_joint (case 3) encoder, train split -> test split; FID/KID use "
        "digit-classifier features, not Inception, so their scale is not comparable with the paper's.",
        "",
        "## The LZN-vs-CE gap: what explains it",
        "",
        "Each row changes one thing of digits_joint at the same batch and (unless the row is about them) "
        "iterations; the CE head is trained on the same encoder size and iterations. LZN: the label-flow "
        "classifier (α 0, inference batch 300, 100 steps) on the test and training splits, and a linear "
        "probe (logistic regression) on its anchors. Gap: closed when LZN − CE's 95% interval lies above "
        f"−{100 * ACC_MARGIN:.0f} point, open when LZN is significantly lower (Welch, 5%). vs digits_joint: "
        "the change's effect on LZN's test accuracy (Welch, 5%).",
        "",
        _table(
            [
                "change",
                "LZN test",
                "LZN train",
                "anchor probe",
                "CE test",
                "CE test (EMA)",
                "CE train",
                "LZN − CE",
                "gap",
                "vs digits_joint",
            ],
            [
                (
                    f"{g['change']} (`{g['lzn']}`)",
                    g["lzn_acc"],
                    g["lzn_train"],
                    g["lzn_probe"],
                    g["ce_acc"],
                    g["ce_ema"],
                    g["ce_train"],
                    g["gap_test"],
                    g["gap"],
                    g["vs_joint"],
                )
                for g in gaps
            ],
        ),
        "",
        *gap_reading(gaps, res),
        "",
        _img(figs, "gap", docs, "gap", ""),
        "",
        "## Classification: accuracy against α and the inference batch",
        "",
        "Test latents of a batch of b test images at noise scale α, reverse label flow (100 Euler steps, "
        f"uniform weights), nearest anchor (model `joint`, mean ± std over {seeds} seeds).",
        "",
    ]
    alphas, sizes = s["alphas"], s["batch_sizes"]
    lines += [
        _table(
            ["α \\ batch", *map(str, sizes)],
            [(a, *(pct(summary(vals(res, "joint", f"sweep/{a}@{b}"))) for b in sizes)) for a in alphas],
        ),
        "",
        _img(figs, "sweep", docs, "accuracy vs alpha", ""),
        "",
        "## Calibration and out-of-distribution rejection (not in the paper)",
        "",
        "The label flow's last-step assignment probability is ≈ 1 for every input (the flow ends on an "
        'anchor), so it is no confidence. The confidence `compose("image -> label")` reports is the zone vote: '
        "draw ε several times at α = 1 (sampling the image's latent zone), run the label flow for each draw, "
        "confidence = share of the draws that land in the predicted class. OOD: AUROC of the zone-vote "
        "confidence for test digits vs uniform noise / inverted digits, shuffled into the same inference "
        "batches (mixed) or zoned in batches of their own (separate).",
        "",
        _table(
            ["metric (joint)", f"mean ± std ({seeds} seeds)"],
            [
                ("test accuracy (α = 0)", pct(summary(vals(res, "joint", "accuracy")))),
                ("mean zone-vote confidence", num(summary(vals(res, "joint", "vote_mean_confidence")))),
                ("ECE of the zone vote (15 bins)", num(summary(vals(res, "joint", "vote_ece")))),
                *(
                    (f"OOD AUROC {k}", num(summary(vals(res, "joint", f"ood_auroc/{k}"))))
                    for k in ("noise_mixed", "noise_separate", "inverted_mixed", "inverted_separate")
                ),
            ],
        ),
        "",
        _img(figs, "reliability", docs, "reliability diagram", " (seed 0)"),
        "",
        "## Generation",
        "",
        "FID/KID on the penultimate features of a small MLP classifier fitted on the real training digits "
        f"({s['samples']} unconditional samples vs the training set; Inception features are meaningless at "
        "8×8). Class consistency: share of class-k samples an SVC fitted on real training pixels calls k. "
        f"Reconstruction: {s['recon_images']} test images, {s['draws']} draws of ε each (RF: 1; it ignores z), "
        f"{s['recon_steps']} Euler steps each way (the paper: RK45; with an exact solver inversion is exact for "
        "any model, so the error measures how straight the conditioned flow is).",
        "",
        _table(
            ["model", "FID (digit features)", "KID", "class consistency", "recon error ℓ2"],
            [
                (
                    label,
                    num(summary(vals(res, name, "fid")), ".2f"),
                    num(summary(vals(res, name, "kid"))),
                    pct(summary(vals(res, name, "class_consistency"))),
                    num(summary(vals(res, name, "recon_error")), ".4f"),
                )
                for label, name in (("RF+LZN (joint)", "joint"), ("RF (rf_baseline)", "rf_baseline"))
            ],
        ),
        "",
        f"Reference: FID of the real test set vs the training set "
        f"{num(summary(vals(res, 'joint', 'fid_real_test_vs_train')), '.2f')}."
        + (
            f" **Caveat**: {fid_blind(res)}; class consistency and the reconstruction error are the numbers "
            "to read here."
            if fid_blind(res)
            else ""
        ),
        "",
        "Class-conditional samples of RF+LZN (seed 0; one row per class, zone latents of the class):",
        "",
        _img(figs, "samples_joint", docs, "samples joint", ""),
        "",
        "and of the RF baseline (one-hot conditioning only):",
        "",
        _img(figs, "samples_rf_baseline", docs, "samples rf", ""),
        "",
        "Reconstructions (top: test images; then RF+LZN; then RF without the latent):",
        "",
        _img(figs, "recon", docs, "reconstructions", ""),
        "",
        *text_section(res, figs, docs),
        "## Cost",
        "",
        "Minutes per job (mean ± std over its seeds; jobs ran one or two at a time on 2 cores shared with "
        "other work, so these are busy-machine wall times). Evaluation includes, for the CE variants, nothing but the test (their training is the "
        "training column).",
        "",
        _table(
            ["variant", "seeds", "training (min)", "evaluation (min)"],
            [
                (k, p["n"], p["train_min"].text(".2f"), p["eval_min"].text(".2f"))
                for k, p in c["per_variant"].items()
            ],
        ),
        "",
        _img(figs, "losses", docs, "loss curves", " (seed 0)"),
        "",
    ]
    return "\n".join(lines)


def text_page(res: dict[str, Any], figs: dict[str, str], path: Path) -> str:
    """``benchmarks/results/text.md``: the text comparison on its own page."""
    c = res.get("cost") or cost(res)
    per = c["per_variant"]
    minutes = ", ".join(
        f"{k}: {p['train_min'].text('.1f')} min" for k, p in per.items() if k.startswith("text_")
    )
    lines = [
        "# Text: image <-> text in one latent space (digits)",
        "",
        f"Generated by `{res.get('command') or _command()}` (the text part of docs/results.md) on "
        f"{res.get('date') or time.strftime('%Y-%m-%d')}, 2 CPU cores. Training per seed: {minutes}. One model "
        "alone: `python benchmarks/text.py --model runs/digits_text/final` (its own page next to `--out`).",
        "",
        *text_section(res, figs, path, level="##"),
    ]
    return "\n".join(lines)


def _plain(x: Any) -> Any:
    if isinstance(x, Summary):
        return {"mean": x.mean, "std": x.std, "n": x.n}
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def write_report(res: dict[str, Any], runs: Path, out: Path, docs: Path | None) -> None:
    """Write digits.json (with the computed tables), the figures and (when ``docs``) the pages."""
    res.setdefault("command", _command())
    res.setdefault("date", time.strftime("%Y-%m-%d"))
    res.setdefault("cores", os.cpu_count())
    out.mkdir(parents=True, exist_ok=True)
    figs = dict(res.get("figures", {}))
    figs["sweep"] = str(sweep_png(res, out / "digits_sweep.png"))
    figs["claims"] = str(claims_png(res, out / "digits_claims.png"))
    figs["gap"] = str(gap_png(res, out / "digits_gap.png"))
    claims = [n for n, v in res["variants"].items() if v["group"] == "claims" and v["measure"] != "ce"]
    figs["losses"] = str(losses_png(runs, claims, out / "digits_losses.png"))
    figs["reliability"] = str(out / "joint" / "reliability-image-label.png")
    if text_sets(res):
        figs["text"] = str(text_png(res, out / "text_metrics.png"))
    res["cost"] = cost(res)
    res["claims"] = claim_rows(res)
    res["gap"] = gap_rows(res)
    res["figures"] = {k: os.path.relpath(v, out) for k, v in figs.items()}
    (out / "digits.json").write_text(json.dumps(_plain(res), indent=1) + "\n")
    if docs is not None:
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(markdown(res, figs, docs))
        (out / "text.md").write_text(text_page(res, figs, out / "text.md"))
