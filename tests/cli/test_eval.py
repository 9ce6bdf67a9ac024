"""``lzn eval`` end to end on a tiny random model over the digits shards, and its errors."""

from __future__ import annotations

import importlib.util

import pytest
from tiny_models import plain_model


@pytest.fixture(scope="module")
def digits_shards(tmp_path_factory):
    from lzn_core.data.digits import write_digits

    out = tmp_path_factory.mktemp("digits")
    write_digits(out, progress=False)
    return out


@pytest.mark.slow  # 13 s (load 3)
def test_cli_eval_end_to_end(tmp_path, digits_shards, capsys, monkeypatch) -> None:
    import json

    from lzn_image.features import DIGIT_FEATURES

    from lzn_core.cli import main
    from lzn_core.io.files import write_model

    monkeypatch.setenv("LZN_CLEANFID_CACHE", str(tmp_path / "no-cache"))  # auto: the digit features

    model = plain_model()
    model.recipe.data.train = str(digits_shards / "train-*.tar")
    model.recipe.data.eval = str(digits_shards / "test-*.tar")
    run = tmp_path / "run"
    write_model(model, run / "final")
    out = tmp_path / "eval"
    argv = [
        "eval",
        str(run),
        "--json",
        "--out",
        str(out),
        "--alphas",
        "0,1",
        "--batch-sizes",
        "50",
        "--samples",
        "80",
        "--per-class",
        "2",
        "--limit",
        "100",
        "--steps",
        "2",
        "--recon",
        "8",
        "--draws",
        "2",
    ]
    assert main(argv) == 0
    full = json.loads(capsys.readouterr().out)
    res, gen = full["classification"]["image -> label"], full["generation"]["image"]
    assert full["n_test"] == 100 and len(res["sweep"]) == 2
    assert {r["batch_size"] for r in res["sweep"]} == {50}
    assert 0 <= res["accuracy"] <= 1 and 0 <= res["ece"] <= 1
    assert set(res["ood_auroc"]) == {"noise_mixed", "noise_separate", "inverted_mixed", "inverted_separate"}
    assert 0 <= gen["class_consistency"] <= 1
    assert gen["fid_features"] == DIGIT_FEATURES and gen["fid"] > gen["fid_real_test_vs_train"]
    assert gen["fid_samples"] == 80 and gen["fid_real"] == 1497
    assert gen["recon_error"] > 0  # the paper's setting: training items, unclipped, inference batch 2000
    assert gen["recon_setting"] == {
        "items": 8,
        "split": "train",
        "draws": 2,
        "batch_size": 2000,
        "clipped": False,
    }
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["classification"]["image -> label"]["accuracy"] == res["accuracy"]
    assert (out / "reliability-image-label.png").exists() and (out / "samples-image.png").exists()
    assert (
        main(
            [
                "eval",
                str(run / "final"),
                "--alphas",
                "0",
                "--batch-sizes",
                "100",
                "--samples",
                "0",
                "--per-class",
                "0",
                "--limit",
                "100",
                "--recon",
                "0",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "accuracy (α=0.0, batch 100)" in table and "OOD AUROC noise_mixed" in table
    argv = ["eval", str(run), "--preset", "quick", "--samples", "40", "--per-class", "0", "--steps", "2"]
    assert main([*argv, "--limit", "100", "--recon", "4", "--batch-sizes", "50"]) == 0
    table = capsys.readouterr().out
    assert f"fid_features                             {DIGIT_FEATURES}" in table
    assert (
        "fid_samples                              40" in table
        and "fid_real                                 1497" in table
    )
    assert "recon_error (4 test items, 4 draws, batch 256, clipped)" in table  # the quick preset
    assert main([*argv, "--limit", "100", "--recon", "0", "--judge", "image.fid=clean-fid"]) == 1
    err = capsys.readouterr().err
    if importlib.util.find_spec("cleanfid") is None:  # without the extra: the error names it
        assert "clean-fid needs the optional extra: pip install 'lzn[fid]'" in err
    else:  # with it: the weights are never downloaded
        assert "inception-2015-12-05.pt not found" in err and "nothing is downloaded" in err
    assert main([*argv, "--limit", "100", "--recon", "0", "--judge", "image.fid=inception"]) == 1
    assert (
        "image judge: unknown fid 'inception'; choose one of auto, clean-fid, digits, none"
        in capsys.readouterr().err
    )
    assert main([*argv, "--limit", "100", "--recon", "0", "--judge", "label.fid=none"]) == 1
    assert "judge options for label: no trained decoder of that name judges samples (judges: image)" in (
        capsys.readouterr().err
    )
    assert main([*argv, "--judge", "fid=none"]) == 1
    assert "--judge 'fid=none': expected MODALITY.KEY=VALUE" in capsys.readouterr().err


def test_cli_eval_errors(tmp_path, capsys) -> None:
    from lzn_core.cli import main
    from lzn_core.io.files import resolve_model_dir

    assert main(["eval", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="export a run with `lzn export"):
        resolve_model_dir(tmp_path)
    assert main(["eval", str(tmp_path), "--alphas", "a,b"]) == 1
    assert "--alphas: expected comma-separated numbers" in capsys.readouterr().err
