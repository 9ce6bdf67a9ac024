"""The memory plan of a training step: how many rows a micro-batch can hold on a device.

``train.micro_batch_size: auto`` (and ``lzn plan RECIPE``) chooses the largest micro-batch whose
step fits the device's memory with headroom, from a measurement of one real step's networks at
two small micro-batch sizes. The peak of a step is modelled as

    peak = S + max(H + c_dec + r_dec·m, c_enc + r_enc·m)    two passes over micro-batches of m rows
    peak = S + H + Σ (c + r·b)                              one pass over the rank's b rows

* **c + r·m (a network call)**: each network call of the step (every ``encode`` of a modality
  or view, every decoder ``loss``), forward and backward under the recipe's precision, run on m1
  and m2 rows of a real batch: r (bytes a row) is the slope between the two peaks, c the
  intercept (the call's parameter gradients, workspaces). Two passes run one call at a time: the
  decoders' micro-batches while the head's graph is alive, the encoders' second pass after it
  (:mod:`lzn_core.train.passes`);
* **H (the head)**: the step itself (``recipes/train.py``'s ``task_losses``: transforms, the
  anchors' zoning, the alignment flows, class weights) on all b rows with the networks replaced
  by stand-ins (anchors as leaves, a loss of z), forward and backward: the zoning's memory,
  O(b·q·steps + b·N);
* **S (the state)**, counted from the parameters (P of them, P_t trainable, 4 bytes each: the
  weights stay float32 under bf16): the weights, the evaluation copy rank 0 keeps, the EMA
  (weights and buffers), Adam's two moments (divided by the ranks under ZeRO >= 1, which also
  keeps a float32 master partition), and the gradients of the phase that peaks: during the
  networks, the two-pass step's accumulated gradients and its decoder terms'; at the optimiser
  step, the engine's gradients (plus ZeRO's flat partition).

Peaks are measured where the step will run: on CUDA ``torch.cuda.max_memory_allocated``; on the
CPU the process's peak resident memory (``VmHWM``, reset through ``/proc/self/clear_refs``; glibc
maps every tensor on its own while measuring, so freed memory leaves the process). A CPU measurement predicts
a GPU: the activations are the same tensors in the same dtypes; what differs (cuDNN and oneDNN
workspaces, the CUDA caching allocator's rounding) is what the headroom is for.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..errors import LZNError
from .passes import OnePass, row_blocks

__all__ = [
    "MemoryPlan",
    "parse_bytes",
    "device_budget",
    "measure_step",
    "StepMemory",
    "step_memory",
    "plan_micro_batch",
    "planned_train",
    "agree",
]

HEADROOM = 0.15
"""Share of the device's memory a plan leaves free (allocator rounding, workspaces, fragmentation)."""
SIZES = (2, 4)
"""Micro-batch sizes (rows) the per-row memory is measured at."""

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9}
_UNITS |= {"t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str | int) -> int:
    """``"80GiB"``, ``"40 GB"``, ``"512MiB"`` or a number of bytes -> bytes.

    Raises:
        ValueError: not a size.
    """
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise ValueError(f"not a memory size: {text!r} (e.g. 80GiB, 40GB, 512MiB)")
    return int(float(m.group(1)) * _UNITS[unit])


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


@dataclass
class MemoryPlan:
    """What :func:`plan_micro_batch` chose and why (all sizes in bytes).

    Attributes:
        rows: rows of the global batch on each rank.
        micro_batch: rows per micro-batch; None: one pass over all rows.
        passes: micro-batches per step (1: one pass).
        predicted_peak: the step's predicted peak memory.
        budget: the memory the plan may use (device memory less the headroom).
        device_memory: the device's memory the budget came from.
        precision: the networks' precision.
        state: the terms of S (name -> bytes).
        head: H.
        per_row: r of each network call (``encode image``, ``loss image``, ...).
        fixed: c of each network call.
        measured_on: where the peaks were measured.
        fits_one_pass: whether all rows fit one pass.
    """

    rows: int
    micro_batch: int | None
    passes: int
    predicted_peak: int
    budget: int
    device_memory: int
    precision: str
    state: dict[str, int] = field(default_factory=dict)
    head: int = 0
    per_row: dict[str, int] = field(default_factory=dict)
    fixed: dict[str, int] = field(default_factory=dict)
    measured_on: str = ""
    fits_one_pass: bool = False

    def describe(self) -> str:
        """One line: rows, passes, micro-batch, predicted peak against the budget."""
        how = "one pass" if self.micro_batch is None else f"{self.passes} passes of {self.micro_batch} rows"
        return (
            f"memory plan: {self.rows} rows a rank in {how} ({self.precision}); predicted peak "
            f"{_gib(self.predicted_peak)} of {_gib(self.budget)} usable ({_gib(self.device_memory)} device, "
            f"headroom {1 - self.budget / self.device_memory:.0%}); state {_gib(sum(self.state.values()))}, "
            f"head {_gib(self.head)}, per call "
            + ", ".join(
                f"{k} {self.fixed.get(k, 0) / 2**20:.0f} MiB + {v / 2**20:.2f} MiB a row"
                for k, v in self.per_row.items()
            )
            + f" (measured on {self.measured_on})"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- measuring peaks


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise LZNError(f"/proc/self/status has no {key}: CPU memory cannot be measured here")


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


class _Peak:
    """Peak memory of a block above its start, on CUDA (allocated) or the CPU (resident).

    On the CPU (glibc), freed memory is returned to the system before the block, and inside it
    every allocation of 64 KiB or more is mapped on its own (returned to the system when freed),
    so the resident size follows the live tensors; afterwards allocations up to 32 MiB come from
    the heap again, the threshold glibc's own adjustment settles at.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._libc: Any = None
        if not self.cuda:
            try:
                self._libc = ctypes.CDLL("libc.so.6")
            except OSError:  # pragma: no cover - not glibc
                pass

    @contextlib.contextmanager
    def measure(self, out: list[int]) -> Iterator[None]:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
        else:
            if self._libc is not None:
                self._libc.malloc_trim(0)
                self._libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident size
            base = _status_bytes("VmRSS")
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize(self.device)
                out.append(torch.cuda.max_memory_allocated(self.device) - base)
            else:
                out.append(max(0, _status_bytes("VmHWM") - base))
                if self._libc is not None:
                    self._libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)
                    self._libc.mallopt(_M_TRIM_THRESHOLD, 64 * 2**20)


# ----------------------------------------------------------------------------- the step's calls


@dataclass
class _Call:
    kind: str  # "encode" or "loss"
    name: str
    batch: Any
    cond: torch.Tensor | None = None


class _Recorder(OnePass):
    """Stands in for the networks in ``task_losses``: records each call, returns leaves of their shape."""

    def __init__(self, model: Any, precision: str) -> None:
        super().__init__(model, precision)
        self.calls: list[_Call] = []
        self.leaves: list[torch.Tensor] = []

    def encode(self, name: str, batch: Any) -> torch.Tensor:
        self.calls.append(_Call("encode", name, batch))
        a = torch.randn(len(batch), self.model.latent_dim, device=self.model.device, requires_grad=True)
        self.leaves.append(a)
        return a

    def decoder_loss(
        self,
        name: str,
        z: torch.Tensor,
        batch: Any,
        cond: torch.Tensor | None,
        *,
        generator: torch.Generator | None,
        rows: tuple[int, int],
    ) -> torch.Tensor:
        self.calls.append(_Call("loss", name, batch, None if cond is None else cond.detach()))
        return z.float().square().mean()


def _rows(batch: Any, m: int) -> Any:
    return batch[0:m]


def measure_step(
    model: Any,
    batch: dict[str, Any],
    losses: Callable[[dict[str, Any], OnePass], dict[str, torch.Tensor]],
    *,
    precision: str = "fp32",
    sizes: tuple[int, int] = SIZES,
) -> tuple[int, dict[str, int], dict[str, int], str]:
    """``(H, {call: r}, {call: c}, where)``: the head's peak over the batch's rows, and each network
    call's bytes a row and fixed bytes (the peak of m rows is c + r·m).

    Args:
        model: the ``LZNModel`` (on its device).
        batch: one rank's batch, ``{modality: batch}`` on the model's device.
        losses: the step's loss terms, ``losses(batch, nets)`` (``task_losses`` bound to the model).
        precision: ``"fp32"`` or ``"bf16"``.
        sizes: the two micro-batch sizes (rows) the calls are measured at.
    """
    device = model.device
    peak = _Peak(device)
    params = [p for p in model.parameters() if p.requires_grad]
    head: list[int] = []
    for _ in range(2):  # the first run pays one-time costs (lazy imports, e.g. the collectives): not counted
        recorder = _Recorder(model, precision)
        with peak.measure(head):
            terms = losses(dict(batch), recorder)
            total = sum(terms.values())
            torch.autograd.grad(total, [*recorder.leaves, *params], allow_unused=True)  # type: ignore[arg-type]
            del terms, total
    rows = min(len(c.batch) for c in recorder.calls) if recorder.calls else 0
    m1, m2 = min(sizes[0], rows), min(sizes[1], rows)
    nets = OnePass(model, precision)
    per_row: dict[str, int] = {}
    fixed: dict[str, int] = {}
    for call in recorder.calls:
        key = f"{call.kind} {call.name}"
        got: list[int] = []
        for m in (m1, m1, m2, m2):  # a shape's first run fills caches (oneDNN, cuDNN): not counted
            with peak.measure(got):
                _run_call(nets, call, m, model.latent_dim, params)
        r = max(0, (got[3] - got[1]) // (m2 - m1)) if m2 > m1 else got[3] // max(m2, 1)
        c = max(0, got[1] - r * m1)
        if c + r * m2 >= fixed.get(key, 0) + per_row.get(key, 0) * m2:  # a key seen twice: the larger
            per_row[key], fixed[key] = r, c
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU (peak resident memory)"
    return head[-1], per_row, fixed, where


def _run_call(nets: OnePass, call: _Call, m: int, q: int, params: list[torch.Tensor]) -> None:
    rows = _rows(call.batch, m)
    device = nets.model.device
    if call.kind == "encode":
        a = nets.encode(call.name, rows)
        torch.autograd.grad(a, params, torch.randn_like(a), allow_unused=True)
        return
    z = torch.randn(m, q, device=device, requires_grad=True)
    cond = None if call.cond is None else call.cond[:m]
    gen = torch.Generator(device=device).manual_seed(0)
    loss = nets.decoder_loss(call.name, z, rows, cond, generator=gen, rows=(0, m))
    torch.autograd.grad(loss, [*params, z], allow_unused=True)


# ----------------------------------------------------------------------------- the plan


def _zero_stage(recipe: Any, world: int) -> int:
    from .engine import deepspeed_config

    try:
        cfg = deepspeed_config(recipe, world)
    except LZNError:
        return 0
    return int(cfg.get("zero_optimization", {}).get("stage", 0) or 0)


def state_bytes(
    model: Any, recipe: Any, world: int, two_pass: bool, rank0: bool = True
) -> tuple[dict[str, int], dict[str, int]]:
    """The terms of S for the networks' phase and the optimiser's phase (bytes; module doc)."""
    p_all = sum(p.numel() for p in model.parameters()) * 4
    p_t = sum(p.numel() for p in model.parameters() if p.requires_grad) * 4
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    dec_t = sum(
        p.numel() * 4
        for n in model.names
        if model.trains_decoder(n)
        for p in model.decoders[n].parameters()
        if p.requires_grad
    )
    zero = _zero_stage(recipe, world)
    shard = world if zero >= 1 else 1
    common = {"weights": p_all + buffers, "EMA": p_all + buffers, "Adam moments": 2 * p_t // shard}
    if rank0:
        common["evaluation copy (rank 0)"] = p_all + buffers
    if zero >= 1:
        common["ZeRO master partition"] = p_t // world
    networks = dict(common)
    if two_pass:
        networks |= {"two-pass gradients": p_t, "decoder term gradients": dec_t}
    optimiser = dict(common) | {"gradients": p_t}
    if two_pass:
        optimiser["two-pass gradients"] = p_t  # the surrogate holds them through engine.backward
    if zero >= 1:
        optimiser["ZeRO flat gradient partition"] = p_t // world
    return networks, optimiser


def _predict(
    m: int | None,
    rows: int,
    head: int,
    calls: dict[str, tuple[int, int]],
    networks: dict[str, int],
    optimiser: dict[str, int],
) -> int:
    """The step's peak (module doc) with micro-batches of ``m`` rows (None: one pass)."""
    if m is None or m >= rows:
        act = head + sum(c + r * rows for c, r in calls.values())
    else:
        enc = max((c + r * m for k, (c, r) in calls.items() if k.startswith("encode")), default=0)
        dec = max((c + r * m for k, (c, r) in calls.items() if k.startswith("loss")), default=0)
        act = max(head + dec, enc)
    return max(sum(networks.values()) + act, sum(optimiser.values()))


def device_budget(device: torch.device, device_memory: int | None = None, *, local_ranks: int = 1) -> int:
    """The memory a rank may plan with: ``device_memory`` when given; CUDA: free + what this process
    holds; CPU: ``MemAvailable`` (plus this process's resident memory) over the local ranks."""
    if device_memory is not None:
        return int(device_memory)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device))
    with open("/proc/meminfo") as f:
        avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    return int(avail // max(local_ranks, 1) + _status_bytes("VmRSS"))


@dataclass
class StepMemory:
    """What a plan is computed from: one step's measured head and calls, and the counted state.

    Attributes:
        rows: rows of the global batch on each rank.
        precision: the networks' precision.
        head: H (bytes).
        per_row: r of each network call; fixed: c of each.
        one_pass, two_pass: the state's terms ``(networks' phase, optimiser's phase)`` of each way.
        measured_on: where.
    """

    rows: int
    precision: str
    head: int
    per_row: dict[str, int]
    fixed: dict[str, int]
    one_pass: tuple[dict[str, int], dict[str, int]]
    two_pass: tuple[dict[str, int], dict[str, int]]
    measured_on: str

    def peak(self, micro: int | None) -> int:
        """The predicted peak with micro-batches of ``micro`` rows (None: one pass)."""
        calls = {k: (self.fixed[k], self.per_row[k]) for k in self.per_row}
        net, opt = self.one_pass if micro is None or micro >= self.rows else self.two_pass
        return _predict(micro, self.rows, self.head, calls, net, opt)

    def choose(self, device_memory: int, headroom: float = HEADROOM) -> MemoryPlan:
        """The largest micro-batch whose peak fits ``device_memory`` less the headroom.

        Raises:
            LZNError: not even one row fits.
        """
        budget = int(device_memory * (1.0 - headroom))
        plan: dict[str, Any] = dict(
            rows=self.rows, budget=budget, device_memory=int(device_memory), precision=self.precision
        )
        plan |= dict(head=self.head, per_row=self.per_row, fixed=self.fixed, measured_on=self.measured_on)
        one = self.peak(None)
        if one <= budget:
            return MemoryPlan(
                micro_batch=None,
                passes=1,
                predicted_peak=one,
                state=self.one_pass[0],
                fits_one_pass=True,
                **plan,
            )
        lo, hi = 0, self.rows - 1  # the largest m < rows whose peak fits (the peak grows with m)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.peak(mid) <= budget:
                lo = mid
            else:
                hi = mid - 1
        if lo < 1:
            raise LZNError(
                f"memory plan: even micro-batches of one row need {_gib(self.peak(1))}, more than the "
                f"{_gib(budget)} usable of {_gib(device_memory)} (state {_gib(sum(self.two_pass[0].values()))}, "
                f"head {_gib(self.head)}); use more ranks (ZeRO shards the optimiser), a smaller model, "
                "or a device with more memory"
            )
        micro = math.ceil(self.rows / math.ceil(self.rows / lo))  # as many passes, evenly filled
        return MemoryPlan(
            micro_batch=micro,
            passes=len(row_blocks(self.rows, micro)),
            predicted_peak=self.peak(micro),
            state=self.two_pass[0],
            **plan,
        )


def step_memory(
    model: Any,
    recipe: Any,
    batch: dict[str, Any],
    losses: Callable[[dict[str, Any], OnePass], dict[str, torch.Tensor]],
    *,
    world: int = 1,
    sizes: tuple[int, int] = SIZES,
    rank0: bool = True,
) -> StepMemory:
    """Measure one step's networks and head, count the state (module doc); see :func:`plan_micro_batch`."""
    precision = recipe.train.precision
    head, per_row, fixed, where = measure_step(model, batch, losses, precision=precision, sizes=sizes)
    return StepMemory(
        rows=int(recipe.train.batch_size) // max(world, 1),
        precision=precision,
        head=head,
        per_row=per_row,
        fixed=fixed,
        one_pass=state_bytes(model, recipe, world, two_pass=False, rank0=rank0),
        two_pass=state_bytes(model, recipe, world, two_pass=True, rank0=rank0),
        measured_on=where,
    )


def plan_micro_batch(
    model: Any,
    recipe: Any,
    batch: dict[str, Any],
    losses: Callable[[dict[str, Any], OnePass], dict[str, torch.Tensor]],
    *,
    world: int = 1,
    device_memory: int | None = None,
    headroom: float = HEADROOM,
    sizes: tuple[int, int] = SIZES,
    rank0: bool = True,
) -> MemoryPlan:
    """The largest micro-batch whose step fits ``device_memory`` less the headroom (module doc).

    Args:
        model: the ``LZNModel`` on the device it trains on.
        recipe: its recipe (``train.batch_size``, ``train.precision``, the DeepSpeed config's ZeRO stage).
        batch: one rank's batch of ``train.batch_size // world`` rows, on the model's device.
        losses: ``losses(batch, nets)``: the step's loss terms (``recipes/train.py``'s ``task_losses``).
        world: ranks the global batch is split over.
        device_memory: bytes of the device (None: read from the device, :func:`device_budget`).
        headroom: share of the device memory left free.
        sizes: the two micro-batch sizes the per-row memory is measured at.
        rank0: whether this rank keeps the evaluation copy (``recipes/train.py``: rank 0).

    Raises:
        LZNError: not even one row fits.
    """
    measured = step_memory(model, recipe, batch, losses, world=world, sizes=sizes, rank0=rank0)
    return measured.choose(device_budget(model.device, device_memory), headroom)


def agree(micro: int | None, rows: int) -> int | None:
    """The smallest micro-batch any rank planned (every rank runs the same passes)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return micro
    value = torch.tensor([rows if micro is None else micro], dtype=torch.int64)
    if torch.distributed.get_backend() == "nccl":
        value = value.cuda()
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
    got = int(value.item())
    return None if got >= rows else got


def planned_train(
    model: Any,
    recipe: Any,
    losses: Callable[[dict[str, Any], OnePass], dict[str, torch.Tensor]],
    *,
    rank: int = 0,
    world: int = 1,
    device_memory: int | None = None,
    headroom: float = HEADROOM,
) -> Any:
    """``recipe.train`` with ``micro_batch_size: auto`` replaced by the plan's size (any other value
    as it is); the plan is printed on rank 0 before training. ``LZN_DEVICE_MEMORY=40GiB`` plans for
    that much device memory instead of what the device reports.

    The plan reads a batch of its own (the training stream is not touched) and runs inside
    :func:`~lzn_core.train.rng.untouched`; every rank plans and all take the smallest size.
    """
    from ..data import loader
    from ..modality import move_batch
    from .rng import untouched

    tr = recipe.train
    if tr.micro_batch_size != "auto":
        return tr
    if device_memory is None and os.environ.get("LZN_DEVICE_MEMORY"):
        device_memory = parse_bytes(os.environ["LZN_DEVICE_MEMORY"])
    rows = int(tr.batch_size) // max(world, 1)
    with untouched():
        data = loader(
            recipe.data.train,
            model.specs,
            configs=model.configs,
            batch_size=rows,
            rank=rank,
            world_size=world,
            seed=int(recipe.seed) + 1,
        )
        batch = {k: move_batch(v, model.device) for k, v in next(iter(data)).items()}
        plan = plan_micro_batch(
            model,
            recipe,
            batch,
            losses,
            world=world,
            device_memory=device_memory,
            headroom=headroom,
            rank0=rank == 0,
        )
    micro = agree(plan.micro_batch, rows)
    if rank == 0:
        tail = "" if micro == plan.micro_batch else f"; every rank: micro-batches of {micro} rows"
        print(plan.describe() + tail, flush=True)
    return tr.model_copy(update={"micro_batch_size": micro})
