"""Text benchmark: image <-> text through one latent space, on the digits test split.

    python benchmarks/text.py --train                   # train recipes/digits_text.yaml, then measure
    python benchmarks/text.py --model runs/digits_text/final

Metrics (class level: a caption counts when the digit it names is the image's class; chance 10%):

* ``retrieval_r1``: image -> text retrieval. Test-image latents (alpha 0, the test batch as the
  zoning context) flow through the text anchors of the test captions (reverse flow, nearest
  anchor, ``TextDecoder.retrieve``); ``retrieval_r1_bank`` does the same over the model's bank of
  distinct training captions.
The other metrics go through the graphs a user calls (``lzn_core.compose``), whose latents are
zoned with the model's stored anchor bank; a decoder trained with a label condition gets the
class the label flow reads from z (docs/method.md §4, case 3):

* ``caption_generation``: ``"image -> text"`` (alpha 0, greedy); the digit named in the
  generated caption (word or numeral) against the label.
* ``caption_to_image``: ``"text -> image"`` (alpha ``--gen-alpha``); an SVC fitted on the real
  training-split pixels judges the class of each generated image.
* ``label_flow_accuracy`` / ``text_to_label``: ``"image -> label"`` / ``"text -> label"``.

With attribute captions (``lzn shards digits --captions attributes``: per-class terciles of
stroke weight, slant, width and horizontal position, :mod:`lzn_core.data.digits`) the captions
say more than the class, and these metrics ask whether text and image share more than it (an
attribute agrees when the level a caption states is the level the pixel statistics give; chance
is about 1/3 per attribute):

* ``retrieval_attributes`` (``_bank``): share of the attributes of the retrieved caption that
  agree with the image's own; ``retrieval_exact``: the class and all four agree;
  ``retrieval_attributes_chance``: the same for a random test caption of the right class (what
  class agreement alone gives);
* ``caption_generation_attributes``: the same for the generated caption;
* ``caption_to_image_attributes`` (``_alpha0``): the images generated from each test caption
  (caption latents at ``--gen-alpha``, and at the zone centre) judged by the same pixel
  statistics (cut points fitted on the training split) against the caption's attributes;
  ``caption_to_image_attributes_chance``: a random real training image of the caption's class.

Writes ``--out`` (JSON), a page next to it (``.md``) and a figure (``.png``: one test caption per
digit -> images drawn from its zone). ``benchmarks/digits.py`` trains digits_text on both caption
sets with several seeds and writes ``benchmarks/results/text.md`` (the table: :func:`suite_table`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lzn_core.data.digits import ATTRIBUTES, DigitAttributes, caption_attributes, ink_of

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TOKEN = re.compile(r"[a-z]+|\d")
_SIZE = re.compile(r"\d+x\d+")


def named_digit(caption: str) -> int:
    """The digit a caption names (word or numeral); -1 when it names none or several."""
    text = _SIZE.sub(" ", caption.lower())  # "an 8x8 picture of ..." names no eight
    found = {
        WORDS.index(t) if t in WORDS else int(t) for t in _TOKEN.findall(text) if t in WORDS or t.isdigit()
    }
    return found.pop() if len(found) == 1 else -1


def train_recipe(recipe_name: str, overrides: list[str]) -> Path:
    """Run ``recipes/train.py`` (the text plugin's ``prepare`` trains the tokenizer from the shards)."""
    from lzn_core.recipe import load_recipe

    sys.path.insert(0, str(ROOT / "recipes"))
    import train  # recipes/train.py

    train.main(["--recipe", recipe_name, *overrides])
    return Path(load_recipe(recipe_name, overrides).output_dir) / "final"


Split = tuple[torch.Tensor, torch.Tensor, list[str]]  # images (n, C, H, W), labels (n,), captions


def test_split(model: Any, pattern: str) -> Split:
    """Images (n, C, H, W), labels (n,) and captions of the test shards, in shard order."""
    from lzn_core.data import loader

    img, lab, txt = (find_modality(model, p) for p in ("image", "label", "text"))
    ld = loader(
        pattern,
        {img: model.specs[img], lab: model.specs[lab], txt: model.specs[txt]},
        batch_size=512,
        shuffle=False,
        drop_last=False,
        infinite=False,
    )
    batches = list(ld)
    return (
        torch.cat([b[img] for b in batches]),
        torch.cat([b[lab] for b in batches]),
        [c for b in batches for c in b[txt]],
    )


def find_modality(model: Any, plugin: str) -> str:
    """The recipe's name of the modality built by ``plugin`` (this benchmark is about image, label, text)."""
    return next(n for n, e in model.recipe.modalities.items() if e.plugin == plugin)


def image_latents(model: Any, name: str, batch: Any, alpha: float, seed: int) -> torch.Tensor:
    """Latents of a whole batch zoned together: (n, q)."""
    anchors = model.encode(name, batch)
    noise = torch.randn(anchors.shape, generator=torch.Generator().manual_seed(seed))
    return model.latents(anchors, alpha=alpha, noise=noise)


def fit_judge(model: Any, pattern: str) -> tuple[Any, DigitAttributes, torch.Tensor, torch.Tensor]:
    """Judges independent of the model, fitted on the real training-split digits: an SVC on the raw
    pixels (the class) and the attribute cut points (:class:`DigitAttributes`); and those digits."""
    from sklearn.svm import SVC

    x, y, _ = test_split(model, pattern)
    svc = SVC(gamma="scale").fit(x.flatten(1).numpy(), y.numpy())
    return svc, DigitAttributes.fit(ink_of(x), y.numpy()), x, y


def stated_levels(captions: list[str]) -> np.ndarray:
    """(n, len(ATTRIBUTES)) levels the captions state; −1 where a caption states none."""
    return np.array([[caption_attributes(c).get(k, -1) for k in ATTRIBUTES] for c in captions]).reshape(
        len(captions), len(ATTRIBUTES)
    )


def agreement(levels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Share of agreeing attributes (``all``) and per attribute; a missing level (−1) disagrees."""
    hit = (levels == truth) & (truth >= 0)
    return {
        "all": round(float(hit.mean()), 4),
        **{k: round(float(hit[:, j].mean()), 4) for j, k in enumerate(ATTRIBUTES)},
    }


def class_chance(truth: np.ndarray, y: np.ndarray, pool: np.ndarray, pool_y: np.ndarray) -> float:
    """Expected attribute agreement of row i of ``truth`` with a random row of ``pool`` of its class
    (``y[i]``): what agreeing on the class alone gives."""
    total = sum(float((pool[pool_y == y[i]] == truth[i]).mean()) for i in range(len(y)))
    return round(total / len(y), 4)


@torch.no_grad()
def measure(model: Any, args: argparse.Namespace, split: Split) -> dict[str, Any]:
    """All metrics of the module docstring on the test split."""
    from lzn_core import compose

    img, lab, txt = (find_modality(model, p) for p in ("image", "label", "text"))
    x, y, captions = split
    assert all(named_digit(c) == int(k) for c, k in zip(captions, y, strict=True)), (
        "test captions must name their digit"
    )
    dec = model.decoders[txt]
    out: dict[str, Any] = {"n_test": len(captions)}

    z_img = image_latents(model, img, x, args.alpha, args.seed)
    ret = dec.retrieve(z_img, model.encode(txt, captions), captions, steps=args.steps)
    out["retrieval_r1"] = _acc([named_digit(c) for c in ret], y)
    bank = list(model.configs[txt].retrieval_bank)
    if bank:
        ret_bank = dec.retrieve(z_img, model.encode(txt, bank), bank, steps=args.steps)
        out["retrieval_r1_bank"] = _acc([named_digit(c) for c in ret_bank], y)
        out["bank_size"] = len(bank)

    seed = {"seed": args.seed}
    gen = compose("image -> text", model=model)(x, alpha=args.alpha, **seed)
    out["caption_generation"] = _acc([named_digit(c) for c in gen], y)
    out["examples"] = [
        {"label": int(k), "caption": c, "generated": g, "retrieved": r}
        for k, c, g, r in list(zip(y.tolist(), captions, gen, ret, strict=True))[:10]
    ]
    samples = compose("text -> image", model=model)(captions, alpha=args.gen_alpha, **seed)
    judge, attrs, x_train, y_train = fit_judge(model, args.train_shards)
    judged = judge.predict(samples.float().flatten(1).numpy())
    out["caption_to_image"] = _acc(judged.tolist(), y)
    out["judge_accuracy_on_real_test"] = _acc(judge.predict(x.flatten(1).numpy()).tolist(), y)
    pred = compose("image -> label", model=model)(x, alpha=args.alpha, **seed).labels
    out["label_flow_accuracy"] = _acc(pred.tolist(), y)
    text_pred = compose("text -> label", model=model)(captions, alpha=args.alpha, **seed).labels
    out["text_to_label"] = _acc(text_pred.tolist(), y)
    truth = stated_levels(captions)
    if (truth >= 0).all():  # attribute captions: does the shared latent carry more than the class?
        yn = y.numpy()
        out["judge_attributes_on_real_test"] = agreement(attrs.levels(ink_of(x), yn), truth)["all"]
        by = {"retrieval_attributes": ret, "caption_generation_attributes": gen}
        if bank:
            by["retrieval_attributes_bank"] = ret_bank
        for key, caps in by.items():
            out[key] = agreement(stated_levels(caps), truth)
        hit = (stated_levels(ret) == truth).all(1) & (np.array([named_digit(c) for c in ret]) == yn)
        out["retrieval_exact"] = round(float(hit.mean()), 4)
        out["retrieval_attributes_chance"] = class_chance(truth, yn, truth, yn)
        zero = compose("text -> image", model=model)(captions, alpha=0.0, **seed)
        for key, imgs in (
            ("caption_to_image_attributes", samples),
            ("caption_to_image_attributes_alpha0", zero),
        ):
            out[key] = agreement(attrs.levels(ink_of(imgs), yn), truth)
        real = attrs.levels(ink_of(x_train), y_train.numpy())
        out["caption_to_image_attributes_chance"] = class_chance(truth, yn, real, y_train.numpy())
    return out


@torch.no_grad()
def caption_grid(model: Any, args: argparse.Namespace, split: Split, path: Path) -> dict[str, Any]:
    """One row per digit: a test caption of that digit (left) -> ``per_row`` images from its zone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lzn_core import compose

    _, y, captions = split
    rows = [captions[int((y == k).nonzero()[0])] for k in range(10) if (y == k).any()]
    per = args.per_row
    images = compose("text -> image", model=model)(
        [c for c in rows for _ in range(per)], alpha=args.gen_alpha, seed=args.seed
    )
    images = images.float().clamp(-1, 1).add(1).div(2).squeeze(1).reshape(len(rows), per, *images.shape[-2:])
    fig, axes = plt.subplots(
        len(rows),
        per + 1,
        figsize=(0.8 * per + 3.2, 0.8 * len(rows)),
        gridspec_kw={"width_ratios": [4] + [1] * per},
        squeeze=False,
    )
    for i, caption in enumerate(rows):
        axes[i, 0].text(1.0, 0.5, f'"{caption}"', ha="right", va="center", fontsize=9)
        for j in range(per + 1):
            axes[i, j].axis("off")
            if j:
                axes[i, j].imshow(images[i, j - 1].numpy(), cmap="gray", vmin=0, vmax=1)
    fig.suptitle(f"text -> image: caption zone (alpha {args.gen_alpha}) -> image decoder", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    shown = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
    return {"grid": str(shown), "grid_captions": rows}


METRICS = (  # (key, what, goal)
    ("retrieval_r1", "image -> text retrieval R@1 over the test captions (class level)", 0.9),
    ("retrieval_r1_bank", "the same over the model's bank of distinct training captions", None),
    ("caption_generation", "image -> text generation: the generated caption names the digit", 0.9),
    ("caption_to_image", "text -> image: the SVC judge calls the generated image the caption's digit", 0.9),
    ("label_flow_accuracy", "image -> label (label flow, no CE head)", None),
    ("text_to_label", "text -> label", None),
    ("retrieval_attributes", "image -> text retrieval: attributes of the retrieved caption that agree", None),
    ("retrieval_attributes_chance", "the same for a random test caption of the right class", None),
    ("retrieval_exact", "image -> text retrieval: class and all four attributes agree", None),
    (
        "retrieval_attributes_bank",
        "retrieval over the bank of training captions: attributes that agree",
        None,
    ),
    ("caption_generation_attributes", "image -> text generation: attributes that agree", None),
    (
        "caption_to_image_attributes",
        "text -> image (caption zone sample): the image's attributes agree",
        None,
    ),
    ("caption_to_image_attributes_alpha0", "the same from the caption's zone centre (α 0)", None),
    ("caption_to_image_attributes_chance", "a random real training image of the caption's class", None),
)


def scalar(value: Any) -> float | None:
    """A metric as one number: an attribute agreement dict gives its ``all``."""
    if isinstance(value, dict):
        return value.get("all")
    return value


def training_run(model_dir: Path) -> dict[str, Any]:
    """Iterations, batch and minutes of the run that wrote ``model_dir`` (its metrics.jsonl)."""
    metrics = model_dir.parent / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    timed = [r for r in rows if "time" in r]
    return {"train_minutes": round(timed[-1]["time"] / 60, 1) if timed else None}


def report(results: dict[str, Any], model: Any, path: Path) -> Path:
    """A markdown page next to the JSON: the metrics against the goals, the figure, examples."""
    tr = model.recipe.train
    minutes = results.get("train_minutes")
    lines = [
        "# Text: image <-> text in one latent space (digits)",
        "",
        f"Generated by `python benchmarks/text.py --model {results['model']}` on {time.strftime('%Y-%m-%d')}"
        f" ({results['torch_threads']} torch threads, {results['eval_seconds']} s). Model: recipe"
        f" `{model.recipe.name}`, {tr.iterations} iterations at batch {tr.batch_size}"
        + (f", {minutes} min of training (its metrics.jsonl)." if minutes is not None else ".")
        + f" Test split: {results['n_test']} digits with their captions; class level, chance 10%.",
        "",
        "| metric | what it measures | goal | measured |",
        "|---|---|---|---|",
    ]
    for key, what, goal in METRICS:
        got = scalar(results.get(key))
        if got is None:
            continue
        mark = "" if goal is None else (" (met)" if got >= goal else " (not met)")
        goal_text = "-" if goal is None else f">= {goal:.0%}"
        lines.append(f"| `{key}` | {what} | {goal_text} | {got:.1%}{mark} |")
    lines += [
        "",
        f"Latents: images at alpha {results['alpha']}, captions at alpha {results['gen_alpha']} for"
        " text -> image (a sample of the caption's zone); decoders trained with a label condition get"
        " the class the label flow reads at the source's zone centre.",
        "",
        f"![caption -> image]({Path(results['grid']).name})",
        "",
        "| label | generated caption | retrieved caption |",
        "|---|---|---|",
        *(f"| {e['label']} | {e['generated']} | {e['retrieved']} |" for e in results["examples"]),
        "",
    ]
    path.write_text("\n".join(lines))
    return path


def measure_run(
    model_dir: Path, shards: Path, *, seed: int = 0, grid: Path | None = None, steps: int = 100
) -> dict[str, Any]:
    """Every metric of one trained digits_text model on ``shards`` (test split; judges fitted on the
    training split), with this module's defaults; ``grid``: also draw the caption -> image figure."""
    import lzn_core

    args = argparse.Namespace(
        alpha=0.0, gen_alpha=1.0, steps=steps, seed=seed, per_row=8, train_shards=str(shards / "train-*.tar")
    )
    model = lzn_core.load(model_dir)
    split = test_split(model, str(shards / "test-*.tar"))
    out = measure(model, args, split)
    if grid is not None:
        out.update(caption_grid(model, args, split, grid))
    return out


SUITE_ROWS = (  # (metric, what, chance / class-only reference key or None)
    ("retrieval_r1", "image -> text retrieval R@1, class named by the retrieved caption", None),
    ("text_to_label", "text -> label", None),
    ("label_flow_accuracy", "image -> label", None),
    ("caption_to_image", "text -> image, class (SVC judge)", None),
    ("caption_generation", "image -> text generation, class named", None),
    (
        "retrieval_attributes",
        "image -> text retrieval: attributes agreeing (of 4)",
        "retrieval_attributes_chance",
    ),
    ("retrieval_exact", "image -> text retrieval: class and all 4 attributes", None),
    ("retrieval_attributes_bank", "retrieval over the training-caption bank: attributes agreeing", None),
    (
        "caption_generation_attributes",
        "image -> text generation: attributes agreeing",
        "retrieval_attributes_chance",
    ),
    (
        "caption_to_image_attributes",
        "text -> image (zone sample, α 1): image attributes agreeing",
        "caption_to_image_attributes_chance",
    ),
    (
        "caption_to_image_attributes_alpha0",
        "text -> image (zone centre, α 0): image attributes agreeing",
        "caption_to_image_attributes_chance",
    ),
)


def suite_table(sets: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Markdown rows: each metric, mean ± std over seeds per caption set, the class-only reference
    (attribute rows) and the test of attributes against it (Welch, 5%)."""
    from _stats import directional, summary, welch

    names = list(sets)
    head = ["metric", *(f"{n} captions" for n in names), "class-only reference", "attributes vs reference"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, what, ref in SUITE_ROWS:
        cells = []
        for n in names:
            vals = [scalar(r.get(key)) for r in sets[n]]
            cells.append(summary([v for v in vals if v is not None]).text(".1f", 100, "%"))
        if all(c == "–" for c in cells):
            continue
        ref_cell, verdict = "–", "–"
        attr_runs = sets.get("attributes", [])
        if ref is not None and attr_runs:
            refs = [scalar(r.get(ref)) for r in attr_runs]
            got = [scalar(r.get(key)) for r in attr_runs]
            ref_cell = summary(refs).text(".1f", 100, "%")
            t = welch(got, refs)
            verdict = directional(t, 1).replace("reproduces", "above the reference")
        lines.append(f"| {what} (`{key}`) | " + " | ".join(cells) + f" | {ref_cell} | {verdict} |")
    return lines


def _acc(pred: list[int], y: torch.Tensor) -> float:
    return round(float((torch.tensor(pred) == y).float().mean()), 4)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="exported model dir (default: the trained run's final/)")
    p.add_argument("--train", action="store_true", help="train the recipe first (recipes/train.py)")
    p.add_argument("--recipe", default="digits_text.yaml")
    p.add_argument("--test", default="data/digits/test-*.tar")
    p.add_argument(
        "--train-shards", default="data/digits/train-*.tar", help="shards the SVC judge is fitted on"
    )
    p.add_argument(
        "--alpha", type=float, default=0.0, help="noise scale of the image latents (0: zone centre)"
    )
    p.add_argument("--gen-alpha", type=float, default=1.0, help="noise scale of the caption latents")
    p.add_argument("--steps", type=int, default=100, help="reverse-flow steps of retrieval")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-row", type=int, default=8, help="images per caption in the caption -> image grid")
    p.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / "results" / "text_model.json"),
        help="JSON of this model (benchmarks/digits.py writes text.md: both caption sets, several seeds)",
    )
    p.add_argument("overrides", nargs="*", help="recipe key=value overrides (with --train)")
    args = p.parse_args(argv)
    import lzn_core

    t0 = time.time()
    model_dir = (
        train_recipe(args.recipe, args.overrides)
        if args.train
        else Path(args.model or "runs/digits_text/final")
    )
    t_train = time.time() - t0
    model = lzn_core.load(model_dir)
    t1 = time.time()
    split = test_split(model, args.test)  # read once: the metrics and the figure share it
    results = {
        "model": str(model_dir),
        **training_run(model_dir),
        **measure(model, args, split),
        **caption_grid(model, args, split, Path(args.out).with_suffix(".png")),
        "train_seconds": round(t_train, 1) if args.train else None,
        "eval_seconds": round(time.time() - t1, 1),
        "alpha": args.alpha,
        "gen_alpha": args.gen_alpha,
        "torch_threads": torch.get_num_threads(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    results["report"] = str(report(results, model, Path(args.out).with_suffix(".md")))
    print(json.dumps({k: v for k, v in results.items() if k != "examples"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
