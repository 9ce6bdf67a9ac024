"""Sharing through the Hugging Face hub (lzn_core/io/hub.py): save_pretrained / from_pretrained with a
local directory and the offline cache only (no network), push_to_hub through a recording stand-in."""

from __future__ import annotations

import hashlib
import os
import types
from pathlib import Path

import pytest
import torch
from lzn_main import run_lzn

import lzn_core
from lzn_core.errors import LZNError
from lzn_core.io import INFO


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import tiny_model

    return tiny_model()


def _same(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=0, atol=0)


def _fake_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """The Hugging Face cache layout for one model repository: blobs named by their hash, a
    snapshot of symlinks to them and refs/main naming the commit (what snapshot_download writes)."""
    from huggingface_hub.file_download import repo_folder_name

    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snap


def test_save_and_load_pretrained_from_a_local_directory(tiny, tmp_path: Path) -> None:
    out = lzn_core.save_pretrained(tiny, tmp_path / "lzn-digits")
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "recipe.yaml", INFO, "README.md"}
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: lzn" in card and 'lzn_core.load("lzn-digits")' in card
    _same(tiny, lzn_core.from_pretrained(out))
    _same(tiny, lzn_core.load(str(out)))


def test_a_hub_id_loads_from_the_offline_cache(tiny, tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # tests/conftest.py: nothing here reaches the network
    folder = lzn_core.save_pretrained(tiny, tmp_path / "saved")
    cache = tmp_path / "cache"
    _fake_cache(cache, "user/lzn-digits", folder)
    (repo,) = huggingface_hub.scan_cache_dir(cache).repos  # huggingface_hub reads the layout as its own
    assert repo.repo_id == "user/lzn-digits" and repo.nb_files == 4
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)  # "user/lzn-digits" is no path here
    model = lzn_core.load("user/lzn-digits")
    _same(tiny, model)
    assert not model.training


def test_a_hub_id_missing_from_the_offline_cache_says_so(tmp_path: Path, monkeypatch, capsys) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        LZNError,
        match=r"'user/nothing-here' is no local directory and is not \(completely\) in the Hugging Face cache",
    ):
        lzn_core.load("user/nothing-here")
    rc, _, err = run_lzn(capsys, "info", "user/nothing-here")
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "HF_HUB_OFFLINE=1" in err and "hf download user/nothing-here" in err


def test_a_cached_repository_without_an_lzn_model_is_named(tiny, tmp_path: Path, monkeypatch, capsys) -> None:
    from huggingface_hub import constants

    other = tmp_path / "other"
    other.mkdir()
    (other / "README.md").write_text("not a model\n")
    _fake_cache(tmp_path / "cache", "user/other", other)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        LZNError, match=r"cached copy of 'user/other' .* lacks model.safetensors and recipe.yaml"
    ):
        lzn_core.load("user/other")
    # what `lzn info` fetches of a hub model (no weights) is enough for it, not for loading
    partial = tmp_path / "partial"
    saved = lzn_core.save_pretrained(tiny, tmp_path / "saved")
    partial.mkdir()
    for name in ("recipe.yaml", INFO, "README.md"):
        (partial / name).write_bytes((saved / name).read_bytes())
    _fake_cache(tmp_path / "cache", "user/partial", partial)
    rc, out, err = run_lzn(capsys, "info", "user/partial")
    assert rc == 0, err
    assert out.startswith("recipe  (user/partial)") and "latent       q = 8" in out
    with pytest.raises(LZNError, match=r"cached copy of 'user/partial' .* lacks model.safetensors and"):
        lzn_core.load("user/partial")


def test_what_counts_as_a_hub_id(tmp_path: Path, monkeypatch) -> None:
    from lzn_core.io.hub import is_hub_id

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "here").mkdir(parents=True)
    assert is_hub_id("user/lzn-digits") and is_hub_id("org.x/model_1.0")
    assert not is_hub_id("runs/here")  # an existing path is a path
    assert not any(is_hub_id(s) for s in ("lzn-digits", "a/b/c", "../x", "user/x.", "/abs/x", "user/-x"))
    assert not is_hub_id(Path("user/lzn-digits"))


def test_push_to_hub_uploads_the_model_files_and_a_card_in_one_commit(
    tiny, tmp_path: Path, monkeypatch
) -> None:
    """The upload path with a recording stand-in for huggingface_hub.HfApi (no network in tests)."""
    import huggingface_hub

    calls: dict = {}

    class FakeApi:
        def __init__(self, token=None, library_name=None):
            calls["init"] = (token, library_name)

        def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
            calls["repo"] = (repo_id, private, exist_ok, repo_type)
            return types.SimpleNamespace(repo_id=repo_id)

        def create_commit(self, repo_id, operations, commit_message, repo_type):
            calls["commit"] = (
                repo_id,
                [(op.path_in_repo, op.path_or_fileobj) for op in operations],
                commit_message,
            )
            return types.SimpleNamespace(commit_url=f"https://hub.invalid/{repo_id}/commit/1")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    folder = lzn_core.save_pretrained(tiny, tmp_path / "m")
    (folder / "README.md").unlink()  # a plain export: push_to_hub writes the card
    url = lzn_core.push_to_hub(folder, "user/lzn-digits", private=True, token="t")
    assert url == "https://hub.invalid/user/lzn-digits/commit/1"
    assert calls["init"] == ("t", "lzn") and calls["repo"] == ("user/lzn-digits", True, True, "model")
    repo_id, ops, message = calls["commit"]
    assert [p for p, _ in ops] == ["model.safetensors", "recipe.yaml", INFO, "README.md"]
    assert dict(ops)["model.safetensors"] == str(folder / "model.safetensors")
    assert (
        b"library_name: lzn" in dict(ops)["README.md"]
        and b'load("user/lzn-digits")' in dict(ops)["README.md"]
    )
    assert message == "Upload LZN model recipe"  # the recipe's name
    url = lzn_core.push_to_hub(tiny, "user/from-model")  # a model object: saved to a temporary directory
    assert calls["commit"][0] == "user/from-model" and len(calls["commit"][1]) == 4
