"""Alignment losses, class weights and anchor gathering (one process and 2-process gloo)."""

from __future__ import annotations

import math
import os
import socket
import warnings

import pytest
import reference as ref
import torch

from lzn_core import zoning
from lzn_core.alignment import alignment_loss, class_weights, gather_anchors

F64 = torch.float64


@pytest.mark.parametrize("kind", ["log", "prob"])
@pytest.mark.parametrize("cutoff", [0.0, 0.2, 0.5])
def test_alignment_loss_matches_reference(kind, cutoff):
    tp = torch.rand(10, 6, dtype=F64, generator=torch.Generator().manual_seed(0))
    tp[7, 2] = 0.0  # a zero probability: "log" clamps instead of returning inf
    tp.requires_grad_(True)
    loss = alignment_loss(tp, cutoff=cutoff, kind=kind)
    expected = ref.alignment_loss(tp, cutoff=cutoff, kind=kind)
    assert torch.isfinite(loss)
    assert abs(loss.item() - expected.item()) <= 1e-12
    (grad,) = torch.autograd.grad(loss, tp)
    u = math.floor(cutoff * 10)
    assert grad[:u].abs().sum() == 0  # steps before the cutoff get no gradient
    assert (grad != 0).sum(0).eq(1).all()  # only the max step of each row does


def test_alignment_loss_values():
    tp = torch.tensor([[0.9, 0.1], [0.5, 0.2], [0.2, 0.4]])
    # cutoff 0.4 of 3 steps -> u = 1: max over rows 1, 2 = (0.5, 0.4)
    assert alignment_loss(tp, cutoff=0.4, kind="prob").item() == pytest.approx(-0.45)
    assert alignment_loss(tp, cutoff=0.4).item() == pytest.approx(-(math.log(0.5) + math.log(0.4)) / 2)
    assert alignment_loss(tp, cutoff=0.0, kind="prob").item() == pytest.approx(-0.65)


def test_alignment_loss_bad_arguments():
    tp = torch.rand(5, 3)
    cases = [
        (lambda: alignment_loss(tp[0]), r"target_probs must be a 2-D tensor \(steps, B\)"),
        (lambda: alignment_loss(tp[:0]), "target_probs must be non-empty"),
        (lambda: alignment_loss(tp.long()), "target_probs must be floating point"),
        (lambda: alignment_loss(tp, cutoff=1.0), r"cutoff must be in \[0, 1\)"),
        (lambda: alignment_loss(tp, cutoff=-0.1), r"cutoff must be in \[0, 1\)"),
        (lambda: alignment_loss(tp, kind="ce"), "unknown alignment loss kind 'ce'; choose one of log, prob"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_class_weights():
    w = class_weights(torch.tensor([0, 2, 2, 3, 2]), 5)
    assert w.dtype == torch.float32
    assert torch.allclose(w, torch.tensor([0.2, 0.0, 0.6, 0.2, 0.0]))
    assert class_weights(torch.tensor([1]), 2, dtype=F64).dtype == F64
    cases = [
        (lambda: class_weights(torch.tensor([0, 5]), 5), r"labels must be in \[0, 5\)"),
        (lambda: class_weights(torch.tensor([0.0, 1.0]), 5), "labels must be a 1-D integer tensor"),
        (lambda: class_weights(torch.tensor([[0]]), 5), "labels must be a 1-D integer tensor"),
        (lambda: class_weights(torch.tensor([0]), 0), "num_classes must be a positive int"),
        (lambda: class_weights(torch.zeros(0, dtype=torch.long), 3), "at least one label"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_class_weights_feed_the_label_flow():
    """Weights from class_weights (zeros included) work as mixture weights: absent classes get P = 0."""
    labels = torch.tensor([0, 0, 1, 3])
    w = class_weights(labels, 4, dtype=F64)
    anchors = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    out = zoning.assign(torch.randn(4, 3, dtype=F64), anchors, steps=10, weights=w, targets=labels)
    assert out.probs[:, 2].abs().max() == 0
    assert torch.allclose(out.target_probs[0], w[labels])  # τ = 1: P = weights


def test_gather_anchors_single_process():
    a = torch.randn(3, 2, requires_grad=True)
    assert gather_anchors(a) is a
    with pytest.raises(ValueError, match=r"anchors must be a 2-D tensor \(B, q\)"):
        gather_anchors(a[0])


# ----------------------------------------------------------------------------- 2 processes (gloo)

WORLD, B, C, Q = 2, 6, 4, 3


def _problem():
    gen = torch.Generator().manual_seed(11)
    anchors = torch.randn(WORLD * B, Q, generator=gen, dtype=F64)  # image-side anchors, global batch
    labels = torch.tensor([0, 1, 1, 3, 0, 0, 1, 3, 3, 3, 0, 1])  # class 2 absent: weight 0
    label_anchors = 2.0 * torch.randn(C, Q, generator=gen, dtype=F64)
    noise = torch.randn(WORLD * B, Q, generator=gen, dtype=F64)
    return anchors, labels, label_anchors, noise


def _loss(anchors_local, label_anchors, noise_local, labels_local, rank):
    """One rank's part: latents for its rows against all (gathered) anchors, label flow with global weights."""
    everything = gather_anchors(anchors_local)
    index = torch.arange(rank * B, rank * B + anchors_local.shape[0])
    z = zoning.latents(everything, noise_local, g=1e-3, steps=10, index=index)
    w = class_weights(labels_local, C, dtype=F64)
    out = zoning.assign(z, label_anchors, steps=10, weights=w, targets=labels_local)
    return alignment_loss(out.target_probs, kind="log")


def _worker(rank, port, result_dir):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        anchors, labels, label_anchors, noise = _problem()
        rows = slice(rank * B, (rank + 1) * B)
        a_local = anchors[rows].clone().requires_grad_(True)
        l_anchors = label_anchors.clone().requires_grad_(True)
        with warnings.catch_warnings():  # the gather uses torch's supported API (no FutureWarning)
            warnings.simplefilter("error", FutureWarning)
            loss = _loss(a_local, l_anchors, noise[rows], labels[rows], rank)
            loss.backward()  # the gather's backward sums every rank's gradient into the owner's rows
        torch.save(
            {"loss": loss.detach(), "grad_a": a_local.grad, "grad_l": l_anchors.grad},
            os.path.join(result_dir, f"rank{rank}.pt"),
        )
        dist.barrier()  # no rank tears gloo down while the other is still in a collective
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # 2 processes: 7 s (load 3)
def test_two_process_gloo_matches_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    anchors, labels, label_anchors, noise = _problem()
    a = anchors.clone().requires_grad_(True)
    la = label_anchors.clone().requires_grad_(True)
    loss = _loss(a, la, noise, labels, 0)  # one process, the concatenated batch
    loss.backward()

    # global loss = mean over ranks of the per-rank means (equal local batches)
    assert abs(sum(p["loss"] for p in parts).item() / WORLD - loss.item()) <= 1e-10
    # each rank's summed gradient is d(Σ_r loss_r)/d(own rows) = WORLD · d(global loss)/d(rows)
    grad_a = torch.cat([p["grad_a"] for p in parts]) / WORLD
    assert (grad_a - a.grad).abs().max().item() <= 1e-10
    assert a.grad.abs().max() > 0
    grad_l = sum(p["grad_l"] for p in parts) / WORLD  # what DDP's gradient averaging does
    assert (grad_l - la.grad).abs().max().item() <= 1e-10
