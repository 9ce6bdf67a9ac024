"""Loader throughput (samples/s) on the digits shards and on synthetic 32×32 RGB shards.

    .venv/bin/python benchmarks/loader.py [--steps 40] [--rgb-samples 4000]

Uses the built-in image + label modalities (decode PNG -> (C, H, W) in [-1, 1], cls -> int64).
Throughput is measured after the first batch (worker start-up and the shard index are
reported apart). Also times indexing a CIFAR-size shard set (50,000 samples, 10 shards).
Writes benchmarks/results/loader.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from lzn_core.data import loader
from lzn_core.data.digits import write_digits
from lzn_core.data.shards import make_sample, png_bytes, write_split
from lzn_core.plugins import get_modality

RESULTS = Path(__file__).parent / "results" / "loader.json"


def _rgb_shards(out: Path, n: int) -> str:
    rng = np.random.default_rng(0)
    gen = (
        make_sample(
            f"rgb{i:06d}", png_bytes(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), "noise", i % 10
        )
        for i in range(n)
    )
    write_split(out, "train", gen, total=n, shard_size=1000, progress=False)
    return str(out / "train-*.tar")


def _cifar_size_shards(out: Path, n: int = 50_000) -> str:
    png = png_bytes(np.zeros((32, 32, 3), np.uint8))
    write_split(
        out,
        "train",
        (make_sample(f"c{i:06d}", png, "x", 0) for i in range(n)),
        shard_size=5000,
        progress=False,
    )
    return str(out / "train-*.tar")


def _throughput(pattern: str, batch_size: int, num_workers: int, steps: int) -> dict[str, float]:
    specs = {"image": get_modality("image"), "label": get_modality("label")}
    t0 = time.perf_counter()
    ld = loader(pattern, specs, batch_size=batch_size, num_workers=num_workers, seed=0)
    t_index = time.perf_counter() - t0
    it = iter(ld)
    next(it)
    t_first = time.perf_counter() - t0 - t_index
    t1, n = time.perf_counter(), 0
    for _ in range(steps):
        n += len(next(it)["label"])
    dt = time.perf_counter() - t1
    del it
    return {
        "num_workers": num_workers,
        "batch_size": batch_size,
        "samples": n,
        "samples_per_s": round(n / dt, 1),
        "index_s": round(t_index, 3),
        "first_batch_s": round(t_first, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help="timed batches per setting")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rgb-samples", type=int, default=4000)
    args = ap.parse_args()
    results: dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
    }
    with tempfile.TemporaryDirectory() as tmp:
        write_digits(Path(tmp) / "digits", progress=False)
        sets = {
            "digits_8x8_gray": Path(tmp) / "digits",
            "rgb_32x32": Path(_rgb_shards(Path(tmp) / "rgb", args.rgb_samples)).parent,
        }
        for name, d in sets.items():
            results[name] = [
                _throughput(str(d / "train-*.tar"), args.batch_size, w, args.steps) for w in (0, 2)
            ]
            for r in results[name]:  # type: ignore[union-attr]
                print(
                    f"{name:16s} workers={r['num_workers']}  {r['samples_per_s']:9.1f} samples/s  "
                    f"(index {r['index_s']} s, first batch {r['first_batch_s']} s)"
                )
        pattern = _cifar_size_shards(Path(tmp) / "cifar_size")
        t0 = time.perf_counter()
        ld = loader(pattern, {"label": get_modality("label")}, batch_size=128)
        results["index_50k_samples_s"] = round(time.perf_counter() - t0, 3)
        print(
            f"indexing {ld.num_samples} samples in {len(ld.shards)} shards: {results['index_50k_samples_s']} s"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
