"""Tiny random models for the tests that need one without training it (compose, the CLI, the hub,
the export): image (tiny preset, 8x8x1) + label [+ text], latent dimension ``Q``, random weights,
eval mode."""

from __future__ import annotations

import torch

Q = 8
TINY = ["modalities.image.config.preset=tiny", f"latent.dim={Q}"]  # digits_joint at the tiny sizes


def tiny_model(
    cond: bool = True,
    tasks: list | None = None,
    text: bool = False,
    bank: bool = True,
    responsive: bool = True,
    **image: object,
):
    """image (tiny preset, 8x8x1; ``image`` overrides its config) + label (10 classes) [+ text], q = 8,
    random weights (seed 0), eval mode; ``bank``: anchor banks of 32 random images (and 2 captions);
    ``responsive``: the image decoder's near-zero output layers re-drawn (see ``_responsive``)."""
    from lzn_core.model import LZNModel
    from lzn_core.recipe import Recipe

    torch.manual_seed(0)
    gen_task: dict = {"kind": "generate", "target": "image"}
    if cond:
        gen_task["condition"] = "label"
    mods: dict = {
        "image": {
            "plugin": "image",
            "config": {"preset": "tiny", "sample_steps": 3, **image},
        },
        "label": {"plugin": "label", "config": {"num_classes": 10}},
    }
    if text:
        from lzn_text.plugin import EXAMPLE_CAPTIONS, EXAMPLE_CONFIG

        mods["text"] = {
            "plugin": "text",
            "config": {**EXAMPLE_CONFIG, "retrieval_bank": list(EXAMPLE_CAPTIONS)},
        }
    recipe = Recipe.model_validate(
        {
            "latent": {"dim": Q, "solver": "euler", "steps": 10},
            "modalities": mods,
            "tasks": tasks
            if tasks is not None
            else [gen_task, {"kind": "align", "source": "image", "target": "label"}],
            "data": {"train": "unused-*.tar"},
            "train": {"batch_size": 8, "iterations": 1},
        }
    )
    model = LZNModel(recipe).eval()
    if responsive:
        _responsive(model.decoders["image"])
    if bank:
        with torch.no_grad():
            for name in model.names:
                if name == "image":
                    model.set_bank("image", model.encode("image", images(32, seed=99)))
                elif name == "text":
                    model.set_bank(
                        "text", model.encode("text", ["a handwritten one", "the digit 2, written by hand"])
                    )
    return model


def _responsive(decoder: torch.nn.Module) -> None:
    """NCSN++ starts the last layer of every residual branch and the output conv at ~1e-10, so an
    untrained image decoder ignores z and its condition; re-draw them at a small scale (own
    generator: the global RNG is untouched) so the graphs' inputs visibly matter."""
    from lzn_image.unet import variance_scaling_

    g = torch.Generator().manual_seed(11)
    for name, p in decoder.named_parameters():
        if name.endswith(("conv1.weight", ".out.weight", "conv_out.weight")):
            variance_scaling_(p, 0.01, generator=g)


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def plain_model(cond: bool = True, **image: object):
    """:func:`tiny_model` as built: no anchor bank, the decoders as initialised, 4 sampling steps
    (the evaluation tests)."""
    return tiny_model(cond, bank=False, responsive=False, **{"sample_steps": 4, **image})


def tiny_digits_joint():
    """The shipped digits_joint recipe at the tiny sizes (``TINY``), random weights (seed 0), a random
    image bank of 16 anchors, eval mode."""
    from lzn_core.model import LZNModel
    from lzn_core.recipe import load_recipe

    torch.manual_seed(0)
    m = LZNModel(load_recipe("digits_joint.yaml", TINY))
    m.set_bank("image", torch.randn(16, Q))
    return m.eval()
