"""The conformance kit's trial (lzn_core.testing.trial): a registered modality trains beside label
through the training script, is stopped for real after its first checkpoint, resumes exactly and
serves; a plugin that breaks only in training fails the trial with a message naming it.

The plugins are tests/support/kit_plugins.py, registered through a temporary ``*.dist-info`` (visible to
this process and, through PYTHONPATH, to the trial's subprocesses).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
import torch
from paths import SUPPORT

from lzn_core.errors import ContractError
from lzn_core.plugins import reset_plugins
from lzn_core.testing import check_modality, run_trial


@pytest.fixture
def kit_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """toy, growing and lazynorm registered beside the built-ins, here and in subprocesses."""
    site = tmp_path / "site"
    info = site / "lzn_kit_plugins-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lzn-kit-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[lzn]\ntoy = kit_plugins:Toy\ngrowing = kit_plugins:Growing\nlazynorm = kit_plugins:LazyNorm\n"
    )
    monkeypatch.syspath_prepend(str(site))
    path = os.pathsep.join([str(site), str(SUPPORT), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path.rstrip(os.pathsep))
    reset_plugins()
    yield
    reset_plugins()


def _process_state() -> dict:
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    return {
        "SIGUSR1": signal.getsignal(signal.SIGUSR1),
        "wakeup fd": wakeup,
        "threads": sorted(t.name for t in threading.enumerate() if t.name.startswith("lzn-")),
        "launcher env": {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "MASTER_PORT")},
        "process group": torch.distributed.is_initialized(),
    }


def test_trial_stops_after_the_first_checkpoint_resumes_exactly_and_serves(kit_plugins, tmp_path) -> None:
    before = _process_state()
    rep = run_trial("toy", latent_dim=4, workdir=tmp_path / "trial")
    assert _process_state() == before  # handlers, wakeup fd, watcher thread, env, process group
    assert (rep.modality, rep.partner) == ("toy", "label")
    assert rep.tasks == ["generate latent -> toy", "align toy -> label", "align label -> toy"]
    run = tmp_path / "trial" / "run"
    assert (run / "ckpt" / "latest").read_text() == "step-4" and (
        run / "final" / "model.safetensors"
    ).is_file()
    assert (run / "ckpt" / "step-2").is_dir()  # the stop's checkpoint, kept (keep_checkpoints=2)
    assert {"label -> toy", "toy -> label", "label -> toy -> label"} <= set(rep.edges)
    assert any(c.startswith("training (in this process): 4 steps; stopped by SIGUSR1") for c in rep.checks)
    assert set(rep.seconds) == {"stopped run", "resumed run", "uninterrupted run", "serving"}


@pytest.mark.slow
def test_trial_in_subprocesses(kit_plugins, tmp_path) -> None:
    rep = run_trial("toy", latent_dim=4, workdir=tmp_path / "trial", subprocess=True)
    assert any(
        c.startswith("training (in a subprocess each): 4 steps; stopped by SIGUSR1") for c in rep.checks
    )
    assert "toy -> label" in rep.edges


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "growing",
            "modality 'growing' breaks the contract: the run resumed from its checkpoint step-2 failed: "
            "RuntimeError: Error(s) in loading state_dict for LZNModel:\n\tsize mismatch for "
            "decoders.growing.seen",
        ),
        (
            "lazynorm",
            "modality 'lazynorm' breaks the contract: resume is not exact: at step 3 the resumed run's gen_lazynorm",
        ),
    ],
)
def test_a_plugin_that_breaks_only_in_training_fails_the_trial_naming_it(kit_plugins, name, message) -> None:
    check_modality(name, latent_dim=4)  # the contract passes
    with pytest.raises(ContractError) as err:
        run_trial(name, latent_dim=4)
    assert str(err.value).startswith(message), str(err.value)


def test_the_trial_needs_a_registered_modality_and_the_main_thread(kit_plugins) -> None:
    import dataclasses

    from lzn_core.plugins import get_modality

    unregistered = dataclasses.replace(
        get_modality("toy"), example_config={"dim": 3}
    )  # not the registered one
    with pytest.raises(ContractError, match="the trial needs the modality registered"):
        run_trial(unregistered)
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _catch(errors, lambda: run_trial("toy")))
    thread.start()
    thread.join()
    assert len(errors) == 1 and "call it from the main thread, or with subprocess=True" in str(errors[0])


def _catch(errors: list[BaseException], fn) -> None:  # noqa: ANN001
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001
        errors.append(exc)
