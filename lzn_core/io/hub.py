"""Sharing models through the Hugging Face Hub: ``save_pretrained`` / ``push_to_hub`` / downloads.

    lzn_core.save_pretrained(model, "lzn-digits/")                    # a local directory + model card
    lzn_core.push_to_hub("runs/digits_joint/final", "user/lzn-digits")
    model = lzn_core.load("user/lzn-digits")                           # lzn_core.io.load: the hub's copy

A shared model is an exported directory (``model.safetensors``, ``recipe.yaml``, ``info.json``;
:mod:`lzn_core.io.files`) plus a ``README.md`` model card. :func:`download` fetches a hub id
``user/name`` through ``huggingface_hub``'s cache (``snapshot_download``: downloaded once, then
read from ``~/.cache/huggingface/hub``). With ``HF_HUB_OFFLINE=1`` only the cache is read, and a
model that is not in it is an error saying so. The modalities' plugins must be installed where
the model is loaded (``info.json`` names each plugin's distribution).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LZNError
from .files import INFO, RECIPE, WEIGHTS, Metrics, read_info, resolve_model_dir, write_model

if TYPE_CHECKING:  # pragma: no cover
    from ..model import LZNModel

CARD = "README.md"
MODEL_FILES = (WEIGHTS, RECIPE, INFO, CARD)
"""The files of a shared model: what is downloaded from and uploaded to a hub repository."""

_HUB_ID = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?/[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
)


def is_hub_id(name: str | Path) -> bool:
    """Whether ``name`` would be read from the hub: a string ``user/name`` that is no existing path."""
    if not isinstance(name, str) or Path(name).exists():
        return False
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name


def download(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    files: Sequence[str] = MODEL_FILES,
) -> Path:
    """The local folder of the hub model ``repo_id`` (``user/name``), from the cache or downloaded.

    Args:
        repo_id: a hub id ``user/name``.
        revision: hub branch, tag or commit (default ``main``).
        cache_dir: the hub cache (default ``~/.cache/huggingface/hub``, ``HF_HUB_CACHE``).
        token: hub token for private repositories (default: the one ``hf auth login`` stored).
        local_files_only: read the cache only (as ``HF_HUB_OFFLINE=1`` does).
        files: which of :data:`MODEL_FILES` to fetch (``lzn info`` leaves the weights).

    Raises:
        LZNError: not in the cache when offline, not on the hub, or a repository that holds no
            LZN model.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = local_files_only or constants.HF_HUB_OFFLINE
    where = Path(cache_dir or constants.HF_HUB_CACHE)
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            allow_patterns=list(files),
            library_name="lzn",
        )
    except LocalEntryNotFoundError as exc:
        if offline:
            raise LZNError(
                f"model {repo_id!r} is no local directory and is not (completely) in the Hugging Face cache ({where}); "
                f"the hub is not asked (HF_HUB_OFFLINE=1 or local_files_only): download it once with "
                f"network access (`hf download {repo_id}`), or give an exported model directory"
            ) from exc
        raise LZNError(
            f"model {repo_id!r} is no local directory, and the Hugging Face hub cannot be reached "
            f"with no copy in the cache ({where}): check the network, or give an exported model directory"
        ) from exc
    except RevisionNotFoundError as exc:
        raise LZNError(f"hub model {repo_id!r} has no revision {revision!r}") from exc
    except RepositoryNotFoundError as exc:
        raise LZNError(
            f"{repo_id!r} is neither a local directory nor a model on the Hugging Face hub (or it is "
            "private or gated: log in with `hf auth login` or pass token=)"
        ) from exc
    except HfHubHTTPError as exc:
        raise LZNError(f"hub model {repo_id!r}: {str(exc).splitlines()[0]}") from exc
    folder_path = Path(folder)
    missing = [f for f in (WEIGHTS, RECIPE) if f in files and not (folder_path / f).is_file()]
    if missing and offline:
        raise LZNError(
            f"the cached copy of {repo_id!r} ({folder_path}) lacks {' and '.join(missing)} and the hub is not "
            f"asked (HF_HUB_OFFLINE=1 or local_files_only): download it with network access (`hf download {repo_id}`)"
        )
    if missing:
        raise LZNError(
            f"hub repository {repo_id!r} holds no LZN model ({' and '.join(missing)} missing); "
            "share one with lzn_core.push_to_hub(MODEL_DIR, REPO_ID)"
        )
    return folder_path


def save_pretrained(
    model: LZNModel,
    save_directory: str | Path,
    *,
    metrics: Metrics = None,
    push_to_hub: bool = False,
    repo_id: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> Path | str:
    """Write ``model`` to ``save_directory`` (the exported files + a model card), optionally push it.

    Args:
        model: the model.
        save_directory: the directory (created).
        metrics: the run's ``metrics.jsonl`` or rows, summarised in ``info.json``.
        push_to_hub: also upload the directory (:func:`push_to_hub`).
        repo_id: the hub repository (default: the directory's name under your user).
        private, token, commit_message: see :func:`push_to_hub`.

    Returns:
        The directory, or the URL of the hub commit when pushed.
    """
    out = write_model(model, save_directory, metrics=metrics)
    (out / CARD).write_text(model_card(out, repo_id=repo_id))
    if push_to_hub:
        return _push(out, repo_id or out.resolve().name, private, token, commit_message)
    return out


def push_to_hub(
    model: LZNModel | str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload a model (or an exported / run directory) to the hub repository ``repo_id``, in one commit.

    The repository is created when missing. A directory without a model card gets one.

    Args:
        model: an ``LZNModel``, an exported model directory or a run directory.
        repo_id: ``user/name`` or ``org/name``.
        private: create the repository private (None: the account's default).
        token: hub token (default: the one ``hf auth login`` stored).
        commit_message: the commit message.

    Returns:
        The URL of the commit.
    """
    if isinstance(model, (str, Path)):
        return _push(resolve_model_dir(model), repo_id, private, token, commit_message)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lzn-push-") as tmp:
        folder = Path(tmp) / "model"
        save_pretrained(model, folder, repo_id=repo_id)
        return _push(folder, repo_id, private, token, commit_message)


def _push(folder: Path, repo_id: str, private: bool | None, token: str | None, message: str | None) -> str:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token, library_name="lzn")
    repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    card = (folder / CARD).read_bytes() if (folder / CARD).is_file() else model_card(folder, repo_id).encode()
    ops = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f)) for f in MODEL_FILES[:-1]]
    ops = [op for op in ops if Path(str(op.path_or_fileobj)).is_file()]
    ops.append(CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=card))
    info = api.create_commit(
        repo_id=repo.repo_id,
        operations=ops,
        commit_message=message or f"Upload LZN model {read_name(folder)}",
        repo_type="model",
    )
    return str(info.commit_url)


def read_name(folder: Path) -> str:
    """The model's name (the recipe's ``name``) from ``info.json``, else the folder's name."""
    info = read_info(folder) or {}
    return str(info.get("name") or folder.resolve().name)


def model_card(folder: Path, repo_id: str | None = None) -> str:
    """A hub model card (``README.md``) for an exported model directory, from its ``info.json``.

    The YAML header carries what the hub indexes (``library_name: lzn``, tags, metrics); the text
    says what the model is and how to load it.
    """
    from huggingface_hub import ModelCard, ModelCardData

    info = read_info(folder) or {}
    name = read_name(folder)
    mods = info.get("modalities") or {}
    tags = ["lzn", "latent-zoning-networks", *mods]
    data = ModelCardData(library_name="lzn", tags=tags)
    repo = repo_id or folder.resolve().name  # what from_pretrained takes: the hub id, else the directory
    rows = "\n".join(
        f"| {m} | {d.get('plugin')} | {d.get('distribution')} {d.get('version')} | {d.get('decoder')} |"
        for m, d in mods.items()
    )
    training = info.get("training") or {}
    metrics = {**(training.get("final") or {}), **(training.get("eval") or {})}
    metric_lines = "\n".join(f"- {k}: {_fmt(v)}" for k, v in metrics.items() if k != "step")
    text = [
        f"# {name}\n",
        "A [Latent Zoning Network](https://arxiv.org/abs/2509.15591) (Lin et al., NeurIPS 2025): "
        "every modality below has an encoder into one shared Gaussian latent space "
        f"(q = {info.get('latent_dim')}) and a decoder out of it.\n",
        "| modality | plugin | distribution | decoder |\n|---|---|---|---|\n" + rows + "\n" if rows else "",
        "Compose edges: " + ", ".join(f"`{e}`" for e in info.get("edges") or []) + "\n"
        if info.get("edges")
        else "",
        "## Use\n",
        "```python\nimport lzn_core\n"
        f'model = lzn_core.load("{repo}")\n'
        f'graph = lzn_core.compose("{(info.get("edges") or ["latent -> latent"])[0]}", model=model)\n```\n',
        "or `lzn info " + repo + "` for what it is. The plugins named above must be installed.\n",
    ]
    if training:
        text.append(
            f"## Training\n\n{training.get('steps')} of {training.get('iterations')} iterations at batch "
            f"{training.get('batch_size')} ({_fmt(training.get('wall_time_s', 0) / 60)} min); "
            "final metrics (`info.json` has them all):\n\n" + metric_lines + "\n"
        )
    return str(ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + "\n".join(text)))


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
