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
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webdataset.tariterators import group_by_keys, tar_file_expander
from wids.wids import IndexedTarSamples, splitname

from ..errors import DataError, LZNWarning, MissingShardsError

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
    """Shard paths for a glob (``data/digits/train-*.tar``) and/or brace pattern, sorted.

    Raises:
        DataError: nothing matches, or a brace-listed shard is missing; the message names
            the pattern and lists the directory.
    """
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
    """One shard: ``len()`` samples, ``shard[j] -> (key, {ext: bytes | Truncated})``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._wids: IndexedTarSamples | None = None
        self._memory: list[tuple[str, dict[str, Any]]] = []
        self._cut: dict[int, Truncated] = {}  # member index -> Truncated (members past the end of the file)
        size = os.path.getsize(path)
        if size == 0:
            _warn(f"{path}: empty file (0 bytes); ignored")
            return
        log = io.StringIO()  # wids prints a header it cannot parse to stdout; keep that out of the output
        stream = open(path, "rb")  # noqa: SIM115 - owned by the wids reader from here on
        try:
            with contextlib.redirect_stdout(log):
                self._wids = IndexedTarSamples(path=path, stream=stream)
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

        with open(self.path, "rb") as fh:
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


def _close_all(shards: list[_Shard]) -> None:
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


class ShardSet:
    """The shards of a pattern, opened; global sample id ``g`` in ``0..num_samples-1`` (shard order).

    Picklable: a copy in a spawned DataLoader worker reopens the shards on first use (a forked
    worker shares the parent's memory maps).
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = str(pattern)
        self.paths = expand_pattern(self.pattern)
        _reserve_file_descriptors(len(self.paths), self.pattern)
        self._shards: list[_Shard] | None = None
        shards = self._opened()
        self.lengths = [len(s) for s in shards]
        self.starts = [0]
        for n in self.lengths:
            self.starts.append(self.starts[-1] + n)
        self._check_sizes()

    @property
    def num_samples(self) -> int:
        return self.starts[-1]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_shards", "_closer")} | {"_shards": None}

    def _opened(self) -> list[_Shard]:
        if self._shards is None:
            first = not hasattr(self, "lengths")
            with warnings.catch_warnings():
                if not first:  # a copy in a spawned worker: the parent process warned already
                    warnings.simplefilter("ignore", CorruptSampleWarning)
                self._shards = [_Shard(p) for p in self.paths]
            self._closer = weakref.finalize(self, _close_all, self._shards)
        return self._shards

    def locate(self, g: int) -> tuple[int, int]:
        """``(shard index, sample index in the shard)`` of global sample ``g``."""
        s = bisect.bisect_right(self.starts, g) - 1
        return s, g - self.starts[s]

    def name(self, g: int) -> tuple[str, str]:
        """``(shard path, sample key)`` of ``g``."""
        s, j = self.locate(g)
        return self.paths[s], self._opened()[s].key(j)

    def sample(self, g: int) -> tuple[str, dict[str, Any]]:
        """``(key, {ext: bytes | Truncated})`` of global sample ``g``."""
        s, j = self.locate(g)
        return self._opened()[s][j]

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


def iter_shard_samples(paths: list[str], on_error: Any) -> Iterator[dict[str, Any]]:
    """Samples of ``paths`` in order through webdataset's streaming stages (``on_error(exc) -> bool``)."""
    for path in paths:
        with open(path, "rb") as fh:
            yield from group_by_keys(tar_file_expander([{"url": path, "stream": fh}], handler=on_error))
