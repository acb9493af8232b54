"""`tupac run --config`: every section is checked for names, types and ranges when the YAML is loaded.

Each wrong config gives one line with the dotted key, the value and what was expected, before any
work starts (issue 15).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from tupac.config_check import describe
from tupac.errors import ConfigError
from tupac.pipeline import DEMO_CONFIG, PipelineConfig


def load_error(tmp_path: Path, text: str) -> str:
    """The message of loading ``text`` as a config file, checked to be one line naming the file."""
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        PipelineConfig.from_yaml(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


# (YAML, dotted key and value as reported, what the message says was expected)
WRONG_TYPE = [
    ('seed: "abc"', "seed = 'abc'", "expected an integer, got a string"),
    ("seed: true", "seed = True", "expected an integer, got a boolean"),
    ("tumor: 3", "tumor = 3", "expected a mapping of options, got an integer"),
    ('tumor: {two_stage: "yes"}', "tumor.two_stage = 'yes'", "expected a boolean (true or false), got a string"),
    ("tumor: {model_kwargs: [8, 16]}", "tumor.model_kwargs = [8, 16]", "expected a mapping with string keys"),
    ('tumor: {train: {epochs: "ten"}}', "tumor.train.epochs = 'ten'", "expected an integer, got a string"),
    ("tumor: {train: {epochs: 2.5}}", "tumor.train.epochs = 2.5", "expected an integer, got a number"),
    ("tumor: {train: [1, 2]}", "tumor.train = [1, 2]", "expected a mapping with string keys, got a list"),
    ("tumor: {train: {augment: {flips: 1}}}", "tumor.train.augment.flips = 1", "expected a boolean (true or false)"),
    ("mitosis: {max_images: 2.5}", "mitosis.max_images = 2.5", "expected an integer or null, got a number"),
    ('mitosis: {train: {lr: "fast"}}', "mitosis.train.lr = 'fast'", "expected a number, got a string"),
    ("mitosis: {train: {class_weights: [1, x]}}", "mitosis.train.class_weights = [1, 'x']",
     "expected a list of numbers or null, got a list holding 'x' (a string)"),
    ('features: {n_patches: "50"}', "features.n_patches = '50'", "expected an integer, got a string"),
    ("features: {general: 1}", "features.general = 1", "expected a boolean (true or false) or null"),
    ('fit: {repeats: "3"}', "fit.repeats = '3'", "expected an integer, got a string"),
    ("fit: {grade_models: logreg_enet}", "fit.grade_models = 'logreg_enet'", "expected a list of strings, got a string"),
    ("infer: {actors: two}", "infer.actors = 'two'", "expected an integer or null, got a string"),
    ("infer: {gpu_tf32: 0}", "infer.gpu_tf32 = 0", "expected a boolean (true or false), got an integer"),
    ("report: {n_boot: 1.5}", "report.n_boot = 1.5", "expected an integer, got a number"),
]

UNKNOWN_KEY = [
    ("sede: 1", "sede = 1", "unknown section; expected one of seed, tumor, mitosis, infer, features, fit, report"),
    ("tumor: {positives: 10}", "tumor.positives = 10", "unknown option; expected one of arch, model_kwargs,"),
    ("tumor: {train: {epoch: 3}}", "tumor.train.epoch = 3", "unknown option; expected one of epochs, batch_size,"),
    ("tumor: {train: {augment: {flip: true}}}", "tumor.train.augment.flip = True",
     "unknown option; expected one of flips, rot90, stain_sigma, stain_bias"),
    ("mitosis: {negatives: 3}", "mitosis.negatives = 3", "unknown option; expected one of arch,"),
    ("mitosis: {train: {learning_rate: 0.1}}", "mitosis.train.learning_rate = 0.1", "unknown option; expected one of epochs,"),
    ("features: {patches: 50}", "features.patches = 50", "unknown option; expected one of seed, n_patches,"),
    ("fit: {folds: 5}", "fit.folds = 5", "unknown option; expected one of seed, repeats,"),
    ("infer: {actor: 2}", "infer.actor = 2", "unknown option; expected one of address,"),
    # The job's folders come from --models / --out; a config must not redirect them.
    ("infer: {out: /elsewhere}", "infer.out = '/elsewhere'", "not a config option; the command gives it"),
    ("report: {max_sid: 3}", "report.max_sid = 3", "unknown option; expected one of max_side, n_boot"),
]

OUT_OF_RANGE = [
    ("seed: -1", "seed = -1", "expected an integer >= 0"),
    ("tumor: {val_fraction: 1.5}", "tumor.val_fraction = 1.5", "expected in [0, 1)"),
    ("tumor: {tissue_mpp: 0}", "tumor.tissue_mpp = 0", "expected > 0 um/px"),
    ("tumor: {arch: locnett}", "tumor.arch = 'locnett'", "expected one of alexnet,"),
    ("tumor: {train: {epochs: 0}}", "tumor.train.epochs = 0", "epochs=0, expected >= 1"),
    ("tumor: {train: {augment: {stain_sigma: 2}}}", "tumor.train.augment.stain_sigma = 2", "expected in [0, 1)"),
    ("mitosis: {hard_min_prob: 1.0}", "mitosis.hard_min_prob = 1.0", "expected in (0, 1)"),
    ("mitosis: {match_radius_px: 0}", "mitosis.match_radius_px = 0", "expected > 0 px"),
    ("mitosis: {train: {batch_size: 0}}", "mitosis.train.batch_size = 0", "batch_size=0, expected >= 1"),
    ("mitosis: {train: {class_weights: [0, 0]}}", "mitosis.train.class_weights = [0, 0]",
     "expected weights >= 0, at least one > 0"),
    ("features: {n_splits: 1}", "features.n_splits = 1", "cross-fitting needs at least 2 folds"),
    # FeatureRunConfig and JobConfig lack these checks; the pipeline adds them (tupac/pipeline.py).
    ("features: {threshold: 1.5}", "features.threshold = 1.5", "expected a probability in [0, 1]"),
    ("features: {general_epochs: 0}", "features.general_epochs = 0", "expected >= 1"),
    ("fit: {repeats: 0}", "fit.repeats = 0", "repeats must be >= 1, got 0"),
    ("fit: {k_features: 0}", "fit.k_features = 0", "k_features must be >= 1, got 0"),
    ("fit: {grade_models: [nope]}", "fit.grade_models = ['nope']", "unknown grade model 'nope'; expected one of"),
    ("infer: {actors: 0}", "infer.actors = 0", "actors must be >= 1, got 0"),
    ("infer: {task_retries: -1}", "infer.task_retries = -1", "expected >= 0"),
    ("infer: {backend: tiles}", "infer.backend = 'tiles'", "expected one of auto, openslide, cucim"),
    ("report: {max_side: 0}", "report.max_side = 0", "max_side must be >= 1, got 0"),
]


@pytest.mark.parametrize(("text", "key_value", "expected"), WRONG_TYPE + UNKNOWN_KEY + OUT_OF_RANGE)
def test_a_bad_option_is_named_with_its_value_and_what_was_expected(tmp_path, text, key_value, expected):
    message = load_error(tmp_path, text + "\n")
    assert f": {key_value}: " in message
    assert expected in message


SECTIONS = {"(top level)", "tumor", "tumor.train", "tumor.train.augment", "mitosis", "mitosis.train", "features", "fit",
            "infer", "report"}


@pytest.mark.parametrize("cases", [WRONG_TYPE, UNKNOWN_KEY, OUT_OF_RANGE], ids=["type", "unknown", "range"])
def test_the_cases_cover_every_section(cases):
    def section_of(key_value: str) -> str:
        key = key_value.split(" = ")[0]
        return key.rsplit(".", 1)[0] if "." in key else "(top level)"

    assert {section_of(kv) for _, kv, _ in cases} == SECTIONS


def test_yaml_e_notation_without_a_dot_is_explained(tmp_path):
    # YAML 1.1 reads 3e-3 as the string "3e-3": say why, since the file looks right.
    message = load_error(tmp_path, "tumor: {train: {lr: 3e-3}}\n")
    assert "tumor.train.lr = '3e-3': expected a number, got a string" in message
    assert "write 1.0e-3" in message


def test_invalid_yaml_is_one_line(tmp_path):
    message = load_error(tmp_path, "tumor: {train: [\n")
    assert "not valid YAML" in message


def test_a_good_config_loads_with_yaml_lists_and_ints_where_floats_are_expected(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(
        "seed: 3\n"
        "tumor:\n  tissue_mpp: 8\n  train: {epochs: 3, lr: 1, class_weights: [1, 2], augment: {flips: false}}\n"
        "mitosis:\n"  # a section with every option commented out reads as null: empty, not an error
        "fit: {grade_models: [logreg_enet], rna_models: [elastic_net]}\n"
        "infer: {actors: 2, include_dashboard: false}\n"
    )
    cfg = PipelineConfig.from_yaml(path)
    assert cfg.mitosis == {}
    assert cfg.fit_config().grade_models == ("logreg_enet",)
    tumor = cfg.tumor_config()
    assert tumor.seed == 3 and tumor.train["class_weights"] == [1, 2]  # the stage reads `train` as a mapping
    job = cfg.job_config(tmp_path / "models", tmp_path / "run")
    assert (job.actors, job.models, job.out) == (2, tmp_path / "models", tmp_path / "run")


def test_the_printed_config_is_a_valid_config(tmp_path):
    path = tmp_path / "printed.yaml"
    for cfg in (PipelineConfig(), DEMO_CONFIG):
        path.write_text(cfg.to_yaml())
        assert PipelineConfig.from_yaml(path).effective() == cfg.effective()


def test_direct_construction_is_checked_too():
    # dataclasses.replace (the benchmarks) and the demo build the config in code: same checks.
    with pytest.raises(ConfigError, match=r"^fit\.repeats = 0: repeats must be >= 1"):
        dataclasses.replace(DEMO_CONFIG, fit={**DEMO_CONFIG.fit, "repeats": 0})


@pytest.mark.parametrize("path", [
    "tupac.tumor.training.TumorTrainConfig", "tupac.mitosis.training.MitosisTrainConfig", "tupac.train.config.TrainConfig",
    "tupac.train.config.AugmentConfig", "tupac.features.config.FeatureRunConfig", "tupac.predict.fit.FitConfig",
    "tupac.infer.job.JobConfig", "tupac.pipeline.ReportOptions", "tupac.pipeline.PipelineConfig",
])
def test_every_option_of_every_stage_class_has_a_checkable_type(path):
    # A field added with an annotation the checker does not know must fail here, not in a user's run.
    import importlib

    module, name = path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    for field_name, hint in typing.get_type_hints(cls).items():
        assert describe(hint), (path, field_name)


# --- the command line ----------------------------------------------------------------------------


def tupac(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tupac", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_tupac_run_stops_before_any_work_with_one_line_and_exit_2(tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    data.mkdir()  # a dataset folder exists: only the config stops the run
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\nmitosis:\n  train: {epochs: 4}\ntumor:\n  train: {epochs: ten}\n")
    result = tupac("run", "--config", str(bad), "--data", str(data), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {bad}: tumor.train.epochs = 'ten': expected an integer, got a string"]
    assert not out.exists()  # nothing trained, nothing written


def test_print_config_applies_the_same_checks(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("infer:\n  actors: two\n")
    args = ("run", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--print-config")
    result = tupac(*args, "--config", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""  # no config printed
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        f"error: {bad}: infer.actors = 'two': expected an integer or null, got a string"]

    bad.write_text("infer:\n  actors: 2\n")
    result = tupac(*args, "--config", str(bad), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "  actors: 2" in result.stdout.splitlines()
