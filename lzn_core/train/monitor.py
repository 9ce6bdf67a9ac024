"""Training metrics to DeepSpeed's monitor backends (TensorBoard, Weights & Biases, CSV, Comet).

``recipes/train.py`` writes every metrics row to ``metrics.jsonl``; the same rows go to whatever
backend the recipe's DeepSpeed config switches on, through the monitor the DeepSpeed engine
already owns (``engine.monitor``, a ``deepspeed.monitor.monitor.MonitorMaster`` that
``deepspeed.initialize`` builds from the config's ``tensorboard`` / ``wandb`` / ``csv_monitor`` /
``comet`` sections, on rank 0 only). Nothing here writes a backend's files itself::

    "tensorboard": {"enabled": true},              # -> <run>/tensorboard/events.out.tfevents.*
    "csv_monitor": {"enabled": true},              # -> <run>/csv/Train_Samples_loss.csv, ...
    "wandb": {"enabled": true, "project": "lzn"}

Events follow DeepSpeed's convention: ``(tag, value, global_samples)``, the x-axis being the
engine's count of samples in optimiser steps taken (``iteration × train.batch_size`` when no
step was skipped), the axis of DeepSpeed's own ``Train/Samples/lr`` events; W&B needs one
increasing step for all of them. Tags: ``Train/Samples/<key>`` for a training row
(``loss``, each loss term, ``lr/<group>``, ``it_s``, ...), ``Eval/Samples/<metric>`` for an
evaluation row (``accuracy/image->label``, ...). Sample grids (``eval/grid/<modality>``) are
images where the backend takes them: TensorBoard (``add_image``) and W&B (``wandb.Image``);
CSV and Comet get the scalars only.

One curve across restarts (a resume, a preempted job requeued): the x-axis is the engine's sample
count, restored from the checkpoint. When the monitor starts (after the checkpoint is loaded),
TensorBoard gets a new event file that purges the events logged after the checkpoint by an
attempt that died (``purge_step``), the CSV files lose their rows after it, and W&B resumes the
run whose id is kept in ``<run>/wandb-id`` (``WANDB_RUN_ID``, ``WANDB_RESUME=allow``; W&B drops
rows at steps it already has, which an exact resume logs again with the same values).
"""

from __future__ import annotations

import csv
import importlib.util
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import LZNError

# DeepSpeed config section -> (the package it needs, the pip extra that installs it)
BACKENDS: dict[str, tuple[str | None, str | None]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "csv_monitor": (None, None),
    "comet": ("comet_ml", None),
}
_FOLDERS = {"tensorboard": "tensorboard", "csv_monitor": "csv"}  # the backends that write files
WANDB_ID = "wandb-id"
"""The file in the run directory that keeps the W&B run id across restarts."""


def configure(cfg: dict[str, Any], run_dir: Path, name: str) -> dict[str, Any]:
    """Fill the monitor sections of a DeepSpeed config in place (before ``deepspeed.initialize``).

    An enabled ``tensorboard`` / ``csv_monitor`` section without ``output_path`` writes into the
    run directory (``<run>/tensorboard``, ``<run>/csv``) instead of DeepSpeed's default (a
    ``DeepSpeedJobName`` folder in the cwd); with an ``output_path`` and no ``job_name`` the job
    is named after the recipe. An enabled backend whose package is missing is an error that says
    what to install (DeepSpeed would print a hint and raise ``ImportError`` from inside
    ``initialize``).

    Args:
        cfg: the DeepSpeed config dict (``lzn_core.train.engine.deepspeed_config``).
        run_dir: the run directory.
        name: the recipe's name.
    """
    for section, (package, extra) in BACKENDS.items():
        sub = cfg.get(section)
        if not isinstance(sub, dict) or not sub.get("enabled"):
            continue
        if package is not None and importlib.util.find_spec(package) is None:
            how = f"pip install 'lzn[{extra}]'" if extra else f"pip install {package}"
            raise LZNError(
                f"the DeepSpeed config enables {section!r} but the {package} package is not installed; "
                f"{how}, or set {section}.enabled to false"
            )
        if section == "wandb" and os.environ.get("RANK", "0") == "0":  # W&B runs on rank 0 only
            _keep_wandb_run(run_dir)
        if section in _FOLDERS:
            if not sub.get("output_path"):
                sub["output_path"] = str(run_dir)
                sub.setdefault("job_name", _FOLDERS[section])
            else:
                sub.setdefault("job_name", name)
    return cfg


def _keep_wandb_run(run_dir: Path) -> None:
    """The run directory's W&B run id (made on the first start) for ``wandb.init`` (DeepSpeed's
    monitor calls it with project, group and entity only; W&B reads the id and the resume mode
    from the environment). A ``WANDB_RUN_ID`` set by the user wins."""
    path = Path(run_dir) / WANDB_ID
    if "WANDB_RUN_ID" not in os.environ:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{WANDB_ID}.{os.getpid()}.tmp")
            tmp.write_text(uuid.uuid4().hex[:16] + "\n")
            if not path.exists():
                os.replace(tmp, path)
            tmp.unlink(missing_ok=True)
        os.environ["WANDB_RUN_ID"] = path.read_text().strip()
    os.environ.setdefault("WANDB_RESUME", "allow")


class TrainingMonitor:
    """Writes ``recipes/train.py``'s metrics rows through the DeepSpeed engine's monitor.

    Args:
        engine: the :class:`~lzn_core.train.engine.Engine` (its DeepSpeed engine ``engine.ds``
            owns the monitor and the sample counter).

    On ranks other than 0, and when the DeepSpeed config enables no backend, :meth:`write`
    does nothing.
    """

    def __init__(self, engine: Any) -> None:
        self._ds = engine.ds
        self.monitor: Any = getattr(self._ds, "monitor", None)  # deepspeed's MonitorMaster
        self._keep_csv_headers()
        if self.enabled:
            self._continue_from(int(self._ds.global_samples))

    @property
    def enabled(self) -> bool:
        """Whether any backend is switched on (and this is rank 0, where they live)."""
        m = self.monitor
        return bool(m is not None and m.enabled and any(_backends(m)))

    def write(self, row: Mapping[str, Any]) -> None:
        """Send one metrics row (the dict written to ``metrics.jsonl``) to the backends.

        Numbers become scalar events; nested dicts (``lr``) are flattened (``lr/image.encoder``);
        ``eval/grid/<modality>`` paths become images; other strings and ``step`` are skipped.
        """
        if not self.enabled:
            return
        step = int(self._ds.global_samples)
        scalars, images = [], []
        for key, value in _flat(row):
            if key == "step" or isinstance(value, bool):
                continue
            tag = _tag(key)
            if isinstance(value, (int, float)):
                scalars.append((tag, float(value), step))
            elif isinstance(value, str) and "/grid/" in f"/{key}" and Path(value).is_file():
                images.append((tag, Path(value)))
        if scalars:
            self.monitor.write_events(scalars)
        for tag, path in images:
            self._image(tag, path, step)

    def _image(self, tag: str, path: Path, step: int) -> None:
        tb = self.monitor.tb_monitor
        if tb is not None and tb.summary_writer is not None:
            with Image.open(path) as im:
                pixels = np.asarray(im.convert("RGB"))
            tb.summary_writer.add_image(tag, pixels, step, dataformats="HWC")
            tb.summary_writer.flush()
        wb = self.monitor.wandb_monitor
        if wb is not None:
            import wandb  # optional (lzn[wandb]); importable here since DeepSpeed's W&B monitor started

            wb.log({tag: wandb.Image(str(path))}, step=step)

    def _continue_from(self, samples: int) -> None:
        """Drop what an earlier attempt logged after ``samples`` (the checkpoint's x) from the
        TensorBoard and CSV curves; the run logs those steps again."""
        tb = self.monitor.tb_monitor
        if tb is not None and tb.summary_writer is not None:
            from torch.utils.tensorboard import SummaryWriter

            log_dir = tb.summary_writer.log_dir
            tb.summary_writer.close()
            tb.summary_writer = SummaryWriter(log_dir=log_dir, purge_step=samples + 1)
        csv_monitor = getattr(self.monitor, "csv_monitor", None)
        if csv_monitor is None or not csv_monitor.log_dir:
            return
        for path in Path(csv_monitor.log_dir).glob("*.csv"):
            with open(path, newline="") as f:
                rows = list(csv.reader(f))
            kept = [r for i, r in enumerate(rows) if i == 0 or (r and _number(r[0]) <= samples)]
            if len(kept) < len(rows):
                tmp = path.with_suffix(".csv.tmp")
                with open(tmp, "w", newline="") as f:
                    csv.writer(f).writerows(kept)
                os.replace(tmp, path)

    def _keep_csv_headers(self) -> None:
        """A resumed run appends to the CSV files of the first one: tell DeepSpeed's CSV writer
        they already have their header line (it writes one the first time it sees a name)."""
        csv = getattr(self.monitor, "csv_monitor", None)
        if csv is None or not csv.log_dir:
            return
        for existing in Path(csv.log_dir).glob("*.csv"):
            if existing.stem not in csv.filenames:
                csv.filenames.append(existing.stem)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("inf")  # a torn line: dropped


def _backends(monitor: Any) -> Iterator[Any]:
    for attr in ("tb_monitor", "wandb_monitor", "csv_monitor", "comet_monitor"):
        backend = getattr(monitor, attr, None)
        if backend is not None:
            yield backend


def _flat(row: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in row.items():
        if isinstance(value, Mapping):
            yield from _flat(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", value


def _tag(key: str) -> str:
    """``loss`` -> ``Train/Samples/loss``; ``eval/accuracy/image->label`` -> ``Eval/Samples/accuracy/image->label``."""
    if key.startswith("eval/"):
        return "Eval/Samples/" + key[len("eval/") :]
    return "Train/Samples/" + key
