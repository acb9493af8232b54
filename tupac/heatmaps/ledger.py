"""The run ledger: one row per slide, PENDING / RUNNING / DONE / FAILED, in ``RUN/ledger.sqlite``.

Why SQLite in WAL mode rather than an append-only JSONL file:

- Crash safety comes with it. Each update is a transaction; WAL with ``synchronous=FULL``
  makes a committed update durable, and a process killed mid-write (``kill -9``, OOM, node
  loss) leaves at most an uncommitted tail in the WAL that the next opener rolls back. A JSONL
  log would need its own torn-line recovery and compaction.
- Concurrent readers never block the writer and always see a consistent snapshot (a
  ``tupac`` progress view, ``sqlite3 RUN/ledger.sqlite``, or a second driver asking what is
  done), and several writer processes serialize on SQLite's lock with a busy timeout.
- Read-modify-write steps (increment ``attempts``, plan a resume) are single ``BEGIN
  IMMEDIATE`` transactions, which an append-only log cannot express without a lock file.

Caveat: WAL needs shared memory between the processes that open the file, so all writers must
run on one machine (the driver, in the Ray job). Do not open the ledger from workers on other
nodes over NFS; report back to the driver instead.

A slide moves PENDING -> RUNNING (attempts += 1) -> DONE or FAILED. :meth:`Ledger.plan` decides
what a (re)run does: DONE slides whose input and model fingerprints match are skipped; a changed
input or model resets the slide to PENDING with zero attempts; anything else is retried until
``max_attempts`` attempts have been made, after which it is given up (FAILED, reported).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from tupac.errors import LedgerError
from tupac.heatmaps.commit import atomic_write_bytes, file_sha256

__all__ = ["State", "SlideRecord", "Plan", "Ledger", "LEDGER_FILE"]

LEDGER_FILE = "ledger.sqlite"
SCHEMA_VERSION = 1
_BUSY_TIMEOUT_S = 60.0  # a writer waits this long for another writer's transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS slides (
    slide_id  TEXT PRIMARY KEY,
    path      TEXT NOT NULL,
    state     TEXT NOT NULL CHECK (state IN ('PENDING', 'RUNNING', 'DONE', 'FAILED')),
    attempts  INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    error     TEXT,
    input_fp  TEXT,
    models_fp TEXT,
    created   TEXT NOT NULL,
    started   TEXT,
    finished  TEXT,
    updated   TEXT NOT NULL,
    host      TEXT,
    pid       INTEGER
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hashes (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, fp TEXT NOT NULL
);
"""


class State(str, Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"


@dataclass(frozen=True)
class SlideRecord:
    """One ledger row. Times are UTC ISO 8601 strings (None until the event happened)."""

    slide_id: str
    path: str
    state: State
    attempts: int
    error: str | None
    input_fp: str | None
    models_fp: str | None
    created: str
    started: str | None
    finished: str | None
    updated: str
    host: str | None
    pid: int | None


@dataclass(frozen=True)
class Plan:
    """What a (re)run will do, in the order the slides were given.

    Attributes
    ----------
    to_run : tuple of str
        Slides to (re)compute, now PENDING.
    skipped_done : tuple of str
        DONE with the same input and models: left alone.
    given_up : tuple of str
        FAILED after ``max_attempts`` attempts: not retried, reported as failed.
    """

    to_run: tuple[str, ...]
    skipped_done: tuple[str, ...]
    given_up: tuple[str, ...]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _record(row: sqlite3.Row) -> SlideRecord:
    d = dict(row)
    d["state"] = State(d["state"])
    return SlideRecord(**d)


class Ledger:
    """Per-slide states of one run. Open one per process (connections do not survive ``fork``).

    Use :meth:`open`; the object is also a context manager that closes the connection.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn

    # -- opening --------------------------------------------------------------------------
    @classmethod
    def open(cls, run_dir: str | Path) -> "Ledger":
        """Open (creating if needed) ``run_dir/ledger.sqlite``.

        Raises
        ------
        LedgerError
            The file is not an SQLite database, is corrupt, or has another schema version.
        """
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LEDGER_FILE
        try:
            conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as e:
            raise LedgerError(path, f"cannot open ledger: {e}") from None
        conn.row_factory = sqlite3.Row
        ledger = cls(path, conn)
        try:
            ledger._init_schema()
        except sqlite3.DatabaseError as e:
            conn.close()
            raise LedgerError(path, f"not a readable ledger ({e})") from None
        return ledger

    def _init_schema(self) -> None:
        c = self._conn
        c.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
        mode = c.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.DatabaseError(f"cannot switch to WAL journal (got {mode}); is RUN on a network file system?")
        c.execute("PRAGMA synchronous = FULL")  # a committed update survives a power cut, not only a crash
        with self._tx():
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                c.execute(stmt)
            row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                c.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"ledger schema version {row[0]}, this tupac reads {SCHEMA_VERSION}")
        bad = c.execute("PRAGMA quick_check").fetchone()[0]
        if bad != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {bad}")

    def _tx(self) -> "_Transaction":
        return _Transaction(self._conn)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading --------------------------------------------------------------------------
    def get(self, slide_id: str) -> SlideRecord:
        """The row of ``slide_id``; LedgerError when the ledger has none."""
        row = self._conn.execute("SELECT * FROM slides WHERE slide_id = ?", (slide_id,)).fetchone()
        if row is None:
            raise LedgerError(self.path, f"slide {slide_id!r} is not in the ledger (plan it first)")
        return _record(row)

    def records(self) -> list[SlideRecord]:
        """Every row, in slide ID order."""
        return [_record(r) for r in self._conn.execute("SELECT * FROM slides ORDER BY slide_id")]

    # -- planning -------------------------------------------------------------------------
    def plan(
        self,
        slides: Iterable[tuple[str, str | Path, str | None]],
        models_fp: str,
        max_attempts: int = 3,
        committed: Callable[[str], bool] | None = None,
    ) -> Plan:
        """Decide which slides to run, and record the decision (one transaction).

        Parameters
        ----------
        slides : iterable of (slide_id, path, input fingerprint or None)
            The cohort. A None fingerprint means the file could not be read (missing): it is run
            (and fails with a reason) until its attempts are used up.
        models_fp : str
            Fingerprint of the models (:func:`tupac.heatmaps.commit.models_fingerprint`).
        max_attempts : int
            Attempts after which a slide with unchanged inputs is given up.
        committed : callable, optional
            ``committed(slide_id)``: whether the slide's outputs still carry their commit record;
            a DONE slide whose outputs were deleted is then recomputed.
        """
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        to_run: list[str] = []
        skipped: list[str] = []
        given_up: list[str] = []
        now = _now()
        seen: set[str] = set()
        with self._tx():
            for slide_id, path, fp in slides:
                if slide_id in seen:
                    raise LedgerError(self.path, f"slide {slide_id!r} appears twice in the plan")
                seen.add(slide_id)
                row = self._conn.execute("SELECT * FROM slides WHERE slide_id = ?", (slide_id,)).fetchone()
                if row is None:
                    self._conn.execute(
                        "INSERT INTO slides (slide_id, path, state, attempts, input_fp, models_fp, created, updated)"
                        " VALUES (?, ?, 'PENDING', 0, ?, ?, ?, ?)",
                        (slide_id, str(path), fp, models_fp, now, now),
                    )
                    to_run.append(slide_id)
                    continue
                rec = _record(row)
                if rec.input_fp != fp or rec.models_fp != models_fp:
                    # New work: earlier attempts were on other inputs and do not count.
                    self._conn.execute(
                        "UPDATE slides SET path = ?, state = 'PENDING', attempts = 0, error = NULL, input_fp = ?,"
                        " models_fp = ?, started = NULL, finished = NULL, updated = ? WHERE slide_id = ?",
                        (str(path), fp, models_fp, now, slide_id),
                    )
                    to_run.append(slide_id)
                elif rec.state is State.DONE and (committed is None or committed(slide_id)):
                    skipped.append(slide_id)
                elif rec.attempts >= max_attempts:
                    error = rec.error
                    if rec.state is State.RUNNING or not error:
                        error = "interrupted: the run stopped while this slide was running"
                    self._conn.execute(
                        "UPDATE slides SET state = 'FAILED', error = ?, updated = ? WHERE slide_id = ?",
                        (error, now, slide_id),
                    )
                    given_up.append(slide_id)
                else:
                    error = rec.error
                    if rec.state is State.RUNNING:
                        error = "interrupted: the run stopped while this slide was running"
                    elif rec.state is State.DONE:
                        error = "outputs missing or not committed: recomputing"
                    self._conn.execute(
                        "UPDATE slides SET path = ?, state = 'PENDING', error = ?, updated = ? WHERE slide_id = ?",
                        (str(path), error, now, slide_id),
                    )
                    to_run.append(slide_id)
            plan = Plan(tuple(to_run), tuple(skipped), tuple(given_up))
            self._set_meta("last_plan", {**asdict(plan), "models_fp": models_fp, "max_attempts": max_attempts, "created": now})
        return plan

    def _set_meta(self, key: str, value: Any) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def _get_meta(self, key: str) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    # -- transitions ----------------------------------------------------------------------
    def _update(self, slide_id: str, sql: str, params: Sequence[Any]) -> None:
        try:
            with self._tx():
                cur = self._conn.execute(sql + " WHERE slide_id = ?", (*params, slide_id))
                if cur.rowcount != 1:
                    raise LedgerError(self.path, f"slide {slide_id!r} is not in the ledger (plan it first)")
        except sqlite3.Error as e:  # disk full, I/O error, lock held past the busy timeout
            raise LedgerError(self.path, f"cannot update slide {slide_id!r}: {e}") from None

    def mark_running(self, slide_id: str) -> int:
        """RUNNING, one more attempt; returns the attempt number (1 for the first)."""
        now = _now()
        self._update(
            slide_id,
            "UPDATE slides SET state = 'RUNNING', attempts = attempts + 1, error = NULL, started = ?,"
            " finished = NULL, updated = ?, host = ?, pid = ?",
            (now, now, socket.gethostname(), os.getpid()),
        )
        return self.get(slide_id).attempts

    def mark_done(self, slide_id: str) -> None:
        """DONE (call after the slide's commit record is written)."""
        now = _now()
        self._update(slide_id, "UPDATE slides SET state = 'DONE', error = NULL, finished = ?, updated = ?", (now, now))

    def mark_failed(self, slide_id: str, error: str) -> None:
        """FAILED with ``error`` (one line that names the file and the problem)."""
        now = _now()
        self._update(slide_id, "UPDATE slides SET state = 'FAILED', error = ?, finished = ?, updated = ?", (str(error), now, now))

    # -- input fingerprints ---------------------------------------------------------------
    def input_fingerprint(self, path: str | Path, rehash: bool = False) -> str | None:
        """The slide file's fingerprint key (``sha256:<hex>:<size>``), or None when unreadable.

        Hashing a 2 GB slide takes seconds, and a resume re-plans the whole cohort, so hashes
        are cached here keyed by real path, size, mtime (ns) and inode; any change of those
        rehashes. ``rehash=True`` ignores the cache (for tools that keep mtimes while
        rewriting content).
        """
        p = Path(path)
        try:
            real = str(p.resolve())
            st = os.stat(real)
        except OSError:
            return None
        key = (real, st.st_size, st.st_mtime_ns, st.st_ino)
        if not rehash:
            row = self._conn.execute(
                "SELECT fp FROM hashes WHERE path = ? AND size = ? AND mtime_ns = ? AND inode = ?", key
            ).fetchone()
            if row is not None:
                return row[0]
        try:
            fp = file_sha256(real).key
        except OSError:
            return None
        with self._tx():
            self._conn.execute("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?)", (*key, fp))
        return fp

    # -- reporting ------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """The outcome of the last plan (or of every slide when none was made).

        Returns
        -------
        dict
            ``counts`` per state; ``done`` (every DONE slide, skipped ones included),
            ``skipped`` (DONE before this run), ``failed`` (``slide_id``, ``error``,
            ``attempts``, ``given_up``), ``unfinished`` (PENDING/RUNNING), ``ok`` (no failed
            and no unfinished slide).
        """
        plan = self._get_meta("last_plan")
        rows = {r.slide_id: r for r in self.records()}
        if plan is not None:
            ids = [*plan["to_run"], *plan["skipped_done"], *plan["given_up"]]
            given_up = set(plan["given_up"])
            skipped = [s for s in plan["skipped_done"] if rows[s].state is State.DONE]
        else:
            ids, given_up, skipped = sorted(rows), set(), []
        chosen = [rows[s] for s in ids if s in rows]
        counts = {s.value: sum(r.state is s for r in chosen) for s in State}
        failed = [
            {"slide_id": r.slide_id, "path": r.path, "error": r.error, "attempts": r.attempts, "given_up": r.slide_id in given_up}
            for r in chosen if r.state is State.FAILED
        ]
        unfinished = [r.slide_id for r in chosen if r.state in (State.PENDING, State.RUNNING)]
        return {
            "ledger": str(self.path),
            "written": _now(),
            "total": len(chosen),
            "counts": counts,
            "done": [r.slide_id for r in chosen if r.state is State.DONE],
            "skipped": skipped,
            "failed": failed,
            "unfinished": unfinished,
            "ok": not failed and not unfinished,
        }

    def write_summary(self, path: str | Path) -> Path:
        """Write :meth:`summary` as JSON, atomically; returns the path."""
        return atomic_write_bytes(path, json.dumps(self.summary(), indent=2).encode())


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error): takes the write lock up front so
    that a read-modify-write never meets a concurrent writer half-way (no upgrade deadlock)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        deadline = time.monotonic() + _BUSY_TIMEOUT_S
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        else:
            self._conn.execute("ROLLBACK")
