"""The shard loader: deterministic, rank-split, exactly resumable batches of equal size.

Design: exact resume and "the ranks of step k together hold exactly global batch k" are the
requirements, and both are simple with random access, which wids' indexed reader gives
(:mod:`~lzn_core.data._shardset`: every shard's tar headers are scanned once, members are read
from a memory map). An epoch is a permutation of all sample ids seeded by ``(seed, epoch)``;
global batch ``k`` is positions ``k*G .. (k+1)*G - 1`` of it with ``G = batch_size *
world_size``; rank ``r`` takes positions ``k*G + r*batch_size ..`` of them. So two ranks of
batch ``B`` see exactly the samples one rank of batch ``2B`` sees, and the position in the
stream is two integers ``(epoch, step)``: :class:`LoaderState`. Within a rank, DataLoader
worker ``w`` of ``n`` builds the rank's batches ``i ≡ w (mod n)`` of the stream and the
DataLoader returns them in order, so the batch sequence does not depend on ``num_workers``.
Samples are decoded on demand (nothing decoded is held), so CIFAR-size shards are fine.

Bad samples (bytes a modality cannot decode, a missing key, a member cut off by a truncated
shard, an item ``spec.validate_item`` rejects) are skipped and *replaced*, so every rank always
returns ``batch_size`` rows (an all-gather of unequal sizes fails on gloo and hangs on NCCL):
the sample at position ``p`` of the epoch order is replaced by the first good sample at
positions ``p + G, p + G + 1, ...`` (cyclically, modulo the number of samples), i.e. the
sample in the same row of the next global batch, or the first good one after it. The
replacement depends only on the data, the seed and the epoch, not on the rank count or the
workers: one rank of batch ``2B`` and two ranks of ``B`` see the same global batches, and a
resumed run the batches of an uninterrupted one. ``ShardLoader.skipped`` counts the skipped
samples at this rank's own positions (summed over ranks, the bad samples of the global batches
consumed), and a :class:`CorruptSampleWarning` naming shard, key, reason and replacement is
issued for the first one and every ``report_every``-th. When no sample of the epoch can be
decoded, the loader raises :class:`DataError`. ``replace_bad=False`` drops bad samples
instead (shorter batches; a batch with no good sample is not yielded): for evaluation, where
a duplicate would count twice.
"""

from __future__ import annotations

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
from . import _remote
from ._shardset import (
    CorruptSampleWarning,
    ShardSet,
    Truncated,
    check_sizes,
    dir_listing,
    expand_pattern,
    iter_shard_samples,
    resolve,
)

__all__ = ["CorruptSampleWarning", "LoaderState", "ShardLoader", "expand_pattern", "iter_raw", "loader"]

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
    """Which epoch positions rank ``rank`` gets at each ``(epoch, step)``."""

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

    def positions(self, step: int) -> range:
        """This rank's positions (in the epoch order) of global batch ``step``.

        A short last batch (``drop_last=False``) is padded to a multiple of ``world_size`` with
        positions past the end, which wrap to the epoch's start (like ``DistributedSampler``),
        so every rank gets the same number of rows.
        """
        g, start = self.global_batch, step * self.global_batch
        n = min(g, self.num_samples - start)
        per = self.batch_size if n == g else -(-n // self.world_size)
        first = start + self.rank * per
        return range(first, first + per)

    def stream(self, epoch: int, step: int, infinite: bool) -> Iterator[tuple[int, int]]:
        """``(epoch, step)`` from the given position; stops at the epoch end if not infinite."""
        while True:
            for k in range(step, self.steps_per_epoch):
                yield epoch, k
            if not infinite:
                return
            epoch, step = epoch + 1, 0


# ----------------------------------------------------------------------------- decoding


def _identity(x: Any) -> Any:
    return x


Skip = tuple[str, str, str, str | None]
"""``(shard path, key, reason, replacement "shard.tar/key" or None)`` of one skipped sample."""


class _Batches(torch.utils.data.IterableDataset):
    """Iterable of ``(epoch, step, batch | None, skips, error | None)`` for this rank (worker-split)."""

    def __init__(
        self,
        shards: ShardSet,
        modalities: Mapping[str, ModalitySpec],
        configs: Mapping[str, Any],
        plan: _Plan,
        start: tuple[int, int],
        *,
        infinite: bool,
        with_keys: bool,
        replace_bad: bool,
    ) -> None:
        self.shards, self.modalities, self.configs, self.plan = shards, dict(modalities), dict(configs), plan
        self.start, self.infinite, self.with_keys, self.replace_bad = start, infinite, with_keys, replace_bad
        self.exts = {
            name: tuple(k.lower() for k in spec.shard_keys) for name, spec in self.modalities.items()
        }
        self._order: tuple[int, Any] = (-1, None)

    def __iter__(self) -> Iterator[tuple[int, int, Any, list[Skip], str | None]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for i, (epoch, step) in enumerate(self.plan.stream(*self.start, self.infinite)):
            if i % workers == worker:
                try:
                    yield (epoch, step, *self._batch(epoch, step), None)
                except DataError as exc:  # returned, not raised: a worker's exception arrives as a traceback
                    yield epoch, step, None, [], str(exc)
                    return

    def _epoch_order(self, epoch: int) -> Any:
        if self._order[0] != epoch:
            self._order = (epoch, self.plan.order(epoch))
        return self._order[1]

    def _decode(self, g: int) -> tuple[str, dict[str, Any]]:
        """``(key, {modality: item})`` of global sample ``g``; ValueError(reason) when it is bad."""
        key, fields = self.shards.sample(g)
        item = {}
        for name, spec in self.modalities.items():
            ext = next((e for e in self.exts[name] if e in fields), None)
            if ext is None:
                raise ValueError(f"no {'/'.join(spec.shard_keys)} for modality {name!r}")
            raw = fields[ext]
            if isinstance(raw, Truncated):
                raise ValueError(
                    f"{name} ({ext}): truncated shard: {raw.name} has {raw.got} of {raw.size} bytes"
                )
            try:
                item[name] = spec.decode_sample(raw)
                if spec.validate_item is not None and name in self.configs:
                    spec.validate_item(item[name], self.configs[name])
            except ValueError as exc:  # anything else is a plugin bug: it stops the run
                raise ValueError(f"{name} ({ext}): {type(exc).__name__}: {exc}") from exc
        return key, item

    def _label(self, g: int, key: str) -> str:
        s, _ = self.shards.locate(g)
        return f"{os.path.basename(self.shards.paths[s])}/{key}"

    def _replacement(self, order: Any, p: int) -> tuple[str, dict[str, Any]]:
        """The first good sample at positions ``p + G, p + G + 1, ...`` of ``order`` (cyclically)."""
        n, g = len(order), self.plan.global_batch
        last = None
        for j in range(n):
            q = (p + g + j) % n
            if q == p % n:
                continue
            sid = int(order[q])
            try:
                key, item = self._decode(sid)
            except ValueError as exc:
                last = (sid, exc)
                continue
            return self._label(sid, key), item
        shard, key = self.shards.name(last[0]) if last else self.shards.name(int(order[p % n]))
        raise DataError(
            f"no sample of {self.shards.pattern!r} can be decoded ({n} tried); the last: {key!r} in {shard}: "
            f"{last[1] if last else 'the only sample is bad'}"
        )

    def _batch(self, epoch: int, step: int) -> tuple[Any, list[Skip]]:
        order = self._epoch_order(epoch)
        n = len(order)
        items: list[dict[str, Any]] = []
        keys: list[str] = []
        skips: list[Skip] = []
        for p in self.plan.positions(step):
            sid = int(order[p % n])
            try:
                key, item = self._decode(sid)
                if self.with_keys:
                    keys.append(self._label(sid, key))
            except ValueError as exc:
                shard, key = self.shards.name(sid)
                if not self.replace_bad:
                    skips.append((shard, key, str(exc), None))
                    continue
                label, item = self._replacement(order, p)
                skips.append((shard, key, str(exc), label))
                keys.append(label)
            items.append(item)
        if not items:
            return None, skips
        batch = {name: spec.collate([it[name] for it in items]) for name, spec in self.modalities.items()}
        if self.with_keys:
            batch["__key__"] = keys
        return batch, skips


# ----------------------------------------------------------------------------- the loader


class ShardLoader:
    """Iterable of dict batches ``{modality name: collated batch}``; see :func:`loader`.

    Attributes:
        shards: shard paths, sorted.
        num_samples: samples in the shard set.
        steps_per_epoch: batches per epoch (the same on every rank).
        skipped: bad samples skipped so far at this rank's positions (replaced unless ``replace_bad=False``).
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
        replace_bad: bool,
        cache_dir: str | None = None,
    ) -> None:
        if not modalities:
            raise ValueError("loader needs at least one modality ({name: ModalitySpec})")
        self.pattern, self.modalities, self.configs = str(pattern), dict(modalities), dict(configs)
        self.num_workers, self.infinite, self.with_keys = num_workers, infinite, with_keys
        self.report_every, self.replace_bad = report_every, replace_bad
        self._set = ShardSet(
            self.pattern, cache_dir=cache_dir, rank=plan_kw["rank"], world_size=plan_kw["world_size"]
        )
        self.shards = self._set.paths
        self.num_samples = self._set.num_samples
        if self.num_samples == 0:
            raise DataError(
                f"shard set {self.pattern!r} is empty (0 samples in {len(self.shards)} shard(s))"
                + (
                    ""
                    if _remote.is_url(self.pattern)
                    else "; " + dir_listing(Path(os.path.dirname(self.pattern) or "."))
                )
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
        """Continue from ``state`` (a :class:`LoaderState` or its ``model_dump()``).

        The state is a position in the global stream, so it may have been saved on another number
        of ranks: ``batch_size * world_size`` must equal the saved global batch, however it is split
        (two ranks of 8 continue what one rank of 16 or four ranks of 4 read).
        """
        st = state if isinstance(state, LoaderState) else LoaderState.model_validate(dict(state))
        if st.global_batch_size != self._plan.global_batch:
            raise DataError(
                f"cannot resume: the checkpoint's global batch is {st.global_batch_size}, now "
                f"{self._plan.batch_size} x {self._plan.world_size} = {self._plan.global_batch}; keep the "
                f"global batch at {st.global_batch_size} (on any number of ranks that divides it)"
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
            self._set,
            self.modalities,
            self.configs,
            self._plan,
            (self.epoch, self.step),
            infinite=self.infinite,
            with_keys=self.with_keys,
            replace_bad=self.replace_bad,
        )
        source: Any = batches
        if self.num_workers > 0:
            source = torch.utils.data.DataLoader(
                batches, batch_size=None, num_workers=self.num_workers, collate_fn=_identity
            )
        it = iter(source)
        try:
            for epoch, step, batch, skips, error in it:
                if error is not None:
                    raise DataError(error)
                self._report(skips)
                self.epoch, self.step = epoch, step + 1
                self.samples_seen += min(
                    self._plan.global_batch, self.num_samples - step * self._plan.global_batch
                )
                if self.step == self.steps_per_epoch:
                    self.epoch, self.step = epoch + 1, 0
                if batch is not None:
                    yield batch
        finally:
            del it

    def _report(self, skips: list[Skip]) -> None:
        for shard, key, reason, replacement in skips:
            self.skipped += 1
            self.skipped_samples = [*self.skipped_samples[-999:], (shard, key, reason)]
            what = f"replaced by {replacement!r}" if replacement else "dropped from the batch"
            _log.debug("skipped %s %s: %s; %s", shard, key, reason, what)
            if self.skipped == 1 or self.skipped % self.report_every == 0:
                warnings.warn(
                    f"skipped corrupt or unfit sample {key!r} in {shard}: {reason}; {what} "
                    f"({self.skipped} skipped so far)",
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
    replace_bad: bool = True,
    cache_dir: str | None = None,
) -> ShardLoader:
    """Batches of the shards matching ``pattern``, decoded by ``modalities``.

    Args:
        pattern: glob (``data/digits/train-*.tar``) or brace range (``train-{000000..000049}.tar``),
            or a URL with brace ranges (``https://host/data/train-{000000..000049}.tar``, ``s3://``):
            its shards are downloaded into the cache first (retried, then skipped and counted like
            corrupt samples where ``sizes.json`` gives their count; see docs/data.md).
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
        with_keys: add ``"__key__": ["shard.tar/key", ...]`` to each batch (a replaced row has
            its replacement's key).
        report_every: warn at the first skipped sample and every ``report_every``-th.
        replace_bad: replace a bad sample by the first good one from ``G`` positions on (every
            batch full; see the module docstring); False drops it (shorter batches).
        cache_dir: where URL shards are cached (default: ``$WIDS_CACHE``, else ``/tmp/_wids_cache``).

    Returns:
        a :class:`ShardLoader`: iterate it for ``{name: batch}``; ``state()`` for checkpoints.

    Raises:
        DataError: no shard matches, a listed shard is missing or not a tar file, a URL shard
            could not be downloaded and ``sizes.json`` does not give its count, the shard set is empty, fewer samples than one global batch (with ``drop_last``); while iterating:
            no sample can be decoded.
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
        replace_bad=replace_bad,
        cache_dir=cache_dir,
    )
    ld.epoch = epoch
    if resume_from is not None:
        ld.load_state(resume_from)
    return ld


def iter_raw(pattern: str, keys: tuple[str, ...], *, cache_dir: str | None = None) -> Iterator[bytes]:
    """Raw values of the first of ``keys`` each sample of the shards matching ``pattern`` has,
    in shard order, read by webdataset's streaming stages (samples without any of the keys are
    passed over; a damaged shard is read up to the damage, with a warning, and a count that
    differs from ``sizes.json`` is warned about). For ``spec.prepare``. A URL pattern is fetched
    into the cache first; a shard that cannot be downloaded is a :class:`DataError` here (what
    ``prepare`` builds must not depend on which rank's download failed)."""
    wanted = tuple(k.lower() for k in keys)
    found = resolve(pattern, cache_dir=cache_dir)
    remote = _remote.is_url(pattern)
    for file, path, want in zip(found.files, found.names, found.declared, strict=True):
        assert file is not None  # resolve() raises for a failed download unless skip_failed
        if os.path.getsize(file) == 0:
            warnings.warn(f"{path}: empty file (0 bytes); ignored", CorruptSampleWarning, stacklevel=2)
            continue

        def damaged(exc: Exception, path: str = path) -> bool:
            why = str(exc).split(" @ ")[0]
            warnings.warn(
                f"{path}: {why}; the rest of this shard is skipped", CorruptSampleWarning, stacklevel=2
            )
            return False

        count = 0
        for sample in iter_shard_samples([file], damaged, [path]):
            count += 1
            value = next((sample[k] for k in wanted if k in sample), None)
            if value is not None:
                yield value
        if not remote:
            check_sizes([path], [count])  # a shard cut inside a header ends without an error
        elif want is not None and want != count:
            warnings.warn(
                f"{path}: sizes.json says {want} samples, the tar holds {count}",
                CorruptSampleWarning,
                stacklevel=2,
            )
