"""A CPU ``tupac infer`` writes nothing outside its run folder and shows no GPU noise.

The model actors import torch, whose CUDA wheels load libcufile, before cuCIM opens a slide; on a
machine without an NVIDIA driver cuCIM then made libcufile print "dlopen error libcuda.so.1 ...
cuFile initialization failed" (forwarded by Ray to the terminal) and append to ``./cufile.log``.
"""

from __future__ import annotations

import os

import pytest
from test_job_support import infer_cli, local_args, make_cohort, make_models

from tupac.slide import quiet


@pytest.mark.slow
def test_cpu_infer_writes_only_in_its_run_folder_and_shows_no_gpu_noise(tmp_path, monkeypatch):
    pytest.importorskip("cucim")
    # As from a shell: no cuFile log path chosen, none left by in-process jobs of other tests.
    monkeypatch.delenv(quiet.CUFILE_LOG_VAR, raising=False)
    monkeypatch.setattr(quiet, "_ours", None)
    models = make_models(tmp_path / "models")
    data = make_cohort(tmp_path / "data", n=1)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = infer_cli(local_args(models, tmp_path / "RUN", data=data), cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert os.listdir(cwd) == []
    stray = [p for p in tmp_path.rglob("cufile.log") if p.parent != tmp_path / "RUN" / "logs"]
    assert stray == []
    if not quiet.cuda_driver_present():
        # torch loaded libcufile in the actor, whose no-driver errors went to the run's log
        assert "unable to load,  libcuda.so.1" in (tmp_path / "RUN" / "logs" / "cufile.log").read_text()
        lines = (proc.stdout + proc.stderr).splitlines()
        assert [ln for ln in lines if "libcuda" in ln or quiet.is_no_driver_noise(ln)] == []
