"""The shard loader: epochs, rank split, workers, exact resume, corrupt samples, bad patterns."""

from __future__ import annotations

import io
import json
import re
import tarfile
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict

from lzn_core.data import CorruptSampleWarning, LoaderState, expand_pattern, iter_raw, loader
from lzn_core.data.shards import make_sample, png_bytes, write_split
from lzn_core.errors import DataError
from lzn_core.modality import ModalitySpec

N = 37  # samples, in shards of 10: 10 + 10 + 10 + 7


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _decode_png(data: bytes) -> torch.Tensor:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except OSError as exc:  # corrupt input is a ValueError (anything else is a plugin bug)
        raise ValueError(f"png: {exc}") from None
    return torch.from_numpy(np.asarray(img).copy()).float()


def _decode_cls(data: bytes) -> int:
    return int(data.decode("ascii"))


def _spec(name: str, keys: tuple[str, ...], decode) -> ModalitySpec:
    return ModalitySpec(name, _Cfg, lambda c, q: None, lambda c, q: None, keys, decode)


IMAGE = _spec("image", ("jpg", "png"), _decode_png)
LABEL = _spec("label", ("cls",), _decode_cls)


def make_shards(out: Path, n: int = N, shard_size: int = 10, bad: dict[int, dict] | None = None) -> str:
    """Shards whose sample i has cls=i and a 2x2 png filled with i; ``bad`` overrides fields."""
    samples = []
    for i in range(n):
        key, fields = make_sample(
            f"s{i:04d}", {"png": png_bytes(np.full((2, 2), i, np.uint8)), "txt": f"caption {i}", "cls": i}
        )
        fields.update((bad or {}).get(i, {}))
        samples.append((key, {k: v for k, v in fields.items() if v is not None}))
    write_split(out, "train", samples, shard_size=shard_size, progress=False)
    return str(out / "train-*.tar")


@pytest.fixture(scope="module")
def pattern(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_shards(tmp_path_factory.mktemp("shards"))


def ids(batches) -> list[list[int]]:
    return [b["label"].tolist() for b in batches]


def test_batches_shapes_and_one_epoch_covers_the_set(pattern: str) -> None:
    ld = loader(pattern, {"image": IMAGE, "label": LABEL}, batch_size=8, infinite=False, drop_last=False)
    assert ld.num_samples == N and len(ld) == 5
    batches = list(ld)
    assert [len(b["label"]) for b in batches] == [8, 8, 8, 8, 5]
    b = batches[0]
    assert b["image"].shape == (8, 2, 2) and b["label"].dtype == torch.int64
    assert torch.equal(b["image"][:, 0, 0], b["label"].float())  # png and cls of the same sample
    seen = sum(ids(batches), [])
    assert sorted(seen) == list(range(N)) and seen != list(range(N))  # each once, shuffled
    assert ld.state().epoch == 1 and ld.state().step == 0
    assert sorted(sum(ids(ld), [])) == list(range(N)) and ld.state().epoch == 2  # next epoch on re-iteration


def test_shuffle_is_seeded_by_seed_and_epoch(pattern: str) -> None:
    def epoch_ids(**kw) -> list[int]:
        return sum(ids(loader(pattern, {"label": LABEL}, batch_size=37, infinite=False, **kw)), [])

    assert epoch_ids(seed=1, epoch=3) == epoch_ids(seed=1, epoch=3)
    assert epoch_ids(seed=1, epoch=3) != epoch_ids(seed=1, epoch=4)
    assert epoch_ids(seed=1, epoch=3) != epoch_ids(seed=2, epoch=3)
    assert epoch_ids(shuffle=False) == list(range(N))


def test_only_declared_keys_are_decoded(tmp_path: Path) -> None:
    pat = make_shards(tmp_path, n=12, bad={i: {"png": b"broken"} for i in range(12)})
    ld = loader(pat, {"label": LABEL}, batch_size=4, infinite=False)
    assert sorted(sum(ids(ld), [])) == list(range(12)) and ld.skipped == 0


def test_first_present_shard_key_is_used(tmp_path: Path) -> None:
    jpg = io.BytesIO()
    Image.fromarray(np.full((2, 2), 99, np.uint8)).save(jpg, format="JPEG", quality=100)
    pat = make_shards(tmp_path, n=4, bad={1: {"jpg": jpg.getvalue(), "png": None}})
    batch = next(iter(loader(pat, {"image": IMAGE, "label": LABEL}, batch_size=4, shuffle=False)))
    assert batch["image"][:, 0, 0].tolist() == [0, 99, 2, 3]


def test_two_ranks_split_each_global_batch(pattern: str) -> None:
    kw = {"infinite": False, "seed": 5, "epoch": 2}
    whole = ids(loader(pattern, {"label": LABEL}, batch_size=8, **kw))
    r0 = ids(loader(pattern, {"label": LABEL}, batch_size=4, rank=0, world_size=2, **kw))
    r1 = ids(loader(pattern, {"label": LABEL}, batch_size=4, rank=1, world_size=2, **kw))
    assert len(whole) == len(r0) == len(r1) == 4
    # rank r = rows r*4:(r+1)*4 of global batch k
    assert all(a + b == w for a, b, w in zip(r0, r1, whole, strict=True))
    assert not set(sum(r0, [])) & set(sum(r1, []))


def test_ranks_cover_the_set_without_drop_last(pattern: str) -> None:
    kw = {"infinite": False, "drop_last": False, "world_size": 3}
    per_rank = [ids(loader(pattern, {"label": LABEL}, batch_size=5, rank=r, **kw)) for r in range(3)]
    assert [len(x) for x in per_rank] == [3, 3, 3]  # same step count on every rank
    assert [len(x[-1]) for x in per_rank] == [3, 3, 3]  # last global batch 7 padded to 9
    assert set(sum(sum(per_rank, []), [])) == set(range(N))


def test_workers_give_the_same_stream(pattern: str) -> None:
    kw = {"batch_size": 4, "seed": 3}
    base = ids(islice(loader(pattern, {"image": IMAGE, "label": LABEL}, **kw), 12))
    ld = loader(pattern, {"image": IMAGE, "label": LABEL}, num_workers=2, **kw)
    assert ids(islice(ld, 12)) == base  # 12 steps: crosses the epoch boundary (9 per epoch)
    assert ld.state().epoch == 1 and ld.state().step == 3


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_equals_uninterrupted_stream(pattern: str, num_workers: int) -> None:
    kw = {"batch_size": 4, "seed": 7, "num_workers": num_workers}
    full = ids(islice(loader(pattern, {"label": LABEL}, **kw), 20))
    first = loader(pattern, {"label": LABEL}, **kw)
    assert ids(islice(first, 7)) == full[:7]
    saved = json.loads(json.dumps(first.state().model_dump()))  # as stored in a checkpoint
    assert saved["epoch"] == 0 and saved["step"] == 7 and saved["samples_seen"] == 28
    # the state's seed wins over the argument
    resumed = loader(pattern, {"label": LABEL}, **{**kw, "seed": 0}, resume_from=saved)
    assert ids(islice(resumed, 13)) == full[7:20]
    assert resumed.state().epoch == 2 and resumed.state().step == 2


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2), (2, 4)])
def test_resume_on_another_number_of_ranks_continues_the_global_stream(
    pattern: str, before: int, after: int
) -> None:
    """A state saved by ``before`` ranks, loaded by ``after`` ranks of the same global batch (8):
    the ranks' rows of each global batch, in rank order, are the uninterrupted stream's, across
    the epoch boundary (4 batches per epoch)."""

    def stream(world: int, steps: int, state: dict | None = None) -> list[list[int]]:
        kw = {"batch_size": 8 // world, "world_size": world, "seed": 3, "resume_from": state}
        per_rank = [ids(islice(loader(pattern, {"label": LABEL}, rank=r, **kw), steps)) for r in range(world)]
        return [sum((rows[k] for rows in per_rank), []) for k in range(steps)]

    full = stream(before, 10)
    first = loader(pattern, {"label": LABEL}, batch_size=8 // before, world_size=before, seed=3)
    assert len(ids(islice(first, 3))) == 3
    saved = json.loads(json.dumps(first.state().model_dump()))  # rank 0's, as stored in a checkpoint
    assert stream(after, 7, saved) == full[3:]
    assert full[4] != full[0]  # the next epoch is another permutation


def test_resume_refuses_a_different_batch_or_data_set(pattern: str, tmp_path: Path) -> None:
    state = LoaderState(epoch=1, step=2, seed=0, global_batch_size=8, num_samples=N)
    with pytest.raises(DataError, match=r"global batch is 8, now 4 x 1 = 4"):
        loader(pattern, {"label": LABEL}, batch_size=4, resume_from=state)
    other = make_shards(tmp_path, n=20)
    with pytest.raises(DataError, match=r"has 20 samples, the checkpoint's data set had 37"):
        loader(other, {"label": LABEL}, batch_size=8, resume_from=state)
    with pytest.raises(DataError, match=r"step 9 outside the epoch \(0..4\)"):
        loader(pattern, {"label": LABEL}, batch_size=8, resume_from=state.model_copy(update={"step": 9}))


def test_bad_samples_are_replaced_counted_and_reported(tmp_path: Path) -> None:
    bad = {3: {"png": b"\x89PNG not really"}, 5: {"cls": b"seven"}, 8: {"cls": None}, 9: {"png": None}}
    pat = make_shards(tmp_path, n=12, bad=bad)
    kw = {"infinite": False, "shuffle": False, "report_every": 2, "with_keys": True}
    ld = loader(pat, {"image": IMAGE, "label": LABEL}, batch_size=4, **kw)
    with pytest.warns(CorruptSampleWarning) as record:
        batches = list(ld)
    # position p bad -> the first good sample at p + G, p + G + 1, ... (G = 4, modulo 12)
    assert ids(batches) == [[0, 1, 2, 7], [4, 10, 6, 7], [0, 1, 10, 11]]
    assert batches[0]["__key__"][3] == "train-000000.tar/s0007"
    assert torch.equal(batches[1]["image"][:, 0, 0], batches[1]["label"].float())  # png and cls of one sample
    assert ld.skipped == 4
    msgs = [str(w.message) for w in record if w.category is CorruptSampleWarning]
    assert len(msgs) == 3  # the 1st, 2nd and 4th skip (report_every=2)
    assert "'s0003' in" in msgs[0] and "train-000000.tar" in msgs[0] and "image (png)" in msgs[0]
    assert "replaced by 'train-000000.tar/s0007' (1 skipped so far)" in msgs[0]
    assert (
        "'s0005'" in msgs[1] and "ValueError" in msgs[1] and "replaced by 'train-000001.tar/s0010'" in msgs[1]
    )
    assert "'s0009'" in msgs[2] and "(4 skipped so far)" in msgs[2]
    reasons = {key: reason for _, key, reason in ld.skipped_samples}
    assert (
        "no cls for modality 'label'" in reasons["s0008"]
        and "no jpg/png for modality 'image'" in reasons["s0009"]
    )


def test_replacement_does_not_depend_on_ranks_workers_or_resume(tmp_path: Path) -> None:
    bad = {i: {"cls": b"x"} for i in (0, 4, 5, 6, 17, 30, 36)}
    pat = make_shards(tmp_path, bad=bad)
    specs = {"image": IMAGE, "label": LABEL}
    kw = {"seed": 3}
    with pytest.warns(CorruptSampleWarning):
        one = loader(pat, specs, batch_size=8, **kw)
        whole = ids(islice(one, 12))  # 4 steps per epoch: 3 epochs
        ranks = [loader(pat, specs, batch_size=4, rank=r, world_size=2, **kw) for r in (0, 1)]
        r0, r1 = (ids(islice(ld, 12)) for ld in ranks)
        workers = ids(islice(loader(pat, specs, batch_size=8, num_workers=2, **kw), 12))
        first = loader(pat, specs, batch_size=4, rank=1, world_size=2, **kw)
        head = ids(islice(first, 5))
        resumed = loader(pat, specs, batch_size=4, rank=1, world_size=2, resume_from=first.state(), **kw)
        tail = ids(islice(resumed, 7))
    assert all(len(b) == 8 for b in whole) and all(len(b) == 4 for b in r0 + r1)  # every batch full
    assert [a + b for a, b in zip(r0, r1, strict=True)] == whole
    assert workers == whole and head + tail == r1
    assert not {0, 4, 5, 6, 17, 30, 36} & set(sum(whole, []))
    assert one.skipped == ranks[0].skipped + ranks[1].skipped > 0  # summed over ranks: the same count


def test_unfit_items_are_rejected_by_validate_item(tmp_path: Path) -> None:
    class _Classes(BaseModel):
        model_config = ConfigDict(extra="forbid")
        num_classes: int

    def fits(label: int, config: _Classes) -> None:
        if label >= config.num_classes:
            raise ValueError(f"label: class index {label} is out of range")

    spec = ModalitySpec("label", _Classes, lambda c, q: None, lambda c, q: None, ("cls",), _decode_cls, fits)
    pat = make_shards(tmp_path, n=10)
    with pytest.warns(CorruptSampleWarning, match=r"'s0008'.*class index 8 is out of range"):
        ld = loader(
            pat, {"label": spec}, configs={"label": _Classes(num_classes=8)}, batch_size=10, shuffle=False
        )
        (batch,) = list(islice(ld, 1))
    assert batch["label"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 0, 0]  # 8, 9: the first good one from p + G on
    assert ld.skipped == 2
    plain = loader(pat, {"label": spec}, batch_size=10, shuffle=False)  # no configs: nothing to check against
    assert next(iter(plain))["label"].tolist() == list(range(10)) and plain.skipped == 0


def test_replace_bad_false_drops_instead(tmp_path: Path) -> None:
    pat = make_shards(tmp_path, n=12, bad={i: {"cls": b"x"} for i in (1, 4, 5, 6, 7)})
    ld = loader(pat, {"label": LABEL}, batch_size=4, shuffle=False, infinite=False, replace_bad=False)
    with pytest.warns(CorruptSampleWarning, match="dropped from the batch"):
        got = ids(ld)
    assert got == [[0, 2, 3], [8, 9, 10, 11]] and ld.skipped == 5  # batch 1 (4..7) had no good sample
    assert ld.state().epoch == 1


@pytest.mark.parametrize("num_workers", [0, 2])
def test_no_decodable_sample_is_an_error(tmp_path: Path, num_workers: int) -> None:
    pat = make_shards(tmp_path, n=6, bad={i: {"cls": b"x"} for i in range(6)})
    ld = loader(pat, {"label": LABEL}, batch_size=2, num_workers=num_workers)
    with pytest.raises(
        DataError, match=r"^no sample of '.*train-\*\.tar' can be decoded \(6 tried\); the last: 's000\d'"
    ) as err:
        next(iter(ld))
    assert "\n" not in str(err.value)
    # a batch whose own samples are all bad is filled from the next ones
    pat = make_shards(tmp_path / "some", n=6, bad={i: {"cls": b"x"} for i in range(2)})
    with pytest.warns(CorruptSampleWarning):
        first = next(
            iter(loader(pat, {"label": LABEL}, batch_size=2, shuffle=False, num_workers=num_workers))
        )
    assert first["label"].tolist() == [2, 3]


# with workers, the DataLoader iterator the exception leaves behind waits 5 s for each worker when it is
# collected (torch's _shutdown_workers): 10 s, in whichever test runs then
@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_other_exceptions_from_decode_sample_surface(tmp_path: Path, num_workers: int) -> None:
    def buggy(raw: bytes) -> int:
        if raw == b"3":
            raise KeyError("a bug in the plugin")
        return int(raw)

    pat = make_shards(tmp_path, n=8)
    ld = loader(
        pat, {"label": _spec("label", ("cls",), buggy)}, batch_size=8, shuffle=False, num_workers=num_workers
    )
    with pytest.raises(KeyError, match="a bug in the plugin"):
        next(iter(ld))
    assert ld.skipped == 0


def test_patterns_glob_and_braces(pattern: str) -> None:
    d = Path(pattern).parent
    names = [Path(p).name for p in expand_pattern(pattern)]
    assert names == ["train-000000.tar", "train-000001.tar", "train-000002.tar", "train-000003.tar"]
    assert expand_pattern(str(d / "train-{000001..000002}.tar")) == [
        str(d / "train-000001.tar"),
        str(d / "train-000002.tar"),
    ]
    assert len(expand_pattern(str(d / "train-{000000,000003}.tar"))) == 2
    ld = loader(str(d / "train-{000000..000001}.tar"), {"label": LABEL}, batch_size=4)
    assert ld.num_samples == 20


def test_missing_shards_name_the_pattern_and_list_the_directory(pattern: str, tmp_path: Path) -> None:
    d = Path(pattern).parent
    with pytest.raises(DataError, match=r"no shards match '.*/val-\*\.tar'; '.*' contains: .*sizes\.json"):
        loader(str(d / "val-*.tar"), {"label": LABEL}, batch_size=4)
    with pytest.raises(
        DataError, match=r"1 shard\(s\) of .* are missing \(.*train-000004\.tar\); .*contains"
    ):
        loader(str(d / "train-{000003..000004}.tar"), {"label": LABEL}, batch_size=4)
    with pytest.raises(DataError, match=r"directory '.*nowhere' does not exist"):
        loader(str(tmp_path / "nowhere" / "*.tar"), {"label": LABEL}, batch_size=4)
    with pytest.raises(DataError, match="empty range"):
        expand_pattern(str(d / "train-{5..1}.tar"))


def test_empty_small_and_unreadable_shard_sets(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "empty-000000.tar", "w"):
        pass
    with pytest.raises(
        DataError,
        match=r"shard set '.*empty-\*\.tar' is empty \(0 samples in 1 shard\(s\)\); .* contains: empty-000000",
    ):
        loader(str(tmp_path / "empty-*.tar"), {"label": LABEL}, batch_size=4)
    small = make_shards(tmp_path / "small", n=5)
    with pytest.raises(DataError, match=r"5 samples is less than one global batch \(4 x 2 ranks\)"):
        loader(small, {"label": LABEL}, batch_size=4, world_size=2)
    (tmp_path / "junk-000000.tar").write_bytes(b"\x00" * 100 + b"junk" * 200)
    with pytest.raises(DataError, match="is not a readable tar shard"):
        loader(str(tmp_path / "junk-*.tar"), {"label": LABEL}, batch_size=4)


def test_shard_cut_inside_a_member_keeps_the_readable_samples(tmp_path: Path) -> None:
    pat = make_shards(tmp_path, n=10)
    path = tmp_path / "train-000000.tar"
    # 4 samples of 6 blocks (cls, png, txt: header + data each), then only the header of s0004.cls
    path.write_bytes(path.read_bytes()[: 512 * 25])
    with pytest.warns(CorruptSampleWarning) as record:
        ld = loader(pat, {"label": LABEL}, batch_size=5, infinite=False, shuffle=False)
        got = sum(ids(ld), [])
    msgs = " | ".join(str(w.message) for w in record)
    assert "train-000000.tar: truncated shard (member 's0004.cls' has 0 of 1 bytes)" in msgs
    assert "sizes.json says 10 samples, the tar holds 5" in msgs
    assert "'s0004'" in msgs and "label (cls): truncated shard: s0004.cls has 0 of 1 bytes" in msgs
    assert got == [0, 1, 2, 3, 0] and ld.skipped == 1  # s0004 replaced by position (4 + 5) % 5 + 1


def test_shard_cut_inside_a_header_is_read_up_to_the_damage(tmp_path: Path) -> None:
    pat = make_shards(tmp_path, n=10)
    path = tmp_path / "train-000000.tar"
    path.write_bytes(path.read_bytes()[: 512 * 24 + 100])  # 4 samples, then 100 bytes of a header
    with pytest.warns(CorruptSampleWarning) as record:
        ld = loader(pat, {"label": LABEL}, batch_size=4, infinite=False, shuffle=False)
        got = sum(ids(ld), [])
    msgs = " | ".join(str(w.message) for w in record)
    assert "train-000000.tar: wids cannot index this shard (error: unpack requires" in msgs
    assert "kept its 4 samples in memory" in msgs and got == [0, 1, 2, 3] and ld.skipped == 0


def test_empty_files_are_ignored_with_a_warning(tmp_path: Path) -> None:
    pat = make_shards(tmp_path, n=10, shard_size=5)
    (tmp_path / "train-000002.tar").write_bytes(b"")
    with pytest.warns(CorruptSampleWarning, match=r"train-000002\.tar: empty file \(0 bytes\); ignored"):
        ld = loader(pat, {"label": LABEL}, batch_size=5, shuffle=False, infinite=False)
    assert ld.num_samples == 10 and len(ld.shards) == 3 and sorted(sum(ids(ld), [])) == list(range(10))
    with pytest.warns(CorruptSampleWarning, match="empty file"):
        assert list(iter_raw(pat, ("cls",))) == [str(i).encode() for i in range(10)]


def test_iter_raw_reads_a_key_in_shard_order(pattern: str, tmp_path: Path) -> None:
    assert list(iter_raw(pattern, ("jpg", "cls"))) == [str(i).encode() for i in range(N)]
    pat = make_shards(tmp_path, n=10)
    path = tmp_path / "train-000000.tar"
    path.write_bytes(path.read_bytes()[: 512 * 25])  # cut before the data of s0004.cls
    with pytest.warns(CorruptSampleWarning) as record:
        got = list(iter_raw(pat, ("cls",)))
    assert got == [b"0", b"1", b"2", b"3"]
    msgs = [str(w.message) for w in record if w.category is CorruptSampleWarning]
    assert re.search(r"train-000000\.tar: .*the rest of this shard is skipped", msgs[0])
    assert "sizes.json says 10 samples, the tar holds 4" in msgs[1] and len(msgs) == 2
    path.write_bytes(path.read_bytes()[: 512 * 18 + 100])  # cut inside a header: tarfile ends quietly
    with pytest.warns(
        CorruptSampleWarning, match=r"train-000000\.tar: sizes\.json says 10 samples, the tar holds 3"
    ):
        assert list(iter_raw(pat, ("cls",))) == [b"0", b"1", b"2"]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        loader("x-*.tar", {"label": LABEL}, batch_size=0)
    with pytest.raises(ValueError, match="need 0 <= rank < world_size, got rank=2, world_size=2"):
        loader("x-*.tar", {"label": LABEL}, batch_size=1, rank=2, world_size=2)
    with pytest.raises(ValueError, match="num_workers must be >= 0"):
        loader("x-*.tar", {"label": LABEL}, batch_size=1, num_workers=-1)
    with pytest.raises(ValueError, match="at least one modality"):
        loader("x-*.tar", {}, batch_size=1)


def test_with_the_built_in_plugins(pattern: str) -> None:
    from lzn_core.plugins import get_modality

    specs = {name: get_modality(name) for name in ("image", "label", "text")}
    ld = loader(pattern, specs, batch_size=6, shuffle=False, with_keys=True)
    batch = next(iter(ld))
    assert batch["image"].shape == (6, 1, 2, 2) and batch["image"].dtype == torch.float32
    assert batch["label"].tolist() == [0, 1, 2, 3, 4, 5] and batch["label"].dtype == torch.int64
    expected = torch.tensor([0, 1, 2, 3, 4, 5]).float() / 127.5 - 1
    assert torch.allclose(batch["image"][:, 0, 0, 0], expected)
    assert batch["text"] == [f"caption {i}" for i in range(6)]
    assert batch["__key__"][:2] == ["train-000000.tar/s0000", "train-000000.tar/s0001"]


def test_each_kind_of_bad_sample_with_the_built_in_plugins(tmp_path: Path) -> None:
    from lzn_core.plugins import get_modality

    specs = {name: get_modality(name) for name in ("image", "label")}
    configs = {"image": specs["image"].config(preset="tiny"), "label": specs["label"].config(num_classes=10)}
    bad = {
        1: {"png": b"\x89PNG\r\n\x1a\n garbage"},
        2: {"cls": None},
        3: {"png": png_bytes(np.zeros((16, 16), np.uint8))},
        4: {"cls": b"99"},
    }
    samples = []
    for i in range(8):
        key, fields = make_sample(
            f"s{i}", {"png": png_bytes(np.full((8, 8), i, np.uint8)), "txt": "x", "cls": i}
        )
        fields.update(bad.get(i, {}))
        samples.append((key, {k: v for k, v in fields.items() if v is not None}))
    write_split(tmp_path, "train", samples, progress=False)
    ld = loader(
        str(tmp_path / "train-*.tar"), specs, configs=configs, batch_size=8, shuffle=False, report_every=1
    )
    with pytest.warns(CorruptSampleWarning) as record:
        batch = next(iter(ld))
    assert batch["label"].tolist() == [0, 5, 5, 5, 5, 5, 6, 7] and batch["image"].shape == (8, 1, 8, 8)
    msgs = [str(w.message) for w in record if w.category is CorruptSampleWarning]
    assert "'s1'" in msgs[0] and "image (png): ValueError: not a valid PNG/JPEG image" in msgs[0]
    assert "'s2'" in msgs[1] and "no cls for modality 'label'" in msgs[1]
    assert "'s3'" in msgs[2] and "image: 16x16 image, the config expects 8x8" in msgs[2]
    assert "'s4'" in msgs[3] and "class index 99 is out of range for num_classes=10" in msgs[3]
    assert ld.skipped == 4
