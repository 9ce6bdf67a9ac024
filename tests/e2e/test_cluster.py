"""Training on a cluster, on one CPU box: preemption, launchers, several nodes, SLURM, locks, logging.

Real processes, real signals (sent by the test to the launcher, to every process, to one rank,
repeated); a checkpoint write or an evaluation is made slow from outside the script
(``tests/support/fault_runner.py`` wraps a function before calling ``main``). The reference run is 2
ranks under the deepspeed launcher, dropout on; everything that should equal it is compared
weight by weight (max abs difference 0).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from paths import ROOT, SUPPORT

BIN = Path(sys.executable).parent
RUNNER = SUPPORT / "fault_runner.py"
ITERATIONS = 24
RUN = [
    "--recipe",
    "digits_joint",
    "train.batch_size=8",
    f"train.iterations={ITERATIONS}",
    "train.ckpt_every=1000",  # only the last step's checkpoint (and a stop's)
    "train.log_every=1",
    "train.eval_every=0",
    "train.sample_every=0",
    "train.warmup=0",
    "modalities.image.config.preset=tiny",
    "modalities.image.config.dropout=0.1",  # global-RNG draws in every step, per rank
    "modalities.image.config.sample_steps=2",
    "latent.dim=8",
    "latent.bank_size=8",
    "tasks.1.steps=10",
    "data.num_workers=1",  # a data worker under every rank: a signal to every process reaches it too
    "eval.batch_size=16",
    "eval.steps=4",
    "eval.samples_per_class=1",
]
ENV = {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "DS_BUILD_OPS": "0", "PYTHONWARNINGS": ""}
TIMEOUT = 420  # a hang becomes a failure; ~5x the loaded time of the slowest run here


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    }
    return {**env, **ENV, "PATH": f"{BIN}:{env.get('PATH', '')}", **(extra or {})}


def _popen(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _deepspeed(
    cwd: Path, out: str, *extra: str, nodes: int = 0, node_rank: int = 0, port: int = 0
) -> subprocess.Popen:
    """``deepspeed`` (1 node x 2 processes), or node ``node_rank`` of ``nodes`` x 1 through a hostfile."""
    launch = [str(BIN / "deepspeed"), "--master_port", str(port or _port())]
    if nodes:
        hosts = cwd / "hostfile"
        hosts.write_text("".join(f"node-{i} slots=1\n" for i in range(nodes)))
        launch += [
            "--hostfile",
            str(hosts),
            "--no_ssh",
            "--node_rank",
            str(node_rank),
            "--master_addr",
            "127.0.0.1",
        ]
    else:
        launch += ["--num_gpus", "2"]
    return _popen([*launch, str(ROOT / "recipes" / "train.py"), *RUN, "--output", out, *extra], cwd, _env())


def _ranks(
    cwd: Path, out: str, *extra: str, world: int = 2, wrap: str = "none", env: dict | None = None
) -> list[subprocess.Popen]:
    """``world`` ranks started as a launcher would (RANK etc.), each ``fault_runner.py WRAP``."""
    port = _port()
    return [
        _popen(
            [sys.executable, str(RUNNER), wrap, *RUN, "--output", out, *extra],
            cwd,
            _env(
                {
                    "RANK": str(r),
                    "LOCAL_RANK": str(r),
                    "WORLD_SIZE": str(world),
                    "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(port),
                    **(env or {}),
                }
            ),
        )
        for r in range(world)
    ]


def _wait(procs: list[subprocess.Popen], expect: tuple[int, ...] = (0,)) -> list[str]:
    """Every process's output; fails with it unless its exit status is in ``expect``."""
    try:
        outs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode in expect, f"exit {p.returncode}: {out[-4000:]}"
    return outs


def _steps(run: Path) -> list[int]:
    return [
        r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r
    ]


def _until_step(run: Path, step: int, procs: list[subprocess.Popen]) -> None:
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        if (run / "metrics.jsonl").exists() and len(_steps(run)) >= step:
            return
        assert all(p.poll() is None for p in procs), "a process ended before the signal"
        time.sleep(0.05)
    raise AssertionError(f"{run} did not reach step {step}")


def _weights(run: Path, step: int = ITERATIONS) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    raw = torch.load(run / "ckpt" / f"step-{step}" / "mp_rank_00_model_states.pt", weights_only=False)[
        "module"
    ]
    ema = load_file(run / "final" / "model.safetensors")
    return {**{f"raw/{k}": v for k, v in raw.items()}, **{f"ema/{k}": v for k, v in ema.items()}}


def _max_diff(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa if wa[k].numel())


def _stopped_at(run: Path) -> int:
    tag = (run / "ckpt" / "latest").read_text()
    return int(tag.removeprefix("step-"))


@pytest.fixture(scope="module")
def work(digits_workdir: Path) -> Path:
    """This module's working directory with data/digits (tests/conftest.py)."""
    return digits_workdir


@pytest.fixture(scope="module")
def reference(work: Path) -> Path:
    """The uninterrupted run: 2 ranks (1 node x 2 processes) under the deepspeed launcher."""
    _wait([_deepspeed(work, "reference")])
    assert _steps(work / "reference") == list(range(1, ITERATIONS + 1))
    return work / "reference"


# ----------------------------------------------------------------------------- preemption
@pytest.mark.slow
def test_sigterm_to_every_process_under_the_deepspeed_launcher_resumes_exactly(
    work: Path, reference: Path
) -> None:
    """SIGTERM three times within a second to every process of a 2-rank deepspeed launch (the
    `deepspeed` runner, the launcher, the ranks and their data workers), mid-training: every rank
    writes the checkpoint of the step reached; `--resume` ends with the weights (raw and EMA) of
    the uninterrupted run, exactly, and metrics.jsonl has every step once."""
    launcher = _deepspeed(work, "preempted")
    _until_step(work / "preempted", 4, [launcher])
    tree = [launcher.pid] + [p.pid for p in psutil.Process(launcher.pid).children(recursive=True)]
    t0 = time.time()
    for _ in range(3):
        for pid in tree:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(0.3)
    out = _wait([launcher], expect=(-signal.SIGTERM, 1, 75))[0]
    alive = [pid for pid in tree if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    for pid in alive:  # the launcher's ranks outlive the runner that died of the signal
        psutil.Process(pid).wait(timeout=TIMEOUT)
    print(
        f"{len(tree)} processes signalled; all gone {time.time() - t0:.1f} s later; runner exit {launcher.returncode}"
    )
    run = work / "preempted"
    reached = _stopped_at(run)
    assert 4 <= reached < ITERATIONS and _steps(run) == list(range(1, reached + 1))
    assert {p.name for p in (run / "ckpt" / f"step-{reached}").glob("rng-rank*.pt")} == {
        "rng-rank0.pt",
        "rng-rank1.pt",
    }
    assert f"stopped by SIGTERM after step {reached} of {ITERATIONS}" in out
    assert not (run / "final").exists() and not (run / "lock").exists()
    _wait([_deepspeed(work, "preempted", "--resume")])
    assert _steps(run) == list(range(1, ITERATIONS + 1))
    diff = _max_diff(reference, run)
    print(
        f"preempted at step {reached} and resumed: max abs weight difference to the uninterrupted run {diff}"
    )
    assert diff == 0.0


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(work: Path, reference: Path) -> None:
    """SIGUSR1 to rank 1 only: both ranks stop after the same step (no deadlock), exit 75, one line
    from rank 0; `--resume auto` finishes the run equal to the reference."""
    procs = _ranks(work, "one-rank")
    _until_step(work / "one-rank", 3, procs)
    procs[1].send_signal(signal.SIGUSR1)
    outs = _wait(procs, expect=(75,))
    reached = _stopped_at(work / "one-rank")
    assert reached < ITERATIONS and _steps(work / "one-rank") == list(range(1, reached + 1))
    assert f"train.py: stopped by SIGUSR1 after step {reached}" in outs[0] and "stopped by" not in outs[1]
    _wait(_ranks(work, "one-rank", "--resume", "auto"))
    assert _max_diff(reference, work / "one-rank") == 0.0


def test_repeated_signals_and_a_kill_keep_one_curve(work: Path, monkeypatch) -> None:
    """One process with TensorBoard, CSV and (a stand-in) W&B on: kill -9 after a checkpoint, resume,
    SIGTERM five times and SIGUSR1 within half a second, resume again: one checkpoint per stop,
    metrics.jsonl, the TensorBoard scalars and every CSV file hold each step once, W&B was started
    three times with the run id kept in the run directory and resume "allow"."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fake = work / "fake_wandb"
    (fake / "wandb").mkdir(parents=True, exist_ok=True)
    (fake / "wandb" / "__init__.py").write_text(
        "import json, os\n"
        "def _rec(**kw):\n"
        "    with open(os.environ['FAKE_WANDB_LOG'], 'a') as f: f.write(json.dumps(kw) + '\\n')\n"
        "def init(**kw): _rec(init=kw, id=os.environ.get('WANDB_RUN_ID'), resume=os.environ.get('WANDB_RESUME'))\n"
        "def log(data, step=None, commit=None): _rec(step=step)\n"
        "class Image:\n    def __init__(self, *a, **k): pass\n"
    )
    log = work / "wandb.jsonl"
    env = {"PYTHONPATH": str(fake), "FAKE_WANDB_LOG": str(log)}
    ds = "deepspeed={tensorboard: {enabled: true}, csv_monitor: {enabled: true}, wandb: {enabled: true, project: p}}"
    args = ["train.ckpt_every=4", ds]
    run = work / "curves"

    (first,) = _ranks(work, "curves", *args, world=1, env=env)
    _until_step(run, 7, [first])
    first.send_signal(signal.SIGKILL)  # after the checkpoint of step 4: steps 5.. were logged, then lost
    _wait([first], expect=(-signal.SIGKILL,))
    (second,) = _ranks(work, "curves", *args, "--resume", "auto", world=1, env=env)
    _until_step(run, 10, [second])
    for sig in [signal.SIGTERM] * 5 + [signal.SIGUSR1]:
        second.send_signal(sig)
        time.sleep(0.08)
    out = _wait([second], expect=(75,))[0]
    assert out.count("stopped by SIGTERM") == 1
    reached = _stopped_at(run)
    (third,) = _ranks(work, "curves", *args, "--resume", world=1, env=env)
    _wait([third])

    every = list(range(1, ITERATIONS + 1))
    assert _steps(run) == every
    samples = [8 * s for s in every]  # DeepSpeed's x-axis: samples in optimiser steps
    tb = EventAccumulator(str(run / "tensorboard"))
    tb.Reload()
    assert [e.step for e in tb.Scalars("Train/Samples/loss")] == samples
    for csv_file in (run / "csv").glob("Train_*.csv"):
        rows = csv_file.read_text().splitlines()[1:]
        assert [int(float(r.split(",")[0])) for r in rows] == samples, csv_file.name
    inits = [r for r in map(json.loads, log.read_text().splitlines()) if "init" in r]
    assert len(inits) == 3 and {r["resume"] for r in inits} == {"allow"}
    assert {r["id"] for r in inits} == {(run / "wandb-id").read_text().strip()}
    print(
        f"killed after step 7 (checkpoint 4), stopped after step {reached}: one curve of {ITERATIONS} steps"
    )


def test_a_signal_during_a_checkpoint_write_waits_for_it(work: Path) -> None:
    """SIGTERM twice while the checkpoint of step 4 is being written (the write made slow from
    outside): the write completes, `latest` names it only then, and the run stops after the next
    step with that step's checkpoint."""
    marker = work / "slow-save.marker"
    (proc,) = _ranks(
        work,
        "slow-save",
        "train.ckpt_every=4",
        world=1,
        wrap="slow-save:3",
        env={"LZN_TEST_MARKER": str(marker)},
    )
    _signal_at_marker(proc, marker)
    run = work / "slow-save"
    assert not (run / "ckpt" / "latest").exists()  # mid-write: nothing is `latest` yet
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    _wait([proc], expect=(75,))
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["latest", "step-4", "step-5"]
    assert _stopped_at(run) == 5 and _steps(run) == [1, 2, 3, 4, 5]


def _signal_at_marker(proc: subprocess.Popen, marker: Path, *signals: signal.Signals) -> None:
    deadline = time.time() + TIMEOUT
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    for sig in signals:
        proc.send_signal(sig)


def test_a_signal_during_evaluation_or_the_export_waits_for_it(work: Path) -> None:
    """SIGTERM while rank 0 evaluates at step 4 (made 3 s slower from outside): the evaluation's rows
    are written, the run stops after step 5 with its checkpoint. SIGTERM during the final export: the
    export completes and the run ends normally (status 0), its last checkpoint written."""
    marker = work / "eval.marker"
    env = {"LZN_TEST_MARKER": str(marker)}
    (proc,) = _ranks(work, "during-eval", "train.eval_every=4", world=1, wrap="slow-eval:3", env=env)
    _signal_at_marker(proc, marker, signal.SIGTERM)
    _wait([proc], expect=(75,))
    run = work / "during-eval"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert _stopped_at(run) == 5 and _steps(run) == [1, 2, 3, 4, 5]
    assert [r["step"] for r in rows if any(k.startswith("eval/") for k in r)] == [4]
    marker = work / "export.marker"
    env = {"LZN_TEST_MARKER": str(marker)}
    (proc,) = _ranks(work, "during-export", "train.iterations=3", world=1, wrap="slow-export:3", env=env)
    _signal_at_marker(proc, marker, signal.SIGTERM, signal.SIGUSR1)
    out = _wait([proc])[0]
    run = work / "during-export"
    assert (run / "final" / "model.safetensors").is_file() and _stopped_at(run) == 3
    assert "stopped by" not in out and "exported model:" in out


def test_the_deadline_ends_a_stalled_stop_and_resume_continues_from_the_last_checkpoint(work: Path) -> None:
    """The stop's checkpoint write stalls (from outside); train.stop_deadline=3 ends the process with
    status 76 about 3 s after the signal; `latest` still names the complete checkpoint of step 4 (the
    stalled one is a tmp- leftover, never read), and --resume continues from it to the end."""
    marker = work / "stall.marker"
    args = ["train.ckpt_every=4", "train.stop_deadline=3"]
    (proc,) = _ranks(
        work, "stalled", *args, world=1, wrap="stall-save:4", env={"LZN_TEST_MARKER": str(marker)}
    )
    run = work / "stalled"
    _until_step(run, 6, [proc])
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    out = _wait([proc], expect=(76,))[0]
    took = time.time() - t0
    assert marker.exists() and 3.0 <= took < 60, took
    assert "no checkpoint within train.stop_deadline=3 s of SIGTERM: exiting with status 76" in out
    assert (run / "ckpt" / "latest").read_text() == "step-4"
    assert any(p.name.startswith("tmp-") for p in (run / "ckpt").iterdir())
    assert not (run / "lock").exists() or json.loads((run / "lock").read_text())["pid"] == proc.pid
    (again,) = _ranks(work, "stalled", "train.ckpt_every=4", "--resume", world=1)
    out = _wait([again])[0]
    assert "resuming" in out and "at step 4" in out and "took over the lock" in out
    assert _steps(run) == list(range(1, ITERATIONS + 1))
    assert not any(p.name.startswith("tmp-") for p in (run / "ckpt").iterdir())
    print(f"deadline exit {took:.1f} s after SIGTERM")


# ----------------------------------------------------------------------------- launchers and nodes
@pytest.mark.slow
def test_two_nodes_and_torchrun_equal_one_node_of_two_processes(work: Path, reference: Path) -> None:
    """The deepspeed launcher as 2 nodes x 1 process (a hostfile of two hosts, --no_ssh, --node_rank 0
    and 1, master 127.0.0.1) and `torchrun --nproc_per_node 2` end with the weights of 1 node x 2
    processes (the reference), exactly."""
    port = _port()
    nodes = [_deepspeed(work, "two-nodes", nodes=2, node_rank=i, port=port) for i in range(2)]
    torchrun = _popen(
        [
            str(BIN / "torchrun"),
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_port()),
            str(ROOT / "recipes" / "train.py"),
            *RUN,
            "--output",
            "torchrun",
        ],
        work,
        _env(),
    )
    _wait([*nodes, torchrun])
    assert _max_diff(reference, work / "two-nodes") == 0.0
    assert _max_diff(reference, work / "torchrun") == 0.0


@pytest.mark.slow
def test_evaluation_longer_than_the_collective_timeout(work: Path) -> None:
    """train.timeout_minutes=0.5 (30 s): an evaluation on rank 0 that takes 45 s more does not time
    out rank 1 (it waits on a group of its own, train.eval_timeout_minutes), while rank 1 asleep inside
    a step fails the run: rank 0 exits with one line while rank 1 still sleeps (the setting is live)."""
    # 30 s, not less: on a loaded machine rank 0's own start-up (its evaluation model) keeps rank 1
    # waiting in the first collective for seconds
    fast = ["train.timeout_minutes=0.5", "train.iterations=4", "train.eval_every=2", "train.ckpt_every=0"]
    _wait(_ranks(work, "slow-eval", *fast, wrap="slow-eval:45"))
    stuck = _ranks(work, "stuck", *fast, "train.eval_every=0", wrap="stuck-rank:1:2:600")
    try:
        out = stuck[0].communicate(timeout=TIMEOUT)[0]
        assert stuck[0].returncode == 1 and stuck[1].poll() is None  # rank 1 still asleep: the timeout struck
    finally:
        for p in stuck:
            p.kill()
            p.wait()
    errors = [line for line in out.splitlines() if line.startswith("train.py: error")]
    assert len(errors) == 1 and "Timed out waiting 30000ms" in errors[0], out[-3000:]


# ----------------------------------------------------------------------------- one command line
def test_resume_auto_starts_then_resumes(work: Path, capsys, monkeypatch) -> None:
    """`--resume auto` starts a new directory, resumes one holding a checkpoint; a held lock refuses."""
    import importlib

    train = importlib.import_module("lzn_recipes.train")
    from lzn_core.train.engine import teardown_distributed

    monkeypatch.chdir(work)
    fast = [a for a in RUN if not a.startswith(("train.iterations", "data.num_workers"))]
    try:
        assert (
            train.main(
                [*fast, "train.iterations=2", "train.ckpt_every=1", "--output", "auto", "--resume", "auto"]
            )
            == 0
        )
        assert "starting auto at step 0" in capsys.readouterr().out
        assert train.main([*fast, "--output", "auto", "--resume", "auto", "train.iterations=3"]) == 0
        assert "resuming auto at step 2 (ckpt/step-2)" in capsys.readouterr().out
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            lock = {"host": socket.gethostname(), "pid": other.pid, "started": "now"}
            (work / "auto" / "lock").write_text(json.dumps(lock))
            assert train.main([*fast, "--output", "auto", "--resume", "auto"]) == 1
            err = capsys.readouterr().err
            assert f"train.py: error: run directory auto is in use by pid {other.pid} on " in err
        finally:
            other.kill()
            other.wait()
        assert train.main([*fast, "--output", "auto", "--resume", "train.iterations=4"]) == 0  # a dead holder
        assert "took over the lock of pid" in capsys.readouterr().out
    finally:
        teardown_distributed()


# ----------------------------------------------------------------------------- SLURM
FAKE_SRUN = """#!/usr/bin/env python3
# srun with a fake allocation: runs the task command once per node (SLURM_NODEID, SLURM_PROCID), at once
import json, os, subprocess, sys
args = sys.argv[1:]
opts = []
while args and args[0].startswith("-"):
    opts.append(args.pop(0))
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({"srun": opts}) + "\\n")
tasks = [
    subprocess.Popen(args, env=dict(os.environ, SLURM_NODEID=str(n), SLURM_PROCID=str(n), SLURM_STEP_ID="0"))
    for n in range(int(os.environ["SLURM_JOB_NUM_NODES"]))
]
sys.exit(max(t.wait() for t in tasks))
"""
FAKE_SCONTROL = """#!/usr/bin/env python3
import json, os, sys
if sys.argv[1:3] == ["show", "hostnames"]:
    print(os.environ.get("FAKE_HOSTS", "gpu-a17 gpu-b03").replace(" ", "\\n"))
else:
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps({"scontrol": sys.argv[1:]}) + "\\n")
"""
FAKE_DEEPSPEED = """#!/usr/bin/env python3
# the deepspeed runner, recorded: its arguments and which signals it ignores (SigIgn of /proc)
import json, os, sys
mask = int(next(l for l in open("/proc/self/status") if l.startswith("SigIgn:")).split()[1], 16)
ignored = sorted(n for n in (10, 15) if mask >> (n - 1) & 1)
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({"deepspeed": sys.argv[1:], "ignored": ignored}) + "\\n")
sys.exit(int(os.environ.get("FAKE_STATUS", "0")))
"""


@pytest.mark.parametrize("status", [0, 75, 76, 1])
def test_the_sbatch_script_on_a_fake_allocation(tmp_path: Path, status: int) -> None:
    """`lzn recipes cp slurm/train.sbatch`, run by bash with a job's SLURM_* variables and fake srun,
    scontrol and deepspeed on PATH: one launcher per node with its node rank, the hostfile of the
    allocation, master = first node, the port from the job id, --resume auto and the deadline, USR1 and
    TERM ignored by the launcher's process; exit 75/76 requeues the job, 0 does not, 1 fails it."""
    from lzn_core.cli import main as lzn

    fake = _fake_slurm(tmp_path, "srun", "scontrol", "deepspeed")
    assert lzn(["recipes", "cp", "slurm/train.sbatch", str(tmp_path)]) == 0
    script = tmp_path / "train.sbatch"
    header = [line for line in script.read_text().splitlines() if line.startswith("#SBATCH")]
    assert {"#SBATCH --signal=USR1@300", "#SBATCH --requeue", "#SBATCH --open-mode=append"} <= set(header)
    log = tmp_path / "log.jsonl"
    env = {
        "PATH": f"{fake}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "FAKE_LOG": str(log),
        "FAKE_STATUS": str(status),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "gpu-a17,gpu-b03",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_GPUS_ON_NODE": "4",
        "SLURM_SUBMIT_DIR": str(tmp_path),
        "SLURM_RESTART_COUNT": "1",
    }
    done = subprocess.run(
        ["bash", str(script), "cifar_joint.yaml", "train.iterations=10", "data.train=s3://b/x {0..9}.tar"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == (1 if status == 1 else 0), done.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls[0] == {"srun": ["--ntasks-per-node=1", "--kill-on-bad-exit=0"]}
    hostfile = str(tmp_path / ".lzn-hostfile-4242")
    for node, call in enumerate(sorted(calls[1:3], key=lambda c: c["deepspeed"][1])):
        assert call["ignored"] == [10, 15]  # SIGUSR1, SIGTERM
        assert call["deepspeed"] == [
            "--node_rank",
            str(node),
            "--hostfile",
            hostfile,
            "--no_ssh",
            "--master_addr",
            "gpu-a17",
            "--master_port",
            str(10000 + 4242 % 50000),
            "--num_gpus",
            "4",
            "--module",
            "lzn_recipes.train",
            "--recipe",
            "cifar_joint.yaml",
            "--resume",
            "auto",
            "train.stop_deadline=240",
            "train.iterations=10",
            "data.train=s3://b/x {0..9}.tar",
        ]
    requeued = [c for c in calls if "scontrol" in c]
    assert requeued == ([{"scontrol": ["requeue", "4242"]}] if status in (75, 76) else [])
    assert "lzn: job 4242 attempt 1: 2 nodes x 4, master gpu-a17:14242" in done.stdout
    assert not Path(hostfile).exists()


def _fake_slurm(tmp_path: Path, *names: str) -> Path:
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    texts = {"srun": FAKE_SRUN, "scontrol": FAKE_SCONTROL, "deepspeed": FAKE_DEEPSPEED}
    for name in names:
        (fake / name).write_text(texts[name])
        (fake / name).chmod(0o755)
    return fake


@pytest.mark.slow
def test_the_sbatch_script_stops_requeues_and_resumes_a_real_run(
    work: Path, reference: Path, tmp_path: Path
) -> None:
    """The shipped script with the real deepspeed launcher on a fake allocation of 2 nodes x 1 process
    (hosts 127.0.0.1 and localhost): SIGUSR1 to every process of the job step, as `--signal=USR1@300`
    sends it, mid-training; the ranks stop with a checkpoint, the launchers pass 75 on, the script
    requeues the job; the requeued attempt (same command) resumes and ends with the reference's weights."""
    fake = _fake_slurm(tmp_path, "srun", "scontrol")
    port = _port()
    while port >= 60000:
        port = _port()
    job = str(port - 10000)  # the script's port is 10000 + job id % 50000: a free one
    log = tmp_path / "log.jsonl"
    env = _env(
        {
            "PATH": f"{fake}:{BIN}:{os.environ['PATH']}",
            "FAKE_LOG": str(log),
            "FAKE_HOSTS": "127.0.0.1 localhost",
            "SLURM_JOB_ID": job,
            "SLURM_JOB_NODELIST": "n[1-2]",
            "SLURM_JOB_NUM_NODES": "2",
            "SLURM_GPUS_ON_NODE": "1",
            "SLURM_SUBMIT_DIR": str(tmp_path),
            "LZN_TRAIN": str(ROOT / "recipes" / "train.py"),
        }
    )
    script = ROOT / "recipes" / "slurm" / "train.sbatch"
    command = ["bash", str(script), "digits_joint", *RUN[2:], "--output", "slurm-run"]
    batch = _popen(command, work, {**env, "SLURM_RESTART_COUNT": "0"})
    run = work / "slurm-run"
    _until_step(run, 4, [batch])
    srun = next(p for p in psutil.Process(batch.pid).children() if "srun" in " ".join(p.cmdline()))
    step = srun.children(recursive=True)
    for p in step:
        try:
            p.send_signal(signal.SIGUSR1)
        except psutil.NoSuchProcess:
            pass
    out = _wait([batch])[0]
    reached = _stopped_at(run)
    assert reached < ITERATIONS and not (run / "final").exists()
    assert f"stopped by SIGUSR1 after step {reached}" in out
    assert f"lzn: job {job} stopped (exit 75): requeued" in out
    assert [json.loads(line) for line in log.read_text().splitlines()][-1] == {"scontrol": ["requeue", job]}
    again = _wait([_popen(command, work, {**env, "SLURM_RESTART_COUNT": "1"})])[0]
    assert f"resuming slurm-run at step {reached}" in again and f"lzn: job {job} finished" in again
    assert _max_diff(reference, run) == 0.0
    print(f"{len(step)} processes of the step got SIGUSR1; stopped at step {reached}, requeued, resumed")


def test_launcher_environments() -> None:
    """Rank, world and local rank from each launcher's variables; the one-line refusals."""
    from lzn_core.errors import LZNError
    from lzn_core.train.launcher import first_host, from_environment

    def launch(**env: str) -> tuple:
        got = from_environment(env)
        return got.rank, got.world, got.local_rank, got.master_addr, got.master_port, got.source

    torch_env = {
        "RANK": "3",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "h0",
        "MASTER_PORT": "29500",
    }
    assert launch(**torch_env) == (3, 8, 1, "h0", "29500", "torch")
    ompi = {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "6", "OMPI_COMM_WORLD_LOCAL_RANK": "2"}
    assert launch(**ompi, MASTER_ADDR="m", MASTER_PORT="1") == (5, 6, 2, "m", "1", "openmpi")
    assert launch(PMI_RANK="1", PMI_SIZE="2", MPI_LOCALRANKID="1", MASTER_ADDR="m", MASTER_PORT="1")[:3] == (
        1,
        2,
        1,
    )
    srun = {
        "SLURM_PROCID": "7",
        "SLURM_STEP_NUM_TASKS": "16",
        "SLURM_NTASKS": "32",
        "SLURM_LOCALID": "3",
        "SLURM_STEP_ID": "0",
        "SLURM_JOB_ID": "123456",
        "SLURM_STEP_NODELIST": "gpu[07-08,11]",
    }
    assert launch(**srun) == (7, 16, 3, "gpu07", str(10000 + 123456 % 50000), "slurm")
    # a batch script's own variables (no job step) are not a launch: one process
    assert launch(SLURM_PROCID="0", SLURM_NTASKS="8", SLURM_JOB_ID="1")[:3] == (0, 1, 0)
    assert launch()[:3] == (0, 1, 0) and launch(WORLD_SIZE="1")[:3] == (0, 1, 0)
    assert first_host("rack[1-2]-n[04,09],login") == "rack1-n04" and first_host("a,b") == "a"
    with pytest.raises(LZNError, match="WORLD_SIZE is set but RANK is not"):
        from_environment({"WORLD_SIZE": "4"})
    with pytest.raises(LZNError, match="an Open MPI launch of 6 ranks without MASTER_ADDR"):
        from_environment(ompi)
    with pytest.raises(LZNError, match="rank 9 is outside the world of 4 ranks"):
        from_environment({"RANK": "9", "WORLD_SIZE": "4", "MASTER_ADDR": "x", "MASTER_PORT": "1"})


def test_wall_time_checkpoints(work: Path, monkeypatch, capsys) -> None:
    """train.ckpt_every_minutes with no step period: rank 0's clock decides (here: every step)."""
    import importlib

    train = importlib.import_module("lzn_recipes.train")
    from lzn_core.train.engine import teardown_distributed

    monkeypatch.chdir(work)
    fast = [a for a in RUN if not a.startswith(("train.iterations", "train.ckpt_every", "data.num_workers"))]
    try:
        extra = ["train.iterations=3", "train.ckpt_every=0", "train.ckpt_every_minutes=0.00001"]
        assert train.main([*fast, *extra, "train.keep_checkpoints=5", "--output", "timed"]) == 0
    finally:
        teardown_distributed()
    assert sorted(p.name for p in (work / "timed" / "ckpt").iterdir()) == [
        "latest",
        "step-1",
        "step-2",
        "step-3",
    ]


def test_run_lock_takeover_rules(tmp_path: Path, monkeypatch) -> None:
    """A live lock refuses; a lock whose process is gone (same host), of an earlier attempt of this SLURM
    job (a requeue), or untouched for 5 minutes (another host) is taken over; release removes only ours."""
    from lzn_core.errors import LZNError
    from lzn_core.train.rundir import RunLock

    path = tmp_path / "lock"
    here = socket.gethostname()

    def held(**record) -> None:
        path.write_text(json.dumps({"host": here, "pid": os.getppid(), "started": "t", **record}))

    held()  # the parent of this process: alive, this host
    with pytest.raises(LZNError, match=f"is in use by pid {os.getppid()} on {here}"):
        RunLock.acquire(path)
    held(host="elsewhere", slurm_job="91", slurm_restart=0)  # another host, fresh: may be alive
    with pytest.raises(LZNError, match="in use by .* on elsewhere, SLURM job 91"):
        RunLock.acquire(path)
    monkeypatch.setenv("SLURM_JOB_ID", "91")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # this is the requeued attempt of job 91
    lock = RunLock.acquire(path)
    assert lock.taken_over and "an earlier attempt of this SLURM job" in lock.taken_over
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists()
    monkeypatch.delenv("SLURM_JOB_ID")
    held(host="elsewhere")
    old = time.time() - 600
    os.utime(path, (old, old))
    assert "not touched for 10 min" in (RunLock.acquire(path).taken_over or "")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    held(pid=dead.pid)
    assert RunLock.acquire(path).taken_over.endswith("(its process is gone)")
    path.write_text("")  # a writer killed between creating the file and writing it
    old = time.time() - 30
    os.utime(path, (old, old))
    assert RunLock.acquire(path).taken_over.endswith("(unreadable)")
