"""What lzn uses of DeepSpeed beyond its documented API: one list, checked against the installed one.

``pyproject.toml`` pins ``deepspeed`` to the tested range (:data:`TESTED`). Where DeepSpeed has a
public call for what the framework needs, the framework uses it (``deepspeed.init_distributed``,
``deepspeed.initialize``, ``deepspeed.comm.destroy_process_group``, the engine's
``backward``/``step``/``save_checkpoint``/``load_checkpoint``); what has none is an entry of
:data:`INTERNALS`, with who uses it and why. ``tests/train/test_deepspeed_internals.py`` checks every entry
against the installed DeepSpeed and fails naming the attribute and the version, so an upgrade
that removes one fails there, not in a user's run.
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from ..errors import LZNError

TESTED = ">=0.19.8,<0.20"
"""The DeepSpeed versions lzn is tested with (``pyproject.toml`` pins the same range)."""


@dataclass(frozen=True)
class Internal:
    """An undocumented DeepSpeed attribute the framework relies on.

    Attributes:
        owner: dotted path of the module or class that has it.
        name: the attribute.
        on_instances: set on instances (by the class's own code), not on the class or module.
        used_by: where lzn uses it.
        why: what it is for, and why no public call does it.
    """

    owner: str
    name: str
    on_instances: bool
    used_by: str
    why: str

    @property
    def path(self) -> str:
        return f"{self.owner}{'()' if self.on_instances else ''}.{self.name}"


INTERNALS: tuple[Internal, ...] = (
    Internal(
        "deepspeed.comm.torch",
        "build_shm_op",
        False,
        "lzn_core.train.engine.setup_distributed",
        "on CPU, DeepSpeed's TorchBackend JIT-compiles its shared-memory all-reduce op (minutes of C++) "
        "that the gloo backend does not need; replaced by a function returning None (DeepSpeed has no switch)",
    ),
    Internal(
        "deepspeed.runtime.engine.DeepSpeedEngine",
        "monitor",
        True,
        "lzn_core.train.monitor.TrainingMonitor",
        "the MonitorMaster deepspeed.initialize builds from the config's monitor sections: the "
        "training script's metrics rows are written through it",
    ),
    Internal(
        "deepspeed.runtime.engine.DeepSpeedEngine",
        "global_samples",
        True,
        "lzn_core.train.monitor.TrainingMonitor",
        "the x axis DeepSpeed's own monitor events use, so lzn's rows share the curves' axis",
    ),
    *(
        Internal(
            "deepspeed.monitor.monitor.MonitorMaster",
            name,
            True,
            "lzn_core.train.monitor.TrainingMonitor",
            "which backends are on; images go to TensorBoard/W&B, the CSV files are trimmed on resume",
        )
        for name in ("enabled", "tb_monitor", "wandb_monitor", "csv_monitor", "comet_monitor")
    ),
    Internal(
        "deepspeed.monitor.tensorboard.TensorBoardMonitor",
        "summary_writer",
        True,
        "lzn_core.train.monitor.TrainingMonitor",
        "images (sample grids) and, on resume, a writer reopened with purge_step (one curve per run)",
    ),
    Internal(
        "deepspeed.monitor.csv_monitor.csvMonitor",
        "filenames",
        True,
        "lzn_core.train.monitor.TrainingMonitor",
        "a resumed run appends to the CSV files of the first attempt without a second header line",
    ),
    Internal(
        "deepspeed.monitor.csv_monitor.csvMonitor",
        "log_dir",
        True,
        "lzn_core.train.monitor.TrainingMonitor",
        "where the CSV files are, to trim the rows after the resumed step",
    ),
    Internal(
        "deepspeed.runtime.engine.DeepSpeedEngine",
        "_config",
        True,
        "lzn_core.train.engine.Engine._load_universal",
        "the engine's DeepSpeedConfig, to turn load_universal_checkpoint on for one load (resuming on "
        "another number of ranks) and back off; the config is read at load time only, and "
        "load_checkpoint has no argument for it",
    ),
    Internal(
        "deepspeed.runtime.config.DeepSpeedConfig",
        "load_universal_checkpoint",
        True,
        "lzn_core.train.engine.Engine._load_universal",
        "the switch load_checkpoint reads to load a universal checkpoint",
    ),
    Internal(
        "deepspeed.runtime.zero.stage_1_and_2.DeepSpeedZeroOptimizer",
        "optimizer",
        True,
        "lzn_core.train.engine._fill_missing_adam_state",
        "the wrapped torch optimizer, to give a group frozen since iteration 0 zero Adam state before a "
        "save (ds_to_universal fails on a partition without exp_avg)",
    ),
    Internal(
        "deepspeed.checkpoint.ds_to_universal",
        "main",
        False,
        "lzn_core.train.checkpoint.universal_checkpoint",
        "DeepSpeed's checkpoint conversion is a script; its main(args) is the one entry point",
    ),
)
"""Every undocumented DeepSpeed attribute lzn uses (module attributes; attributes DeepSpeed's own
code sets on instances of a class)."""


def installed_version() -> str:
    """The installed DeepSpeed version ("not installed" when there is none)."""
    try:
        return version("deepspeed")
    except PackageNotFoundError:
        return "not installed"


def _resolve(dotted: str) -> Any:
    """A module, or a class inside one, by dotted path."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def present(entry: Internal) -> bool:
    """Whether the installed DeepSpeed still has ``entry`` (an instance attribute: the class's
    source, its bases' included, assigns ``self.<name>``)."""
    try:
        owner = _resolve(entry.owner)
    except (ImportError, AttributeError):
        return False
    if not entry.on_instances:
        return hasattr(owner, entry.name)
    assign = re.compile(rf"\bself\.{re.escape(entry.name)}\s*(:[^=\n]*)?=[^=]")
    for cls in inspect.getmro(owner):
        if cls.__module__.startswith("deepspeed") and assign.search(inspect.getsource(cls)):
            return True
    return False


def missing() -> list[str]:
    """One line for every entry of :data:`INTERNALS` the installed DeepSpeed lacks ([] when all are there)."""
    ver = installed_version()
    return [
        f"DeepSpeed {ver} has no {e.path} (lzn is tested with deepspeed{TESTED}; used by {e.used_by}: {e.why})"
        for e in INTERNALS
        if not present(e)
    ]


def replace(owner: str, name: str, value: Any) -> None:
    """Set the listed module attribute ``owner.name`` to ``value``; an error naming the attribute and
    the installed version when DeepSpeed no longer has it (setting it would silently do nothing)."""
    entry = next((e for e in INTERNALS if (e.owner, e.name) == (owner, name)), None)
    if entry is None or entry.on_instances:
        raise ValueError(
            f"{owner}.{name} is not a module attribute listed in lzn_core.train._deepspeed.INTERNALS"
        )
    module = _resolve(owner)
    if not hasattr(module, name):
        raise LZNError(
            f"DeepSpeed {installed_version()} has no {entry.path}, which {entry.used_by} replaces; install "
            f"a tested version: pip install 'deepspeed{TESTED}'"
        )
    setattr(module, name, value)
