"""Zoning-solver benchmark: the project's solver against the paper code's naive formulation.

One training iteration (DESIGN.md §11) = ``latents(A0)`` (20 Euler steps, g = 1e-4) +
``assign(latents, A1, targets=arange)`` (20 Euler steps) + log alignment loss + backward to
A0 and A1; q = 200, float32, B = N. The naive formulation is the official code's: the velocity
through the (B, N, q) broadcast, ``torch.utils.checkpoint(use_reentrant=False)`` around every
step, the (B, N) pdfs of every reverse step kept for the loss.

Each measurement runs in a fresh subprocess (so that memory freed by an earlier run cannot
hide a later peak). Peak memory = the kernel's peak RSS (VmHWM, reset through
``/proc/self/clear_refs`` after imports and inputs are built) minus the RSS at that point
(the baseline); where the reset is not permitted, a thread samples ``/proc/self/statm`` every
millisecond instead. Time = wall time of one iteration (best of up to 3 for fast runs).

Also: inference ``latents`` at N = 32768 (chunked, no grad) and round-trip accuracy
(argmax of ``assign(latents(A)).probs`` = identity) against steps for Euler and DPM-Solver++.

    python benchmarks/solver.py            # full run (make bench), ~45 min on 2 busy cores
    python benchmarks/solver.py --quick    # tiny sizes, seconds (tests call this)
    python benchmarks/solver.py --only ours --merge   # re-measure some rows of an existing solver.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FULL = {
    "sizes": [256, 512, 1024, 2048, 4096],
    "naive_sizes": [256, 512, 1024],
    "q": 200,
    "steps": 20,
    "inference_n": 32768,
    "inference_steps": 20,
    "round_trip": {"n": 512, "q": 16, "g": 1e-3, "steps": [10, 20, 50, 100, 300]},
}
QUICK = {
    "sizes": [32, 64],
    "naive_sizes": [32, 64],
    "q": 8,
    "steps": 5,
    "inference_n": 256,
    "inference_steps": 5,
    "round_trip": {"n": 32, "q": 4, "g": 1e-3, "steps": [5, 20]},
}


# ----------------------------------------------------------------------------- memory


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakMemory:
    """Peak RSS above the RSS at ``start()`` (bytes): VmHWM after a reset, else a sampling thread."""

    def start(self) -> None:
        self.method = "VmHWM"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.method = "statm sampling (1 ms)"
        self.baseline = _rss()
        self.peak = self.baseline
        self._stop = threading.Event()
        if self.method != "VmHWM":
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.001)

    def stop(self) -> int:
        self._stop.set()
        if self.method == "VmHWM":
            with open("/proc/self/status") as f:
                line = next(row for row in f if row.startswith("VmHWM:"))
            self.peak = int(line.split()[1]) * 1024
        else:
            self._thread.join()
            self.peak = max(self.peak, _rss())
        return self.peak - self.baseline


# ----------------------------------------------------------------------------- the two formulations


def _naive_velocity(x, tau, anchors):
    """The paper code's velocity: implied noise per anchor through the (B, N, q) broadcast."""
    import torch

    noise = (x[:, None, :] - (1.0 - tau) * anchors[None]) / tau
    logits = -0.5 * (noise**2).sum(-1)
    pdf = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
    prob = pdf / pdf.sum(dim=1, keepdim=True)
    return (prob[:, :, None] * (noise - anchors[None])).sum(1), prob


def _naive_iteration(a0, a1, eps, steps, g=1e-4):
    import torch
    from torch.utils.checkpoint import checkpoint

    x = (1.0 - g) * a0 + g * eps
    h = (1.0 - g) / steps
    for k in range(steps):
        v, _ = checkpoint(_naive_velocity, x, g + k * h, a0, use_reentrant=False)
        x = x + h * v
    probs = []
    for k in range(steps):
        v, p = checkpoint(_naive_velocity, x, 1.0 - k / steps, a1, use_reentrant=False)
        probs.append(p)
        x = x - v / steps
    targets = torch.arange(a1.shape[0])
    tp = torch.stack([p.gather(1, targets[:, None]).squeeze(1) for p in probs])
    u = int(0.2 * steps)
    return -torch.log(tp[u:].max(0).values.clamp_min(torch.finfo(tp.dtype).tiny)).mean()


def _our_iteration(a0, a1, eps, steps, g=1e-4):
    import torch

    from lzn_core import zoning
    from lzn_core.alignment import alignment_loss

    z = zoning.latents(a0, eps, g=g, steps=steps)
    out = zoning.assign(z, a1, steps=steps, targets=torch.arange(a1.shape[0]))
    return alignment_loss(out.target_probs, kind="log")


def _inputs(n, q, seed=0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    a0 = torch.randn(n, q, generator=gen)
    a1 = a0 + 0.5 * torch.randn(n, q, generator=gen)
    eps = torch.randn(n, q, generator=gen)
    return a0.requires_grad_(True), a1.requires_grad_(True), eps


def _worker(kind: str, impl: str, n: int, q: int, steps: int) -> dict:
    """One measurement in this (fresh) process."""
    import torch

    from lzn_core import zoning

    for fn in (_our_iteration, _naive_iteration):  # warm-up: lazy imports and one-time allocations
        small = _inputs(4, q)
        fn(*small, 2).backward()
    a0, a1, eps = _inputs(n, q)
    mem = _PeakMemory()
    times, loss = [], float("nan")
    for rep in range(3):
        if rep == 0:
            mem.start()
        t0 = time.perf_counter()
        if kind == "train":
            a0.grad = a1.grad = None
            fn = _our_iteration if impl == "ours" else _naive_iteration
            value = fn(a0, a1, eps, steps)
            value.backward()
            loss = value.item()
        else:
            with torch.no_grad():
                zoning.latents(a0.detach(), eps, g=1e-4, steps=steps)
        times.append(time.perf_counter() - t0)
        if rep == 0:
            peak = mem.stop()
        if sum(times) > 5.0:
            break
    grad = a0.grad.norm().item() if kind == "train" else None
    return {
        "kind": kind,
        "impl": impl,
        "n": n,
        "q": q,
        "steps": steps,
        "time_s": min(times),
        "peak_bytes": peak,
        "baseline_bytes": mem.baseline,
        "memory_method": mem.method,
        "loss": loss,
        "grad_norm_a0": grad,
        "threads": torch.get_num_threads(),
    }


def _measure(
    kind: str, impl: str, n: int, q: int, steps: int, timeout: float, inprocess: bool = False
) -> dict:
    if inprocess:
        return _worker(kind, impl, n, q, steps)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, impl, str(n), str(q), str(steps)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"kind": kind, "impl": impl, "n": n, "error": f"timeout after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"kind": kind, "impl": impl, "n": n, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- round trip


def _round_trip(cfg: dict) -> list[dict]:
    """Share of anchors whose latent flows back to them, float64, reverse Euler with the same steps."""
    import torch

    from lzn_core import zoning

    gen = torch.Generator().manual_seed(1)
    n, q, g = cfg["n"], cfg["q"], cfg["g"]
    anchors = torch.randn(n, q, generator=gen, dtype=torch.float64)
    eps = torch.randn(n, q, generator=gen, dtype=torch.float64)
    rows = []
    for steps in cfg["steps"]:
        row = {"steps": steps}
        for solver in ("euler", "dpm"):
            z = zoning.latents(anchors, eps, g=g, steps=steps, solver=solver)
            for back, name in ((steps, "same"), (1000, "1000")):
                probs = zoning.assign(z, anchors, steps=back).probs
                row[f"{solver}_{name}"] = (probs.argmax(1) == torch.arange(n)).double().mean().item()
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- report


def _fmt_bytes(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**20:.0f} MiB" if b < 2**30 else f"{b / 2**30:.2f} GiB"


def _table(results: dict) -> str:
    by = {(r["impl"], r["n"]): r for r in results["train"]}
    lines = [
        "| N | ours time | naive time | speed-up | ours peak | naive peak | memory ratio "
        "| loss (ours / naive) | threads (ours / naive) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in results["config"]["sizes"]:
        ours, naive = by.get(("ours", n), {}), by.get(("naive", n), {})
        ok = "time_s" in naive and "time_s" in ours
        lines.append(
            f"| {n} | {ours.get('time_s', float('nan')):.3f} s | "
            + (
                f"{naive['time_s']:.2f} s | {naive['time_s'] / ours['time_s']:.0f}x | "
                if ok
                else "not run | - | "
            )
            + f"{_fmt_bytes(ours.get('peak_bytes'))} | {_fmt_bytes(naive.get('peak_bytes'))} | "
            + (f"{naive['peak_bytes'] / max(ours['peak_bytes'], 1):.0f}x | " if ok else "- | ")
            + (
                f"{ours['loss']:.5f} / {naive['loss']:.5f} |"
                if ok
                else f"{ours.get('loss', float('nan')):.5f} / - |"
            )
            + f" {ours.get('threads', '-')} / {naive.get('threads', '-')} |"
        )
    inf = results["inference"]
    if "time_s" in inf:
        text = (
            f"{inf['time_s']:.1f} s, peak {_fmt_bytes(inf['peak_bytes'])} above baseline "
            f"({inf.get('threads')} threads)."
        )
    else:
        text = f"failed: {inf['error']}" if "error" in inf else "not run."
    lines += [
        "",
        f"Inference `latents` (no grad, automatic chunking), N = {results['config']['inference_n']}, "
        f"q = {results['config']['q']}, {results['config']['inference_steps']} Euler steps: {text}",
    ]
    rt = results["round_trip"]
    lines += [
        "",
        f"Round trip (float64, N = {rt['config']['n']}, q = {rt['config']['q']}, g = {rt['config']['g']}): "
        "share of anchors recovered by argmax of `assign(latents(A)).probs`.",
        "",
        "| steps | Euler, reverse same steps | DPM, reverse same steps | Euler, reverse 1000 | DPM, reverse 1000 |",
        "|---|---|---|---|---|",
    ]
    for r in rt["rows"]:
        lines.append(
            f"| {r['steps']} | {r['euler_same']:.1%} | {r['dpm_same']:.1%} | "
            f"{r['euler_1000']:.1%} | {r['dpm_1000']:.1%} |"
        )
    return "\n".join(lines) + "\n"


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for impl, style in (("ours", "o-"), ("naive", "s--")):
        rows = sorted(
            (r for r in results["train"] if r["impl"] == impl and "time_s" in r), key=lambda r: r["n"]
        )
        if rows:
            ax_t.loglog([r["n"] for r in rows], [r["time_s"] for r in rows], style, label=impl, base=2)
            ax_m.loglog(
                [r["n"] for r in rows],
                [max(r["peak_bytes"], 1) / 2**20 for r in rows],
                style,
                label=impl,
                base=2,
            )
    ax_t.set(xlabel="N = B", ylabel="seconds per training iteration", title="time")
    ax_m.set(xlabel="N = B", ylabel="peak MiB above baseline", title="peak memory")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(
        f"zoning solver, q = {results['config']['q']}, float32, {results['config']['steps']}+"
        f"{results['config']['steps']} Euler steps"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds), for tests")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="output directory")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per-measurement timeout (s)")
    parser.add_argument("--inference-steps", type=int, default=0, help="Euler steps of the inference run")
    parser.add_argument(
        "--inprocess", action="store_true", help="measure in this process (no isolation; tests)"
    )
    parser.add_argument("--only", default=",".join(_PARTS), help="comma list of parts to run (default: all)")
    parser.add_argument("--merge", action="store_true", help="update the rows of an existing solver.json")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, impl, n, q, steps = args.worker
        print(json.dumps(_worker(kind, impl, int(n), int(q), int(steps))))
        return 0
    cfg = dict(QUICK if args.quick else FULL)
    if args.inference_steps:
        cfg["inference_steps"] = args.inference_steps
    parts = set(args.only.split(","))
    if not parts <= set(_PARTS):
        parser.error(f"--only takes a comma list of {', '.join(_PARTS)}, got {args.only!r}")
    results = _start(cfg, args.out / "solver.json" if args.merge else None)
    if "roundtrip" in parts:
        results["round_trip"] = {"config": cfg["round_trip"], "rows": _round_trip(cfg["round_trip"])}
    args.out.mkdir(parents=True, exist_ok=True)
    _write(results, args.out)
    # ours first, then inference, then the (slow) naive runs, smallest first; results are
    # rewritten after every measurement so an interrupted run keeps what it measured
    plan = [("train", "ours", n) for n in cfg["sizes"] if "ours" in parts]
    plan += [("latents", "ours", cfg["inference_n"])] if "inference" in parts else []
    plan += [("train", "naive", n) for n in cfg["naive_sizes"] if "naive" in parts]
    for kind, impl, n in plan:
        n_steps = cfg["inference_steps"] if kind == "latents" else cfg["steps"]
        row = _measure(kind, impl, n, cfg["q"], n_steps, args.timeout, args.inprocess)
        row["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        print(json.dumps(row), flush=True)
        if kind == "latents":
            results["inference"] = row
        else:
            results["train"] = [r for r in results["train"] if (r["impl"], r["n"]) != (impl, n)] + [row]
        _write(results, args.out)
    print(_table(results))
    return 0


_PARTS = ("ours", "naive", "inference", "roundtrip")


def _start(cfg: dict, previous: Path | None) -> dict:
    """Empty results, or (``--merge``) the previous solver.json whose rows new measurements replace."""
    if previous is not None and previous.exists():
        results = json.loads(previous.read_text())
        results["config"] = cfg
        return results
    return {
        "config": cfg,
        "train": [],
        "inference": {},
        "round_trip": {"config": cfg["round_trip"], "rows": []},
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def _write(results: dict, out: Path) -> None:
    (out / "solver.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "solver.md").write_text("# Zoning solver benchmark\n\n" + _table(results))
    _plot(results, out / "solver.png")


if __name__ == "__main__":
    sys.exit(main())
