"""Memory does not grow with the slide: the job on a slide of twice the area holds < 20 % more.

The whole job is measured: ``tupac infer`` in a child process with its own local Ray, and the
summed PSS of that process and every process below it (driver, GCS, raylet, model actor, slide
tasks; :mod:`tupac.infer.memory`), sampled every 0.1 s. The slides are phantom 40x slides of
4 x 3 mm (16k x 12k px, 190 Mpx) and 5.66 x 4.24 mm (twice the area); the tumor threshold is 0,
so every tissue window is also a mitosis window and the job decodes every tissue pixel at 40x.
A job that held a slide's level 0 (0.57 GB, then 1.1 GB), its 40x tissue or the mitosis heatmap
of the whole slide in one process would fail the bound; one that streams holds the same Ray
processes, models and per-batch windows on both.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from test_job_support import PY, local_args, make_cohort, make_models

SIZES_UM = {"small": (4000.0, 3000.0), "double": (5657.0, 4243.0)}


def _peak_pss(models: Path, root: Path, out: Path) -> tuple[float, dict]:
    from tupac.infer.memory import TreeMemorySampler

    cmd = [PY, "-m", "tupac", "infer", *local_args(models, out, data=root)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with TreeMemorySampler(proc.pid, period_s=0.1) as mem:
        log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    (commit,) = [json.loads(p.read_text()) for p in (out / "slides").glob("*.zarr/commit.json")]
    return mem.peak.pss_mb, commit


@pytest.mark.slow
def test_twice_the_area_needs_less_than_20_percent_more_memory(tmp_path):
    models = make_models(tmp_path / "models", tumor_threshold=0.0)
    peaks, windows = {}, {}
    for name, size in SIZES_UM.items():
        root = make_cohort(tmp_path / name, n=1, seed=5, size_um=size)
        peaks[name], commit = _peak_pss(models, root, tmp_path / f"run-{name}")
        windows[name] = commit["extra"]["windows"]
    # The larger slide really is more work (twice the area; its tissue fraction is its own draw).
    assert windows["double"]["mitosis"] > 1.3 * windows["small"]["mitosis"] > 0, windows
    assert windows["double"]["tumor"] > 1.3 * windows["small"]["tumor"] > 0, windows
    assert peaks["small"] > 200  # the sampler saw the job's processes, not only the launcher
    assert peaks["double"] < 1.2 * peaks["small"], (peaks, windows)
