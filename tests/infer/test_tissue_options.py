"""Issue 17: the cohort job passes its tissue-mask options to the mask; the defaults are the mask's."""

from __future__ import annotations

import inspect

import pytest

from tupac.errors import ConfigError
from tupac.infer.job import JobConfig
from tupac.preprocess.tissue import tissue_mask


def test_default_tissue_options_are_the_masks_defaults(tmp_path):
    cfg = JobConfig(models=tmp_path / "m", out=tmp_path / "o")
    params = inspect.signature(tissue_mask).parameters
    assert cfg.tissue_options() == {k: params[k].default for k in cfg.tissue_options()}


def test_tissue_options_are_passed_and_checked(tmp_path):
    cfg = JobConfig(models=tmp_path / "m", out=tmp_path / "o", tissue_dilation_um=8.0, tissue_max_hole_um2=0.0)
    assert cfg.tissue_options()["dilation_um"] == 8.0 and cfg.tissue_options()["max_hole_um2"] == 0.0
    with pytest.raises((ConfigError, ValueError), match="tissue_max_hole_um2"):
        JobConfig(models=tmp_path / "m", out=tmp_path / "o", tissue_dilation_um=-1.0)
