"""One job per run folder: the lock on ``RUN/run.lock`` refuses a second job at once, names the
owner, is re-entrant within a process and dies with its process (never stale).

Every command that writes a run folder is checked in a child process while this test process
holds the folder; the cohort jobs racing each other are in tests/infer/test_cluster_faults.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tupac.errors import RunFolderBusyError
from tupac.runlock import LOCK_FILE, read_owner, run_lock

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]

_TRY_LOCK = textwrap.dedent("""
    import sys
    from tupac.runlock import run_lock
    with run_lock(sys.argv[1], "second"):
        print("got it")
""")


def _try_lock(run: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-c", _TRY_LOCK, str(run)], capture_output=True, text=True, timeout=120)


def test_second_process_is_refused_with_the_owner_and_the_lock_is_reentrant(tmp_path):
    run = tmp_path / "run"
    with run_lock(run, "tupac infer") as lock_file:
        assert lock_file == (run / LOCK_FILE).resolve()
        owner = read_owner(run)
        assert owner["pid"] == os.getpid() and owner["command"] == "tupac infer"
        assert owner["host"] == socket.gethostname()
        with run_lock(run, "tupac features"):  # the stages of `tupac run` take it again
            pass
        other = _try_lock(run)  # still held after the inner block
        assert other.returncode != 0 and "got it" not in other.stdout
        assert "RunFolderBusyError" in other.stderr
        assert f"tupac infer, pid {os.getpid()} on host {socket.gethostname()}, started {owner['started']}" in other.stderr
        assert str(run.resolve()) in other.stderr
    assert read_owner(run) is None  # released and cleared
    assert _try_lock(run).stdout.strip() == "got it"


def test_lock_dies_with_a_killed_owner(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [PY, "-c", "import sys, time\nfrom tupac.runlock import run_lock\nwith run_lock(sys.argv[1], 'holder'):\n"
                   "    print('held', flush=True)\n    time.sleep(600)", str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusyError, match=f"holder, pid {holder.pid}"):
            with run_lock(run, "me"):
                pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    # No stale lock: the kernel released it with the process, though its owner record is still there.
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == holder.pid
    with run_lock(run, "me"):
        assert read_owner(run)["command"] == "me"


def test_reading_commands_do_not_create_a_missing_run_folder(tmp_path):
    with run_lock(tmp_path / "nope", "tupac fit", create=False) as lock_file:
        assert lock_file is None
    assert not (tmp_path / "nope").exists()


def _dataset(root: Path) -> Path:
    (root / "training_image_data").mkdir(parents=True)
    for i in (1, 2):
        (root / "training_image_data" / f"TUPAC-TR-00{i}.svs").write_bytes(b"not read: the job is refused first")
    (root / "training_ground_truth.csv").write_text("1,0.5\n2,0.1\n")
    return root


@pytest.mark.parametrize("command", ["infer", "jobs/infer_cohort.py", "run", "features", "fit"])
def test_every_writing_command_is_refused_while_another_job_holds_the_folder(tmp_path, command):
    data = _dataset(tmp_path / "data")
    run = tmp_path / "run"
    (run / "slides").mkdir(parents=True)  # as while the owner's inference is under way
    (run / "features.parquet").write_bytes(b"untouched")
    args = {
        "infer": ["-m", "tupac", "infer", "--data", str(data), "--models", str(tmp_path / "models"), "--out", str(run)],
        "jobs/infer_cohort.py": [str(ROOT / "jobs" / "infer_cohort.py"), "--data", str(data), "--models",
                                 str(tmp_path / "models"), "--out", str(run)],
        "run": ["-m", "tupac", "run", "--data", str(data), "--out", str(run)],
        "features": ["-m", "tupac", "features", "--run", str(run)],
        "fit": ["-m", "tupac", "fit", "--run", str(run), "--labels", str(data / "training_ground_truth.csv")],
    }[command]
    with run_lock(run, "tupac run"):
        before = sorted(p.name for p in run.iterdir())
        proc = subprocess.run([PY, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "in use by another tupac job" in lines[0] and f"tupac run, pid {os.getpid()}" in lines[0]
    assert str(run.resolve()) in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written
    assert (run / "features.parquet").read_bytes() == b"untouched"
