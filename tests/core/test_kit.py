"""The conformance kit's contract (lzn_core.testing.contract): a valid toy modality passes, each way a
plugin breaks the contract is reported naming it, and the pytest fixtures plugin authors use."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lzn_core.errors import UnknownModalityError

pytestmark = pytest.mark.usefixtures("lzn_plugins")  # a fresh registry per test (some select LZN_PLUGINS)


def _toy_spec(enc_out=None, dec_loss=None, dec_sample=None, enc_cls=None, **spec_kw):
    """A tiny valid modality ("toy": b"1,2,3" -> (3,) float); the hooks break one thing at a time."""
    import dataclasses

    import torch
    from pydantic import BaseModel, ConfigDict

    from lzn_core.modality import ModalitySpec

    class Cfg(BaseModel):
        model_config = ConfigDict(extra="forbid")
        dim: int = 3

    def decode(raw: bytes):
        try:
            return torch.tensor([float(v) for v in raw.decode().split(",")])
        except (UnicodeDecodeError, ValueError):
            raise ValueError(f"toy: cannot parse {raw[:20]!r}") from None

    class Enc(torch.nn.Module):
        def __init__(self, cfg, q):
            super().__init__()
            self.lin = torch.nn.Linear(cfg.dim, q)

        def forward(self, x):
            return enc_out(self, x) if enc_out else self.lin(x)

    class Dec(torch.nn.Module):
        kind = "generative"

        def __init__(self, cfg, q):
            super().__init__()
            self.lin = torch.nn.Linear(q, cfg.dim)

        def loss(self, z, x, cond=None, *, generator=None, rows=None):
            return dec_loss(self, z, x) if dec_loss else ((self.lin(z) - x) ** 2).mean()

        def sample(self, z, cond=None, *, steps=1, generator=None):
            return dec_sample(self, z) if dec_sample else self.lin(z)

    spec = ModalitySpec(
        name="toy",
        config=Cfg,
        build_encoder=enc_cls or Enc,
        build_decoder=Dec,
        shard_keys=("toy",),
        decode_sample=decode,
        example_items=lambda n: [b"1,2,3"] * n,
    )
    return dataclasses.replace(spec, **spec_kw)


def test_kit_passes_a_valid_toy():
    from lzn_core.testing import check_modality

    rep = check_modality(_toy_spec(), latent_dim=5, batch_size=3)
    assert (rep.modality, rep.latent_dim, rep.batch_size, rep.decoder_kind) == ("toy", 5, 3, "generative")
    assert any("gradients reach the decoder and z" in c for c in rep.checks)


def _kit_bad_cases():
    import torch

    def accept_all(raw):
        return torch.zeros(3)

    def key_error(raw):
        if raw == b"1,2,3":
            return torch.ones(3)
        raise KeyError("x")

    def vague(raw):
        if raw == b"1,2,3":
            return torch.ones(3)
        raise ValueError("bad input")

    class NotModule:
        def __init__(self, cfg, q):
            pass

    return [
        ({"example_config": {"dim": "three"}}, "example_config {'dim': 'three'} is not a valid config"),
        ({"example_items": None}, "ModalitySpec.example_items is not set"),
        ({"example_items": lambda n: [b"1,2,3"]}, "example_items(4) must return 4 bytes values"),
        ({"decode_sample": accept_all}, "decode_sample accepted corrupt bytes b''; it must raise ValueError"),
        ({"decode_sample": key_error}, "raised KeyError ('x'); corrupt input must raise ValueError"),
        (
            {"decode_sample": vague},
            "raised ValueError('bad input'); the message must name the modality 'toy'",
        ),
        ({"collate": lambda items: torch.stack(items[:2])}, "collate of 4 items gave a batch of length 2"),
        ({"enc_out": lambda m, x: m.lin(x)[:, :7]}, "encoder(batch) has shape (4, 7), expected (4, 8)"),
        ({"enc_out": lambda m, x: m.lin(x).long()}, "has dtype torch.int64, expected a floating dtype"),
        ({"enc_out": lambda m, x: m.lin(x) / 0}, "encoder(batch) has non-finite values"),
        (
            {"enc_out": lambda m, x: m.lin(x).detach().requires_grad_()},
            "no gradient reaches the encoder parameters",
        ),
        ({"enc_out": lambda m, x: [1]}, "encoder(batch) must be a torch.Tensor, got list"),
        ({"enc_cls": NotModule}, "build_encoder must return a torch.nn.Module, got NotModule"),
        ({"dec_loss": lambda m, z, x: (m.lin(z) - x) ** 2}, "decoder.loss must return a scalar tensor"),
        ({"dec_loss": lambda m, z, x: m.lin(z).sum() * float("nan")}, "decoder.loss is not finite"),
        (
            {"dec_loss": lambda m, z, x: ((m.lin(torch.ones_like(z)) - x) ** 2).mean()},
            "decoder.loss does not depend on z",
        ),
        (
            {"dec_sample": lambda m, z: m.lin(z)[:1]},
            "decoder.sample of 4 latents returned a batch of length 1",
        ),
        (  # depends on the batch (its size here; the toy's items are equal): micro-batches would differ
            {"enc_out": lambda m, x: m.lin(x) / len(x)},
            "encoder(batch[1:4]) differs from rows 1:4 of encoder(batch)",
        ),
        (  # a sum over rows, not a mean: row blocks would not add up to the whole batch's loss
            {"dec_loss": lambda m, z, x: ((m.lin(z) - x) ** 2).sum()},
            "decoder.loss over rows 0:4 is",
        ),
        ({"as_batch": lambda r: r}, "as_batch of one decoded item gave a batch of length 3, expected 1"),
        (  # the guess compose used to make for images: wrong for every batch
            {"as_batch": lambda r: r[None]},
            "as_batch of a batch of 4 changed its length: a batch must pass unchanged",
        ),
        (  # items and collated batches pass, a decoder's output (it has autograd history here) does not
            {"as_batch": lambda r: r.reshape(1, -1) if r.requires_grad else (r[None] if r.dim() == 1 else r)},
            "as_batch of decoder.sample's batch of 4 has length 1",
        ),
    ]


@pytest.mark.parametrize(("change", "message"), _kit_bad_cases(), ids=lambda v: str(v)[:40])
def test_kit_reports_each_violation(change, message):
    from lzn_core.errors import ContractError
    from lzn_core.testing import check_modality

    with pytest.raises(ContractError) as ei:
        check_modality(_toy_spec(**change), latent_dim=8, batch_size=4)
    assert str(ei.value).startswith("modality 'toy' breaks the contract: ")
    assert message in str(ei.value)


def test_kit_checks_judges_and_previews(tmp_path):
    """SampleJudge is called as training (class-conditional) and lzn eval (from the prior, with
    held-out items, options) call it; a PreviewWriter is asked for a file in a fresh folder."""
    import dataclasses

    from lzn_core.errors import ContractError
    from lzn_core.testing import check_modality

    spec = _toy_spec()
    dec = spec.build_decoder

    class Judge(dec):
        def judge_samples(self, samples, classes, real, real_classes, *, held_out=None, options=None):
            if options:
                raise ValueError(f"toy judge: reads no options, got {sorted(options)}")
            if classes is None:
                return {"gap": float((samples.detach().mean(0) - held_out.mean(0)).abs().sum())}
            return {"n": len(samples), "how": "toy"}

        def save_preview(self, batch, path, *, nrow=None):
            Path(path).write_text(str(batch.tolist()))
            return Path(path)

    rep = check_modality(dataclasses.replace(spec, build_decoder=Judge), latent_dim=4)
    assert "SampleJudge: judge_samples -> n, how, gap; unknown options rejected" in rep.checks
    assert "PreviewWriter: save_preview writes the file asked for in a fresh folder" in rep.checks

    class Lists(Judge):
        def judge_samples(self, samples, classes, real, real_classes, *, held_out=None, options=None):
            return {"per_class": [1.0, 2.0]}

    class Lax(Judge):
        def judge_samples(self, samples, classes, real, real_classes, *, held_out=None, options=None):
            return {}

    class Old(Judge):
        def judge_samples(self, samples, classes, real, real_classes):
            return {}

    class Elsewhere(Judge):
        def save_preview(self, batch, path, *, nrow=None):
            (tmp_path / "grid.png").write_text("x")
            return tmp_path / "grid.png"

    for cls, message in (
        (Lists, "judge_samples (class-conditional) must return a mapping of names to numbers or strings"),
        (Lax, "judge_samples accepted an unknown option; raise ValueError naming the options it reads"),
        (Old, "has no parameter 'held_out'; the framework calls decoder.judge_samples("),
        (Elsewhere, "save_preview was asked for "),
    ):
        with pytest.raises(ContractError, match=re.escape(message)):
            check_modality(dataclasses.replace(spec, build_decoder=cls), latent_dim=4)


def test_kit_checks_decoder_kind_and_condition_dim():
    import torch

    from lzn_core.errors import ContractError
    from lzn_core.testing import check_modality

    spec = _toy_spec()
    dec_cls = spec.build_decoder
    no_kind = type("NoKind", (dec_cls,), {"kind": "magic"})
    with pytest.raises(
        ContractError, match="decoder.kind must be one of generative, zonal, none, got 'magic'"
    ):
        check_modality(_toy_spec(build_decoder=no_kind))
    enc_cls = spec.build_encoder
    cond = type("Cond", (enc_cls,), {"condition": lambda self, x: torch.zeros(len(x), 2)})
    with pytest.raises(
        ContractError, match="an encoder with condition\\(batch\\) needs ModalitySpec.condition_dim"
    ):
        check_modality(_toy_spec(build_encoder=cond))
    report = check_modality(_toy_spec(build_encoder=cond, condition_dim=lambda c: 2))
    assert any("ConditionProvider" in c for c in report.checks)
    with pytest.raises(ContractError, match=r"condition\(batch\) has shape \(4, 2\), expected \(4, 5\)"):
        check_modality(_toy_spec(build_encoder=cond, condition_dim=lambda c: 5))


def test_kit_names_the_missing_parameter_of_a_stale_decoder():
    """A decoder written against the old contract fails the kit before any training, naming what is missing."""
    import torch

    from lzn_core.errors import ContractError
    from lzn_core.testing import check_modality

    class Stale(torch.nn.Module):
        kind = "generative"

        def __init__(self, cfg, q):
            super().__init__()
            self.lin = torch.nn.Linear(q, cfg.dim)

        def loss(self, z, x, cond=None):
            return ((self.lin(z) - x) ** 2).mean()

        def sample(self, z, cond=None, **kw):
            return self.lin(z)

    with pytest.raises(
        ContractError, match="Stale.loss has no parameter 'generator'; the framework calls decoder.loss"
    ):
        check_modality(_toy_spec(build_decoder=Stale))


def test_kit_rejects_config_that_ignores_unknown_keys():
    from pydantic import BaseModel, ConfigDict, model_validator

    from lzn_core.errors import ContractError
    from lzn_core.testing import check_modality

    class Lax(BaseModel):  # says forbid, but silently drops unknown keys first
        model_config = ConfigDict(extra="forbid")
        dim: int = 3

        @model_validator(mode="before")
        @classmethod
        def _drop(cls, data):
            return {k: v for k, v in data.items() if k == "dim"}

    with pytest.raises(ContractError, match="config accepts an unknown key; set model_config = ConfigDict"):
        check_modality(_toy_spec(config=Lax))


def test_kit_argument_errors(monkeypatch):
    from lzn_core.testing import check_modality

    with pytest.raises(TypeError, match="check_modality takes a ModalitySpec or a modality name, got int"):
        check_modality(3)
    monkeypatch.setenv("LZN_PLUGINS", "label")
    with pytest.raises(UnknownModalityError, match="unknown modality 'toy'"):
        check_modality("toy")


def test_kit_fixture_is_registered(pytestconfig, lzn_check_modality, lzn_trial):
    from lzn_core.testing import check_modality, run_trial

    assert pytestconfig.pluginmanager.has_plugin("lzn")  # the pytest11 entry point of lzn
    assert lzn_check_modality is check_modality and lzn_trial is run_trial
