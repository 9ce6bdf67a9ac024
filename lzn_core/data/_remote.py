"""Shards behind URLs (``http://``, ``https://``, ``s3://``), fetched once into a local cache.

The loader reads shards by random access (wids' indexed reader over a memory map), so a remote
shard is downloaded whole into a local cache directory and read from there: random access,
DataLoader workers and exact resume work as for local files, and a resumed run reads the cache
without touching the network.

* **Where**: ``cache_dir=`` or the ``WIDS_CACHE`` environment variable (wids' own; default
  ``/tmp/_wids_cache``). A file is named by wids' ``DefaultLocalname`` (the URL, percent-quoted),
  so a cache that wids' ``ShardListDataset`` filled is reused, and the other way round. A cached
  file is used as it is: delete the cache when the remote shards change.
* **Once per node**: a download runs under wids' lock file (``ULockFile``: ``flock`` on
  ``NAME.lock``), so the ranks of a node fetch each shard once (the others wait, then find it);
  it is written to a temporary file in the cache and renamed onto its name only when complete
  (its length checked against ``Content-Length``), so no reader ever sees a partial shard.
* **Failures**: a download that fails (an HTTP error, a refused or reset connection, a transfer
  cut short, a timeout) is tried again, ``LZN_DOWNLOAD_TRIES`` times in all (default 5), waiting
  ``LZN_DOWNLOAD_BACKOFF`` seconds (default 1) doubled after each try; then it is given up (the
  caller decides what that means). An error writing the cache (disk full, no permission) is not
  retried: it is a :class:`~lzn_core.errors.DataError` at once.
* **s3://** uses boto3 (``pip install 'lzn[s3]'``) with its usual configuration: credentials,
  region, and ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` for S3-compatible stores (MinIO,
  Ceph, R2).

URL patterns expand brace ranges and lists (``train-{000000..000099}.tar``) like local ones;
there is no glob (HTTP cannot list a directory).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from wids.wids import DefaultLocalname
from wids.wids_dl import ULockFile

from ..errors import DataError

SCHEMES = ("http", "https", "s3")
"""URL schemes a shard pattern may use (anything else with ``://`` is refused)."""

DEFAULT_CACHE = "/tmp/_wids_cache"  # wids' default, so both share one cache
_CHUNK = 1 << 20
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_MAX_NAME = 200  # file names longer than this (of 255 allowed) are hashed


def is_url(pattern: str) -> bool:
    """Whether ``pattern`` is a URL (``scheme://...``) rather than a local path."""
    return _URL.match(str(pattern)) is not None


def url_pattern_problem(pattern: str) -> str | None:
    """What is wrong with a URL pattern (one line), or None. Local paths are not checked here."""
    m = _URL.match(pattern)
    if m is None:
        return None
    scheme = m.group(1).lower()
    if scheme not in SCHEMES:
        return f"URL scheme {scheme!r} is not supported: use {', '.join(s + '://' for s in SCHEMES)} or a local path"
    parts = urlsplit(pattern)
    if not parts.netloc:
        return f"{pattern!r} has no host (or bucket) after {scheme}://"
    if glob.has_magic(parts.path):
        return (
            f"{pattern!r}: a URL cannot be globbed (a server does not list its files); "
            "name the shards with a brace range, e.g. train-{000000..000099}.tar"
        )
    if not parts.path.strip("/"):
        return f"{pattern!r} names no file"
    return None


def settings() -> tuple[int, float, float]:
    """``(tries, backoff seconds, socket timeout seconds)`` from the environment."""

    def number(name: str, default: float, low: float) -> float:
        raw = os.environ.get(name)
        try:
            value = float(raw) if raw else default
        except ValueError:
            raise DataError(f"{name}={raw!r} is not a number") from None
        if value < low:
            raise DataError(f"{name}={raw!r} must be >= {low:g}")
        return value

    return (
        int(number("LZN_DOWNLOAD_TRIES", 5, 1)),
        number("LZN_DOWNLOAD_BACKOFF", 1.0, 0.0),
        number("LZN_DOWNLOAD_TIMEOUT", 60.0, 0.1),
    )


def cache_dir(explicit: str | os.PathLike[str] | None = None) -> str:
    """The cache directory: ``explicit``, else ``$WIDS_CACHE``, else ``/tmp/_wids_cache``."""
    return str(explicit or os.environ.get("WIDS_CACHE") or DEFAULT_CACHE)


def local_name(url: str, directory: str) -> str:
    """The cache file of ``url``: wids' name for it (the URL percent-quoted), hashed when too long."""
    path = DefaultLocalname(directory)(url)
    if len(os.path.basename(path)) > _MAX_NAME:
        digest = hashlib.sha256(url.encode()).hexdigest()[:32]
        path = os.path.join(directory, f"{digest}__{os.path.basename(urlsplit(url).path)[-100:]}")
    return path


def dir_url(url: str) -> str:
    """``scheme://host/a/b/`` of ``scheme://host/a/b/name?query``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path.rsplit('/', 1)[0]}/"


def basename(url: str) -> str:
    """The file name of a URL's path (``train-000000.tar``)."""
    return os.path.basename(urlsplit(url).path)


# ----------------------------------------------------------------------------- one transfer


class _NotFound(Exception):
    """The server says the object does not exist (HTTP 403/404/410, S3 NoSuchKey)."""


@dataclass
class _Stream:
    read: Callable[[int], bytes]
    length: int | None
    close: Callable[[], None]


_s3_lock = threading.Lock()
_s3_clients: dict[tuple[Any, ...], Any] = {}


def _s3_client(timeout: float) -> Any:
    """One boto3 S3 client per process and endpoint (clients are thread-safe); :func:`fetch` retries."""
    pid = (os.getpid(), timeout, os.environ.get("AWS_ENDPOINT_URL_S3"), os.environ.get("AWS_ENDPOINT_URL"))
    with _s3_lock:
        if pid not in _s3_clients:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise DataError("s3:// shards need boto3: pip install 'lzn[s3]'") from None
            config = Config(retries={"max_attempts": 1}, connect_timeout=timeout, read_timeout=timeout)
            _s3_clients[pid] = boto3.session.Session().client("s3", config=config)
        return _s3_clients[pid]


def _open(url: str, timeout: float, method: str = "GET") -> _Stream:
    """Open ``url`` for reading (or only ask for it, ``method="HEAD"``); raises _NotFound or any error."""
    parts = urlsplit(url)
    if parts.scheme == "s3":
        from botocore.exceptions import ClientError

        client = _s3_client(timeout)
        bucket, key = parts.netloc, parts.path.lstrip("/")
        try:
            if method == "HEAD":
                head = client.head_object(Bucket=bucket, Key=key)
                return _Stream(lambda n: b"", int(head["ContentLength"]), lambda: None)
            obj = client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "403", "NoSuchKey", "NoSuchBucket", "AccessDenied"):
                raise _NotFound(f"S3 {code}") from exc
            raise
        body = obj["Body"]
        return _Stream(body.read, int(obj["ContentLength"]), body.close)
    request = urllib.request.Request(url, method=method, headers={"User-Agent": "lzn"})
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - the scheme was checked
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code in (403, 404, 410):
            raise _NotFound(f"HTTP {exc.code} {exc.reason}") from exc
        raise
    length = resp.headers.get("Content-Length")
    return _Stream(resp.read, int(length) if length and length.isdigit() else None, resp.close)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc.reason, str):
        exc = exc.reason
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _transfer(url: str, dest: str, timeout: float) -> None:
    """One attempt: ``url`` -> ``dest`` via a temporary file renamed when complete.

    Raises:
        _NotFound: the object does not exist.
        DataError: the cache cannot be written (not to be retried).
        Exception: anything else from the network (to be retried).
    """
    tmp = f"{dest}.part-{os.getpid()}-{threading.get_ident()}"
    stream = _open(url, timeout)
    got = 0
    try:
        try:
            fh = open(tmp, "wb")  # noqa: SIM115 - closed below, removed on failure
        except OSError as exc:
            raise DataError(f"cannot write the shard cache {os.path.dirname(dest)}: {exc}") from exc
        with fh:
            while True:
                chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                try:
                    fh.write(chunk)
                except OSError as exc:
                    raise DataError(f"cannot write the shard cache {os.path.dirname(dest)}: {exc}") from exc
                got += len(chunk)
        if stream.length is not None and got != stream.length:
            raise ConnectionError(f"transfer cut short: {got} of {stream.length} bytes")
        os.replace(tmp, dest)
    finally:
        stream.close()
        if os.path.exists(tmp):
            os.unlink(tmp)


@dataclass(frozen=True)
class Fetched:
    """One URL's outcome: ``path`` (the cached file) or ``None`` with ``reason``; ``tries`` made here."""

    url: str
    path: str | None
    reason: str = ""
    tries: int = 0
    missing: bool = False  # the server says it does not exist


def fetch(
    url: str,
    directory: str,
    *,
    tries: int | None = None,
    backoff: float | None = None,
    timeout: float | None = None,
    absent_ok: bool = False,
) -> Fetched:
    """``url`` in the cache ``directory``, downloaded unless cached; never raises for the network.

    Args:
        url: an ``http(s)://`` or ``s3://`` URL.
        directory: the cache directory (created if missing).
        tries, backoff, timeout: override :func:`settings`.
        absent_ok: a "not found" answer ends at once (``missing=True``) instead of being retried
            (for optional files such as ``sizes.json``).

    Returns:
        a :class:`Fetched`: the cached file, or why it could not be had after ``tries`` attempts.

    Raises:
        DataError: the cache cannot be written, or boto3 is missing for ``s3://``.
    """
    env_tries, env_backoff, env_timeout = settings()
    tries = env_tries if tries is None else tries
    backoff = env_backoff if backoff is None else backoff
    timeout = env_timeout if timeout is None else timeout
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the shard cache {directory}: {exc}") from exc
    dest = local_name(url, directory)
    if os.path.isfile(dest):
        return Fetched(url, dest)
    with ULockFile(dest + ".lock"):  # the ranks of a node: one downloads, the others wait
        if os.path.isfile(dest):
            return Fetched(url, dest)
        reason, missing = "", False
        for attempt in range(1, tries + 1):
            try:
                _transfer(url, dest, timeout)
                return Fetched(url, dest, tries=attempt)
            except DataError:
                raise
            except _NotFound as exc:
                reason, missing = str(exc), True
                if absent_ok:
                    return Fetched(url, None, reason, attempt, missing=True)
            except Exception as exc:  # the network's many error types: all are retried
                reason, missing = _reason(exc), False
            if attempt < tries:
                time.sleep(min(backoff * 2 ** (attempt - 1), 60.0))
        return Fetched(url, None, reason, tries, missing)


def fetch_all(
    urls: Sequence[str], directory: str, *, start: int = 0, threads: int = 8, progress: bool = False
) -> list[Fetched]:
    """:func:`fetch` every URL (``threads`` at a time), in ``urls`` order; the downloads begin at
    index ``start`` and wrap, so the ranks of a node (each starting elsewhere) fetch different
    shards at once and then find each other's in the cache."""
    n = len(urls)
    order = [(start + i) % n for i in range(n)] if n else []
    results: dict[int, Fetched] = {}
    bar = None
    if progress and n:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="shards", unit="shard", leave=False)
    with ThreadPoolExecutor(max_workers=max(1, min(threads, n or 1))) as pool:
        futures = {pool.submit(fetch, urls[i], directory): i for i in order}
        try:
            for fut in futures:
                results[futures[fut]] = fut.result()
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    return [results[i] for i in range(n)]


def head(url: str, timeout: float = 10.0) -> str | None:
    """One HEAD request (``head_object`` for S3): None when the object is there, else why not."""
    try:
        _open(url, timeout, method="HEAD").close()
    except DataError as exc:
        return str(exc)
    except _NotFound as exc:
        return str(exc)
    except Exception as exc:
        return _reason(exc)
    return None


def read_optional_json(url: str, directory: str) -> tuple[Any, str | None]:
    """``(parsed JSON or None, problem or None)`` of an optional remote file (``sizes.json``).

    Cached like a shard; a "not found" answer is cached too (an empty ``NAME.absent`` file), so a
    resumed run needs no network. Not found: ``(None, None)``. Unreachable after the retries, or
    not JSON: ``(None, why)``.
    """
    import json

    absent = local_name(url, directory) + ".absent"
    if os.path.isfile(absent):
        return None, None
    got = fetch(url, directory, absent_ok=True)
    if got.path is None:
        if got.missing:
            with contextlib.suppress(OSError):
                open(absent, "wb").close()
            return None, None
        return None, f"{url}: {got.reason} (after {got.tries} tries)"
    try:
        with open(got.path, encoding="utf-8") as fh:
            return json.load(fh), None
    except ValueError as exc:
        return None, f"{url} is not valid JSON ({exc})"
