"""The page of ``benchmarks/batch_scaling.py``: per-seed results in; tables, plots and verdicts out.

``write_report(cfg, variants, out, extra)`` takes the collected jobs (``_runs.collect``), writes
``batch_scaling.json`` (the computed tables too), the figures and ``batch_scaling.md``. The
verdicts follow the rule of ``docs/results.md`` (``benchmarks/_stats.py``): a difference counts
when a two-sided t-test at 5% rejects "no difference" (Welch for independently trained models,
paired for two readings of the same models) and it has the claimed sign; "matches" when the 95%
interval lies within the margin. A cell whose jobs did not finish reads "–"; a verdict that needs
them says "not run".
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _digits_report import ACC_MARGIN, _saved, metric, test_text  # noqa: E402
from _stats import Summary, directional, equivalent, paired, summary, welch  # noqa: E402

SHARE_MATTERS = 0.25
"""The solver "matters" once it takes at least a quarter of the training step (95% interval above)."""
CHANCE = 0.1
KIND_LABEL = {
    "joint": "joint (z + one-hot)",
    "zonly": "z only",
    "rf": "RF (no z)",
    "zonly_a0": "z only, zone centres (fix attempt)",
}
COLOR = {"joint": "C0", "zonly": "C2", "rf": "C3", "zonly_a0": "C1"}
LZN = ("joint", "zonly", "zonly_a0")
ALL = ("joint", "zonly", "rf", "zonly_a0")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


# ----------------------------------------------------------------------------- values
def values(variants: dict[str, Any], kind: str, b: int, key: str) -> list[float]:
    """A metric ("at/large/recon", "profile/solver_share", ...) over the finished seeds of kind at B."""
    runs = variants.get(f"{kind}_b{b}", {}).get("runs", [])
    return [x for x in (metric(r, key) for r in runs) if x is not None]


def cell(s: Summary, kind: str) -> str:
    if kind == "pct":
        return s.text(".1f", 100, "%")
    if kind == "ms":
        return s.text(".0f", 1000, " ms")
    if kind == "mib":
        return s.text(".0f", 1, " MiB")
    if kind == "min":
        return s.text(".1f", 1 / 60, " min")
    return s.text(".3f")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def one_sample(xs: list[float], level: float) -> Any:
    """Paired t-test of the values against a constant (mean − level)."""
    return paired(xs, [level] * len(xs))


def rf_reference(out: Path) -> dict[str, Any] | None:
    """The RF baseline's recon error from the digits page's jobs (``digits_runs/rf_baseline``:
    digits_rf_baseline at its recipe's B 128, 400 iterations, the same protocol: unclipped, 256
    test images, 10 Euler steps each way; z is zeros there, so the inference batch plays no
    part), the floor where this benchmark's own RF jobs did not run; None when absent."""
    runs = sorted((out / "digits_runs" / "rf_baseline").glob("seed*.json"))
    xs = [x for x in (metric(json.loads(f.read_text()), "recon_error") for f in runs) if x is not None]
    if not xs:
        return None
    batch = None
    for f in runs:
        batch = json.loads(f.read_text()).get("metrics", {}).get("batch_size", batch)
    return {"values": xs, "batch": batch or 128, "source": "benchmarks/results/digits_runs/rf_baseline"}


def rf_floor(variants: dict[str, Any], b: int, ref: dict[str, Any] | None) -> tuple[list[float], str]:
    """RF recon errors for comparison at B: this benchmark's own at B, else the digits page's."""
    own = values(variants, "rf", b, "at/large/recon")
    if len(own) >= 2 or ref is None:
        return own, f"RF baseline at B {b}"
    return list(ref["values"]), f"RF baseline at B {ref['batch']} (digits page; RF at B {b} not run)"


# ----------------------------------------------------------------------------- verdicts
def verdicts(
    variants: dict[str, Any], batches: list[int], ref: dict[str, Any] | None = None
) -> list[dict[str, str]]:
    """One row per question: what is compared, the measured values, the test and the verdict."""
    lo, hi = min(batches), max(batches)
    rows = []

    def ran(kind: str, b: int, key: str) -> bool:
        return len(values(variants, kind, b, key)) >= 2

    def row(question: str, what: str, a: list[float], b: list[float], fmt: str, claimed: int, t: Any) -> None:
        scale, unit, f = (100.0, " pt", "+.1f") if fmt == "pct" else (1.0, "", "+.3f")
        if len(a) < 2 or len(b) < 2:
            rows.append(dict(question=question, what=what, measured="–", test="–", verdict="not run"))
            return
        sa, sb = summary(a), summary(b)
        rows.append(
            dict(
                question=question,
                what=what,
                measured=f"{cell(sa, fmt)} vs {cell(sb, fmt)}",
                test=test_text(t, scale, unit, f),
                verdict=directional(t, claimed) if isinstance(claimed, int) else claimed,
            )
        )

    q1 = "1. does z carry more of the sample as B grows?"
    for key, fmt, sign, what in (
        ("at/large/recon", "num", -1, "recon error (inference batch large), joint: B {hi} vs B {lo}"),
        (
            "at/large/retrieval",
            "pct",
            1,
            "image -> latent -> image retrieval (large), joint: B {hi} vs B {lo}",
        ),
        ("at/train/retrieval", "pct", 1, "retrieval at the training batch, joint: B {hi} vs B {lo}"),
        ("at/large/recon", "num", -1, "recon error (large), z only: B {hi} vs B {lo}"),
    ):
        kind = "zonly" if "z only" in what else "joint"
        a, b = values(variants, kind, hi, key), values(variants, kind, lo, key)
        row(q1, what.format(hi=hi, lo=lo), a, b, fmt, sign, welch(a, b))
    fix = sorted({int(k.rsplit("_b", 1)[1]) for k in variants if k.startswith("zonly_a0_b")})
    if len(fix) >= 2:
        a, b = (values(variants, "zonly_a0", x, "at/large/retrieval") for x in (fix[-1], fix[0]))
        what = f"retrieval (large), decoder on zone centres (fix attempt): B {fix[-1]} vs B {fix[0]}"
        row(q1, what, a, b, "pct", 1, welch(a, b))
    for b in batches:
        for kind in ("joint", "zonly"):
            a = values(variants, kind, b, "at/large/recon")
            r, floor = rf_floor(variants, b, ref)
            t = welch(a, r)
            what = f"recon error, {KIND_LABEL[kind]} at B {b} vs {floor}"
            if len(a) >= 2 and len(r) >= 2:
                what += f" ({100 * (1 - summary(a).mean / summary(r).mean):.0f}% lower)"
            row(q1, what, a, r, "num", -1, t)
    q2 = "2. does the z-only decoder carry the class?"
    for b in batches:
        for key, what in (
            ("class_consistency", "samples (α 1)"),
            ("class_consistency_alpha0", "centres (α 0)"),
        ):
            a, j = values(variants, "zonly", b, key), values(variants, "joint", b, key)
            t = welch(a, j)
            v = equivalent(t, ACC_MARGIN, one_sided=True) if math.isfinite(t.p) else "n/a"
            v = v.replace(
                "does not reproduce (significant difference)", "no: significantly below the one-hot"
            )
            v = v.replace("reproduces", "yes: matches the one-hot (within 1 point)")
            chance = one_sample(a, CHANCE) if len(a) >= 2 else None
            above = directional(chance, 1).replace("reproduces", "above chance") if chance else "–"
            row(
                q2,
                f"class-zone {what}, z only vs joint (one-hot) at B {b}; vs chance 10%: {above}",
                a,
                j,
                "pct",
                0,
                t,
            )
            rows[-1]["verdict"] = v if rows[-1]["verdict"] != "not run" else "not run"
    a, b0 = (
        values(variants, "zonly", hi, "class_consistency"),
        values(variants, "zonly", lo, "class_consistency"),
    )
    row(q2, f"class consistency, z only: B {hi} vs B {lo}", a, b0, "pct", 1, welch(a, b0))
    a, b0 = (values(variants, "joint", x, "class_consistency") for x in (hi, lo))
    row(q2, f"class consistency, joint (one-hot): B {hi} vs B {lo}", a, b0, "pct", 1, welch(a, b0))
    a, b0 = values(variants, "zonly", hi, "zone_agreement"), values(variants, "zonly", lo, "zone_agreement")
    row(
        q2,
        f"z ~ N(0, I): decoded class = label-flow class, z only: B {hi} vs B {lo}",
        a,
        b0,
        "pct",
        1,
        welch(a, b0),
    )
    for b in sorted({int(k.rsplit("_b", 1)[1]) for k in variants if k.startswith("zonly_a0_b")}):
        for key, what in (
            ("class_consistency", "class-zone samples (α 1)"),
            ("class_consistency_alpha0", "class-zone centres (α 0)"),
        ):
            a, z = values(variants, "zonly_a0", b, key), values(variants, "zonly", b, key)
            row(
                q2,
                f"fix attempt at B {b}, {what}: decoder on zone centres vs z only",
                a,
                z,
                "pct",
                1,
                welch(a, z),
            )
    q3 = f"3. where does the solver's share start to matter (≥ {SHARE_MATTERS:.0%} of the step)?"
    for b in batches:
        shares = values(variants, "joint", b, "profile/solver_share")
        if len(shares) < 2:
            rows.append(
                dict(question=q3, what=f"solver share at B {b}", measured="–", test="–", verdict="not run")
            )
            continue
        t = one_sample(shares, SHARE_MATTERS)
        verdict = directional(t, 1).replace("reproduces", f"matters (above {SHARE_MATTERS:.0%})")
        verdict = verdict.replace(
            "does not reproduce (significant, the other way)", f"below {SHARE_MATTERS:.0%}"
        )
        rows.append(
            dict(
                question=q3,
                what=f"solver share of the step, joint at B {b}",
                measured=cell(summary(shares), "pct"),
                test=test_text(t),
                verdict=verdict,
            )
        )
    del ran
    return rows


def summary_table(variants: dict[str, Any], batches: list[int], ref: dict[str, Any] | None) -> list[str]:
    """One row per (B, variant): the answers of the issue at a glance (mean ± std over the seeds)."""
    body = []
    for b in batches:
        for k in KIND_LABEL:
            runs = variants.get(f"{k}_b{b}", {}).get("runs", [])
            if not runs:
                continue
            rec = summary(values(variants, k, b, "at/large/recon"))
            floor, _ = rf_floor(variants, b, ref)
            vs_rf = "–"
            if k != "rf" and rec.n and floor:
                own = len(values(variants, "rf", b, "at/large/recon")) >= 2 or ref is None
                vs_rf = f"{100 * (rec.mean / summary(floor).mean - 1):+.0f}%" + ("" if own else " †")
            body.append(
                [
                    str(b),
                    KIND_LABEL[k],
                    str(len(runs)),
                    cell(summary(values(variants, k, b, "at/large/accuracy")), "pct") if k != "rf" else "–",
                    cell(rec, "num"),
                    vs_rf,
                    cell(summary(values(variants, k, b, "at/large/retrieval")), "pct"),
                    cell(summary(values(variants, k, b, "class_consistency")), "pct"),
                    cell(summary(values(variants, k, b, "class_consistency_alpha0")), "pct"),
                    cell(summary(values(variants, k, b, "profile/solver_share")), "pct")
                    if k != "rf"
                    else "–",
                    cell(summary(values(variants, k, b, "profile/step_seconds")), "ms"),
                    cell(summary(values(variants, k, b, "profile/peak_rss_mib")), "mib"),
                ]
            )
    header = [
        "B",
        "variant",
        "seeds",
        "label-flow accuracy",
        "recon error",
        "recon vs RF",
        "retrieval (source)",
        "class consistency α 1",
        "class consistency α 0",
        "solver share",
        "step (CPU)",
        "peak memory",
    ]
    note = (
        "Latents at the fixed large inference batch. recon vs RF: the recon error's change against the RF "
        "baseline trained at the same B; "
        + (
            f"† against the RF baseline of the digits page instead (`{ref['source']}`: B {ref['batch']}, "
            f"400 iterations, {len(ref['values'])} seeds, recon "
            f"{cell(summary(ref['values']), 'num')}, the same protocol with 10 draws of ε), where this "
            "benchmark's RF job at that B did not run. "
            if ref and any("†" in r[5] for r in body)
            else ""
        )
        + "Class consistency α 1: class-zone samples; α 0: the class zones' centres. zonly_a0 is "
        "trained with latents at α 0, so its recon reads α 0 latents (the recipe's α) and is not "
        "comparable to the others' α 1 recon."
    )
    return ["## Summary", "", *_table(header, body), "", note, ""]


def _verdict(res: dict[str, Any], *parts: str) -> str:
    """The verdict of the first row whose comparison contains every part ("not run" if none)."""
    for r in res["verdicts"]:
        if all(p in r["what"] for p in parts):
            return str(r["verdict"])
    return "not run"


def _growth(variants: dict[str, Any], batches: list[int]) -> list[tuple[int, int, float, float]]:
    """(B, next B, solver time ratio, step time ratio) of joint's means, for consecutive batches that ran."""
    out = []
    for a, b in zip(batches, batches[1:], strict=False):
        r = [
            summary(values(variants, "joint", b, k)).mean / summary(values(variants, "joint", a, k)).mean
            for k in ("profile/solver_seconds", "profile/step_seconds")
        ]
        if all(math.isfinite(x) for x in r):
            out.append((a, b, r[0], r[1]))
    return out


def _reduction(variants: dict[str, Any], b: int) -> str:
    """How much lower joint's recon error is than RF's at B (both trained at B), as text."""
    j, r = (summary(values(variants, k, b, "at/large/recon")).mean for k in ("joint", "rf"))
    return f"{100 * (1 - j / r):.0f}%" if math.isfinite(j / r) else "–"


def _which_moved(variants: dict[str, Any], lo: int, hi: int) -> str:
    """Whether the change of joint's recon reduction against RF from B lo to hi comes from RF's error or
    joint's (the larger change of the two means), as a clause; "." when either did not run."""
    d = {
        k: summary(values(variants, k, hi, "at/large/recon")).mean
        - summary(values(variants, k, lo, "at/large/recon")).mean
        for k in ("joint", "rf")
    }
    if not all(math.isfinite(x) for x in d.values()):
        return "."
    which = "the RF baseline's error" if abs(d["rf"]) > abs(d["joint"]) else "joint's error"
    return (
        f"; from B {lo} to B {hi} RF's error changed by {d['rf']:+.3f} and joint's by {d['joint']:+.3f}, "
        f"so the change of the reduction comes mostly from {which}."
    )


def reading(variants: dict[str, Any], batches: list[int], res: dict[str, Any]) -> list[str]:
    """The answers in words, every number and verdict taken from the tables of this page."""
    lo, hi = min(batches), max(batches)

    def v(kind: str, b: int, key: str, fmt: str = "pct") -> str:
        return cell(summary(values(variants, kind, b, key)), fmt)

    def span(kind: str, key: str, fmt: str = "pct") -> str:
        ran = [b for b in batches if values(variants, kind, b, key)]  # the fix attempt: its batches only
        return " → ".join(f"{v(kind, b, key, fmt)} (B {b})" for b in ran) or "–"

    ref = res.get("rf_reference")
    floor = cell(summary(ref["values"]), "num") if ref else "–"
    shares = ", ".join(f"{v('joint', b, 'profile/solver_share')} at B {b}" for b in batches)
    solver = ", ".join(f"{v('joint', b, 'profile/solver_seconds', 'ms')}" for b in batches)
    return [
        "## Reading",
        "",
        f"**1. Does z carry more of the sample as B grows?** Retrieval (is the "
        f"nearest training image of the decoded latent its source?), joint: {span('joint', 'at/large/retrieval')}; "
        f"B {hi} vs B {lo}: {_verdict(res, 'retrieval (large), joint')}. Recon error, joint: "
        f"{span('joint', 'at/large/recon', 'num')}; B {hi} vs B {lo}: {_verdict(res, 'recon error (inference batch large), joint')}"
        f". The RF baseline trained at the same B: {span('rf', 'at/large/recon', 'num')} (the digits "
        f"page's, B 128: {floor}); so the latent's reduction of the recon error against it, joint, is "
        + " → ".join(f"{_reduction(variants, b)} (B {b})" for b in batches)
        + _which_moved(variants, lo, hi)
        + " The paper reports 45% lower recon with the latent for a class-conditioned decoder at B 2000 "
        "(CIFAR-10, Table 4: 0.69 → 0.38; unconditioned, Table 1: 0.83 → 0.41). "
        "The shipped decoder is trained on latents at α 1 (a random point of the sample's zone); the fix "
        "attempt's decoder, trained and read at zone centres (α 0), has recon "
        f"{span('zonly_a0', 'at/large/recon', 'num')} and retrieval {span('zonly_a0', 'at/large/retrieval')}"
        " (its recon reads α 0 latents, not the same protocol as the α 1 rows): the α 1 noise, not only "
        "B, limits what a decoder reads of a sample from z.",
        "",
        f"**2. Does a decoder that reads z alone carry the class?** Class-zone samples (α 1), z only: {span('zonly', 'class_consistency')} (the one-hot "
        f"decoder: {span('joint', 'class_consistency')}); B {hi} vs B {lo}: "
        f"{_verdict(res, 'class consistency, z only')}. Class-zone centres (α 0), z only: "
        f"{span('zonly', 'class_consistency_alpha0')}; at B {hi} against the one-hot: "
        f"{_verdict(res, f'centres (α 0), z only vs joint (one-hot) at B {hi}')}. Why: the label flow reads "
        f"the right class from only {span('zonly', 'at/train/accuracy_alpha1')} of the α 1 latents the "
        "decoder is trained on (test images zoned at the training batch; the α 0 latents of the same images: "
        f"{span('zonly', 'at/train/accuracy')}), so at small B the class is a weak signal in the decoder's "
        "input, and a stronger one at larger B. The fix attempt (`zonly_a0`: the decoder trained on zone centres, the "
        f"alignment unchanged) decodes class-zone centres to their class ({span('zonly_a0', 'class_consistency_alpha0')}; "
        f"against z only at B {lo}: {_verdict(res, f'fix attempt at B {lo}, class-zone centres')}) but not "
        f"random points of a class zone ({span('zonly_a0', 'class_consistency')}), which it never saw in "
        "training. What would fix samples at α 1 as well (not measured here): a larger B (the trend above), "
        "or training the decoder on latents at both α 0 and α 1.",
        "",
        f"**3. The solver's share of the step** (CPU time, digits networks): {shares} (each tested against "
        f"25% in the verdicts); the solver itself (forward + backward) {solver}, the whole step "
        f"{span('joint', 'profile/step_seconds', 'ms')}. The flow computes B × B distances per step, so "
        "the solver's cost becomes quadratic in B once that term dominates. Growth of the solver's and the "
        "step's time (joint, means): "
        + "; ".join(
            f"B {a} → {b} ({b / a:.0f}× the rows): solver ×{rs:.1f}, step ×{rt:.1f}"
            for a, b, rs, rt in _growth(variants, batches)
        )
        + ". The share on a GPU with CIFAR-10's U-Net is not measured here.",
        "",
        f"**For a GPU user of `cifar_joint`.** Keep the global batch at the paper's B = 2000 "
        "(`train.batch_size`) and do not lower it to fit memory: every latent is zoned among the B anchors "
        f"of its step. Here, B {lo} → B {hi}: retrieval through the latent, joint, "
        f"{v('joint', lo, 'at/large/retrieval')} → {v('joint', hi, 'at/large/retrieval')} "
        f"({_verdict(res, 'retrieval (large), joint')}); class consistency of the one-hot decoder "
        f"{v('joint', lo, 'class_consistency')} → {v('joint', hi, 'class_consistency')} "
        f"({_verdict(res, 'class consistency, joint (one-hot)')}) and of the z-only decoder "
        f"{v('zonly', lo, 'class_consistency')} → {v('zonly', hi, 'class_consistency')} "
        f"({_verdict(res, 'class consistency, z only')}); recon error, joint, "
        f"{v('joint', lo, 'at/large/recon', 'num')} → {v('joint', hi, 'at/large/recon', 'num')} "
        f"({_verdict(res, 'recon error (inference batch large), joint')}). Nothing was measured above "
        f"B {hi}. cifar_joint conditions its decoder on the one-hot (as the paper's case study 3). "
        "Choose `train.micro_batch_size` by GPU memory alone (`auto`, as the CIFAR recipes ship, measures the step and chooses it: benchmarks/results/gpu.md): the two-pass "
        "step zones the whole global batch and gives the same gradient as one pass (`lzn_core/train/"
        "passes.py`, tested in `tests/train/test_passes.py`), at the cost of one more encoder forward. "
        "Memory measured here grows with B (peak above baseline, joint: "
        f"{span('joint', 'profile/peak_rss_mib', 'mib')}); the micro-batch bounds the networks' "
        "activations, not the B × B zoning tensors.",
        "",
    ]


# ----------------------------------------------------------------------------- figures
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


PANELS = (  # (key, title, format, kinds, also at the training batch)
    ("at/large/accuracy", "label-flow test accuracy", "pct", LZN, True),
    ("at/large/recon", "recon error ℓ2 (paper Table 1)", "num", ALL, True),
    ("at/large/retrieval", "retrieval: nearest train image = source", "pct", ALL, True),
    ("at/large/retrieval_class", "retrieval: nearest train image has its class", "pct", ALL, False),
    ("class_consistency", "class consistency, class-zone samples", "pct", ALL, False),
    ("class_consistency_alpha0", "class consistency, class-zone centres (α 0)", "pct", ALL, False),
    ("zone_agreement", "z ~ N(0,I): decoded class = label-flow class", "pct", LZN, False),
    ("profile/solver_share", "solver share of the step (CPU time)", "pct", ("joint", "zonly"), False),
    ("profile/step_seconds", "step time (CPU s, profile)", "num", ("joint", "zonly", "rf"), False),
    ("profile/peak_rss_mib", "peak memory above baseline (MiB)", "num", ("joint", "zonly", "rf"), False),
)


def metrics_png(
    variants: dict[str, Any], batches: list[int], path: Path, ref: dict[str, Any] | None = None
) -> Path:
    """Each metric against B (log scale), one line per variant: mean ± std over the seeds; dashed:
    latents at the training batch instead of the fixed large one; dotted (recon): the digits page's
    RF baseline where this benchmark's RF jobs did not run."""
    plt = _plt()
    cols = 3
    rows = (len(PANELS) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (key, title, fmt, kinds, train_too) in zip(axes.flat, PANELS, strict=False):
        scale = 100.0 if fmt == "pct" else 1.0
        for kind in kinds:
            for k, style in ((key, "o-"), (key.replace("/large/", "/train/"), "s--")):
                if style == "s--" and (not train_too or k == key):
                    continue
                pts = [(b, summary(values(variants, kind, b, k))) for b in batches]
                pts = [(b, s) for b, s in pts if s.n]
                if not pts:
                    continue
                label = KIND_LABEL[kind] if style == "o-" else None  # dashed: the caption says it
                ax.errorbar(
                    [b for b, _ in pts],
                    [scale * s.mean for _, s in pts],
                    yerr=[scale * s.std for _, s in pts],
                    fmt=style,
                    color=COLOR[kind],
                    capsize=3,
                    label=label,
                    alpha=1.0 if style == "o-" else 0.6,
                )
        if key == "at/large/recon" and ref and not any(values(variants, "rf", b, key) for b in batches):
            s = summary(ref["values"])
            ax.axhline(s.mean, color=COLOR["rf"], ls=":", label=f"RF, B {ref['batch']} (digits page)")
            ax.axhspan(s.mean - s.std, s.mean + s.std, color=COLOR["rf"], alpha=0.1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("training batch B")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(PANELS) :]:
        ax.axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    return _saved(plt, fig, path)


# ----------------------------------------------------------------------------- the page
def cost(variants: dict[str, Any]) -> dict[str, Any]:
    """CPU time (user + system of the training and evaluation processes), process wall time,
    the wall span of the jobs and the load during them."""
    total, wall, starts, ends, loads, jobs, unmeasured = 0.0, 0.0, [], [], [], 0, 0
    spans = []
    for v in variants.values():
        for r in v["runs"]:
            jobs += 1
            wall += (r.get("train_seconds") or 0.0) + (r.get("eval_seconds") or 0.0)
            cpu = [r.get("train_cpu_seconds"), r.get("eval_cpu_seconds")]
            unmeasured += any(c is None for c in cpu)
            total += sum(c or 0.0 for c in cpu)
            if r.get("eval_end"):
                ends.append(r["eval_end"])
                starts.append(r.get("train_start") or r["eval_end"] - (r.get("eval_seconds") or 0.0))
                # training and evaluation as two intervals: a job evaluated again later was not
                # running in between
                if r.get("train_start") and r.get("train_seconds"):
                    spans.append((r["train_start"], r["train_start"] + r["train_seconds"]))
                spans.append((r["eval_end"] - (r.get("eval_seconds") or 0.0), r["eval_end"]))
            loads += [x for x in (r["metrics"].get("train_load") or []) if x is not None]
            loads += [x for x in (r["metrics"].get("profile", {}).get("load") or []) if x is not None]
    return {
        "jobs": jobs,
        "cpu_hours": total / 3600,
        "process_wall_hours": wall / 3600,
        "cpu_unmeasured_jobs": unmeasured,
        "span_hours": (max(ends) - min(starts)) / 3600 if ends else float("nan"),
        "load": [min(loads), statistics.median(loads), max(loads)] if loads else None,
        # most jobs of this benchmark running at one moment (from their start and end times)
        "concurrency": max((sum(s <= t < e for s, e in spans) for t, _ in spans), default=0),
    }


def markdown(cfg: dict[str, Any], variants: dict[str, Any], res: dict[str, Any], out: Path) -> str:
    batches = sorted(cfg["batches"])
    c = res["cost"]
    seeds = len(cfg["seeds"])
    load = c["load"]
    busy = (
        f"1-minute load average during training and profiles: min {load[0]:.1f}, median {load[1]:.1f}, "
        f"max {load[2]:.1f} on {os.cpu_count()} cores"
        if load
        else "no load recorded"
    )
    lines = [
        "# How LZN scales with the batch (digits, CPU)",
        "",
        "Generated by `python benchmarks/batch_scaling.py --reuse"
        + (f" --batches {' '.join(map(str, batches))}" if cfg.get("cut_batches") else "")
        + f"` on {res['date']}, {os.cpu_count()} CPU cores "
        f"({cpu_name()}), at most {c['concurrency']} of its jobs at a time (from their start and end times), one "
        "torch thread each. Measured over the "
        f"{c['jobs']} finished jobs (one variant, one batch, one seed: training, then evaluation): "
        f"**{c['cpu_hours']:.2f} CPU-hours** (user + system time of the training and evaluation processes"
        + (f"; {c['cpu_unmeasured_jobs']} jobs without a CPU-time record" if c["cpu_unmeasured_jobs"] else "")
        + f"), {c['process_wall_hours']:.2f} h of process wall time, {c['span_hours']:.1f} h wall from the first "
        f"job's start to the last one's end. The machine was shared with other work: {busy}; so wall times "
        "(training minutes, the training's own step times) are **busy-machine** numbers, longer than on idle "
        "cores. The step profile is timed in CPU seconds of its thread, which the other processes do not "
        "inflate, so its step times and the solver's share compare across jobs. Raw numbers: "
        "`benchmarks/results/batch_scaling.json`, per job `benchmarks/results/batch_scaling_runs/`.",
        "",
        "**Why.** Zones are computed per batch (the paper's minibatch approximation): a latent says "
        '"which of the B anchors of this batch", so it can carry at most log2(B) bits about its sample '
        "(7 bits at our usual B = 128). The paper trains at B = 2000 (CIFAR-10) and 8192 (ImageNet).",
        "",
        f"**Setup.** scikit-learn's 8×8 digits (1497 train / 300 test). digits_joint trained for "
        f"{cfg['iterations']} iterations at every B (a fixed number of steps, as the paper; the samples seen "
        f"grow with B), {seeds} seeds each, in three variants: "
        + "; ".join(f"`{k}`: {v}" for k, v in _descriptions().items())
        + f". Latents for the measurements are computed twice: at the training batch B and at a fixed large "
        f"inference batch of {cfg['large_batch']} (test items zoned together with training images as "
        "context; every item sees exactly that many anchors). Recon: the paper's protocol (z at α 1, invert "
        f"the decoder's ODE conditioned on z, regenerate; {cfg['recon_images']} test images, {cfg['draws']} "
        f"draws of ε, {cfg['recon_steps']} Euler steps each way). Retrieval: {cfg['retrieval_items']} training "
        "images' zone centres (α 0) decoded from fresh noise; a hit when the nearest training image (ℓ2 "
        "pixels) of the decoded image is its source (chance 1/1497 = 0.07%; a decoder that knows only the "
        "class: about 1/150). Class consistency: "
        f"{10 * cfg['per_class']} class-zone samples judged by an SVC on real training digits; zone "
        f"agreement: {cfg['zone_samples']} z ~ N(0, I), decoded, the judge's class against the label flow's "
        "class of the same z. Step profile: a fresh model of the job's recipe, "
        f"{cfg['profile_steps']} steps after {cfg['profile_warmup']} warm-up, medians "
        "(`benchmarks/step_profile.py`); peak memory = maximum resident set above the process's baseline.",
        "",
        "**Rule** (as `docs/results.md`): a difference counts only when a two-sided t-test at 5% rejects "
        '"no difference" and it has the claimed sign (Welch for independently trained models). '
        f'"Matches or beats": the 95% interval of the difference lies above −{100 * ACC_MARGIN:.0f} point. '
        f"The solver share is tested against {SHARE_MATTERS:.0%} (one-sample t-test over the seeds' profiles).",
        "",
    ]
    lines += summary_table(variants, batches, res.get("rf_reference"))
    cut = list(cfg.get("cut_batches") or ())
    if cut:
        lines += [
            "## Cut",
            "",
            f"B in {{{', '.join(map(str, cut))}}} was not run for any variant (`--batches "
            f"{' '.join(map(str, batches))}`): the issue's reduced grid (B in {{64, 256, 1024}} × 3 seeds of "
            "the two LZN variants) ran first, then the RF baseline at those batches; the other batches did "
            "not fit the time available on the shared machine (the CPU time of the jobs that ran is in the "
            "first paragraph). The figures and verdicts use the batches above only.",
            "",
        ]
    missing = res["not_run"]
    if missing:
        lines += [
            "## Not run",
            "",
            "These jobs had not finished when the page was written (the jobs run in priority order: the two "
            "LZN variants at B in {"
            + ", ".join(map(str, cfg["first"]))
            + "}, then the other batches, then the "
            "RF baseline). Nothing is extrapolated; `--reuse` runs them and keeps the finished ones.",
            "",
            *(f"* `{k}`: seed(s) {', '.join(map(str, s))}" for k, s in missing.items()),
            "",
        ]
    lines += [
        "## Verdicts",
        "",
        *_table(
            ["question", "compared", f"measured (mean ± std, {seeds} seeds)", "test", "verdict"],
            [[r["question"], r["what"], r["measured"], r["test"], r["verdict"]] for r in res["verdicts"]],
        ),
        "",
        f"![metrics against the batch]({os.path.relpath(res['figures']['metrics'], out)})",
        "",
        "Solid lines: latents at the fixed large inference batch; dashed: at the training batch. Error bars: "
        "standard deviation over the seeds.",
        "",
    ]
    lines += reading(variants, batches, res)
    groups = (
        (
            "## What z carries about its sample",
            [
                ("recon (large)", "at/large/recon", "num", ALL),
                ("recon (train B)", "at/train/recon", "num", ALL),
                ("retrieval (large)", "at/large/retrieval", "pct", ALL),
                ("retrieval (train B)", "at/train/retrieval", "pct", ALL),
                ("retrieval, class (large)", "at/large/retrieval_class", "pct", ALL),
                ("decode error (large)", "at/large/decode_error", "num", ALL),
            ],
        ),
        (
            "## The class",
            [
                ("label-flow accuracy (large)", "at/large/accuracy", "pct", LZN),
                ("label-flow accuracy (train B)", "at/train/accuracy", "pct", LZN),
                ("label-flow accuracy of α 1 latents (train B)", "at/train/accuracy_alpha1", "pct", LZN),
                ("the same, training images", "class_accuracy_alpha1_train", "pct", LZN),
                ("class consistency (α 1)", "class_consistency", "pct", ALL),
                ("class consistency (α 0)", "class_consistency_alpha0", "pct", ALL),
                ("zone agreement", "zone_agreement", "pct", LZN),
            ],
        ),
        (
            "## Cost",
            [
                ("step (profile, CPU)", "profile/step_seconds", "ms", ("joint", "zonly", "rf")),
                ("solver share", "profile/solver_share", "pct", ("joint", "zonly")),
                ("solver (fwd + bwd, CPU)", "profile/solver_seconds", "ms", ("joint", "zonly")),
                ("peak memory", "profile/peak_rss_mib", "mib", ("joint", "zonly", "rf")),
                ("step (training, wall, busy)", "train_step_seconds", "ms", ("joint", "zonly", "rf")),
            ],
        ),
    )
    for title, metrics in groups:
        kinds = [k for k in KIND_LABEL if any(k in m[3] for m in metrics)]
        header = ["B", "variant", *(label for label, _, _, _ in metrics)]
        body = []
        for b in batches:
            for k in kinds:
                if not variants.get(f"{k}_b{b}", {}).get("runs"):
                    continue  # not run (listed above) or not planned at this B
                body.append(
                    [str(b), KIND_LABEL[k]]
                    + [
                        cell(summary(values(variants, k, b, key)), fmt) if k in ks else ""
                        for _, key, fmt, ks in metrics
                    ]
                )
        lines += [title, "", *_table(header, body), ""]
    train_min = [
        [str(b)]
        + [
            cell(
                summary(
                    [
                        r["train_seconds"]
                        for r in variants.get(f"{k}_b{b}", {}).get("runs", [])
                        if r.get("train_seconds")
                    ]
                ),
                "min",
            )
            for k in KIND_LABEL
        ]
        for b in batches
    ]
    lines += [
        "Training wall time per job (busy machine: other processes shared the cores):",
        "",
        *_table(["B", *(f"training: {k}" for k in KIND_LABEL)], train_min),
        "",
        "## Class-zone samples (seed 0): one per class, 0 to 9",
        "",
    ]
    for b in batches:
        for k in KIND_LABEL:
            f = out / "batch_scaling" / f"{k}_b{b}.png"
            if f.is_file():
                lines.append(f"* B = {b}, {KIND_LABEL[k]}: ![{k} {b}]({os.path.relpath(f, out)})")
    lines.append("")
    return "\n".join(lines)


def _descriptions() -> dict[str, str]:
    from batch_scaling import DESCRIPTION

    return DESCRIPTION


def _plain(x: Any) -> Any:
    if isinstance(x, Summary):
        return {"mean": x.mean, "std": x.std, "n": x.n}
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def write_report(
    cfg: dict[str, Any], variants: dict[str, Any], out: Path, extra: dict[str, Any]
) -> dict[str, Any]:
    """Write ``batch_scaling.json``, the figure and ``batch_scaling.md`` into ``out``."""
    batches = sorted(cfg["batches"])
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "date": time.strftime("%Y-%m-%d"),
        **extra,
        "variants": variants,
        "not_run": {
            k: [s for s in v["planned"] if s not in v["seeds"]]
            for k, v in variants.items()
            if len(v["seeds"]) < len(v["planned"])
        },
    }
    res["finished"] = sum(len(v["runs"]) for v in variants.values())
    res["cost"] = cost(variants)
    res["rf_reference"] = rf_reference(out)
    res["verdicts"] = verdicts(variants, batches, res["rf_reference"])
    res["figures"] = {
        "metrics": str(metrics_png(variants, batches, out / "batch_scaling.png", res["rf_reference"]))
    }
    page = out / "batch_scaling.md"
    page.write_text(markdown(cfg, variants, res, out))
    res["page"] = str(page)
    (out / "batch_scaling.json").write_text(json.dumps(_plain(res), indent=1) + "\n")
    return res
