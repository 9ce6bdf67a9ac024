"""A set of webdataset tar shards opened for random access: discovery, wids' index, damage.

Each shard is opened with wids' indexed reader (``wids.wids.IndexedTarSamples``: the tar headers
are scanned once, members are read from a memory map), so sample ``j`` of a shard costs one
lookup. Damage is handled here, once, so the loader sees only samples and reasons:

* a 0-byte file is ignored with a :class:`CorruptSampleWarning` naming it;
* a shard whose last member is cut off (an interrupted copy) keeps its samples; the members
  that run past the end of the file read as :class:`Truncated`, which the loader skips;
* a shard wids cannot index (a header cut or damaged, a compressed tar) is read once, up to the
  damage, with webdataset's sequential tar iterator, and its samples are kept in memory;
* a file that does not start with a tar header is a :class:`DataError`.

A pattern may also be a URL (``http(s)://``, ``s3://``; :mod:`~lzn_core.data._remote`): its
shards are downloaded into a local cache first and opened from there. For such a set the sample
counts come from ``sizes.json`` beside the shards where it lists them, so the shape of the set
(and with it every rank's plan) does not depend on which downloads succeeded on which rank; a
shard that could not be downloaded reads as bad samples (skipped and replaced by the loader).

Sample keys and extensions follow webdataset: key = member path up to the first dot of the file
name, extension = the rest, lower-cased.
"""

from __future__ import annotations

import bisect
import contextlib
import glob
import io
import json
import os
import re
import resource
import struct
import sys
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webdataset.tariterators import group_by_keys, tar_file_expander
from wids.wids import IndexedTarSamples, splitname

from ..errors import DataError, LZNWarning, MissingShardsError
from . import _remote

_FD_MARGIN = 256  # file descriptors left for everything else in the process


class CorruptSampleWarning(LZNWarning):
    """Data was skipped because it could not be read or decoded (shard, key and reason in the message)."""


@dataclass(frozen=True)
class Truncated:
    """A member whose data runs past the end of its (cut off) shard: ``got`` of ``size`` bytes."""

    name: str
    got: int
    size: int


# ----------------------------------------------------------------------------- discovery


def _expand_braces(pattern: str) -> list[str]:
    """Expand ``{000..049}`` ranges (zero-padded to the first bound's width) and ``{a,b}`` lists."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end() :]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = int(rng.group(1)), int(rng.group(2))
        width = len(rng.group(1))
        if hi < lo:
            raise DataError(f"shard pattern {pattern!r}: empty range {{{body}}}")
        parts = [f"{i:0{width}d}" for i in range(lo, hi + 1)]
    else:
        parts = body.split(",")
    return [e for p in parts for e in _expand_braces(head + p + tail)]


def dir_listing(directory: Path) -> str:
    """``"'DIR' contains: a, b, ..."`` (first 20 names) or ``"directory 'DIR' does not exist"``."""
    if not directory.is_dir():
        return f"directory {str(directory)!r} does not exist"
    names = sorted(os.listdir(directory))
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} entries)" if len(names) > 20 else "")
    return f"{str(directory)!r} contains: {shown or '(nothing)'}"


def expand_pattern(pattern: str) -> list[str]:
    """Shard paths for a glob (``data/digits/train-*.tar``) and/or brace pattern, sorted; the
    URLs of a URL pattern (``https://host/train-{000000..000099}.tar``: braces only, not checked
    for existence here).

    Raises:
        DataError: nothing matches, or a brace-listed shard is missing; the message names
            the pattern and lists the directory. A URL pattern with a glob or an unknown scheme.
    """
    if _remote.is_url(pattern):
        problem = _remote.url_pattern_problem(str(pattern))
        if problem:
            raise DataError(problem)
        return sorted(set(_expand_braces(str(pattern))))
    found, missing = [], []
    for p in _expand_braces(str(pattern)):
        if glob.has_magic(p):
            found.extend(glob.glob(p))
        elif os.path.isfile(p):
            found.append(p)
        else:
            missing.append(p)
    directory = Path(os.path.dirname(str(pattern)) or ".")
    if missing and found:
        raise MissingShardsError(
            f"{len(missing)} shard(s) of {pattern!r} are missing ({', '.join(missing[:3])}); {dir_listing(directory)}",
            pattern,
        )
    if not found:
        raise MissingShardsError(f"no shards match {pattern!r}; {dir_listing(directory)}", pattern)
    return sorted(set(found))


# ----------------------------------------------------------------------------- one shard


def _warn(message: str) -> None:
    warnings.warn(message, CorruptSampleWarning, stacklevel=4)


class _Shard:
    """One shard: ``len()`` samples, ``shard[j] -> (key, {ext: bytes | Truncated})``.

    ``file`` is the file read; ``path`` what messages call it (``name``: the URL of a cached shard).
    """

    def __init__(self, file: str, name: str | None = None) -> None:
        self.file = file
        self.path = path = name or file
        self._wids: IndexedTarSamples | None = None
        self._memory: list[tuple[str, dict[str, Any]]] = []
        self._cut: dict[int, Truncated] = {}  # member index -> Truncated (members past the end of the file)
        size = os.path.getsize(self.file)
        if size == 0:
            _warn(f"{path}: empty file (0 bytes); ignored")
            return
        log = io.StringIO()  # wids prints a header it cannot parse to stdout; keep that out of the output
        stream = open(self.file, "rb")  # noqa: SIM115 - owned by the wids reader from here on
        try:
            with contextlib.redirect_stdout(log):
                self._wids = IndexedTarSamples(path=self.file, stream=stream)
        except (struct.error, ValueError, UnicodeDecodeError) as exc:
            stream.close()
            self._read_sequentially(f"{type(exc).__name__}: {exc}")
            return
        for i, (name, offset, length) in enumerate(self._wids.reader.by_index):
            if offset + 512 + length > size:
                got = max(0, size - offset - 512)
                self._cut[i] = Truncated(name, got, length)
        if self._cut:
            first = self._cut[min(self._cut)]
            _warn(
                f"{path}: truncated shard (member {first.name!r} has {first.got} of {first.size} bytes); "
                "using the samples before the damage"
            )

    def _read_sequentially(self, why: str) -> None:
        """Samples up to the damage, read with webdataset's tar iterator (wids could not index: ``why``)."""
        damage: list[Exception] = []

        def stop(exc: Exception) -> bool:
            damage.append(exc)
            return False

        with open(self.file, "rb") as fh:
            members = tar_file_expander([{"url": self.path, "stream": fh}], handler=stop)
            samples = list(group_by_keys(members, handler=stop))
        if not samples and not damage:  # an empty tar archive
            return
        if not samples:
            raise DataError(f"{self.path} is not a readable tar shard ({damage[0]}); convert it again")
        self._memory = [
            (s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")}) for s in samples
        ]
        detail = f" (it stopped at: {str(damage[0]).split(' @ ')[0]})" if damage else ""
        _warn(
            f"{self.path}: wids cannot index this shard ({why}): truncated, damaged or compressed; "
            f"read it sequentially{detail} and kept its {len(samples)} samples in memory"
        )

    def __len__(self) -> int:
        return len(self._wids) if self._wids is not None else len(self._memory)

    def key(self, j: int) -> str:
        if self._wids is None:
            return self._memory[j][0]
        return str(splitname(self._wids.reader.by_index[self._wids.samples[j][0]][0])[0])

    def __getitem__(self, j: int) -> tuple[str, dict[str, Any]]:
        if self._wids is None:
            return self._memory[j]
        sample = self._wids[j]
        fields: dict[str, Any] = {
            ext[1:].lower(): v.getvalue() for ext, v in sample.items() if ext != "__key__"
        }
        if self._cut:
            for i in self._wids.samples[j]:
                if i in self._cut:
                    fields[splitname(self._cut[i].name)[1][1:].lower()] = self._cut[i]
        return sample["__key__"], fields

    def close(self) -> None:
        if self._wids is not None:
            self._wids.close()
            self._wids = None


# ----------------------------------------------------------------------------- the set


def _close_all(shards: list[_Shard | _Unavailable]) -> None:
    for shard in shards:
        shard.close()


def _reserve_file_descriptors(n: int, pattern: str) -> None:
    """Every shard keeps one file open: raise the soft limit when the set needs more."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = n + _FD_MARGIN
    if soft != resource.RLIM_INFINITY and need > soft:
        top = need if hard == resource.RLIM_INFINITY else min(hard, need)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if need > soft:
            raise DataError(
                f"{pattern!r} has {n} shards and each stays open, but only {soft} files may be open "
                f"(ulimit -n); raise the limit or write fewer, larger shards"
            )


@dataclass(frozen=True)
class Resolved:
    """The shards of a pattern, found (local) or fetched into the cache (URLs).

    Attributes:
        names: the shards as the pattern names them (paths or URLs), sorted.
        files: the file read for each (the cached copy of a URL; None: it could not be downloaded).
        declared: each shard's sample count from ``sizes.json`` for a URL set (None: not listed,
            and for local sets, whose tars are what is read).
        failed: ``{index: why}`` of the shards that could not be downloaded.
    """

    names: list[str]
    files: list[str | None]
    declared: list[int | None]
    failed: dict[int, str]


def resolve(
    pattern: str,
    *,
    cache_dir: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    skip_failed: bool = False,
) -> Resolved:
    """Expand ``pattern``; for a URL pattern read ``sizes.json`` beside the shards and fetch every
    shard into the cache (:mod:`~lzn_core.data._remote`; rank ``r`` of ``world_size`` begins its
    downloads at shard ``r * n // world_size``, so the ranks of a node share the work).

    Args:
        skip_failed: a shard that could not be downloaded and whose count ``sizes.json`` gives is
            kept as ``failed`` (its samples are then bad); otherwise it is a :class:`DataError`.

    Raises:
        DataError: see :func:`expand_pattern`; a shard that could not be downloaded (unless
            skipped as above); the cache cannot be written.
    """
    names = expand_pattern(pattern)
    if not _remote.is_url(pattern):
        return Resolved(names, list(names), [None] * len(names), {})
    directory = _remote.cache_dir(cache_dir)
    listed: dict[str, dict[str, Any]] = {}
    unread: list[str] = []
    for d in sorted({_remote.dir_url(u) for u in names}):
        data, problem = _remote.read_optional_json(d + "sizes.json", directory)
        if problem:
            unread.append(problem)
        elif data is not None and not isinstance(data, dict):
            unread.append(f"{d}sizes.json is not a JSON object")
            data = None
        listed[d] = data or {}
    declared: list[int | None] = []
    for u in names:
        n = listed[_remote.dir_url(u)].get(_remote.basename(u))
        declared.append(int(n) if isinstance(n, int) and n >= 0 else None)
    progress = rank == 0 and sys.stderr.isatty()
    fetched = _remote.fetch_all(names, directory, start=rank * len(names) // world_size, progress=progress)
    failed = {i: f"{f.reason}, {f.tries} tries" for i, f in enumerate(fetched) if f.path is None}
    fatal = [i for i in failed if not skip_failed or declared[i] is None]
    if fatal:
        i = fatal[0]
        why = (
            "without its count in a sizes.json beside the shards it cannot be skipped"
            + (f" ({unread[0]})" if unread else "")
            if declared[i] is None
            else "shards are skipped only when reading for training"
        )
        raise DataError(
            f"{len(fatal)} shard(s) of {pattern!r} could not be downloaded, e.g. {names[i]} ({failed[i]}); "
            f"{why}; check the URL and the server (or set LZN_DOWNLOAD_TRIES)"
        )
    if failed:
        shown = "; ".join(f"{names[i]} ({why}, {declared[i]} samples)" for i, why in list(failed.items())[:5])
        _warn(
            f"{len(failed)} shard(s) of {pattern!r} could not be downloaded; their samples are skipped like "
            f"corrupt ones: {shown}" + ("; ..." if len(failed) > 5 else "")
        )
    return Resolved(names, [f.path for f in fetched], declared, failed)


class _Unavailable:
    """A shard that could not be downloaded: no samples (the set counts its ``sizes.json`` ones)."""

    def __init__(self, name: str, reason: str) -> None:
        self.path, self.reason = name, reason

    def __len__(self) -> int:
        return 0

    def key(self, j: int) -> str:
        return f"#{j}"

    def close(self) -> None:
        pass


class ShardSet:
    """The shards of a pattern, opened; global sample id ``g`` in ``0..num_samples-1`` (shard order).

    A URL pattern is fetched into the cache first (:func:`resolve`); its shards' sample counts are
    ``sizes.json``'s where it lists them: a shard that could not be downloaded, or holds fewer
    samples than listed, gives bad samples (``sample`` raises ValueError) at those positions.

    Picklable: a copy in a spawned DataLoader worker reopens the shards on first use (a forked
    worker shares the parent's memory maps).
    """

    def __init__(
        self, pattern: str, *, cache_dir: str | None = None, rank: int = 0, world_size: int = 1
    ) -> None:
        self.pattern = str(pattern)
        found = resolve(self.pattern, cache_dir=cache_dir, rank=rank, world_size=world_size, skip_failed=True)
        self.paths, self.files, self._failed = found.names, found.files, found.failed
        _reserve_file_descriptors(len(self.paths) - len(self._failed), self.pattern)
        self._shards: list[_Shard | _Unavailable] | None = None
        shards = self._opened()
        held = [len(s) for s in shards]
        self.lengths = [n if want is None else want for n, want in zip(held, found.declared, strict=True)]
        self._held = held
        self.starts = [0]
        for n in self.lengths:
            self.starts.append(self.starts[-1] + n)
        if _remote.is_url(self.pattern):
            for i, (n, want) in enumerate(zip(held, found.declared, strict=True)):
                if want is not None and n != want and i not in self._failed:
                    _warn(
                        f"{self.paths[i]}: sizes.json says {want} samples, the tar holds {n}; "
                        f"sizes.json's count is used (the same on every rank): "
                        + (
                            "the missing ones read as bad samples"
                            if n < want
                            else "the extra ones are not read"
                        )
                    )
        else:
            self._check_sizes()

    @property
    def num_samples(self) -> int:
        return self.starts[-1]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_shards", "_closer")} | {"_shards": None}

    def _opened(self) -> list[_Shard | _Unavailable]:
        if self._shards is None:
            first = not hasattr(self, "lengths")
            with warnings.catch_warnings():
                if not first:  # a copy in a spawned worker: the parent process warned already
                    warnings.simplefilter("ignore", CorruptSampleWarning)
                self._shards = [
                    _Shard(f, name) if f is not None else _Unavailable(name, self._failed[i])
                    for i, (f, name) in enumerate(zip(self.files, self.paths, strict=True))
                ]
            self._closer = weakref.finalize(self, _close_all, self._shards)
        return self._shards

    def locate(self, g: int) -> tuple[int, int]:
        """``(shard index, sample index in the shard)`` of global sample ``g``."""
        s = bisect.bisect_right(self.starts, g) - 1
        return s, g - self.starts[s]

    def name(self, g: int) -> tuple[str, str]:
        """``(shard path, sample key)`` of ``g`` (``#j`` for a sample the shard does not hold)."""
        s, j = self.locate(g)
        shard = self._opened()[s]
        return self.paths[s], shard.key(j) if j < len(shard) else f"#{j}"

    def sample(self, g: int) -> tuple[str, dict[str, Any]]:
        """``(key, {ext: bytes | Truncated})`` of global sample ``g``.

        Raises:
            ValueError: the sample is not there (its shard could not be downloaded, or holds fewer
                samples than ``sizes.json`` says); the loader treats it as a bad sample.
        """
        s, j = self.locate(g)
        shard = self._opened()[s]
        if isinstance(shard, _Unavailable):
            raise ValueError(f"shard could not be downloaded ({shard.reason})")
        if j >= len(shard):
            raise ValueError(f"the shard holds {len(shard)} samples, sizes.json says {self.lengths[s]}")
        return shard[j]

    def close(self) -> None:
        """Close every shard (also done when the set is garbage-collected)."""
        if self._shards is not None:
            self._closer()
            self._shards = None

    def _check_sizes(self) -> None:
        check_sizes(self.paths, self.lengths)


def check_sizes(paths: list[str], lengths: list[int]) -> None:
    """Warn where a shard's sample count differs from its directory's ``sizes.json`` (when present)."""
    by_dir: dict[str, dict[str, Any]] = {}
    for path, n in zip(paths, lengths, strict=True):
        d = os.path.dirname(path)
        if d not in by_dir:
            f = os.path.join(d, "sizes.json")
            try:
                by_dir[d] = json.loads(Path(f).read_text()) if os.path.isfile(f) else {}
            except ValueError as exc:
                warnings.warn(f"{f}: not valid JSON ({exc}); ignored", CorruptSampleWarning, stacklevel=3)
                by_dir[d] = {}
        want = by_dir[d].get(os.path.basename(path))
        if want is not None and want != n:
            warnings.warn(
                f"{path}: sizes.json says {want} samples, the tar holds {n}",
                CorruptSampleWarning,
                stacklevel=3,
            )


def iter_shard_samples(
    paths: list[str], on_error: Any, names: list[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Samples of ``paths`` in order through webdataset's streaming stages (``on_error(exc) -> bool``;
    ``names``: what the errors call each file, e.g. the URL of a cached shard)."""
    for path, name in zip(paths, names or paths, strict=True):
        with open(path, "rb") as fh:
            yield from group_by_keys(tar_file_expander([{"url": name, "stream": fh}], handler=on_error))
