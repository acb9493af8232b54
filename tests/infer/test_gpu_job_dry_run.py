"""The CPU dry run of benchmarks/gpu_job.py, the prepared GPU check of the cohort job (issue 18).

CI has no GPU; this runs the script as the GPU machine would, with ``--device cpu --quick`` (a
1000 x 800 um phantom slide, tiny seeded models, two real `tupac infer` runs with Ray actors), so
the script cannot rot between the rare runs on a GPU machine. ~40 s on 2 shared cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_job.py"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("gpu_job")
    out = tmp / "gpu_job.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--synth-workers", "2",
                           "--out", str(out), "--work", str(tmp / "work")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_every_section_ran(dry_run):
    assert dry_run["summary"]["errors"] == []
    for section in ("environment", "data", "models", "job", "reference", "decode", "model_only"):
        assert dry_run[section]["ok"], (section, dry_run[section].get("error"))


@pytest.mark.slow
def test_two_cpu_runs_give_identical_heatmaps(dry_run):
    s = dry_run["summary"]
    assert s["heatmap_max_abs_diff"]["cpu_job"] == {"tumor": 0.0, "mitosis": 0.0}
    assert s["detections"]["job"] == s["detections"]["cpu_job"]
    # The window sample recomputed in-process: the same computation, up to float rounding.
    for task in ("tumor", "mitosis"):
        assert s["heatmap_max_abs_diff"]["cpu_windows"][task] < 1e-5


@pytest.mark.slow
def test_timings_and_ratio_are_reported(dry_run):
    s = dry_run["summary"]
    assert s["end_to_end_s"] > 0 and s["model_only_s"] > 0
    assert s["rate_ratio"] == pytest.approx(s["model_only_s"] / s["end_to_end_s"])
    assert s["windows"]["tumor"] > 0 and s["windows"]["mitosis"] > 0
    assert s["gpu_util"].startswith("not available")
    assert s["decode_s_per_window"]["tumor"]["cpu"] > 0
    assert s["peak_rss_mib_process_tree"] > 0
    assert dry_run["job"]["timings_s"]["tumor_model_s"] > 0
    # Named, so a reader of the JSON knows the run is not the default one.
    assert dry_run["meta"]["non_default_settings"]["quick"] is True
    assert "untrained" in s["weights"]
