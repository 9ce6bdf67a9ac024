"""Zoning-solver benchmark: the project's solver against the bare GEMMs it needs and the naive formulation.

One training iteration = ``latents(A0)`` (20 Euler steps, g = 1e-4) +
``assign(latents, A1, targets=arange)`` (20 Euler steps) + log alignment loss + backward to
A0 and A1; q = 200, float32, B = N. Inference = ``latents(A0)`` without grad.

* **Bare GEMMs**, the physical limit on the machine: the matrix products of the same shapes
  and layouts on random data, nothing else. Per kernel call, forward: logits = x·Aᵀ and
  [Σ E·a, Z] = E·[A, 1]; backward (recompute in backward): x·Aᵀ again, G = dm·Aᵀ,
  dx = dlogits·A, [dA, dbias] = dlogitsᵀ·[βx, 1], dA += Eᵀ·dm: 7 GEMMs of ~2·B·N·q flops.
  A training iteration makes 2·steps calls with backward, inference steps calls without.
  Measured in the same process as the solver, alternating with it (the machine is shared:
  both see the same load), best of the repetitions.
* **Naive**: the official code's formulation: the velocity through the (B, N, q) broadcast,
  ``torch.utils.checkpoint(use_reentrant=False)`` around every step, the (B, N) pdfs of every
  reverse step kept for the loss.

Each measurement runs in a fresh subprocess (so that memory freed by an earlier run cannot
hide a later peak). Peak memory = the peak RSS (VmHWM, reset through ``/proc/self/clear_refs``
after imports and inputs are built) during the first solver run minus the RSS at that point
(the baseline); where the reset is not permitted, a thread samples ``/proc/self/statm`` every
millisecond instead. Also recorded: how much slower this CPU is on subnormal operands (a
GEMM) and subnormal results (``exp``), the reason the kernel keeps them out (issue 15), and
round-trip accuracy (argmax of ``assign(latents(A)).probs`` = identity) against steps for
Euler and DPM-Solver++.

    python benchmarks/solver.py            # full run (make bench), ~25 min on 2 cores
    python benchmarks/solver.py --quick    # tiny sizes, seconds (tests call this)
    python benchmarks/solver.py --only ours --sizes 1024 --merge   # re-measure rows of solver.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FULL = {
    "sizes": [256, 512, 1024, 2048, 4096, 8192],
    "naive_sizes": [256, 512, 1024],
    "q": 200,
    "steps": 20,
    "threads": 2,
    "rep_budget_s": 10.0,
    "round_trip": {"n": 512, "q": 16, "g": 1e-3, "steps": [10, 20, 50, 100, 300]},
}
QUICK = {
    "sizes": [32, 64],
    "naive_sizes": [32, 64],
    "q": 8,
    "steps": 5,
    "threads": 1,
    "rep_budget_s": 0.2,
    "round_trip": {"n": 32, "q": 4, "g": 1e-3, "steps": [5, 20]},
}
# repetitions of the solver and of its bare GEMMs (alternating): at least MIN_REPS each, more
# (up to MAX_REPS) while the measurement has taken less than the config's rep_budget_s, or
# less than CONTENDED_BUDGET_S while every repetition so far shared the CPUs with other
# processes (more than CONTENDED of the machine busy outside this process)
MIN_REPS, MAX_REPS, CONTENDED_BUDGET_S, CONTENDED = 2, 6, 90.0, 0.1


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


# ----------------------------------------------------------------------------- what is timed


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


OFFICIAL_ENV = "LZN_OFFICIAL_SRC"
"""Environment variable naming a local copy of github.com/microsoft/latent-zoning-networks (its root,
holding ``lzn/``): the ``official`` rows time the authors' own latent flow, imported from there at run
time (nothing of theirs is in this repository). Unset: those rows are skipped."""


def official_source() -> Path | None:
    """The authors' code directory from :data:`OFFICIAL_ENV`, or None when unset or not a copy of it."""
    src = os.environ.get(OFFICIAL_ENV)
    if not src:
        return None
    path = Path(src).expanduser()
    return path if (path / "lzn" / "latent_flow" / "euler_latent_flow.py").is_file() else None


def _official_flow(q: int, g: float):
    """The authors' ``EulerLatentFlow`` (checkpointing on, as their trainers run it) with their
    ``Gaussian`` prior, imported from :func:`official_source`."""
    from types import SimpleNamespace

    src = official_source()
    if src is None:
        raise RuntimeError(f"set {OFFICIAL_ENV} to a copy of github.com/microsoft/latent-zoning-networks")
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    from lzn.latent_flow.euler_latent_flow import EulerLatentFlow
    from lzn.prior.gaussian import Gaussian

    return EulerLatentFlow(SimpleNamespace(prior=Gaussian(q)), eps=g, use_gradient_checkpoint=True)


def _official_iteration(a0, a1, eps, steps, g=1e-4):
    """One training iteration through the authors' code: their forward flow over a0 (the latents),
    their reverse flow over a1 (unnormalised pdfs of every step), then the same loss as ours (the
    normalised probability of the diagonal target, max over the steps after the cutoff, −log)."""
    import torch

    flow = _official_flow(a0.shape[1], g)
    z = flow(full_encoded=a0, encoded=a0, prior_data=eps, num_steps=steps)
    _, pdfs = flow(reverse=True, full_encoded=a1, initial_point=z, num_steps=steps)
    targets = torch.arange(a1.shape[0])
    tp = torch.stack([(p / p.sum(1, keepdim=True)).gather(1, targets[:, None]).squeeze(1) for p in pdfs])
    u = int(0.2 * steps)
    return -torch.log(tp[u:].max(0).values.clamp_min(torch.finfo(tp.dtype).tiny)).mean()


def _our_iteration(a0, a1, eps, steps, g=1e-4):
    import torch

    from lzn_core import zoning
    from lzn_core.alignment import alignment_loss

    z = zoning.latents(a0, eps, g=g, steps=steps)
    out = zoning.assign(z, a1, steps=steps, targets=torch.arange(a1.shape[0]))
    return alignment_loss(out.target_probs, kind="log")


def _bare_gemms(n: int, q: int, steps: int, train: bool):
    """The GEMMs of one training iteration (``train``) or inference, same shapes, random data."""
    import torch

    gen = torch.Generator().manual_seed(1)
    x, dm, a = (torch.randn(n, q, generator=gen) for _ in range(3))
    a_ones, x_ones = torch.randn(n, q + 1, generator=gen), torch.randn(n, q + 1, generator=gen)
    e = torch.rand(n, n, generator=gen)  # stands for E and dlogits: normal numbers
    out_nn, out_q, out_q1 = torch.empty(n, n), torch.empty(n, q), torch.empty(n, q + 1)

    def forward() -> None:
        torch.mm(x, a.t(), out=out_nn)  # logits
        torch.mm(e, a_ones, out=out_q1)  # [Σ E·a, Z]

    def backward() -> None:
        torch.mm(x, a.t(), out=out_nn)  # logits, recomputed
        torch.mm(dm, a.t(), out=out_nn)  # G = dm·Aᵀ
        torch.mm(e, a, out=out_q)  # dx = dlogits·A
        torch.mm(e.t(), x_ones, out=out_q1)  # [dA, dbias] = dlogitsᵀ·[βx, 1]
        torch.mm(e.t(), dm, out=out_q)  # dA += Eᵀ·dm

    calls = 2 * steps if train else steps

    def run() -> None:
        for _ in range(calls):
            forward()
        for _ in range(calls if train else 0):
            backward()

    return run


def _inputs(n, q, seed=0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    a0 = torch.randn(n, q, generator=gen)
    a1 = a0 + 0.5 * torch.randn(n, q, generator=gen)
    eps = torch.randn(n, q, generator=gen)
    return a0.requires_grad_(True), a1.requires_grad_(True), eps


def _busy_jiffies() -> int:
    """CPU time of the whole machine, all processes (/proc/stat, clock ticks); 0 where unreadable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0
    return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # less idle and iowait


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _wait_idle(limit: float, window: float = 5.0) -> float:
    """Wait (at most ``limit`` s) until other processes use < CONTENDED of the CPUs for a window; seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        _, others = _timed_share(lambda: time.sleep(window))
        if others < CONTENDED:
            break
    return time.perf_counter() - t0


def _timed_share(fn) -> tuple[float, float]:
    """(wall seconds, share of the machine's CPUs that other processes used meanwhile)."""
    jiffies, cpu, t0 = _busy_jiffies(), time.process_time(), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    others = (_busy_jiffies() - jiffies) / os.sysconf("SC_CLK_TCK") - (time.process_time() - cpu)
    return wall, max(0.0, others) / (wall * (os.cpu_count() or 1))


def _worker(kind: str, impl: str, n: int, q: int, steps: int, budget: float) -> dict:
    """One measurement in this (fresh) process: the solver (with its bare GEMMs) or the naive code."""
    import torch

    from lzn_core import zoning

    warm = [_our_iteration, _naive_iteration] + ([_official_iteration] if impl == "official" else [])
    for fn in warm:  # warm-up: lazy imports and one-time allocations
        small = _inputs(4, q)
        fn(*small, 2).backward()
    _bare_gemms(4, q, 2, True)()
    a0, a1, eps = _inputs(n, q)
    loss = float("nan")

    def solver() -> None:
        nonlocal loss
        if kind == "latents":
            with torch.no_grad():
                zoning.latents(a0.detach(), eps, g=1e-4, steps=steps)
            return
        a0.grad = a1.grad = None
        iteration = {"ours": _our_iteration, "naive": _naive_iteration, "official": _official_iteration}[impl]
        value = iteration(a0, a1, eps, steps)
        value.backward()
        loss = value.item()

    cpu: dict[str, list[float]] = {"solver": [], "bare": []}  # CPU seconds of this process per repetition

    def timed(fn, part: str) -> tuple[float, float]:
        start = time.process_time()
        res = _timed_share(fn)
        cpu[part].append(time.process_time() - start)
        return res

    mem = _PeakMemory()
    mem.start()
    reps = [timed(solver, "solver")]
    peak = mem.stop()
    bare, bare_reps = None, []
    if impl == "ours":  # alternate with the bare GEMMs of the same shapes
        bare = _bare_gemms(n, q, steps, train=kind == "train")
        bare_reps.append(timed(bare, "bare"))
    t_start = time.perf_counter()
    limit = MIN_REPS if impl == "ours" else 1

    def again() -> bool:
        if len(reps) >= MAX_REPS:
            return False
        next_end = time.perf_counter() - t_start + reps[-1][0] + (bare_reps[-1][0] if bare_reps else 0.0)
        shares = (
            [max(r[1], b[1]) for r, b in zip(reps, bare_reps, strict=False)]
            if bare_reps
            else [r[1] for r in reps]
        )
        contended = all(share > CONTENDED for share in shares)
        return len(reps) < limit or next_end < budget or (contended and next_end < CONTENDED_BUDGET_S)

    while again():
        reps.append(timed(solver, "solver"))
        if bare is not None:
            bare_reps.append(timed(bare, "bare"))
    times = [t for t, _ in reps]
    best = min(range(len(reps)), key=lambda i: reps[i][0])
    others_best = reps[best][1]
    if bare_reps:
        others_best = max(others_best, min(bare_reps)[1])
    row = {
        "kind": kind,
        "impl": impl,
        "n": n,
        "q": q,
        "steps": steps,
        "time_s": min(times),
        "times_s": times,
        "cpu_s": min(cpu["solver"]),
        "others_cpu": [round(o, 3) for _, o in reps],
        "others_cpu_best": round(others_best, 3),
        "peak_bytes": peak,
        "baseline_bytes": mem.baseline,
        "memory_method": mem.method,
        "loss": loss,
        "grad_norm_a0": a0.grad.norm().item() if kind == "train" else None,
        "threads": torch.get_num_threads(),
    }
    if bare_reps:
        bare_times = [t for t, _ in bare_reps]
        row |= {
            "bare_s": min(bare_times),
            "bare_times_s": bare_times,
            "bare_others_cpu": [round(o, 3) for _, o in bare_reps],
            "ratio": min(times) / min(bare_times),
            "bare_cpu_s": min(cpu["bare"]),
            "cpu_ratio": min(cpu["solver"]) / min(cpu["bare"]),
        }
    return row


def _measure(kind: str, impl: str, n: int, cfg: dict, timeout: float, inprocess: bool) -> dict:
    q, steps, threads, budget = cfg["q"], cfg["steps"], cfg["threads"], cfg["rep_budget_s"]
    if inprocess:
        return _worker(kind, impl, n, q, steps, budget)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, impl]
    cmd += [str(v) for v in (n, q, steps, budget)]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
    )
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"kind": kind, "impl": impl, "n": n, "error": f"timeout after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"kind": kind, "impl": impl, "n": n, "error": proc.stderr.strip().splitlines()[-1:]}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["wall_s"] = time.perf_counter() - t0
    return row


# ----------------------------------------------------------------------------- the CPU, round trip


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def _subnormal_penalty(n: int) -> dict:
    """Time with subnormal numbers / time without, on this CPU: a GEMM (operands) and ``exp`` (results)."""
    import torch

    gen = torch.Generator().manual_seed(2)
    a = torch.randn(n, 201, generator=gen)
    normal = torch.rand(n, n, generator=gen) + 0.5
    subnormal = normal * 1e-39
    args = -5.0 * torch.rand(n, n, generator=gen)
    low = args - 95.0  # exp of these is subnormal in float32

    def best(fn) -> float:
        fn()
        return min(_timed(fn) for _ in range(5))

    return {
        "n": n,
        "gemm": best(lambda: torch.mm(subnormal, a)) / best(lambda: torch.mm(normal, a)),
        "exp": best(lambda: torch.exp(low)) / best(lambda: torch.exp(args)),
    }


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


def _fmt_s(row: dict, key: str = "time_s") -> str:
    if key not in row:
        return "failed" if "error" in row else "not run"
    t = row[key]
    return f"{t * 1e3:.3g} ms" if t < 1 else f"{t:.3g} s" if t < 1000 else f"{t:.0f} s"


def _busy(row: dict) -> str:
    """ " (busy)" when other processes used more than CONTENDED of the CPUs during the repetition reported."""
    return " (busy)" if row.get("others_cpu_best", 0.0) > CONTENDED else ""


def _ratio(row: dict, key: str = "ratio") -> str:
    """solver / bare GEMMs; below 1 is impossible (the solver runs these GEMMs and more): then the two
    timings saw different loads, and the cell says so instead of a number."""
    if key not in row:
        return "-"
    if row[key] < 1.0:
        return f"invalid ({row[key]:.2f}x: busy machine)"
    return f"{row[key]:.2f}x"


def _table(results: dict) -> str:
    cfg = results["config"]
    cpu_clock = cfg.get("clock") == "cpu"
    t_key, b_key, r_key = ("cpu_s", "bare_cpu_s", "cpu_ratio") if cpu_clock else ("time_s", "bare_s", "ratio")
    train = {(r["impl"], r["n"]): r for r in results["train"]}
    inference = {r["n"]: r for r in results["inference"]}
    lines = [
        "| N | train ours | bare GEMMs | ratio | naive | speed-up over naive | authors' code "
        "| speed-up over the authors' code | inference ours | inference GEMMs | ratio "
        "| peak memory (train: ours / naive / authors') |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    sizes = sorted({r["n"] for r in [*results["train"], *results["inference"]]})  # the measured ones
    for n in sizes:
        ours, naive, inf = train.get(("ours", n), {}), train.get(("naive", n), {}), inference.get(n, {})
        official = train.get(("official", n), {})

        def speedup(other: dict, ours: dict = ours) -> str:
            return f"{other[t_key] / ours[t_key]:.0f}x" if t_key in other and t_key in ours else "-"

        def busy(row: dict) -> str:
            return "" if cpu_clock else _busy(row)  # CPU time is not inflated by the other processes

        cells = [
            str(n),
            _fmt_s(ours, t_key) + busy(ours),
            _fmt_s(ours, b_key) + busy(ours),
            _ratio(ours, r_key),
            _fmt_s(naive, t_key) + busy(naive),
            speedup(naive),
            _fmt_s(official, t_key) + busy(official),
            speedup(official),
            _fmt_s(inf, t_key) + busy(inf),
            _fmt_s(inf, b_key) + busy(inf),
            _ratio(inf, r_key),
            " / ".join(_fmt_bytes(r.get("peak_bytes")) for r in (ours, naive, official)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    agree = [
        abs(train["ours", n]["loss"] - train["naive", n]["loss"]) / abs(train["naive", n]["loss"])
        for n in cfg["sizes"]
        if "loss" in train.get(("ours", n), {}) and "loss" in train.get(("naive", n), {})
    ]
    agree_official = [
        abs(train["ours", n]["loss"] - train["official", n]["loss"]) / abs(train["official", n]["loss"])
        for n in sizes
        if "loss" in train.get(("ours", n), {}) and "loss" in train.get(("official", n), {})
    ]
    rows = [*results["train"], *results["inference"]]
    threads = sorted({r["threads"] for r in rows if "threads" in r})
    others = [r["others_cpu_best"] for r in rows if "others_cpu_best" in r]
    pen = results.get("subnormal_penalty", {})
    lines += [
        "",
        f"q = {cfg['q']}, float32, B = N, {cfg['steps']} + {cfg['steps']} Euler steps per training "
        f"iteration ({cfg['steps']} for inference), threads: {'/'.join(map(str, threads)) or '-'}, "
        f"{results.get('cpu', '?')}. Times: best of the repetitions"
        + (
            ", in CPU seconds of the measuring process (one thread: other processes do not inflate them)"
            if cpu_clock
            else ", wall"
        )
        + "; ratio = solver / bare GEMMs "
        "of the same shapes (7 per step in training, 2 in inference), measured alternately in the "
        "same process. Peak memory: above the process's baseline."
        + (
            f" The machine is shared: other processes used up to {max(others):.0%} of its CPUs "
            "during the repetitions reported (`others_cpu` in solver.json)."
            if others
            else ""
        )
        + (f" Loss of ours and naive agree to {max(agree):.1e} (relative)." if agree else "")
        + (
            f" Loss of ours and the authors' code agree to {max(agree_official):.1e}."
            if agree_official
            else ""
        )
        + (
            ""
            if cpu_clock
            else f" (busy): other processes used more than {CONTENDED:.0%} of the CPUs during that measurement; "
            "its times are upper bounds."
        )
        + " Authors' code: their `EulerLatentFlow` and `Gaussian` prior (gradient checkpointing on, as their "
        f"trainers run it), imported at run time from a local copy named by `{OFFICIAL_ENV}`"
        + (f" (skipped: {results['official_skipped']})." if results.get("official_skipped") else "."),
    ]
    if not any(r["impl"] == "official" for r in results["train"]):
        lines += [
            "",
            "Against the authors' own code (their latent flow, imported at run time; CPU seconds of one thread, "
            "so a busy machine does not distort the ratio): `benchmarks/results/solver_official/solver.md`, from "
            f"`{OFFICIAL_ENV}=path/to/latent-zoning-networks python benchmarks/solver.py --only ours,naive,official "
            "--sizes 256,512 --threads 1 --clock cpu --out benchmarks/results/solver_official`.",
        ]
    if (
        pen and not cpu_clock
    ):  # a wall-time ratio: meaningless next to CPU-time rows measured on a busy machine
        lines += [
            "",
            f"This CPU on subnormal numbers (N = {pen['n']}): GEMM with subnormal operands "
            f"{pen['gemm']:.1f}x the time of normal ones, `exp` with subnormal results {pen['exp']:.1f}x.",
        ]
    if "wall_s" in results:
        runs = results.get("runs", [])
        waited = sum(r.get("waited_s", 0.0) for r in rows)
        lines += [
            "",
            f"Wall time of the benchmark: {results['wall_s'] / 60:.1f} min"
            + (f" ({len(runs)} runs merged)" if len(runs) > 1 else "")
            + (f", of which {waited / 60:.1f} min waiting for an idle machine." if waited else "."),
        ]
    rt = results["round_trip"]
    if not rt["rows"]:
        return "\n".join(lines) + "\n"
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

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = [
        ("train", "ours", "time_s", "o-", "C0", "train, ours"),
        ("train", "ours", "bare_s", "o:", "C0", "train, bare GEMMs"),
        ("train", "naive", "time_s", "s--", "C3", "train, naive"),
        ("inference", "ours", "time_s", "^-", "C2", "inference, ours"),
        ("inference", "ours", "bare_s", "^:", "C2", "inference, bare GEMMs"),
    ]
    for part, impl, key, style, color, label in series:
        rows = sorted((r for r in results[part] if r.get("impl") == impl and key in r), key=lambda r: r["n"])
        if rows:
            ax_t.loglog(
                [r["n"] for r in rows], [r[key] for r in rows], style, color=color, label=label, base=2
            )
            if key == "time_s" and part == "train":
                ax_m.loglog(
                    [r["n"] for r in rows],
                    [max(r["peak_bytes"], 1) / 2**20 for r in rows],
                    style,
                    color=color,
                    label=label,
                    base=2,
                )
    ax_t.set(xlabel="N = B", ylabel="seconds", title="time per training iteration / inference")
    ax_m.set(xlabel="N = B", ylabel="peak MiB above baseline", title="peak memory, training")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    cfg = results["config"]
    fig.suptitle(
        f"zoning solver, q = {cfg['q']}, float32, {cfg['steps']}+{cfg['steps']} Euler steps, "
        f"{cfg['threads']} threads"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


_PARTS = ("ours", "naive", "official", "inference", "roundtrip")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds), for tests")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="output directory")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per-measurement timeout (s)")
    parser.add_argument("--threads", type=int, default=0, help="threads per measurement (default: config)")
    parser.add_argument(
        "--inprocess", action="store_true", help="measure in this process (no isolation, its threads; tests)"
    )
    parser.add_argument("--only", default=",".join(_PARTS), help="comma list of parts to run (default: all)")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        help="before each measurement, wait up to this many s for an idle machine",
    )
    parser.add_argument("--sizes", default="", help="comma list of N to measure (default: the config's)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="what the table reports: wall time, or the CPU time of the measuring process (with --threads 1, "
        "not inflated by other processes on a shared machine); both are recorded",
    )
    parser.add_argument("--merge", action="store_true", help="update the rows of an existing solver.json")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, impl, n, q, steps, budget = args.worker
        print(json.dumps(_worker(kind, impl, int(n), int(q), int(steps), float(budget))))
        return 0
    wall = time.perf_counter()
    cfg = dict(QUICK if args.quick else FULL)
    if args.threads:
        cfg["threads"] = args.threads
    cfg["clock"] = args.clock
    parts = set(args.only.split(","))
    if not parts <= set(_PARTS):
        parser.error(f"--only takes a comma list of {', '.join(_PARTS)}, got {args.only!r}")
    chosen = {int(n) for n in args.sizes.split(",") if n} or set(cfg["sizes"]) | set(cfg["naive_sizes"])
    results = _start(cfg, args.out / "solver.json" if args.merge else None)
    if "ours" in parts or "inference" in parts:
        results["subnormal_penalty"] = _subnormal_penalty(256 if args.quick else 1024)
    if "roundtrip" in parts:
        results["round_trip"] = {"config": cfg["round_trip"], "rows": _round_trip(cfg["round_trip"])}
    args.out.mkdir(parents=True, exist_ok=True)
    _write(results, args.out, plot=False)
    # ours first, then inference, then the (slow) naive runs, smallest first; JSON and table are
    # rewritten after every measurement so an interrupted run keeps what it measured
    plan = [("train", "ours", n) for n in cfg["sizes"] if "ours" in parts]
    plan += [("latents", "ours", n) for n in cfg["sizes"] if "inference" in parts]
    plan += [("train", "naive", n) for n in cfg["naive_sizes"] if "naive" in parts]
    if "official" in parts:
        if official_source() is None:
            results["official_skipped"] = f"{OFFICIAL_ENV} not set to a copy of the authors' repository"
            print(f"[solver] official rows skipped: {results['official_skipped']}", flush=True)
        else:
            results.pop("official_skipped", None)
            plan += [("train", "official", n) for n in cfg["naive_sizes"]]
    plan = [step for step in plan if step[2] in chosen]
    for kind, impl, n in plan:
        waited = _wait_idle(args.wait_idle) if args.wait_idle > 0 else 0.0
        row = _measure(kind, impl, n, cfg, args.timeout, args.inprocess) | {"waited_s": waited}
        row["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        print(json.dumps(row), flush=True)
        part = "inference" if kind == "latents" else "train"
        results[part] = [r for r in results[part] if (r["impl"], r["n"]) != (impl, n)] + [row]
        _write(results, args.out, plot=False)
    run = {"parts": sorted(parts), "sizes": sorted(chosen), "wall_s": time.perf_counter() - wall}
    results["runs"] = [*results.get("runs", []), run | {"finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}]
    results["wall_s"] = sum(r["wall_s"] for r in results["runs"])
    _write(results, args.out)
    print(_table(results))
    return 0


def _start(cfg: dict, previous: Path | None) -> dict:
    """Empty results, or (``--merge``) the previous solver.json whose rows new measurements replace."""
    if previous is not None and previous.exists():
        results = json.loads(previous.read_text())
        results["config"] = cfg
        if not isinstance(results.get("inference"), list):  # the format before the per-N inference rows
            results["inference"] = []
        return results
    return {
        "config": cfg,
        "train": [],
        "inference": [],
        "round_trip": {"config": cfg["round_trip"], "rows": []},
        "cpu": _cpu(),
        "cpu_count": os.cpu_count(),
    }


def _write(results: dict, out: Path, plot: bool = True) -> None:
    (out / "solver.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "solver.md").write_text("# Zoning solver benchmark\n\n" + _table(results))
    if plot:
        _plot(results, out / "solver.png")


if __name__ == "__main__":
    sys.exit(main())
