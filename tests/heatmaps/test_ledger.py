"""The run ledger with real processes: concurrent writers, a writer killed mid-loop, and resume
decisions (changed input, changed model, attempts exhausted)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tupac.errors import LedgerError
from tupac.heatmaps.ledger import LEDGER_FILE, Ledger, Plan, State


def _cohort(n: int, fp: str = "in-v1") -> list[tuple[str, str, str]]:
    return [(f"S{i:03d}", f"/data/S{i:03d}.svs", f"{fp}-{i}") for i in range(n)]


def _run_all(ledger: Ledger, ids, fail: set[str] = frozenset()) -> None:
    for sid in ids:
        ledger.mark_running(sid)
        if sid in fail:
            ledger.mark_failed(sid, f"/data/{sid}.svs: cannot decode tile 3")
        else:
            ledger.mark_done(sid)


def test_first_plan_runs_everything_and_states_read_back(tmp_path: Path) -> None:
    with Ledger.open(tmp_path) as led:
        plan = led.plan(_cohort(3), "models-A", max_attempts=2)
        assert plan == Plan(("S000", "S001", "S002"), (), ())
        assert {r.state for r in led.records()} == {State.PENDING}
        assert led.mark_running("S000") == 1
        rec = led.get("S000")
        assert rec.state is State.RUNNING and rec.attempts == 1 and rec.pid == os.getpid() and rec.started
        led.mark_done("S000")
        led.mark_running("S001")
        led.mark_failed("S001", "/data/S001.svs: truncated file")
    with Ledger.open(tmp_path) as led:  # reopened: the states persisted
        assert led.get("S000").state is State.DONE and led.get("S000").finished
        assert led.get("S001").error == "/data/S001.svs: truncated file"
        assert led.get("S002").state is State.PENDING and led.get("S002").attempts == 0
        with pytest.raises(LedgerError, match="'S999' is not in the ledger"):
            led.mark_done("S999")


def test_resume_skips_done_and_retries_failed_and_interrupted(tmp_path: Path) -> None:
    cohort = _cohort(4)
    with Ledger.open(tmp_path) as led:
        led.plan(cohort, "models-A", max_attempts=3)
        _run_all(led, ["S000", "S001"], fail={"S001"})
        led.mark_running("S002")  # the driver dies here: S002 stays RUNNING
    with Ledger.open(tmp_path) as led:
        plan = led.plan(cohort, "models-A", max_attempts=3)
        assert plan.skipped_done == ("S000",)
        assert plan.to_run == ("S001", "S002", "S003") and plan.given_up == ()
        assert led.get("S002").state is State.PENDING and "interrupted" in led.get("S002").error
        assert led.get("S001").attempts == 1 and led.get("S000").attempts == 1


def test_changed_input_or_model_reruns_with_fresh_attempts(tmp_path: Path) -> None:
    with Ledger.open(tmp_path) as led:
        led.plan(_cohort(3), "models-A", max_attempts=1)
        _run_all(led, ["S000", "S001", "S002"], fail={"S002"})
        changed = _cohort(3)
        changed[1] = ("S001", "/data/S001.svs", "in-v2-1")  # the slide file was replaced
        plan = led.plan(changed, "models-A", max_attempts=1)
        assert plan == Plan(("S001",), ("S000",), ("S002",))
        assert led.get("S001").attempts == 0 and led.get("S001").input_fp == "in-v2-1"
        plan = led.plan(changed, "models-B", max_attempts=1)  # new weights: every slide is redone
        assert plan == Plan(("S000", "S001", "S002"), (), ())
        assert all(r.attempts == 0 and r.models_fp == "models-B" for r in led.records())


def test_attempts_exhausted_are_given_up_and_reported(tmp_path: Path) -> None:
    cohort = _cohort(2)
    cohort[1] = ("S001", "/data/missing.svs", None)  # missing file: no fingerprint
    with Ledger.open(tmp_path) as led:
        for attempt in (1, 2):
            plan = led.plan(cohort, "models-A", max_attempts=2)
            assert "S001" in plan.to_run
            for sid in plan.to_run:
                assert led.mark_running(sid) == (attempt if sid == "S001" else 1)
                if sid == "S001":
                    led.mark_failed(sid, f"/data/missing.svs: no such file (attempt {attempt})")
                else:
                    led.mark_done(sid)
        plan = led.plan(cohort, "models-A", max_attempts=2)
        assert plan == Plan((), ("S000",), ("S001",))
        assert led.get("S001").attempts == 2  # planning does not count as an attempt
        summary = led.summary()
        assert summary["ok"] is False
        assert summary["counts"] == {"PENDING": 0, "RUNNING": 0, "DONE": 1, "FAILED": 1}
        assert summary["done"] == ["S000"] and summary["skipped"] == ["S000"]
        assert summary["failed"] == [{
            "slide_id": "S001", "path": "/data/missing.svs", "attempts": 2, "given_up": True,
            "error": "/data/missing.svs: no such file (attempt 2)",
        }]
        out = led.write_summary(tmp_path / "summary.json")
        assert json.loads(out.read_text())["failed"][0]["given_up"] is True
        # more attempts allowed on a later invocation: the slide is tried again
        assert led.plan(cohort, "models-A", max_attempts=3).to_run == ("S001",)


def test_done_without_commit_is_recomputed(tmp_path: Path) -> None:
    with Ledger.open(tmp_path) as led:
        led.plan(_cohort(2), "m", max_attempts=3)
        _run_all(led, ["S000", "S001"])
        plan = led.plan(_cohort(2), "m", max_attempts=3, committed=lambda sid: sid != "S001")
        assert plan == Plan(("S001",), ("S000",), ())


def test_summary_is_ok_when_everything_is_done(tmp_path: Path) -> None:
    with Ledger.open(tmp_path) as led:
        led.plan(_cohort(2), "m")
        assert led.summary()["unfinished"] == ["S000", "S001"] and not led.summary()["ok"]
        _run_all(led, ["S000", "S001"])
        s = led.summary()
        assert s["ok"] and s["done"] == ["S000", "S001"] and s["skipped"] == [] and s["failed"] == []


def test_input_fingerprint_is_cached_until_the_file_changes(tmp_path: Path) -> None:
    import hashlib

    f = tmp_path / "a.svs"
    f.write_bytes(b"x" * 1000)
    with Ledger.open(tmp_path / "RUN") as led:
        fp1 = led.input_fingerprint(f)
        assert fp1 == f"sha256:{hashlib.sha256(b'x' * 1000).hexdigest()}:1000"
        assert led.input_fingerprint(f) == fp1
        f.write_bytes(b"y" * 1001)
        assert led.input_fingerprint(f) == f"sha256:{hashlib.sha256(b'y' * 1001).hexdigest()}:1001"
        assert led.input_fingerprint(tmp_path / "missing.svs") is None


def test_not_a_ledger_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / LEDGER_FILE).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match=r"ledger\.sqlite: not a readable ledger"):
        Ledger.open(tmp_path)


# -- real processes ---------------------------------------------------------------------------

def _worker(run_dir: str, ids: list[str], barrier) -> None:
    led = Ledger.open(run_dir)  # one connection per process, opened after fork
    barrier.wait()
    for i, sid in enumerate(ids):
        led.mark_running(sid)
        if i % 5 == 4:
            led.mark_failed(sid, f"{sid}: synthetic failure")
        else:
            led.mark_done(sid)
    led.close()


def test_concurrent_processes_update_different_slides(tmp_path: Path) -> None:
    n_proc, per = 4, 15
    cohort = _cohort(n_proc * per)
    with Ledger.open(tmp_path) as led:
        led.plan(cohort, "m")
    ids = [s for s, _, _ in cohort]
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(n_proc)
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), ids[k::n_proc], barrier)) for k in range(n_proc)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * n_proc
    with Ledger.open(tmp_path) as led:
        recs = {r.slide_id: r for r in led.records()}
    pids = {r.pid for r in recs.values()}
    assert pids == {p.pid for p in procs}  # the work really was spread over the processes
    for k in range(n_proc):
        for i, sid in enumerate(ids[k::n_proc]):
            r = recs[sid]
            assert r.attempts == 1
            if i % 5 == 4:
                assert r.state is State.FAILED and r.error == f"{sid}: synthetic failure"
            else:
                assert r.state is State.DONE and r.error is None


_CRASH_CHILD = textwrap.dedent(
    """
    import sys
    from tupac.heatmaps.ledger import Ledger
    led = Ledger.open(sys.argv[1])
    ids = [f"S{i:03d}" for i in range(int(sys.argv[2]))]
    for sid in ids:
        led.mark_running(sid)
        led.mark_failed(sid, "x" * 20000)   # large rows: many pages per transaction
        led.mark_running(sid)
        led.mark_done(sid)
        print(sid, flush=True)              # reported only after the DONE transaction committed
    """
)


def test_ledger_survives_kill_9_mid_write(tmp_path: Path) -> None:
    n = 400
    with Ledger.open(tmp_path) as led:
        led.plan(_cohort(n), "m")
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASH_CHILD, str(tmp_path), str(n)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    reported = [proc.stdout.readline().strip() for _ in range(20)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reported += [line.strip() for line in proc.stdout if line.strip()]
    assert proc.returncode == -signal.SIGKILL
    assert len(reported) < n, "the child finished before it was killed; the test measured nothing"

    conn = sqlite3.connect(tmp_path / LEDGER_FILE)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with Ledger.open(tmp_path) as led:
        recs = {r.slide_id: r for r in led.records()}
        assert len(recs) == n
        for sid in reported:  # every update the child saw committed is there
            assert recs[sid].state is State.DONE and recs[sid].attempts == 2
        in_flight = [r for r in recs.values() if r.slide_id not in reported and r.attempts > 0]
        assert len(in_flight) <= 1  # at most the slide being written when the kill came
        for r in in_flight:
            assert r.state in (State.RUNNING, State.FAILED, State.DONE)
        untouched = [r for r in recs.values() if r.slide_id not in reported and r.attempts == 0]
        assert all(r.state is State.PENDING for r in untouched)
        # and the ledger keeps working: resume planning and finishing the rest
        plan = led.plan(_cohort(n), "m", max_attempts=5)
        assert set(plan.skipped_done) >= set(reported)
        # the in-flight slide may have committed DONE just before the kill, unreported
        assert n - len(reported) - 1 <= len(plan.to_run) <= n - len(reported)
        _run_all(led, plan.to_run[:3])
        assert all(led.get(sid).state is State.DONE for sid in plan.to_run[:3])


def test_reader_sees_consistent_snapshots_while_a_writer_runs(tmp_path: Path) -> None:
    n = 200
    with Ledger.open(tmp_path) as led:
        led.plan(_cohort(n), "m")
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASH_CHILD, str(tmp_path), str(n)], stdout=subprocess.PIPE, text=True
    )
    try:
        proc.stdout.readline()
        with Ledger.open(tmp_path) as reader:
            for _ in range(30):
                recs = reader.records()
                assert len(recs) == n
                for r in recs:  # a DONE slide is never seen with a half-applied update
                    assert (r.state is State.DONE) == (r.attempts == 2 and r.error is None and r.finished is not None)
    finally:
        proc.kill()
        proc.wait()
