"""Custom batch types (lzn_core.modality): what a plugin's own batch object must support, that the
framework moves it to the model's device, and that the conformance kit finds each way it breaks on
a GPU while running on the CPU (the meta device stands in; a spy batch checks the framework)."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import pytest
import torch
from paths import ROOT
from points_plugin import (  # the test plugin with its own PointBatch
    lzn_points,
    points_recipe,
    points_registered,
)

from lzn_core.errors import ContractError
from lzn_core.modality import MovesToDevice, move_batch
from lzn_core.testing import SpyBatch, check_framework_moves_batches, check_modality


def test_move_batch_moves_tensors_and_batch_types_and_leaves_lists() -> None:
    items = [lzn_points.decode(r) for r in lzn_points.example_items(3)]
    batch = lzn_points.PointBatch.collate(items)
    assert isinstance(batch, MovesToDevice) and not isinstance(["a"], MovesToDevice)
    moved = move_batch(batch, torch.device("meta"))
    assert moved.points.device.type == "meta" and moved.mask.device.type == "meta"
    assert batch.points.device.type == "cpu"  # a new batch: the loader's stays where it was
    assert move_batch(torch.zeros(2), "meta").device.type == "meta"
    words = ["a", "b"]
    assert move_batch(words, "meta") is words

    @dataclasses.dataclass
    class InPlace:
        x: torch.Tensor

        def __len__(self) -> int:
            return 1

        def to(self, device: Any) -> None:
            self.x = self.x.to(device)

    with pytest.raises(ContractError, match=r"InPlace.to\(device\) returned None"):
        move_batch(InPlace(torch.zeros(1)), "cpu")


def test_the_kit_accepts_the_points_plugin_and_checks_its_batch_type() -> None:
    rep = check_modality(lzn_points.SPEC)
    text = "\n".join(rep.checks)
    assert "batch type PointBatch: pickled and sliced with its rows" in text
    assert "batch.to(device) moves every tensor (meta device)" in text
    assert "encoder on another device (meta)" in text
    assert "framework (spy batch)" in text and "two-pass micro-batches" in text


# ----------------------------------------------------------------------------- broken batch types
def _with_collate(collate: Any, **kw: Any) -> Any:
    """The points spec with another batch type: its collate, and no as_batch (points' makes PointBatch)."""
    return dataclasses.replace(lzn_points.SPEC, collate=collate, **{"as_batch": None, **kw})


@dataclasses.dataclass(frozen=True)
class NoTo:
    """Holds tensors, cannot be moved."""

    points: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def __getitem__(self, rows: slice) -> NoTo:
        return NoTo(self.points[rows], self.mask[rows])


@dataclasses.dataclass(frozen=True)
class ForgetsMask(NoTo):
    def __getitem__(self, rows: slice) -> ForgetsMask:
        return ForgetsMask(self.points[rows], self.mask[rows])

    def to(self, device: Any) -> ForgetsMask:
        return ForgetsMask(self.points.to(device), self.mask)  # the mask stays behind


class Unpicklable(lzn_points.PointBatch):
    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle a generator")


def _as(cls: type) -> Any:
    def collate(items: Any) -> Any:
        b = lzn_points.PointBatch.collate(items)
        return cls(b.points, b.mask)

    return collate


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (NoTo, r"holds tensors but has no to\(device\)"),
        (ForgetsMask, r"batch.to\(device\) left tensors of shapes \[\(4, 6\)\] on the CPU"),
        (Unpicklable, r"cannot be pickled .*loader workers"),
    ],
)
def test_the_kit_names_what_a_batch_type_lacks(cls: type, message: str) -> None:
    with pytest.raises(ContractError, match=message):
        check_modality(_with_collate(_as(cls)))


def test_the_kit_finds_a_tensor_the_encoder_makes_on_the_cpu() -> None:
    """On a GPU, `torch.ones(n)` inside forward is a CPU tensor next to CUDA ones; on the meta
    device it fails the same way, here on the CPU."""

    def build_encoder(config: Any, q: int) -> Any:
        enc = lzn_points.build_encoder(config, q)

        class CountsOnTheCpu(type(enc)):  # type: ignore[misc]
            def forward(self, batch: Any) -> Any:
                bias = torch.ones(len(batch), 1)  # no device=: the CPU
                return super().forward(batch) + bias

        enc.__class__ = CountsOnTheCpu
        return enc

    with pytest.raises(ContractError, match=r"mixes devices .*meta device stands in for a GPU"):
        check_modality(dataclasses.replace(lzn_points.SPEC, build_encoder=build_encoder))


# ----------------------------------------------------------------------------- the framework's side
def test_the_spy_passes_on_the_framework() -> None:
    assert check_framework_moves_batches() == [
        "LZNModel.encode and LZNModel.condition move the batch",
        "training: to_device, task_losses over two-pass micro-batches of 2 rows, backward",
        "compose: the request is moved",
    ]


def test_the_spy_fails_a_framework_that_does_not_move_custom_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: with LZNModel.encode's move undone, the spy's encoder refuses the batch."""
    import lzn_core.model

    monkeypatch.setattr(lzn_core.model, "move_batch", lambda batch, device: batch)
    with pytest.raises(ContractError, match=r"handed the encoder a batch that was not moved"):
        check_framework_moves_batches()
    spy = SpyBatch(torch.zeros(4, 3))
    assert spy[1:3].moved_to is None and spy.to("cpu")[1:3].moved_to == torch.device("cpu")
    assert spy.log == ["cpu"]


def test_a_points_step_in_two_passes_equals_one_pass() -> None:
    """The ragged batch through the real step (recipes/train.py's task_losses): micro-batches of 2
    rows give the one-pass gradient of 6 rows (float64), with the points moved by to_device."""
    from lzn_core.model import LZNModel
    from lzn_core.train.passes import OnePass, TwoPass

    sys.path.insert(0, str(ROOT / "recipes"))
    import train as script

    with points_registered():
        recipe = points_recipe(6, {"batch_size": 6, "iterations": 1})
        torch.manual_seed(0)
        model = LZNModel(recipe).double()
        items = [lzn_points.decode(r).double() for r in lzn_points.example_items(6)]
        raw = {"points": lzn_points.PointBatch.collate(items), "label": torch.tensor([0, 1, 2, 0, 1, 2])}
        raw["points"] = lzn_points.PointBatch(raw["points"].points.double(), raw["points"].mask)

        def grads(nets: Any) -> list[torch.Tensor]:
            model.zero_grad()
            batch = script.to_device(dict(raw), model.device)
            losses = script.task_losses(model, recipe, batch, 0, 0, 1, nets)
            nets.loss_for_backward(sum(losses.values())).backward()
            return [p.grad.clone() for p in model.parameters() if p.grad is not None]

        one, two = grads(OnePass(model)), grads(TwoPass(model, 2))
        assert len(one) == len(two) and len(one) > 4
        for a, b in zip(one, two, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_the_tutorial_shows_the_real_batch_type_and_the_kits_real_message() -> None:
    """docs/writing-a-plugin.md, "Custom batch types": the PointBatch block is the test plugin's
    class, and the quoted error is what the kit says for a batch type without to()."""
    import inspect
    import re

    doc = (ROOT / "docs" / "writing-a-plugin.md").read_text()
    block = re.search(r"<!-- source: \S+ PointBatch -->\s*```python\n(.*?)```", doc, flags=re.S)
    assert block is not None and block.group(1) == inspect.getsource(lzn_points.PointBatch)
    quoted = re.search(r"```\n(modality 'points' breaks the contract: a NoTo .*?)```", doc, flags=re.S)
    assert quoted is not None
    with pytest.raises(ContractError) as caught:
        check_modality(_with_collate(_as(NoTo)))
    assert " ".join(quoted.group(1).split()) == str(caught.value)
