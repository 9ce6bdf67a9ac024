"""``lzn shards folder`` throughput (images/s) and output size on a generated image folder.

    python benchmarks/folder_shards.py [--images 2000] [--repeats 3] [--workers 1 2] [--before PATH]

Generates ``--images`` JPEGs of 200x150 (quality 90; smooth colour fields with noise, so they
compress like photos, not like flat colour) in 10 class folders, then converts the folder with
``lzn_core.data.convert.write_folder`` once per setting and repeat: this tree's code with each
``--workers`` count, and, with ``--before PATH``, the ``lzn_core`` of another checkout (e.g. the
main branch before JPEG bytes were kept) with its defaults. Each conversion runs in its own
process (the time is taken inside it, imports excluded), the settings go round robin so that a
change in the machine's load hits them alike, and the median of the repeats is reported with
the shards' total bytes. Writes benchmarks/results/folder_shards.json and folder_shards.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

_CONVERT = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from lzn_core.data.convert import write_folder
kw = json.loads(sys.argv[4])
t = time.perf_counter()
meta = write_folder(sys.argv[2], sys.argv[3], progress=False, **kw)
print(json.dumps({"seconds": time.perf_counter() - t, "samples": meta["splits"]["train"]}))
"""


def make_folder(root: Path, n: int, seed: int = 0) -> int:
    """``n`` JPEGs of 200x150 in 10 class folders; returns their total bytes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:150, 0:200].astype(np.float32)
    total = 0
    for i in range(n):
        folder = root / f"class{i % 10:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.uniform(0.01, 0.06, 3)
        phase = rng.uniform(0, 6.3, 3)
        rgb = np.stack(
            [np.sin(a * x + phase[0]), np.cos(b * y + phase[1]), np.sin(c * (x + y) + phase[2])], -1
        )
        img = (rgb * 90 + 128 + rng.normal(0, 12, rgb.shape)).clip(0, 255).astype(np.uint8)
        path = folder / f"img{i:05d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        total += path.stat().st_size
    return total


def convert(code: Path, src: Path, out: Path, kw: dict) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _CONVERT, str(code), str(src), str(out), json.dumps(kw)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["bytes"] = sum(p.stat().st_size for p in out.glob("train-*.tar"))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--before", type=Path, help="another checkout whose lzn_core to time with its defaults"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    settings: list[tuple[str, Path, dict]] = []
    if args.before is not None:
        settings.append((f"before ({args.before})", args.before.resolve(), {}))
    settings += [(f"this tree, --workers {w}", ROOT, {"workers": w}) for w in args.workers]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "folder"
        source_bytes = make_folder(src, args.images)
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in settings}
        loads = [os.getloadavg()[0]]
        for _ in range(args.repeats):
            for name, code, kw in settings:
                runs[name].append(convert(code, src, Path(tmp) / "out", kw))
                loads.append(os.getloadavg()[0])
    rows = []
    for name, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        rows.append(
            {
                "setting": name,
                "images": results[0]["samples"],
                "seconds_median": seconds,
                "images_per_s": results[0]["samples"] / seconds,
                "seconds_all": [r["seconds"] for r in results],
                "shard_bytes": results[0]["bytes"],
            }
        )
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_1min": {"min": min(loads), "max": max(loads)},
        "images": args.images,
        "source_bytes": source_bytes,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "folder_shards.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# `lzn shards folder`: images/s and bytes",
        "",
        f"{record['date']}, {record['machine']}; 1-minute load average {min(loads):.1f} to {max(loads):.1f} "
        f"during the runs (a shared machine). {args.images} generated JPEGs of 200x150 (quality 90) in 10 "
        f"class folders, {source_bytes:,} bytes in all; median of {args.repeats} runs, settings round robin. "
        "`python benchmarks/folder_shards.py` writes this page.",
        "",
        "| setting | images/s | seconds (median) | shard bytes | bytes / source bytes |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['images_per_s']:.0f} | {r['seconds_median']:.2f} | {r['shard_bytes']:,} | "
            f"{r['shard_bytes'] / source_bytes:.2f} |"
        )
    (args.out / "folder_shards.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
