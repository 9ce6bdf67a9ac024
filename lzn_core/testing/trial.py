"""The trial part of the conformance kit: the modality trains and serves, through the training
script's own code path (``python -m lzn_recipes.train``'s ``main``), in this process by default.

:func:`run_trial` (opt-in from a plugin's tests: the fixture ``lzn_trial``) runs

1. the contract (:func:`~lzn_core.testing.check_modality`);
2. tiny shards with the modality's key beside a partner modality's (a zonal one with a bank,
   e.g. label, found by capability; a generative one for a zonal modality under test) and a
   recipe with the tasks that make sense (generate; align to the partner and back; two views
   when the spec augments), validated like ``lzn validate``;
3. a run of :data:`STEPS` steps stopped for real after its first checkpoint (step
   :data:`FIRST_CHECKPOINT`): at that step boundary the process sends itself its stop signal and
   the training script's preemption (:mod:`lzn_core.train.preemption`) stops there with the
   checkpoint of that step and exit status 75, as under a scheduler. Checked: the status,
   ``ckpt/latest``, no ``final/``, ``metrics.jsonl`` rows of steps 1..2;
4. ``--resume`` to the end: exit 0, ``metrics.jsonl`` holds steps 1..4 once each (the resumed
   run continued from the checkpoint's step, no gap, no duplicate), ``final/``, no step skipped
   for a non-finite loss;
5. an uninterrupted run of the same recipe: every loss term the resumed run logged equals this
   run's (resume is exact: whatever the modality's networks depend on is in their
   ``state_dict``, every random number of its loss comes from ``generator``);
6. serving: ``lzn_core.load`` reads the export; every edge of
   :func:`lzn_core.graphs.possible_edges` runs on a small request, and so do the chains through
   the modality (``partner -> X -> partner``) where both edges exist.

Like pytest's pytester, the runs are in this process (its main thread: stop signals need it)
unless ``subprocess=True`` asks for one process per run (``python -m lzn_core.testing._launch``,
the same ``main``). A failure raises :class:`~lzn_core.errors.ContractError` naming the modality,
the run that failed and why. Importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import subprocess as sp
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ContractError, LZNError
from .contract import ConformanceReport, _batch_len, _fail, _raw_items, _resolve, check_modality

if TYPE_CHECKING:  # pragma: no cover
    from ..modality import ModalitySpec

STEPS = 4
"""Steps of a trial run."""

FIRST_CHECKPOINT = 2
"""The step of the first checkpoint (``train.ckpt_every``): the stopped run stops after it."""

STOP_SIGNAL = "SIGUSR1"
"""The trial recipe's only stop signal (``train.stop_signals``), which the stopped run gets."""

STOPPED = 75
"""The training script's exit status after a stop signal (:data:`lzn_core.train.preemption.STOPPED`)."""

TRAIN_TIMEOUT = 600
"""Seconds a training subprocess may take (``subprocess=True``)."""

ITEMS = 16
"""Items in each of the trial's train and test shard sets."""

_LAUNCH_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class TrialReport:
    """What :func:`run_trial` verified (it raises on the first failure).

    Attributes:
        modality: the modality under trial.
        partner: the modality trained beside it (None: none was needed or found).
        contract: the contract part's report.
        tasks: the recipe's tasks, one line each.
        checks: what passed, in order.
        edges: the compose edges and chains served by the trained model.
        seconds: wall time of each part (runs, serving).
    """

    modality: str
    partner: str | None
    contract: ConformanceReport
    tasks: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    edges: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------- stopping a run for real


@contextlib.contextmanager
def stopping_after_first_checkpoint(script: Any, *, release: bool = True) -> Iterator[None]:
    """Within the block, a run of the training script ``script`` (``lzn_recipes.train``) stops for
    real after its first periodic checkpoint: at that step boundary the process raises its first
    stop signal (``train.stop_signals``) on itself, before the boundary's agreement, and the
    script's own preemption does the rest (checkpoint of that step, exit status 75).

    ``release``: afterwards, give the stop signals their previous handlers back (a process that
    goes on; a stopped run leaves them ignored for its exit).
    """
    real = script.Preemption
    made: list[Any] = []

    class Stopping(real):  # type: ignore[misc, valid-type]
        def __enter__(self) -> Any:
            made.append(self)
            return super().__enter__()

        def boundary(self, step: int, periodic: bool = False) -> Any:
            if periodic and not self.received and threading.current_thread() is threading.main_thread():
                signal.raise_signal(self.signals[0])  # the handler has run when this returns
            return super().boundary(step, periodic)

    script.Preemption = Stopping
    try:
        yield
    finally:
        script.Preemption = real
        if release:
            for p in made:
                p.release()


# ----------------------------------------------------------------------------- the runs


@dataclass
class _Run:
    status: int
    output: str
    error: BaseException | None = None


def _in_process(argv: list[str], stop: bool) -> _Run:
    """``lzn_recipes.train.main(argv)`` here; this process's launcher variables and process group
    are as before afterwards."""
    import torch
    from lzn_recipes import train as script

    from ..train.engine import teardown_distributed

    had_group = torch.distributed.is_available() and torch.distributed.is_initialized()
    env = {k: os.environ.get(k) for k in _LAUNCH_ENV}
    out = io.StringIO()
    try:
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(out),
            stopping_after_first_checkpoint(script) if stop else contextlib.nullcontext(),
        ):
            return _Run(script.main([*argv, "--debug"]), out.getvalue())
    except Exception as exc:  # noqa: BLE001 - reported with the modality's name by the caller
        return _Run(1, out.getvalue(), exc)
    finally:
        if not had_group:
            teardown_distributed()
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _in_subprocess(argv: list[str], stop: bool) -> _Run:
    cmd = [sys.executable, "-m", "lzn_core.testing._launch"]
    cmd += [*(["--stop-after-first-checkpoint"] if stop else []), "--", *argv]
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    try:
        done = sp.run(
            cmd, env=env, stdout=sp.PIPE, stderr=sp.STDOUT, text=True, timeout=TRAIN_TIMEOUT, check=False
        )
    except sp.TimeoutExpired as exc:
        return _Run(1, f"did not finish within {TRAIN_TIMEOUT} s ({' '.join(cmd)})", exc)
    return _Run(done.returncode, done.stdout)


def _failed(spec: ModalitySpec, what: str, run: _Run) -> ContractError:
    if run.error is not None:
        err = _fail(spec, f"{what} failed: {type(run.error).__name__}: {run.error}")
        err.__cause__ = run.error
        return err
    tail = "\n".join(run.output.strip().splitlines()[-12:])
    return _fail(spec, f"{what} failed (exit status {run.status}):\n{tail}")


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    """The training rows (with a loss) of ``metrics.jsonl``."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "loss" in r]


def _same(a: Any, b: Any) -> bool:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return a == b
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7)


# ----------------------------------------------------------------------------- the recipe


def _find_partner(spec: ModalitySpec, zonal: bool) -> ModalitySpec | None:
    """A registered modality to train beside ``spec``: a zonal one (with a bank) for a non-zonal
    modality, a generative one for a zonal modality; by capability, in name order."""
    from ..modality import AnchorBank
    from ..plugins import get_modality, list_modalities

    for name in list_modalities():
        other = get_modality(name)
        if other.name == spec.name or other.example_items is None:
            continue
        try:
            encoder, decoder = other.build(other.config(**dict(other.example_config)), 4)
        except Exception:  # noqa: BLE001 - a partner that cannot be built is simply not a candidate
            continue
        if zonal and decoder.kind == "generative":
            return other
        if not zonal and decoder.kind == "zonal" and isinstance(encoder, AnchorBank):
            return other
    return None


def _tasks(
    spec: ModalitySpec, kind: str, partner: ModalitySpec | None, partner_kind: str | None
) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = []
    mine, theirs = spec.name, partner.name if partner is not None else None
    if partner is None:
        return [{"kind": "generate", "target": mine}] if kind == "generative" else []
    zonal, other = (mine, theirs) if kind == "zonal" else (theirs, mine)
    zonal_spec, other_spec = (spec, partner) if kind == "zonal" else (partner, spec)
    other_kind = partner_kind if kind == "zonal" else kind
    if other_kind == "generative":
        task: dict[str, Any] = {"kind": "generate", "target": other}
        if other_spec.accepts_condition and zonal_spec.condition_dim is not None:
            task["condition"] = zonal
        tasks.append(task)
    tasks.append(
        {"kind": "align", "source": other, "target": zonal, "class_weights": True, "steps": 4, "loss": "prob"}
    )
    tasks.append({"kind": "align", "source": zonal, "target": other, "steps": 4})
    if other_spec.augment is not None:
        tasks.append({"kind": "align", "source": other, "target": other, "steps": 4})
    return tasks


def _describe(task: dict[str, Any]) -> str:
    return f"{task['kind']} {task.get('source', task.get('condition', 'latent'))} -> {task['target']}"


def _write_shards(root: Path, specs: list[ModalitySpec], n: int) -> None:
    from ..data.shards import write_split

    values = {s.name: _raw_items(s, n) for s in specs}
    for split in ("train", "test"):
        samples = ((f"kit{i:05d}", {s.shard_keys[0]: values[s.name][i] for s in specs}) for i in range(n))
        write_split(root, split, samples, total=n, progress=False)


def _recipe(specs: list[ModalitySpec], tasks: list[dict[str, Any]], latent_dim: int, data: Path) -> dict:
    return {
        "name": f"conformance-{specs[0].name}",
        "seed": 0,
        "latent": {"dim": latent_dim, "steps": 4, "g": 1e-3, "bank_size": 8},
        "modalities": {s.name: {"plugin": s.name, "config": dict(s.example_config)} for s in specs},
        "tasks": tasks,
        "data": {"train": str(data / "train-*.tar"), "eval": str(data / "test-*.tar")},
        "train": {
            "batch_size": 8,
            "iterations": STEPS,
            "lr": {"default": 1.0e-3},
            "warmup": 1,
            "ema": 0.9,
            "log_every": 1,
            "eval_every": STEPS,
            "sample_every": STEPS,
            "ckpt_every": FIRST_CHECKPOINT,
            "keep_checkpoints": 2,
            "stop_signals": [STOP_SIGNAL],
        },
        "eval": {"batch_size": 8, "alpha": 0.0, "steps": 4, "samples_per_class": 2},
        "deepspeed": {
            "zero_optimization": {"stage": 0},
            "optimizer": {"type": "Adam", "params": {"torch_adam": True}},
        },
    }


# ----------------------------------------------------------------------------- the trial


def _train_and_serve(
    spec: ModalitySpec,
    partner: ModalitySpec | None,
    latent_dim: int,
    workdir: Path,
    rep: TrialReport,
    *,
    subprocess: bool,
) -> None:
    import yaml

    from ..recipe import load_recipe

    specs = [spec] + ([partner] if partner is not None else [])
    partner_kind = None
    if partner is not None:
        _, partner_decoder = partner.build(partner.config(**dict(partner.example_config)), latent_dim)
        partner_kind = partner_decoder.kind
    tasks = _tasks(spec, rep.contract.decoder_kind, partner, partner_kind)
    if not tasks:
        rep.checks.append("training skipped: no task can train this modality without a partner modality")
        return
    rep.tasks = [_describe(t) for t in tasks]
    _write_shards(workdir / "data", specs, ITEMS)
    path = workdir / "recipe.yaml"
    path.write_text(yaml.safe_dump(_recipe(specs, tasks, latent_dim, workdir / "data"), sort_keys=False))
    try:
        load_recipe(path)
    except LZNError as exc:
        raise _fail(spec, f"the trial's recipe does not validate: {exc}") from exc
    rep.checks.append("recipe: " + "; ".join(rep.tasks))
    train = _in_subprocess if subprocess else _in_process
    how = "in a subprocess each" if subprocess else "in this process"

    def timed(name: str, argv: list[str], stop: bool = False) -> _Run:
        t0 = time.perf_counter()
        run = train(["--recipe", str(path), *argv], stop)
        rep.seconds[name] = time.perf_counter() - t0
        return run

    run_dir, reference = workdir / "run", workdir / "reference"
    stopped = timed("stopped run", ["--output", str(run_dir)], stop=True)
    if stopped.status == 0:
        raise _fail(
            spec, f"the trial's run was to stop after its first checkpoint but trained to step {STEPS}"
        )
    if stopped.status != STOPPED:
        raise _failed(spec, f"training up to the first checkpoint (step {FIRST_CHECKPOINT})", stopped)
    latest = run_dir / "ckpt" / "latest"
    tag = latest.read_text().strip() if latest.is_file() else None
    if tag != f"step-{FIRST_CHECKPOINT}":
        raise _fail(spec, f"the run stopped after step {FIRST_CHECKPOINT} left ckpt/latest = {tag!r}")
    if (run_dir / "final").exists():
        raise _fail(spec, f"the run stopped after step {FIRST_CHECKPOINT} wrote final/")
    logged = [r["step"] for r in _rows(run_dir)]
    if logged != list(range(1, FIRST_CHECKPOINT + 1)):
        raise _fail(spec, f"the run stopped after step {FIRST_CHECKPOINT} logged steps {logged}")
    resumed = timed("resumed run", ["--output", str(run_dir), "--resume"])
    if resumed.status != 0:
        raise _failed(spec, f"the run resumed from its checkpoint step-{FIRST_CHECKPOINT}", resumed)
    rows = _rows(run_dir)
    logged = [r["step"] for r in rows]
    if logged != list(range(1, STEPS + 1)):
        raise _fail(
            spec,
            f"after the resume metrics.jsonl logs steps {logged}; expected 1..{STEPS} once each (the "
            f"resumed run continues from the checkpoint's step {FIRST_CHECKPOINT})",
        )
    if not (run_dir / "final").is_dir():
        raise _fail(spec, "the resumed run finished without writing final/")
    if rows[-1].get("skipped"):
        raise _fail(
            spec, f"{rows[-1]['skipped']} of {STEPS} training steps were skipped for a non-finite loss"
        )
    done = timed("uninterrupted run", ["--output", str(reference)])
    if done.status != 0:
        raise _failed(spec, f"training (an uninterrupted run of {STEPS} steps)", done)
    ref_rows = _rows(reference)
    if [r["step"] for r in ref_rows] != logged:
        raise _fail(
            spec, f"the uninterrupted run logged steps {[r['step'] for r in ref_rows]}, expected {logged}"
        )
    terms = [k for k in ref_rows[-1] if k.startswith(("gen_", "align_"))] + ["loss"]
    for row, ref in zip(rows, ref_rows, strict=True):
        for k in terms:
            if not _same(row.get(k), ref.get(k)):
                raise _fail(
                    spec,
                    f"resume is not exact: at step {row['step']} the resumed run's {k} is {row.get(k):.8g}, the "
                    f"uninterrupted run's {ref.get(k):.8g}; keep everything the networks depend on in "
                    "parameters or persistent buffers (the checkpoint saves state_dict) and draw every "
                    "random number from `generator`",
                )
    rep.checks.append(
        f"training ({how}): {STEPS} steps; stopped by {STOP_SIGNAL} after the checkpoint of step "
        f"{FIRST_CHECKPOINT} (exit {STOPPED}, no final/); --resume logged steps {FIRST_CHECKPOINT + 1}.."
        f"{STEPS}, no step skipped, the losses of the uninterrupted run; export"
    )
    t0 = time.perf_counter()
    _serve(spec, partner, latent_dim, run_dir / "final", specs, rep)
    rep.seconds["serving"] = time.perf_counter() - t0


def _serve(
    spec: ModalitySpec,
    partner: ModalitySpec | None,
    latent_dim: int,
    final: Path,
    specs: list[ModalitySpec],
    rep: TrialReport,
) -> None:
    import torch

    from ..graphs import compose, possible_edges
    from ..io import load

    model = load(final)
    items = {s.name: s.collate([s.decode_sample(r) for r in _raw_items(s, 4)]) for s in specs}
    edges = list(possible_edges(model))
    if partner is not None:
        there, back = f"{partner.name} -> {spec.name}", f"{spec.name} -> {partner.name}"
        if there in edges and back in edges:
            edges.append(f"{partner.name} -> {spec.name} -> {partner.name}")
    for edge in edges:
        source = edge.split(" -> ")[0]
        request = torch.randn(2, latent_dim) if source == "latent" else items[source]
        try:
            out = compose(edge, model=model)(request, seed=0)
        except Exception as exc:
            raise _fail(
                spec, f"compose({edge!r}) on the trained model failed: {type(exc).__name__}: {exc}"
            ) from exc
        want = 2 if source == "latent" else len(items[source])
        got = len(out.labels) if hasattr(out, "labels") else _batch_len(out)
        if got != want:
            raise _fail(spec, f"compose({edge!r}) returned {got} items for a request of {want}")
        rep.edges.append(edge)
    with torch.no_grad():
        anchors = model.encode(spec.name, items[spec.name])
    if tuple(anchors.shape) != (len(items[spec.name]), latent_dim):
        raise _fail(spec, "the exported model's encoder gives anchors of the wrong shape")
    rep.checks.append("serving: lzn_core.load + every compose edge and chain: " + ", ".join(rep.edges))


def run_trial(
    spec_or_name: ModalitySpec | str,
    latent_dim: int = 8,
    *,
    partner: str | None = None,
    workdir: str | Path | None = None,
    subprocess: bool = False,
) -> TrialReport:
    """The contract, then train and serve a registered modality (the module doc's list).

    Args:
        spec_or_name: a registered modality's name or ``ModalitySpec`` (the training script finds
            modalities through the plugins' entry points, or a registry installed with
            :func:`lzn_core.plugins.reset_plugins`).
        latent_dim: q.
        partner: name of the modality to train beside it (default: found by capability).
        workdir: where shards, recipe and runs go (default: a temporary directory, removed after).
        subprocess: run each training in its own process (default: in this one, in its main thread).

    Returns:
        a :class:`TrialReport`.

    Raises:
        ContractError: the first failure, naming the modality, the run and what was expected.
        RuntimeError: called in-process from a thread other than the main one.
    """
    from ..plugins import get_modality, list_modalities

    spec = _resolve(spec_or_name)
    if not subprocess and threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "run_trial trains in this process's main thread (stop signals need it): call it from the "
            "main thread, or with subprocess=True"
        )
    contract = check_modality(spec, latent_dim)
    if spec.name not in list_modalities() or get_modality(spec.name) != spec:
        raise _fail(
            spec,
            "the trial needs the modality registered (entry point group 'lzn', or a registry installed "
            "with lzn_core.plugins.reset_plugins): the training script finds modalities through the plugins",
        )
    other = (
        get_modality(partner)
        if partner is not None
        else _find_partner(spec, contract.decoder_kind == "zonal")
    )
    rep = TrialReport(spec.name, other.name if other is not None else None, contract)
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        _train_and_serve(spec, other, latent_dim, Path(workdir), rep, subprocess=subprocess)
    else:
        with tempfile.TemporaryDirectory(prefix="lzn-trial-") as tmp:
            _train_and_serve(spec, other, latent_dim, Path(tmp), rep, subprocess=subprocess)
    return rep
