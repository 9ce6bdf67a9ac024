"""Shards from URLs: a local HTTP server (and an S3 emulator) started by the test.

The server is ``http.server`` on 127.0.0.1 at a free port, in a thread, serving a directory of
digits shards written by ``write_split`` (60 samples, 6 shards of 10, ``sizes.json``). It counts
the GET requests per file and can answer 404, fail the first k requests (503), cut a transfer
in the middle, or wait before answering.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from paths import ROOT
from tiny_runs import TWO_RANKS

from lzn_core.data import CorruptSampleWarning, _remote, expand_pattern, iter_raw, loader
from lzn_core.errors import DataError, RecipeError
from lzn_core.plugins import get_modality

N, SHARD = 60, 10
SHARDS = [f"train-{i:06d}.tar" for i in range(N // SHARD)]


def _digits(out: Path) -> None:
    from sklearn.datasets import load_digits

    from lzn_core.data.shards import make_sample, png_bytes, write_split

    d = load_digits()
    images = np.rint(d.images[:N] * 255 / 16).astype(np.uint8)
    samples = [
        make_sample(f"d{i:03d}", {"png": png_bytes(images[i]), "txt": "a digit", "cls": int(d.target[i])})
        for i in range(N)
    ]
    write_split(out, "train", samples, shard_size=SHARD, progress=False)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def _fault(self) -> bool:
        """Count the request and answer a fault if one is set for the file; True when answered."""
        srv = self.server
        name = self.path.lstrip("/").split("?")[0]
        with srv.lock:  # type: ignore[attr-defined]
            srv.gets[name] += 1  # type: ignore[attr-defined]
            flaky = srv.flaky.get(name, 0)  # type: ignore[attr-defined]
            if flaky:
                srv.flaky[name] -= 1  # type: ignore[attr-defined]
        time.sleep(srv.delay)  # type: ignore[attr-defined]
        if name in srv.missing:  # type: ignore[attr-defined]
            self.send_error(404)
            return True
        if flaky:
            self.send_error(503)
            return True
        if name in srv.cut and self.command == "GET":  # type: ignore[attr-defined]
            data = (Path(self.directory) / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])  # then the connection closes (HTTP/1.0)
            return True
        return False

    def do_GET(self) -> None:
        if not self._fault():
            super().do_GET()

    def do_HEAD(self) -> None:
        if not self._fault():
            super().do_HEAD()


class Served:
    """The shard directory ``root`` behind ``url``; ``gets`` counts requests per file name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.srv = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(_Handler, directory=str(root))
        )
        self.srv.lock, self.srv.gets, self.srv.delay = threading.Lock(), Counter(), 0.0  # type: ignore[attr-defined]
        self.srv.missing, self.srv.cut, self.srv.flaky = set(), set(), {}  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    @property
    def gets(self) -> Counter:
        return self.srv.gets  # type: ignore[attr-defined]

    def stop(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("remote") / "shards"
    _digits(out)
    return out


@pytest.fixture
def served(digits_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh copy of the shards behind a server; fast retries; the cache in tmp_path."""
    root = tmp_path / "www"
    root.mkdir()
    for f in digits_dir.iterdir():
        (root / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv("LZN_DOWNLOAD_TRIES", "3")
    monkeypatch.setenv("LZN_DOWNLOAD_BACKOFF", "0.01")
    monkeypatch.setenv("WIDS_CACHE", str(tmp_path / "cache"))
    s = Served(root)
    yield s
    s.stop()


SPECS = {"image": get_modality("image"), "label": get_modality("label")}


def _stream(pattern: str, **kw) -> list[list[str]]:
    kw = {"batch_size": 8, "seed": 3, "with_keys": True, "infinite": False, **kw}
    return [b["__key__"] for b in loader(pattern, SPECS, **kw)]


def _remote_pattern(served: Served) -> str:
    return f"{served.url}/train-{{000000..{len(SHARDS) - 1:06d}}}.tar"


def test_url_patterns_expand_braces_and_refuse_globs_and_unknown_schemes() -> None:
    assert expand_pattern("https://h/d/train-{000008..000011}.tar") == [
        f"https://h/d/train-{i:06d}.tar" for i in range(8, 12)
    ]
    assert expand_pattern("s3://b/x/{b,a}.tar") == ["s3://b/x/a.tar", "s3://b/x/b.tar"]
    with pytest.raises(DataError, match="cannot be globbed.*brace range"):
        expand_pattern("https://h/d/train-*.tar")
    with pytest.raises(DataError, match="scheme 'gs' is not supported: use http://, https://, s3://"):
        expand_pattern("gs://b/train-{0..1}.tar")
    from lzn_core.recipe import load_recipe

    with pytest.raises(RecipeError) as err:
        load_recipe(
            "digits_joint.yaml", ["data.train=ftp://h/train-{0..3}.tar", "data.eval=http://h/t-*.tar"]
        )
    text = str(err.value)
    assert "data.train" in text and "scheme 'ftp'" in text
    assert "data.eval" in text and "cannot be globbed" in text
    ok = load_recipe("digits_joint.yaml", ["data.train=https://h/d/train-{000000..000009}.tar"])
    assert ok.data.train.startswith("https://")


def test_http_shards_read_like_local_ones_and_resume_from_the_cache(served: Served, digits_dir: Path) -> None:
    """The same batches as the local copy; each file fetched once; a resumed loader (the server
    stopped) continues exactly from the cache."""
    pattern = _remote_pattern(served)
    local = _stream(f"{digits_dir}/train-*.tar")
    whole = _stream(pattern)
    assert whole == local and len(whole) == N // 8
    assert all(served.gets[name] == 1 for name in SHARDS) and served.gets["sizes.json"] == 1
    cache = Path(os.environ["WIDS_CACHE"])
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        os.path.basename(_remote.local_name(f"{served.url}/{n}", str(cache))) for n in [*SHARDS, "sizes.json"]
    )  # nothing else: no partial files, no lock files left behind
    ld = loader(pattern, SPECS, batch_size=8, seed=3, with_keys=True, infinite=False)
    it = iter(ld)
    head = [next(it)["__key__"] for _ in range(3)]
    state = ld.state().model_dump()
    served.stop()  # from here on, any download attempt fails
    with_keys = loader(
        pattern, SPECS, batch_size=8, seed=3, with_keys=True, infinite=False, resume_from=state
    )
    tail = [b["__key__"] for b in with_keys]
    assert head + tail == whole
    assert _stream(pattern, num_workers=2) == whole  # DataLoader workers read the cached files too
    # brace lists and ranges name the same files as the glob of the local copy
    assert [os.path.basename(u) for u in expand_pattern(pattern)] == SHARDS


def test_failed_downloads_are_retried_then_skipped_and_counted(served: Served) -> None:
    """404 and a transfer cut in the middle: 3 tries each, then their 2 x 10 samples are bad
    samples (replaced, counted); a shard that fails twice then answers is used."""
    served.srv.missing.add(SHARDS[1])  # type: ignore[attr-defined]
    served.srv.cut.add(SHARDS[4])  # type: ignore[attr-defined]
    served.srv.flaky[SHARDS[2]] = 2  # type: ignore[attr-defined]
    with pytest.warns(CorruptSampleWarning) as record:
        ld = loader(_remote_pattern(served), SPECS, batch_size=8, seed=3, with_keys=True, infinite=False)
        batches = [b["__key__"] for b in ld]
    assert [served.gets[n] for n in SHARDS] == [1, 3, 3, 1, 3, 1]
    text = "\n".join(str(w.message) for w in record)
    assert "2 shard(s) of" in text and "could not be downloaded" in text
    assert "train-000001.tar (HTTP 404 Not Found, 3 tries, 10 samples)" in text
    assert "train-000004.tar (ConnectionError: transfer cut short" in text
    assert ld.num_samples == N and len(batches) == N // 8 and all(len(b) == 8 for b in batches)
    seen = {k.split("/")[0] for b in batches for k in b}
    assert SHARDS[1] not in seen and SHARDS[4] not in seen and SHARDS[2] in seen
    order = np.random.default_rng([3, 0]).permutation(N)[: (N // 8) * 8]
    assert ld.skipped == sum(1 for g in order if g // SHARD in (1, 4))
    assert "shard could not be downloaded (HTTP 404" in text  # the first skipped sample's warning
    cache = Path(os.environ["WIDS_CACHE"])
    assert not [p for p in cache.iterdir() if ".part-" in p.name or p.name.endswith(".lock")]
    assert not [p for p in cache.iterdir() if p.name.endswith(("000001.tar", "000004.tar"))]


def test_without_sizes_json_counts_come_from_the_tars_and_a_failure_is_an_error(served: Served) -> None:
    (served.root / "sizes.json").unlink()
    pattern = _remote_pattern(served)
    assert len(_stream(pattern)) == N // 8
    assert served.gets["sizes.json"] == 1  # a 404 is not retried for sizes.json, and is cached
    served.srv.missing.add(SHARDS[3])  # type: ignore[attr-defined]
    with pytest.raises(
        DataError, match=r"1 shard\(s\) of .* could not be downloaded, e.g. .*train-000003.tar "
    ):
        loader(
            f"{served.url}/train-{{000000..000005}}.tar",
            SPECS,
            batch_size=8,
            cache_dir=str(served.root / "c2"),
        )
    assert served.gets["sizes.json"] == 2  # the second cache asked once more


def test_ranks_that_disagree_about_a_shard_take_the_same_steps(served: Served, tmp_path: Path) -> None:
    """Two "nodes" with their own caches: node 1 holds shard 2 from earlier, node 0 cannot download
    it now. The set's shape comes from sizes.json, so both ranks plan the same steps with full
    batches; only rank 0 skips (and replaces) samples."""
    pattern = _remote_pattern(served)
    loader(pattern, SPECS, batch_size=4, cache_dir=str(tmp_path / "node1"))  # fills node 1's cache
    served.srv.missing.add(SHARDS[2])  # type: ignore[attr-defined]
    runs = []
    for rank, cache in ((0, "node0"), (1, "node1")):
        with pytest.warns(CorruptSampleWarning) if rank == 0 else _no_warning():
            ld = loader(
                pattern, SPECS, batch_size=4, rank=rank, world_size=2, seed=5, infinite=False,
                with_keys=True, cache_dir=str(tmp_path / cache),
            )  # fmt: skip
            runs.append((ld, [b["__key__"] for b in ld]))
    (ld0, b0), (ld1, b1) = runs
    assert ld0.steps_per_epoch == ld1.steps_per_epoch == N // 8 == len(b0) == len(b1)
    assert all(len(x) == len(y) == 4 for x, y in zip(b0, b1, strict=True))
    assert ld0.skipped > 0 and ld1.skipped == 0
    assert not any(k.startswith(SHARDS[2]) for b in b0 for k in b)


class _no_warning:
    def __enter__(self):
        import warnings

        self.cm = warnings.catch_warnings()
        self.cm.__enter__()
        warnings.simplefilter("error", CorruptSampleWarning)

    def __exit__(self, *exc):
        self.cm.__exit__(*exc)


def _fetcher(go, urls: list[str], cache: str, out) -> None:
    go.wait()
    out.put([f.path for f in _remote.fetch_all(urls, cache)])


def test_processes_sharing_a_cache_download_each_shard_once(served: Served, tmp_path: Path) -> None:
    """Three processes (the ranks of a node) fetch the same 6 shards into one cache at the same
    moment, from a server that takes 0.5 s per answer: each shard is downloaded once (the others
    wait on its lock, then read it), and every process gets complete files."""
    import multiprocessing

    served.srv.delay = 0.5  # type: ignore[attr-defined]
    ctx = multiprocessing.get_context("fork")  # no re-import: the three start within milliseconds
    go, out = ctx.Event(), ctx.Queue()
    urls = [f"{served.url}/{n}" for n in SHARDS]
    procs = [ctx.Process(target=_fetcher, args=(go, urls, str(tmp_path / "shared"), out)) for _ in range(3)]
    for p in procs:
        p.start()
    go.set()
    try:
        got = [out.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            p.kill()
    assert [served.gets[n] for n in SHARDS] == [1] * len(SHARDS)
    for paths in got:
        for path, name in zip(paths, SHARDS, strict=True):
            assert (
                hashlib.sha256(Path(path).read_bytes()).digest()
                == hashlib.sha256((served.root / name).read_bytes()).digest()
            )


def test_iter_raw_and_map_read_urls(served: Served, digits_dir: Path, tmp_path: Path) -> None:
    from lzn_core.data.convert import map_split

    pattern = _remote_pattern(served)
    assert list(iter_raw(pattern, ("cls",))) == list(iter_raw(f"{digits_dir}/train-*.tar", ("cls",)))
    meta = map_split(pattern, tmp_path / "mapped", lambda key, f: {"n.txt": key.encode()}, shard_size=30)
    assert meta["splits"] == {"train": N}
    served.srv.missing.add(SHARDS[0])  # type: ignore[attr-defined]
    with pytest.raises(DataError, match="train-000000.tar"):  # prepare() must see the same data everywhere
        list(iter_raw(pattern, ("cls",), cache_dir=str(tmp_path / "empty")))


def test_lzn_validate_heads_the_first_and_last_url(served: Served, capsys: pytest.CaptureFixture) -> None:
    from lzn_core.cli import main

    good = f"data.train={served.url}/train-{{000000..000005}}.tar"
    assert main(["validate", "digits_joint.yaml", good, "data.eval=null"]) == 0
    assert served.gets["train-000000.tar"] == 1 and served.gets["train-000005.tar"] == 1
    assert sum(served.gets.values()) == 2  # HEAD only, nothing downloaded
    bad = f"data.train={served.url}/train-{{000000..000009}}.tar"
    assert main(["validate", "digits_joint.yaml", bad, "data.eval=null"]) == 1
    err = capsys.readouterr().err
    assert f"data.train: {served.url}/train-000009.tar: HTTP 404" in err and "10 shards in the pattern" in err


# ----------------------------------------------------------------------------- s3:// through moto


def test_s3_shards_through_a_local_s3_emulator(digits_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """moto's S3 server on a free port; boto3 pointed at it by AWS_ENDPOINT_URL_S3 (as for MinIO)."""
    pytest.importorskip("boto3")
    server = pytest.importorskip("moto.server")
    import boto3

    moto = server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        env = {
            "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "LZN_DOWNLOAD_TRIES": "2",
            "LZN_DOWNLOAD_BACKOFF": "0.01",
        }
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="shards")
        for f in digits_dir.iterdir():
            if f.name != SHARDS[5]:  # listed in sizes.json, absent from the bucket
                s3.upload_file(str(f), "shards", f"digits/{f.name}")
        pattern = "s3://shards/digits/train-{000000..000005}.tar"
        with pytest.warns(CorruptSampleWarning) as record:
            ld = loader(
                pattern, SPECS, batch_size=8, seed=3, with_keys=True, infinite=False, cache_dir=str(tmp_path)
            )
            got = [b["__key__"] for b in ld]
        assert "1 shard(s) of" in str(record[0].message)
        assert "train-000005.tar (S3 NoSuchKey, 2 tries, 10 samples)" in str(record[0].message)
        assert ld.num_samples == N and len(got) == N // 8 and ld.skipped > 0
        assert not any(k.startswith(SHARDS[5]) for b in got for k in b)
        assert _remote.head("s3://shards/digits/train-000000.tar") is None
        assert _remote.head("s3://shards/digits/nope.tar") == "S3 404"
    finally:
        moto.stop()


# ----------------------------------------------------------------------------- 2 ranks of recipes/train.py

RUN = TWO_RANKS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_train_from_http_with_a_missing_shard(
    served: Served, digits_dir: Path, tmp_path: Path
) -> None:
    """recipes/train.py on 2 gloo ranks with data.train an http:// pattern whose shard 5 answers
    404: both ranks run the 6 steps (equal batches: the anchor all-gather would fail otherwise),
    the skipped samples are counted in metrics.jsonl, and the ranks, sharing one cache, downloaded
    every good shard once."""
    served.srv.missing.add(SHARDS[5])  # type: ignore[attr-defined]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONWARNINGS": ""}
    port = _free_port()
    data = [f"data.train={_remote_pattern(served)}", f"data.eval={digits_dir}/train-*.tar"]
    procs = []
    for rank in range(2):
        rank_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}
        rank_env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        cmd = [
            sys.executable,
            str(ROOT / "recipes" / "train.py"),
            "--recipe",
            "digits_joint",
            "--output",
            "run",
        ]
        procs.append(
            subprocess.Popen(
                cmd + RUN + data,
                env=rank_env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=420)[0])
    finally:
        for p in procs:
            p.kill()
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, text[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    expected, total = [], 0
    for step in range(6):  # the loader's plan: 60 samples, global batch 16, seed 0
        order = np.random.default_rng([0, step // 3]).permutation(N)
        total += sum(1 for g in order[(step % 3) * 16 : (step % 3 + 1) * 16] if g // SHARD == 5)
        expected.append(total)
    assert [r["skipped_samples"] for r in rows] == expected and total > 0
    assert [served.gets[n] for n in SHARDS[:5]] == [1] * 5
    assert "could not be downloaded" in "".join(outputs)
