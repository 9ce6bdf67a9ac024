"""Size overrides that make a shipped recipe train in seconds through ``recipes/train.py`` on a CPU
(tiny networks, batch 8, 2 iterations, cheap evaluation), and the script loaded as a module for the
in-process runs (the ``train`` fixture of tests/conftest.py)."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from paths import ROOT

COMMON = [
    "train.batch_size=8",
    "train.iterations=2",
    "train.log_every=1",
    "train.ckpt_every=0",
    "train.eval_every=0",
    "train.sample_every=0",
    "latent.bank_size=8",
    "data.num_workers=0",
    "eval.batch_size=16",
    "eval.steps=4",
    "eval.samples_per_class=1",
]
IMG8 = ["modalities.image.config.preset=tiny", "modalities.image.config.sample_steps=2", "latent.dim=8"]
IMG32 = [
    "modalities.image.config.preset=small32",
    "modalities.image.config.sample_steps=2",
    "modalities.image.config.sample_method=euler",
    "latent.dim=8",
    "deepspeed=ds/cpu.json",
]
TEXT = [
    "modalities.text.config.width=16",
    "modalities.text.config.decoder_width=16",
    "modalities.text.config.layers=1",
    "modalities.text.config.decoder_layers=1",
    "modalities.text.config.retrieval_bank_size=8",
    "modalities.text.config.vocab_size=64",
]
DIGITS = COMMON + IMG8  # digits_joint, 2 iterations
TWO_RANKS = [  # digits_joint for 6 iterations of batch 16 (8 rows a rank), nothing but training
    *IMG8,
    "latent.bank_size=8",
    "tasks.1.steps=10",
    "train.batch_size=16",
    "train.iterations=6",
    "train.warmup=0",
    "train.log_every=1",
    "train.ckpt_every=0",
    "train.eval_every=0",
    "train.sample_every=0",
    "eval.batch_size=16",
]


def load_train_script(name: str = "lzn_train_script") -> ModuleType:
    """``recipes/train.py`` as a module (the script is not a package module)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
