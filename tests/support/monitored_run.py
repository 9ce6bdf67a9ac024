"""A short monitored run shared by the tests of the monitor backends (train/test_monitor.py), info.json
(io/test_info.py) and ``lzn info`` (cli/test_info.py): 3 iterations of digits_joint whose DeepSpeed
config switches on TensorBoard and CSV; a checkpoint at step 2, the final export at step 3. The
session fixture ``monitored_run`` (tests/conftest.py) trains it once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from paths import ROOT

BATCH = 8
SHORT = [
    f"train.batch_size={BATCH}",
    "train.iterations=3",
    "train.log_every=1",
    "train.ckpt_every=2",
    "train.eval_every=0",
    "train.sample_every=0",
    "latent.bank_size=8",
    "latent.dim=8",
    "data.num_workers=0",
    "eval.steps=4",
    "eval.samples_per_class=1",
    "modalities.image.config.preset=tiny",
    "modalities.image.config.sample_steps=2",
]


def train_monitored(root: Path) -> Path:
    """Train the run in ``root`` (digits shards written there) and return its directory. In a
    subprocess: DeepSpeed keeps process groups in module globals, which an in-process run would leave
    stale for the in-process runs of tests/train/test_train.py."""
    from lzn_core.data.digits import write_digits

    write_digits(root / "data" / "digits", test_size=50, progress=False)
    ds = json.loads((ROOT / "recipes" / "ds" / "cpu.json").read_text())
    ds.update(tensorboard={"enabled": True}, csv_monitor={"enabled": True})
    (root / "monitor.json").write_text(json.dumps(ds))
    args = ["--recipe", "digits_joint", "--output", "runs/mon", *SHORT, f"deepspeed={root / 'monitor.json'}"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "train.py"), *args],
        cwd=root,
        env={**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "runs" / "mon"


def metric_rows(run: Path) -> tuple[list[dict], list[dict]]:
    """The run's metrics.jsonl: (training rows, evaluation rows)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r], [r for r in rows if any(k.startswith("eval/") for k in r)]
