"""The shard loader: deterministic, rank-split, exactly resumable batches from webdataset tars.

Design (why not a streaming webdataset pipeline): exact resume and "the ranks of step k
together hold exactly global batch k" are the requirements, and both are simple with
random access. Each shard's tar members are indexed once (byte offset and size of the
keys the modalities declare, no data read); an epoch is a permutation of all sample ids
seeded by ``(seed, epoch)``; global batch ``k`` is ``perm[k*G:(k+1)*G]`` with
``G = batch_size * world_size``; rank ``r`` takes rows ``r*batch_size:(r+1)*batch_size``
of it. So two ranks of batch ``B`` see exactly the samples one rank of batch ``2B`` sees,
and the position in the stream is two integers ``(epoch, step)``: :class:`LoaderState`.
Within a rank, DataLoader worker ``w`` of ``n`` builds the rank's batches ``i ≡ w (mod n)``
of the stream and the DataLoader returns them in order, so the batch sequence does not
depend on ``num_workers``. Samples are decoded on demand (nothing decoded is held), so
CIFAR-size shards are fine.

Corrupt samples (bad bytes, missing key, undecodable ``cls``) are skipped: the batch is
one row shorter, ``ShardLoader.skipped`` counts them and a :class:`CorruptSampleWarning`
naming shard and key is issued for the first one and every ``report_every``-th.
"""

from __future__ import annotations

import bisect
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data
from pydantic import BaseModel, ConfigDict

from ..errors import DataError
from ..modality import ModalitySpec
from ._tarindex import CorruptSampleWarning, Shard, check_sizes, dir_listing, expand_pattern, index_shard

__all__ = ["CorruptSampleWarning", "LoaderState", "ShardLoader", "expand_pattern", "loader"]

_log = logging.getLogger(__name__)
_STATE_VERSION = 1


class LoaderState(BaseModel):
    """The loader's position, saved with checkpoints (JSON via ``model_dump()``).

    Attributes:
        epoch: current epoch (the shuffle is seeded by ``(seed, epoch)``).
        step: global batches of this epoch already consumed.
        seed: shuffle seed.
        global_batch_size: ``batch_size * world_size`` the position refers to.
        num_samples: samples in the shard set (a changed data set is refused on resume).
        samples_seen: global samples consumed over all epochs (all ranks together).
    """

    model_config = ConfigDict(extra="forbid")
    version: int = _STATE_VERSION
    epoch: int = 0
    step: int = 0
    seed: int = 0
    global_batch_size: int
    num_samples: int
    samples_seen: int = 0


# ----------------------------------------------------------------------------- batch plan


@dataclass(frozen=True)
class _Plan:
    """Which sample ids rank ``rank`` gets at each ``(epoch, step)``."""

    num_samples: int
    batch_size: int
    rank: int
    world_size: int
    seed: int
    shuffle: bool
    drop_last: bool

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        n, g = self.num_samples, self.global_batch
        return n // g if self.drop_last else -(-n // g)

    def order(self, epoch: int) -> Any:
        """Sample ids of ``epoch`` in order: (num_samples,) int64, a permutation seeded by (seed, epoch)."""

        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def rows(self, order: Any, step: int) -> Any:
        """This rank's rows of global batch ``step``: positions ``rank*b:(rank+1)*b`` of it.

        A short last batch (``drop_last=False``) is padded from the epoch's start to a
        multiple of ``world_size`` (like ``DistributedSampler``) so every rank gets a batch.
        """

        g = self.global_batch
        batch = order[step * g : (step + 1) * g]
        if len(batch) < g and self.world_size > 1:
            pad = -len(batch) % self.world_size
            batch = np.concatenate([batch, order[:pad]])
        per = len(batch) // self.world_size
        return batch[self.rank * per : (self.rank + 1) * per]

    def stream(self, epoch: int, step: int, infinite: bool) -> Iterator[tuple[int, int, Any]]:
        """``(epoch, step, rows)`` from the given position; stops at the epoch end if not infinite."""
        while True:
            order = self.order(epoch)
            for k in range(step, self.steps_per_epoch):
                yield epoch, k, self.rows(order, k)
            if not infinite:
                return
            epoch, step = epoch + 1, 0


# ----------------------------------------------------------------------------- decoding


def _identity(x: Any) -> Any:
    return x


class _Batches(torch.utils.data.IterableDataset):
    """Iterable of ``(epoch, step, batch | None, skipped)`` for this rank (worker-split in DataLoader workers)."""

    def __init__(
        self,
        shards: list[Shard],
        modalities: Mapping[str, ModalitySpec],
        configs: Mapping[str, Any],
        plan: _Plan,
        start: tuple[int, int],
        infinite: bool,
        with_keys: bool,
    ) -> None:
        self.shards, self.modalities, self.configs, self.plan = shards, dict(modalities), dict(configs), plan
        self.start, self.infinite, self.with_keys = start, infinite, with_keys
        self.starts = [0]
        for s in shards:
            self.starts.append(self.starts[-1] + len(s.keys))

    def __iter__(self) -> Iterator[tuple[int, int, Any, list[tuple[str, str, str]]]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        files: dict[str, Any] = {}
        try:
            for i, (epoch, step, rows) in enumerate(self.plan.stream(*self.start, self.infinite)):
                if i % workers == worker:
                    yield (epoch, step, *self._decode(rows, files))
        finally:
            for fh in files.values():
                fh.close()

    def _read(self, shard: Shard, ext: str, j: int, files: dict[str, Any]) -> bytes:
        off, size = shard.spans[ext][j]
        fh = files.get(shard.path)
        if fh is None:
            fh = files[shard.path] = open(shard.path, "rb")
        fh.seek(off)
        data = fh.read(size)
        if len(data) != size:
            raise ValueError(f"{ext}: truncated ({len(data)} of {size} bytes)")
        return bytes(data)

    def _decode_one(self, shard: Shard, j: int, files: dict[str, Any]) -> dict[str, Any]:
        item = {}
        for name, spec in self.modalities.items():
            ext = next((e for e in spec.shard_keys if shard.spans[e][j][0] >= 0), None)
            if ext is None:
                raise ValueError(f"no {'/'.join(spec.shard_keys)} for modality {name!r}")
            try:
                item[name] = spec.decode_sample(self._read(shard, ext, j, files))
                if spec.validate_item is not None and name in self.configs:
                    spec.validate_item(item[name], self.configs[name])
            except ValueError as exc:
                raise ValueError(f"{name} ({ext}): {type(exc).__name__}: {exc}") from exc
        return item

    def _decode(self, rows: Any, files: dict[str, Any]) -> tuple[Any, list[tuple[str, str, str]]]:
        items, keys, skipped = [], [], []
        for g in rows.tolist():
            s = bisect.bisect_right(self.starts, g) - 1
            shard, j = self.shards[s], g - self.starts[s]
            try:
                items.append(self._decode_one(shard, j, files))
                keys.append(f"{os.path.basename(shard.path)}/{shard.keys[j]}")
            except ValueError as exc:  # anything else is a plugin bug: it stops the run
                skipped.append((shard.path, shard.keys[j], str(exc)))
        if not items:
            return None, skipped
        batch = {name: spec.collate([it[name] for it in items]) for name, spec in self.modalities.items()}
        if self.with_keys:
            batch["__key__"] = keys
        return batch, skipped


# ----------------------------------------------------------------------------- the loader


class ShardLoader:
    """Iterable of dict batches ``{modality name: collated batch}``; see :func:`loader`.

    Attributes:
        shards: shard paths, sorted.
        num_samples: samples in the shard set.
        steps_per_epoch: batches per epoch (the same on every rank).
        skipped: corrupt samples skipped so far (this rank).
        skipped_samples: ``(shard, key, reason)`` of the last 1000 skipped samples.
    """

    def __init__(
        self,
        pattern: str,
        modalities: Mapping[str, ModalitySpec],
        plan_kw: dict[str, Any],
        *,
        configs: Mapping[str, Any],
        num_workers: int,
        infinite: bool,
        with_keys: bool,
        report_every: int,
    ) -> None:
        if not modalities:
            raise ValueError("loader needs at least one modality ({name: ModalitySpec})")
        self.pattern, self.modalities, self.configs = str(pattern), dict(modalities), dict(configs)
        self.num_workers, self.infinite, self.with_keys = num_workers, infinite, with_keys
        self.report_every = report_every
        self.shards = expand_pattern(self.pattern)
        exts = {e.lower() for spec in self.modalities.values() for e in spec.shard_keys}
        self._index = [index_shard(p, exts) for p in self.shards]
        check_sizes(self._index)
        self.num_samples = sum(len(s.keys) for s in self._index)
        if self.num_samples == 0:
            raise DataError(
                f"shard set {self.pattern!r} is empty (0 samples in {len(self.shards)} shard(s)); "
                + dir_listing(Path(os.path.dirname(self.pattern) or "."))
            )
        self._plan = _Plan(num_samples=self.num_samples, **plan_kw)
        if self._plan.steps_per_epoch == 0:
            raise DataError(
                f"{self.pattern!r}: {self.num_samples} samples is less than one global batch "
                f"({self._plan.batch_size} x {self._plan.world_size} ranks); lower batch_size or set drop_last=False"
            )
        self.epoch, self.step, self.samples_seen = 0, 0, 0
        self.skipped = 0
        self.skipped_samples: list[tuple[str, str, str]] = []

    @property
    def steps_per_epoch(self) -> int:
        return self._plan.steps_per_epoch

    def __len__(self) -> int:
        return self._plan.steps_per_epoch

    def state(self) -> LoaderState:
        """Position after the last batch this iterator yielded (save it with the checkpoint)."""
        return LoaderState(
            epoch=self.epoch,
            step=self.step,
            seed=self._plan.seed,
            global_batch_size=self._plan.global_batch,
            num_samples=self.num_samples,
            samples_seen=self.samples_seen,
        )

    def load_state(self, state: LoaderState | Mapping[str, Any]) -> None:
        """Continue from ``state`` (a :class:`LoaderState` or its ``model_dump()``)."""
        st = state if isinstance(state, LoaderState) else LoaderState.model_validate(dict(state))
        if st.global_batch_size != self._plan.global_batch:
            raise DataError(
                f"cannot resume: the checkpoint's global batch is {st.global_batch_size}, now "
                f"{self._plan.batch_size} x {self._plan.world_size} = {self._plan.global_batch}"
            )
        if st.num_samples != self.num_samples:
            raise DataError(
                f"cannot resume: {self.pattern!r} has {self.num_samples} samples, "
                f"the checkpoint's data set had {st.num_samples}"
            )
        if not 0 <= st.step <= self.steps_per_epoch:
            raise DataError(f"cannot resume: step {st.step} outside the epoch (0..{self.steps_per_epoch})")
        self._plan = _Plan(**{**self._plan.__dict__, "seed": st.seed})
        self.epoch, self.step, self.samples_seen = st.epoch, st.step, st.samples_seen

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.step >= self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        batches = _Batches(
            self._index,
            self.modalities,
            self.configs,
            self._plan,
            (self.epoch, self.step),
            self.infinite,
            self.with_keys,
        )
        source: Any = batches
        if self.num_workers > 0:
            source = torch.utils.data.DataLoader(
                batches, batch_size=None, num_workers=self.num_workers, collate_fn=_identity
            )
        it = iter(source)
        try:
            for epoch, step, batch, skipped in it:
                self._report(skipped)
                if batch is None:
                    raise DataError(
                        f"every sample of batch {step} (epoch {epoch}) of {self.pattern!r} is corrupt; "
                        f"last: {skipped[-1]}"
                    )
                self.epoch, self.step = epoch, step + 1
                self.samples_seen += min(
                    self._plan.global_batch, self.num_samples - step * self._plan.global_batch
                )
                if self.step == self.steps_per_epoch:
                    self.epoch, self.step = epoch + 1, 0
                yield batch
        finally:
            del it

    def _report(self, skipped: list[tuple[str, str, str]]) -> None:
        for shard, key, reason in skipped:
            self.skipped += 1
            self.skipped_samples = [*self.skipped_samples[-999:], (shard, key, reason)]
            _log.debug("skipped %s %s: %s", shard, key, reason)
            if self.skipped == 1 or self.skipped % self.report_every == 0:
                warnings.warn(
                    f"skipped corrupt sample {key!r} in {shard}: {reason} ({self.skipped} skipped so far)",
                    CorruptSampleWarning,
                    stacklevel=3,
                )


def loader(
    pattern: str,
    modalities: Mapping[str, ModalitySpec],
    *,
    batch_size: int,
    configs: Mapping[str, Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 0,
    seed: int = 0,
    num_workers: int = 0,
    resume_from: LoaderState | Mapping[str, Any] | None = None,
    shuffle: bool = True,
    drop_last: bool = True,
    infinite: bool = True,
    with_keys: bool = False,
    report_every: int = 100,
) -> ShardLoader:
    """Batches of the shards matching ``pattern``, decoded by ``modalities``.

    Args:
        pattern: glob (``data/digits/train-*.tar``) or brace range (``train-{000000..000049}.tar``).
        modalities: ``{recipe modality name: ModalitySpec}``; only their ``shard_keys`` are read
            (the first key a sample has), decoded by ``spec.decode_sample`` and batched by ``spec.collate``.
        batch_size: PER-RANK batch size; the caller passes ``global_batch // world_size``.
        configs: ``{name: plugin config}``; where given, ``spec.validate_item(item, config)`` checks
            each decoded item, and items that do not fit are skipped like corrupt ones.
        rank, world_size: this process's rows of each global batch: ``rank*batch_size:(rank+1)*batch_size``.
        epoch: first epoch (ignored with ``resume_from``).
        seed: shuffle seed; epoch ``e`` is a permutation seeded by ``(seed, e)``.
        num_workers: DataLoader worker processes (0: decode in this process). Does not change the stream.
        resume_from: a :meth:`ShardLoader.state` (or its dict) to continue exactly where it was.
        shuffle: permute each epoch (False: shard order).
        drop_last: drop the short last global batch (False: keep it, padded to a multiple of world_size).
        infinite: go on epoch after epoch; False stops at the end of the current epoch (iterate
            again for the next one).
        with_keys: add ``"__key__": ["shard.tar/key", ...]`` to each batch.
        report_every: warn at the first skipped sample and every ``report_every``-th.

    Returns:
        a :class:`ShardLoader`: iterate it for ``{name: batch}``; ``state()`` for checkpoints.

    Raises:
        DataError: no shard matches, a listed shard is missing, the shard set is empty, or
            fewer samples than one global batch (with ``drop_last``).
        ValueError: bad ``batch_size``, ``rank``/``world_size`` or ``num_workers``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if num_workers < 0 or report_every < 1:
        raise ValueError(f"num_workers must be >= 0 and report_every >= 1, got {num_workers}, {report_every}")
    plan_kw = dict(
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        seed=seed,
        shuffle=shuffle,
        drop_last=drop_last,
    )
    ld = ShardLoader(
        pattern,
        modalities,
        plan_kw,
        configs=configs or {},
        num_workers=num_workers,
        infinite=infinite,
        with_keys=with_keys,
        report_every=report_every,
    )
    ld.epoch = epoch
    if resume_from is not None:
        ld.load_state(resume_from)
    return ld


def iter_raw(pattern: str, keys: tuple[str, ...]) -> Iterator[bytes]:
    """Raw values of the first of ``keys`` each sample of the shards matching ``pattern`` has,
    in shard order (samples without any of the keys are passed over). For ``spec.prepare``."""
    wanted = tuple(k.lower() for k in keys)
    for path in expand_pattern(pattern):
        shard = index_shard(path, set(wanted))
        with open(path, "rb") as fh:
            for j in range(len(shard.keys)):
                span = next((shard.spans[k][j] for k in wanted if shard.spans[k][j][0] >= 0), None)
                if span is None:
                    continue
                fh.seek(span[0])
                yield fh.read(span[1])
