"""Loader throughput (samples/s): the project's loader against plain wids and webdataset reads.

    python benchmarks/loader.py [--steps 40] [--repeats 3] [--rgb-samples 4000]

On the digits train shards (1497 samples; decode PNG -> (1, 8, 8) in [-1, 1] and cls -> int64
with the built-in image and label modalities, batch 128, one process):

* ``lzn loader``: :func:`lzn_core.data.loader` (epoch permutation, rank split, validation,
  replacement of bad samples), with 0 and 2 DataLoader workers;
* ``wids permutation``: wids' indexed reader (``IndexedTarSamples``, one per shard) read in the
  order of a random permutation, decoded and collated by the same modality functions: the
  floor of what random access over wids costs;
* ``webdataset stream``: ``WebDataset(urls).map(decode).batched(128)``, shard order, no shuffle.

Also the lzn loader on synthetic 32×32 RGB PNG shards (0 and 2 workers), and the time to open
(index) a CIFAR-size shard set (50,000 samples in 10 shards). Each throughput is the median of
``--repeats`` runs of ``--steps`` batches, timed after a first batch (worker start-up and the
shard index are reported apart); the runs go round robin over the settings, so that a change
in the machine's load (it is shared) hits them alike. Writes benchmarks/results/loader.json and loader.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lzn_core.data import expand_pattern, loader
from lzn_core.data.digits import write_digits
from lzn_core.data.shards import make_sample, png_bytes, write_split
from lzn_core.plugins import get_modality

RESULTS = Path(__file__).parent / "results"


def _specs() -> dict[str, Any]:
    return {"image": get_modality("image"), "label": get_modality("label")}


def _rgb_shards(out: Path, n: int) -> str:
    rng = np.random.default_rng(0)
    gen = (
        make_sample(
            f"rgb{i:06d}",
            {
                "png": png_bytes(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)),
                "txt": "noise",
                "cls": i % 10,
            },
        )
        for i in range(n)
    )
    write_split(out, "train", gen, total=n, shard_size=1000, progress=False)
    return str(out / "train-*.tar")


def _cifar_size_shards(out: Path, n: int = 50_000) -> str:
    png = png_bytes(np.zeros((32, 32, 3), np.uint8))
    samples = (make_sample(f"c{i:06d}", {"png": png, "txt": "x", "cls": 0}) for i in range(n))
    write_split(out, "train", samples, total=n, shard_size=5000, progress=False)
    return str(out / "train-*.tar")


def _run(make: Callable[[], Iterator[Any]], steps: int) -> tuple[float, float]:
    """(samples/s over ``steps`` batches timed after one untimed batch, seconds to that first batch)."""
    t0 = time.perf_counter()
    it = make()
    next(it)
    first = time.perf_counter() - t0
    t1, n = time.perf_counter(), 0
    for _ in range(steps):
        n += len(next(it)["label"])
    rate = n / (time.perf_counter() - t1)
    del it
    return rate, first


def _lzn(pattern: str, batch_size: int, num_workers: int) -> Callable[[], Iterator[Any]]:
    specs = _specs()
    ld = loader(pattern, specs, batch_size=batch_size, num_workers=num_workers, seed=0)
    return lambda: iter(ld)


def _wids_permutation(pattern: str, batch_size: int) -> Callable[[], Iterator[Any]]:
    from wids.wids import IndexedTarSamples

    specs = _specs()
    shards = [IndexedTarSamples(path=p) for p in expand_pattern(pattern)]
    where = [(s, j) for s in shards for j in range(len(s))]

    def batches() -> Iterator[Any]:
        for epoch in range(1_000_000):
            order = np.random.default_rng([0, epoch]).permutation(len(where))
            for k in range(len(order) // batch_size):
                rows = [where[g] for g in order[k * batch_size : (k + 1) * batch_size]]
                samples = [s[j] for s, j in rows]
                yield {
                    "image": specs["image"].collate(
                        [specs["image"].decode_sample(x[".png"].read()) for x in samples]
                    ),
                    "label": specs["label"].collate(
                        [specs["label"].decode_sample(x[".cls"].read()) for x in samples]
                    ),
                }

    return batches


def _webdataset_stream(pattern: str, batch_size: int) -> Callable[[], Iterator[Any]]:
    import webdataset as wds

    specs = _specs()
    urls = expand_pattern(pattern)

    def decode(sample: dict[str, Any]) -> tuple[Any, int]:
        return specs["image"].decode_sample(sample["png"]), specs["label"].decode_sample(sample["cls"])

    def collate(rows: list[tuple[Any, int]]) -> dict[str, Any]:
        return {
            "image": specs["image"].collate([r[0] for r in rows]),
            "label": specs["label"].collate([r[1] for r in rows]),
        }

    def batches() -> Iterator[Any]:
        ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).map(decode)
        return iter(ds.batched(batch_size, collation_fn=collate, partial=False).repeat())

    return batches


def _markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Loader benchmark",
        "",
        f"Machine: {results['machine']}; OMP_NUM_THREADS={results['omp_num_threads']}; "
        f"1-min load average at start {results['load_average_1min_at_start']} (other jobs share the cores). "
        f"Batch {results['batch_size']}; median of {results['repeats']} runs of {results['steps']} batches, round robin over the rows. "
        "`python benchmarks/loader.py` writes this page.",
        "",
    ]
    base = results.get("baseline")
    if base:
        lines += [
            f"Baseline column: {base['label']} (`--baseline`), measured by this script at a 1-min load average "
            f"of {base['load_average_1min_at_start']}. Load differs between the two runs; within a run the rows "
            "share it, so compare ratios to the wids row.",
            "",
        ]
    head = "| data | reader | workers | samples/s | first batch |" + (" baseline samples/s |" if base else "")
    lines += [head, "|---|---|---|---|---|" + ("---|" if base else "")]
    old = {(r["data"], r["reader"], r["num_workers"]): r for r in (base or {}).get("rows", [])}
    for row in results["rows"]:
        line = (
            f"| {row['data']} | {row['reader']} | {row['num_workers']} | {row['samples_per_s']:,.0f} | "
            f"{row['first_batch_s']} s |"
        )
        if base:
            b = old.get((row["data"], row["reader"], row["num_workers"]))
            line += f" {b['samples_per_s']:,.0f} |" if b else " - |"
        lines.append(line)
    idx = results["open_shard_set"]
    lines += [
        "",
        f"Opening a shard set ({idx['samples']:,} samples in {idx['shards']} shards, every shard "
        f"indexed by wids): {idx['seconds']} s.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help="timed batches per run")
    ap.add_argument("--repeats", type=int, default=3, help="runs per setting (the median is reported)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rgb-samples", type=int, default=4000)
    ap.add_argument(
        "--index-samples", type=int, default=50_000, help="size of the set whose opening is timed"
    )
    ap.add_argument("--out", type=Path, default=RESULTS, help="directory for loader.json / loader.md")
    ap.add_argument(
        "--baseline",
        type=Path,
        help="a loader.json of another code tree, shown beside (e.g. before a change)",
    )
    ap.add_argument("--baseline-label", default="baseline", help="what --baseline measured")
    args = ap.parse_args()
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "rows": [],
    }
    t_start = time.perf_counter()
    b = args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        write_digits(Path(tmp) / "digits", progress=False)
        digits = str(Path(tmp) / "digits" / "train-*.tar")
        rgb = _rgb_shards(Path(tmp) / "rgb", args.rgb_samples)
        cases = [
            ("digits 8x8 gray", "lzn loader", 0, lambda: _lzn(digits, b, 0)),
            ("digits 8x8 gray", "lzn loader", 2, lambda: _lzn(digits, b, 2)),
            ("digits 8x8 gray", "wids permutation", 0, lambda: _wids_permutation(digits, b)),
            ("digits 8x8 gray", "webdataset stream", 0, lambda: _webdataset_stream(digits, b)),
            (f"rgb 32x32 ({args.rgb_samples})", "lzn loader", 0, lambda: _lzn(rgb, b, 0)),
            (f"rgb 32x32 ({args.rgb_samples})", "lzn loader", 2, lambda: _lzn(rgb, b, 2)),
        ]
        runs: list[dict[str, Any]] = []
        for data, reader, workers, build in cases:
            t0 = time.perf_counter()
            make = build()
            runs.append(
                {
                    "data": data,
                    "reader": reader,
                    "num_workers": workers,
                    "make": make,
                    "rates": [],
                    "firsts": [],
                }
            )
            runs[-1]["open_s"] = round(time.perf_counter() - t0, 3)
        for _ in range(args.repeats):  # round robin, so a change in the machine's load hits every case alike
            for r in runs:
                rate, first = _run(r["make"], args.steps)
                r["rates"].append(rate)
                r["firsts"].append(first)
        for r in runs:
            row = {k: r[k] for k in ("data", "reader", "num_workers", "open_s")}
            row |= {
                "samples_per_s": round(statistics.median(r["rates"]), 1),
                "runs_samples_per_s": [round(x, 1) for x in r["rates"]],
                "first_batch_s": round(statistics.median(r["firsts"]), 3),
                "samples_per_run": args.steps * b,
            }
            results["rows"].append(row)
            print(
                f"{row['data']:18s} {row['reader']:18s} workers={row['num_workers']}  {row['samples_per_s']:9.1f} samples/s"
            )
        pattern = _cifar_size_shards(Path(tmp) / "cifar_size", args.index_samples)
        t0 = time.perf_counter()
        ld = loader(pattern, {"label": get_modality("label")}, batch_size=b)
        results["open_shard_set"] = {
            "samples": ld.num_samples,
            "shards": len(ld.shards),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        print(
            f"opening {ld.num_samples} samples in {len(ld.shards)} shards: {results['open_shard_set']['seconds']} s"
        )
    results["wall_s"] = round(time.perf_counter() - t_start, 1)
    if args.baseline:
        base = json.loads(args.baseline.read_text())
        results["baseline"] = {
            "label": args.baseline_label,
            **{k: v for k, v in base.items() if k != "baseline"},
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loader.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "loader.md").write_text(_markdown(results))
    print(f"wrote {args.out / 'loader.json'} and loader.md ({results['wall_s']} s)")


if __name__ == "__main__":
    main()
