"""The text modality (plugins/lzn_text): tokenizer, encoder, decoder, retrieval, plugin hooks."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator

import pytest
import torch
from lzn_text.config import TextConfig
from lzn_text.decoder import TextDecoder
from lzn_text.encoder import TextEncoder
from lzn_text.plugin import SPEC, collate, decode_sample, prepare
from lzn_text.tokenizer import EOS_ID, PAD_ID, TextTokenizer, load_processor, train_tokenizer

from lzn_core.errors import DataError

NAMES = "zero one two three four five six seven eight nine".split()
CORPUS = (
    [f"a handwritten {n}" for n in NAMES]
    + [f"the digit {d}, written by hand" for d in range(10)]
    + [f"a small picture of the number {n}" for n in NAMES]
)
Q = 8
TINY = dict(
    width=32, layers=1, heads=2, decoder_width=32, decoder_layers=1, decoder_heads=2, context_length=16
)


@pytest.fixture(scope="module")
def proto() -> bytes:
    return train_tokenizer(CORPUS, vocab_size=200, model_type="bpe")


@pytest.fixture(scope="module")
def config(proto: bytes, tmp_path_factory: pytest.TempPathFactory) -> TextConfig:
    path = tmp_path_factory.mktemp("tok") / "tok.model"
    path.write_bytes(proto)
    vocab = int(load_processor(proto).GetPieceSize())
    return TextConfig(tokenizer=str(path), tokenizer_bytes=len(proto), vocab_size=vocab, **TINY)


def _shard(path, captions: list[bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for i, data in enumerate(captions):
            info = tarfile.TarInfo(f"{i:06d}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------- tokenizer
def test_tokenizer_trains_on_tiny_corpus_without_hard_vocab_limit() -> None:
    a = train_tokenizer(CORPUS, vocab_size=1000, model_type="unigram")
    n = load_processor(a).GetPieceSize()
    assert 8 < n < 1000  # fewer pieces than asked: hard_vocab_limit=False
    assert train_tokenizer(CORPUS, vocab_size=1000, model_type="unigram") == a  # deterministic
    assert len(a) < 50_000  # no NFKC table: the proto stays small in the weights


def test_tokenizer_training_errors() -> None:
    with pytest.raises(ValueError, match="empty corpus"):
        train_tokenizer(["", "   "])
    with pytest.raises(ValueError, match="sentencepiece training failed"):
        train_tokenizer(CORPUS, vocab_size=8)  # fewer than the required characters


def test_round_trip_and_truncation(proto: bytes) -> None:
    tok = TextTokenizer(0, proto)
    ids = tok.encode(CORPUS, 32)
    assert ids.shape == (len(CORPUS), 32) and ids.dtype == torch.long
    assert tok.decode(ids.tolist()) == CORPUS
    short = tok.encode(["the digit 7, written by hand"], 3)
    assert short[0, -1].item() == EOS_ID and PAD_ID not in short[0].tolist()
    with pytest.raises(TypeError, match="list of str"):
        tok.encode("a single string", 8)


def test_tokenizer_errors(proto: bytes) -> None:
    with pytest.raises(ValueError, match="not a sentencepiece model"):
        load_processor(b"certainly not a model")
    with pytest.raises(ValueError, match="no tokenizer in this model"):
        TextTokenizer(len(proto)).encode(["x"], 4)
    import sentencepiece as spm

    out = io.BytesIO()  # default special ids (unk=0, bos=1, eos=2, no pad)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=out, vocab_size=40, hard_vocab_limit=False, minloglevel=2
    )
    with pytest.raises(ValueError, match="special ids"):
        load_processor(out.getvalue())


def test_tokenizer_survives_state_dict_save_and_load(config: TextConfig, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    enc = TextEncoder(config, Q)
    save_file(enc.state_dict(), tmp_path / "w.safetensors")
    bare = config.model_copy(update={"tokenizer": str(tmp_path / "gone.model")})  # no file: weights only
    rebuilt = TextEncoder(bare, Q)
    assert not rebuilt.tokenizer.proto.any()
    rebuilt.load_state_dict(load_file(tmp_path / "w.safetensors"))
    assert rebuilt.tokenizer.decode(rebuilt.tokens(CORPUS[:3]).tolist()) == CORPUS[:3]
    torch.testing.assert_close(rebuilt(CORPUS[:4]), enc(CORPUS[:4]))


def test_tokenizer_size_mismatch_with_config(config: TextConfig) -> None:
    with pytest.raises(ValueError, match="tokenizer_bytes"):
        TextEncoder(config.model_copy(update={"tokenizer_bytes": config.tokenizer_bytes + 1}), Q)


# ---------------------------------------------------------------- encoder
@pytest.mark.parametrize("pool", ["eos", "mean"])
def test_encoder_shape_and_gradient(config: TextConfig, pool: str) -> None:
    torch.manual_seed(0)
    enc = TextEncoder(config.model_copy(update={"pool": pool}), Q)
    a = enc(CORPUS[:5])
    assert a.shape == (5, Q) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert not torch.allclose(a[0], a[1])
    a.square().sum().backward()
    assert enc.tower.token_embedding.weight.grad.abs().sum() > 0
    assert enc.tower.text_projection.grad.abs().sum() > 0


def test_encoder_ignores_padding_length(config: TextConfig) -> None:
    torch.manual_seed(0)
    enc = TextEncoder(config, Q).eval()
    longer = TextEncoder(config.model_copy(update={"context_length": 24}), Q).eval()
    longer.load_state_dict(
        {
            **enc.state_dict(),
            "tower.positional_embedding": torch.cat(
                [enc.tower.positional_embedding.detach(), torch.zeros(8, config.width)]
            ),
        }
    )
    torch.testing.assert_close(enc(CORPUS[:3]), longer(CORPUS[:3]), atol=1e-5, rtol=1e-5)


def test_encoder_vocab_too_small(config: TextConfig) -> None:
    enc = TextEncoder(config.model_copy(update={"vocab_size": 8}), Q)
    with pytest.raises(ValueError, match="vocab_size"):
        enc(CORPUS[:2])


def test_encoder_pretrained_weights(config: TextConfig, tmp_path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(1)
    src = TextEncoder(config, Q)
    save_file(src.tower.state_dict(), tmp_path / "tower.safetensors")
    torch.save(src.tower.state_dict(), tmp_path / "tower.pt")
    for name in ("tower.safetensors", "tower.pt"):
        torch.manual_seed(2)
        enc = TextEncoder(config.model_copy(update={"pretrained": str(tmp_path / name)}), Q)
        torch.testing.assert_close(enc(CORPUS[:2]), src(CORPUS[:2]))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        TextEncoder(config.model_copy(update={"pretrained": str(tmp_path / "none.pt")}), Q)
    with pytest.raises(ValueError, match="do not fit"):
        TextEncoder(config.model_copy(update={"pretrained": str(tmp_path / name)}), Q + 1)


# ---------------------------------------------------------------- decoder
def _fit(dec: TextDecoder, z: torch.Tensor, texts: list[str], steps: int) -> list[float]:
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = dec.loss(z, texts)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def fitted(config: TextConfig) -> tuple[TextDecoder, torch.Tensor, list[str], list[float]]:
    torch.manual_seed(0)
    dec = TextDecoder(config, Q)
    texts = [f"a handwritten {n}" for n in NAMES[:4]]
    z = torch.randn(4, Q, generator=torch.Generator().manual_seed(0)) * 2
    return dec, z, texts, _fit(dec, z, texts, 120)


def test_decoder_loss_decreases_and_greedy_reproduces(fitted) -> None:
    dec, z, texts, losses = fitted
    assert losses[-1] < 0.1 * losses[0]
    dec.eval()
    assert dec.sample(z) == texts  # greedy decoding of the training latents
    assert dec.sample(z) == dec.sample(z)
    assert dec.sample(z, max_len=2) != texts


def test_temperature_sampling(fitted) -> None:
    dec, z, texts, _ = fitted
    dec.eval()
    one = dec.sample(z, method="temperature", temperature=5.0, generator=torch.Generator().manual_seed(3))
    two = dec.sample(z, method="temperature", temperature=5.0, generator=torch.Generator().manual_seed(3))
    assert one == two and all(isinstance(t, str) for t in one)
    assert dec.sample(z, method="temperature", top_k=1, generator=torch.Generator().manual_seed(4)) == texts


def test_decoder_errors(config: TextConfig) -> None:
    dec = TextDecoder(config, Q)
    z = torch.zeros(2, Q)
    with pytest.raises(ValueError, match=r"z must be \(B, 8\)"):
        dec.loss(torch.zeros(2, Q + 1), ["a", "b"])
    with pytest.raises(ValueError, match="2 latents but 1 captions"):
        dec.loss(z, ["a"])
    with pytest.raises(ValueError, match="built without a condition"):
        dec.loss(z, ["a", "b"], cond=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="unknown method 'beam'"):
        dec.sample(z, method="beam")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        dec.sample(z, method="temperature", temperature=0.0)
    with pytest.raises(ValueError, match="caption bank"):
        dec.retrieve(z)
    cdec = TextDecoder(config, Q, condition_dim=3)
    with pytest.raises(ValueError, match="no cond was given"):
        cdec.sample(z)
    assert cdec.loss(z, ["a", "b"], cond=torch.eye(3)[:2]).isfinite()


def test_decoder_loss_is_a_mean_over_captions(config: TextConfig) -> None:
    torch.manual_seed(0)
    dec = TextDecoder(config, Q)
    z = torch.randn(4, Q)
    texts = [CORPUS[0], CORPUS[15], CORPUS[25], CORPUS[3]]  # different lengths
    whole = dec.loss(z, texts)
    halves = (dec.loss(z[:2], texts[:2], rows=(0, 4)) + dec.loss(z[2:], texts[2:], rows=(2, 4))) / 2
    torch.testing.assert_close(whole, halves)  # two ranks average to one process
    with pytest.raises(ValueError, match="does not contain a batch of 2"):
        dec.loss(z[:2], texts[:2], rows=(3, 4))


def test_retrieval_picks_matching_caption_for_separated_anchors(config: TextConfig) -> None:
    from lzn_core import zoning

    dec = TextDecoder(config, Q)
    bank_texts = CORPUS[:6]
    bank = torch.eye(6, Q) * 6.0  # well-separated anchors
    gen = torch.Generator().manual_seed(0)
    z = zoning.latents(bank, torch.randn(6, Q, generator=gen), alpha=0.3)
    order = torch.tensor([3, 0, 5, 1])
    out, index = dec.retrieve(z[order], bank, bank_texts, steps=50, return_index=True)
    assert index.tolist() == order.tolist()
    assert out == [bank_texts[i] for i in order.tolist()]


def test_retrieval_with_bound_encoder_and_config_bank(config: TextConfig) -> None:
    from lzn_core import zoning

    torch.manual_seed(0)
    cfg = config.model_copy(update={"retrieval_bank": CORPUS[:5]})
    enc, dec = TextEncoder(cfg, Q), TextDecoder(cfg, Q)
    with pytest.raises(ValueError, match="bind"):
        dec.retrieve(torch.zeros(1, Q))
    dec.bind(enc)
    assert "_encoder" not in dict(dec.named_children()) and not any(
        k.startswith("_enc") for k in dec.state_dict()
    )
    with torch.no_grad():
        anchors = enc(CORPUS[:5]) * 5  # spread the random anchors a little
    enc.tower.text_projection.data.mul_(5)
    z = zoning.latents(anchors, alpha=0.0)
    assert dec.sample(z, method="retrieve", steps=50) == CORPUS[:5]
    with pytest.raises(ValueError, match="3 bank anchors but 5 bank texts"):
        dec.retrieve(z, anchors[:3])


# ---------------------------------------------------------------- plugin
def test_decode_sample_and_collate() -> None:
    assert decode_sample(b" a handwritten seven\n") == "a handwritten seven"
    assert decode_sample("une écriture".encode()) == "une écriture"
    with pytest.raises(ValueError, match="not valid utf-8"):
        decode_sample(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="empty caption"):
        decode_sample(b"  \n")
    with pytest.raises(ValueError, match="must be bytes"):
        decode_sample("already a str")  # type: ignore[arg-type]
    assert collate(["a", "b"]) == ["a", "b"]
    assert SPEC.shard_keys == ("txt",) and SPEC.prepare is prepare


def test_config_rejects_bad_values() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="extra_forbidden"):
        TextConfig(widht=32)
    with pytest.raises(ValidationError, match="divisible by heads"):
        TextConfig(width=30, heads=4)
    with pytest.raises(ValidationError, match="divisible by decoder_heads"):
        TextConfig(decoder_width=30, decoder_heads=4)


def _samples(pattern) -> Iterator[bytes]:
    """What LZNModel hands prepare(): the raw txt values of the training shards."""
    from lzn_core.data import iter_raw

    return iter_raw(str(pattern), ("txt",))


def test_prepare_trains_tokenizer_from_shards(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LZN_CACHE_DIR", str(tmp_path / "cache"))
    _shard(tmp_path / "train-000000.tar", [c.encode() for c in CORPUS[:20]] + [b"", b"\xff"])
    _shard(tmp_path / "train-000001.tar", [c.encode() for c in CORPUS[20:]])
    cfg = prepare(TextConfig(vocab_size=500, **TINY), _samples(tmp_path / "train-{000000..000001}.tar"))
    assert cfg.tokenizer.startswith(str(tmp_path / "cache")) and cfg.tokenizer_bytes > 0
    assert 8 < cfg.vocab_size < 500
    assert cfg.retrieval_bank == sorted(CORPUS)
    again = prepare(TextConfig(vocab_size=500, **TINY), _samples(tmp_path / "train-*.tar"))
    assert again == cfg  # deterministic, same cache file
    assert prepare(cfg, iter(())) == cfg  # idempotent; a given tokenizer needs no samples
    small = prepare(TextConfig(retrieval_bank_size=5, **TINY), _samples(tmp_path / "train-*.tar"))
    assert len(small.retrieval_bank) == 5 and set(small.retrieval_bank) <= set(CORPUS)
    enc = TextEncoder(cfg, Q)
    assert enc(CORPUS[:2]).shape == (2, Q)


def test_prepare_errors(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LZN_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="no shards match"):
        prepare(TextConfig(), _samples(tmp_path / "train-{000000..000001}.tar"))
    with pytest.raises(ValueError, match="no usable 'txt' caption"):
        prepare(TextConfig(), iter(()))
    with pytest.raises(FileNotFoundError, match="tokenizer file"):
        prepare(TextConfig(tokenizer=str(tmp_path / "gone.model")), iter(()))
    kept = TextConfig(tokenizer=str(tmp_path / "gone.model"), tokenizer_bytes=100)
    assert prepare(kept, iter(())) == kept  # prepared elsewhere: the weights carry the tokenizer
    _shard(tmp_path / "empty-000000.tar", [b"", b"  "])
    with pytest.raises(ValueError, match="no usable 'txt' caption"):
        prepare(TextConfig(), _samples(tmp_path / "empty-000000.tar"))


def test_bundled_example_tokenizer_is_reproducible() -> None:
    from lzn_text.plugin import EXAMPLE_CAPTIONS, EXAMPLE_CONFIG, EXAMPLE_TOKENIZER

    proto = train_tokenizer(EXAMPLE_CAPTIONS, vocab_size=128, model_type="bpe")
    assert EXAMPLE_TOKENIZER.read_bytes() == proto
    assert EXAMPLE_CONFIG["tokenizer_bytes"] == len(proto)
    assert EXAMPLE_CONFIG["vocab_size"] == load_processor(proto).GetPieceSize()


def test_registered_and_conformant() -> None:
    from lzn_core import get_modality
    from lzn_core.testing import check_modality

    assert get_modality("text") is SPEC
    report = check_modality("text", latent_dim=Q)
    assert report.decoder_kind == "generative" and len(report.checks) >= 5


def test_trains_and_serves_beside_label() -> None:
    from lzn_core.testing import run_trial

    report = run_trial("text", latent_dim=Q)  # the kit's trial, in this process
    assert report.partner == "label" and "text -> label" in report.edges


def test_model_export_and_load_need_neither_shards_nor_cache(tmp_path, monkeypatch) -> None:
    """digits_text.yaml with tiny sizes: prepare trains the tokenizer in LZNModel; the exported
    model rebuilds from model.safetensors + recipe.yaml after the shards and cache are gone."""
    import shutil

    from lzn_core.io import load, write_model
    from lzn_core.model import LZNModel
    from lzn_core.recipe import load_recipe

    monkeypatch.setenv("LZN_CACHE_DIR", str(tmp_path / "cache"))
    _shard(tmp_path / "train-000000.tar", [c.encode() for c in CORPUS])
    tiny = ["latent.dim=8", "modalities.image.config.preset=tiny", f"data.train={tmp_path}/train-*.tar"]
    tiny += [f"modalities.text.config.{k}={v}" for k, v in TINY.items()]
    torch.manual_seed(0)
    model = LZNModel(load_recipe("digits_text.yaml", tiny)).eval()
    cfg = model.configs["text"]
    assert cfg.tokenizer_bytes > 0 and cfg.retrieval_bank == sorted(CORPUS)
    with torch.no_grad():
        before = model.encode("text", CORPUS[:3])
    out = write_model(model, tmp_path / "final")
    shutil.rmtree(tmp_path / "cache")
    (tmp_path / "train-000000.tar").unlink()
    loaded = load(out)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode("text", CORPUS[:3]), before)
    assert (
        loaded.decoders["text"].tokenizer.decode(loaded.encoders["text"].tokens(CORPUS[:2]).tolist())
        == CORPUS[:2]
    )
