"""``tupac train mitosis`` / ``tupac detect-mitoses``: bad inputs give one line and a non-zero exit."""

from __future__ import annotations

from typer.testing import CliRunner

from tupac.cli import app


def _run(args):
    return CliRunner().invoke(app, args)


def test_train_mitosis_missing_data_root(tmp_path):
    res = _run(["train", "mitosis", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "models")])
    assert res.exit_code != 0
    assert "nope" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "models" / "mlflow.db").exists()


def test_train_mitosis_root_without_auxiliary_set(small_cohort, tmp_path):
    # a cohort root whose mitoses/ folder is absent
    import shutil

    root = tmp_path / "no-aux"
    shutil.copytree(small_cohort, root, ignore=shutil.ignore_patterns("mitoses"))
    res = _run(["train", "mitosis", "--data", str(root), "--out", str(tmp_path / "models")])
    assert res.exit_code != 0 and "no auxiliary mitosis images" in res.output


def test_train_mitosis_bad_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("mitosis:\n  stain_method: bogus\n")
    res = _run(["train", "mitosis", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--config", str(cfg)])
    assert res.exit_code != 0 and "stain_method" in res.output and "Traceback" not in res.output
    cfg.write_text("mitosis:\n  no_such_field: 1\n")
    res = _run(["train", "mitosis", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--config", str(cfg)])
    assert res.exit_code != 0 and "no_such_field" in res.output


def test_detect_mitoses_missing_models_and_images(tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    res = _run(["detect-mitoses", str(images), "--models", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "no images" in res.output
    from PIL import Image
    import numpy as np

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "a.png")
    res = _run(["detect-mitoses", str(images), "--models", str(tmp_path / "models"), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "model.safetensors" in res.output and "Traceback" not in res.output
