"""cuCIM crash safety: the probe runs cuCIM in a child process, and the caller survives."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tupac.errors import SlideOpenError
from tupac.slide import factory, open_slide, probe, probe_cucim


def test_probe_survives_a_real_cucim_crash(real_dir):
    """cuCIM segfaults on boxes.tiff (deflate tiles); only the child may die."""
    verdict = probe_cucim(real_dir / "boxes.tiff", use_cache=False)
    assert not verdict.ok
    assert "crashed" in verdict.reason and "SIGSEGV" in verdict.reason
    assert os.getpid() > 0  # still here


def test_probe_accepts_a_good_slide(real_dir):
    assert probe_cucim(real_dir / "cmu-1-small-region.svs", use_cache=False).ok


def test_probe_reports_cucim_errors(real_dir):
    verdict = probe_cucim(real_dir / "broken.svs", use_cache=False)
    assert not verdict.ok and "Cannot load" in verdict.reason


@pytest.fixture
def boxes_copy(tmp_path, real_dir):
    path = tmp_path / "boxes.tiff"
    shutil.copy(real_dir / "boxes.tiff", path)
    return path


@pytest.fixture
def trust_every_format(monkeypatch):
    """Pretend the in-process format check lets everything through, so only the probe stands
    between cuCIM and the test process."""
    monkeypatch.setattr(factory, "cucim_format_problem", lambda path: None)
    monkeypatch.setattr(factory, "_openslide_vendor", lambda path: "generic-tiff")


def test_auto_falls_back_when_the_probe_crashes(boxes_copy, trust_every_format):
    with open_slide(boxes_copy) as s:
        assert s.backend == "openslide"
        assert "crashed" in s.backend_reason
        assert s.read_region((0, 0), 0, (10, 10)).shape == (10, 10, 3)


def test_explicit_cucim_on_a_crashing_file_raises(boxes_copy, trust_every_format):
    with pytest.raises(SlideOpenError, match="boxes.tiff: cuCIM crashed on it"):
        open_slide(boxes_copy, backend="cucim")


def test_verdict_is_cached_per_file_version(boxes_copy, monkeypatch):
    calls = []
    real_run = subprocess.run

    def counting_run(*args, **kwargs):
        calls.append(args)
        return real_run(*args, **kwargs)

    monkeypatch.setattr(probe.subprocess, "run", counting_run)
    first = probe_cucim(boxes_copy)
    assert probe_cucim(boxes_copy) == first and len(calls) == 1
    probe._memo.clear()  # a new process: the verdict comes from the disk cache
    assert probe_cucim(boxes_copy) == first and len(calls) == 1
    assert any(probe.cache_dir().glob("*.json"))
    os.utime(boxes_copy, ns=(1, 1))  # the file changed: probe again
    assert probe_cucim(boxes_copy) == first and len(calls) == 2


def test_timeout_is_a_refusal_not_a_hang(real_dir):
    verdict = probe_cucim(real_dir / "cmu-1-small-region.svs", timeout=0.01, use_cache=False)
    assert not verdict.ok and "within" in verdict.reason
