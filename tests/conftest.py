"""Test environment: CPU only, offline, strict plugins, one thread per process."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("DS_BUILD_OPS", "0")
os.environ.setdefault("LZN_STRICT_PLUGINS", "1")

import pytest  # noqa: E402

_DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _no_launcher_env_leaks():
    """A training run in this process fills the launcher's variables (setup_distributed); a later
    test's subprocess must not inherit them (it would try to bind the same port)."""
    before = {k: os.environ.get(k) for k in _DIST_ENV}
    yield
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


E2E = Path(__file__).resolve().parent / "e2e"


@pytest.hookimpl(tryfirst=True)  # before -m deselects: `-m "not integration"` must see the marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/e2e is marked ``integration`` (by its folder: a file moved there needs no
    decorator); ``gpu`` tests are skipped without CUDA."""
    integration = pytest.mark.integration
    for item in items:
        if E2E in item.path.resolve().parents:
            item.add_marker(integration)
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    # the CPU rehearsal of benchmarks/gpu_check.sh runs tests/e2e/test_gpu.py on the CPU at small sizes
    has_cuda = has_cuda or os.environ.get("LZN_GPU_TESTS_DEVICE") == "cpu"
    for item in items:
        # the marker itself: item.keywords also holds the names of the folders above the test
        # (a checkout in a folder named gpu would skip everything)
        if item.get_closest_marker("gpu") is not None and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory: pytest.TempPathFactory):
    """A digits_joint model trained for 150 iterations (~1 min on one core), shared by the tests that
    need a model that has learnt something: ``(exported model dir, test shards pattern)``."""
    import subprocess
    import sys

    from paths import ROOT

    work = tmp_path_factory.mktemp("trained_digits")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    subprocess.run(
        [sys.executable, "-m", "lzn_core", "shards", "digits", str(work / "data"), "--no-progress"],
        check=True,
        env=env,
        capture_output=True,
    )
    overrides = [
        f"data.train={work}/data/train-*.tar",
        f"data.eval={work}/data/test-*.tar",
        "train.iterations=150",
        "train.warmup=20",
        "train.eval_every=0",
        "train.sample_every=0",
        "train.ckpt_every=0",
    ]
    out = work / "run"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes" / "train.py"),
            "--recipe",
            "digits_joint.yaml",
            "--output",
            str(out),
            *overrides,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return out / "final", f"{work}/data/test-*.tar"


@pytest.fixture(scope="session")
def monitored_run(tmp_path_factory: pytest.TempPathFactory):
    """A 3-iteration digits_joint run with TensorBoard and CSV switched on (tests/support/monitored_run.py),
    trained once for the tests of the monitor, info.json and ``lzn info``: its run directory."""
    pytest.importorskip(
        "tensorboard", reason="the TensorBoard backend needs `pip install 'lzn[tensorboard]'`"
    )
    from monitored_run import train_monitored

    return train_monitored(tmp_path_factory.mktemp("monitored"))


@pytest.fixture(scope="module")
def train():
    """recipes/train.py as a module (tests/support/tiny_runs.py); the process group a run in this
    process starts is torn down after the module (a later module's engine starts its own)."""
    from tiny_runs import load_train_script

    yield load_train_script()
    from lzn_core.train.engine import teardown_distributed

    teardown_distributed()


@pytest.fixture(scope="module")
def digits_workdir(tmp_path_factory: pytest.TempPathFactory):
    """A working directory with data/digits (the real digits, a test split of 50): the digits recipes'
    relative data paths resolve there. One per test module (runs are written beside the data)."""
    from lzn_core.data.digits import write_digits

    root = tmp_path_factory.mktemp("digits_workdir")
    write_digits(root / "data" / "digits", test_size=50, progress=False)
    return root
