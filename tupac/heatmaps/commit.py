"""The commit record of a slide: written last, atomically; a slide without one is not done.

The record is a file, ``commit.json``, inside the slide's Zarr group folder
(``RUN/slides/<id>.zarr/commit.json``), not a group attribute. Why a file:

- Atomicity. Group attributes live in ``zarr.json``, which zarr rewrites as a whole whenever
  attributes change; a record there would share its fate with the metadata that makes the
  store readable. A separate file is written to a temporary name, fsynced, and moved into
  place with ``os.replace`` (atomic on POSIX), then the folder is fsynced so the rename itself
  survives a power cut. A reader sees either no record or a complete one.
- Independence. Zarr and OME-NGFF readers ignore unknown files in a group folder, so the
  record changes nothing for napari or ome-zarr-py, and ``cat commit.json`` answers "is this
  slide done and with what" without Python.

The record holds the input file's size and SHA-256 (streamed in 8 MiB blocks), each model's
name and hash, the code version (``tupac.__version__`` and ``git describe`` when the package
runs from a checkout), per-stage timings, the arrays it vouches for, checksums of side outputs
(e.g. the detections CSV) and the creation time (UTC, ISO 8601).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

from tupac import __version__
from tupac.errors import HeatmapStoreError

__all__ = [
    "COMMIT_FILE",
    "InputFingerprint",
    "CommitRecord",
    "file_sha256",
    "input_fingerprint",
    "models_fingerprint",
    "code_version",
    "atomic_write_bytes",
    "move_aside",
    "write_commit",
    "read_commit",
    "is_committed",
]

COMMIT_FILE = "commit.json"
RECORD_VERSION = 1
_BLOCK = 8 << 20  # 8 MiB: large enough that hashing runs at disk speed, small enough to stream


@dataclass(frozen=True)
class InputFingerprint:
    """What identifies an input file's content.

    Attributes
    ----------
    size : int
        Bytes.
    sha256 : str
        Hex digest of the whole file.
    """

    size: int
    sha256: str

    @property
    def key(self) -> str:
        """A one-string form for ledgers and comparisons: ``"sha256:<hex>:<size>"``."""
        return f"sha256:{self.sha256}:{self.size}"


def file_sha256(path: str | Path, block: int = _BLOCK) -> InputFingerprint:
    """Size and SHA-256 of a file, read in ``block``-byte pieces (memory does not grow with size).

    Raises
    ------
    FileNotFoundError, OSError
        As raised by ``open``; callers turn them into their own errors.
    """
    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(block)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return InputFingerprint(size, h.hexdigest())


def input_fingerprint(path: str | Path) -> InputFingerprint:
    """The fingerprint of a slide file (see :func:`file_sha256`)."""
    return file_sha256(path)


def models_fingerprint(models: Mapping[str, str]) -> str:
    """One digest for a set of models, independent of their order.

    Parameters
    ----------
    models : mapping of str to str
        Model name to its weights' hash (e.g. the safetensors file's SHA-256).

    Returns
    -------
    str
        ``"sha256:<hex>"`` of the sorted ``name=hash`` lines.
    """
    text = "\n".join(f"{k}={models[k]}" for k in sorted(models))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@lru_cache(maxsize=1)
def _git_describe() -> str | None:
    pkg = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(pkg), "describe", "--always", "--dirty", "--tags"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None  # no git on a worker image: the package version still identifies the code
    if out.returncode != 0:
        return None  # not a checkout (an installed wheel)
    return out.stdout.strip() or None


def code_version() -> dict[str, str | None]:
    """``{"tupac": __version__, "git": "<describe>" or None}``."""
    return {"tupac": __version__, "git": _git_describe()}


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open folders; the rename is still atomic there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    Temporary file in the same folder, fsync, ``os.replace``, fsync of the folder.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def move_aside(paths: Sequence[str | Path], parent: str | Path) -> Path:
    """Move ``paths`` (those that exist) into a new ``parent/superseded/<UTC time>/`` folder.

    How tupac replaces results without overwriting them: one ``rename`` per path (atomic on one
    file system), nothing deleted. Returns the new folder.
    """
    from datetime import datetime, timezone

    dest = Path(parent) / "superseded" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    dest.mkdir(parents=True, exist_ok=True)
    for path in map(Path, paths):
        if path.exists():
            path.rename(dest / path.name)
    _fsync_dir(dest)
    return dest


@dataclass(frozen=True)
class CommitRecord:
    """Everything needed to decide later whether a slide's outputs are still valid.

    Attributes
    ----------
    slide_id : str
    input_path : str
        The slide file as given (informational; the fingerprint is what is compared).
    input : InputFingerprint
    models : dict of str to str
        Model name to weights hash.
    code : dict
        :func:`code_version` at commit time.
    timings_s : dict of str to float
        Seconds per stage (e.g. ``{"tissue": 1.2, "tumor": 30.5}``).
    arrays : dict
        Per array: ``shape``, ``chunks``, ``dtype``, ``mpp``, ``levels``.
    outputs : dict
        Side files committed with the store (e.g. ``"mitoses.csv"``): ``size`` and ``sha256``.
    chunks : dict
        Per array level (``"tumor/0"``): ``count`` of chunk files and ``sha256`` of their sorted
        ``key size`` lines, as on disk at commit time (:func:`tupac.heatmaps.store.chunk_manifest`).
        A store whose chunks no longer match is not done (see
        :func:`tupac.heatmaps.store.verify_committed`). Empty in records written before it existed.
    created : str
        UTC time, ISO 8601.
    extra : dict
        Anything else the job wants to keep (JSON-serializable).
    """

    slide_id: str
    input_path: str
    input: InputFingerprint
    models: dict[str, str]
    code: dict[str, Any] = field(default_factory=code_version)
    timings_s: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    chunks: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def models_fp(self) -> str:
        return models_fingerprint(self.models)

    def to_dict(self) -> dict[str, Any]:
        return {"record_version": RECORD_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CommitRecord":
        d = dict(d)
        version = d.pop("record_version", None)
        if version != RECORD_VERSION:
            raise ValueError(f"commit record version {version!r}, expected {RECORD_VERSION}")
        inp = d.pop("input")
        return cls(input=InputFingerprint(int(inp["size"]), str(inp["sha256"])), **d)


def _store_dir(store: Any) -> Path:
    return Path(getattr(store, "path", store))


def write_commit(store: Any, record: CommitRecord) -> Path:
    """Write ``record`` as ``<store>/commit.json`` atomically; call it after every other write.

    Parameters
    ----------
    store : HeatmapStore or path-like
        The slide's Zarr group folder.
    """
    folder = _store_dir(store)
    if not (folder / "zarr.json").is_file():
        raise HeatmapStoreError(folder, "cannot commit: not a Zarr group (no zarr.json)")
    data = json.dumps(record.to_dict(), indent=2, sort_keys=True).encode()
    return atomic_write_bytes(folder / COMMIT_FILE, data)


def read_commit(store: Any) -> CommitRecord:
    """The store's commit record.

    Raises
    ------
    HeatmapStoreError
        No record (the slide is not done) or an unreadable one.
    """
    path = _store_dir(store) / COMMIT_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise HeatmapStoreError(path.parent, "not committed (no commit.json): the slide is not done") from None
    except OSError as e:
        raise HeatmapStoreError(path, f"cannot read commit record: {e.strerror or e}") from None
    try:
        return CommitRecord.from_dict(json.loads(raw))
    except (ValueError, KeyError, TypeError) as e:
        raise HeatmapStoreError(path, f"invalid commit record: {e}") from None


def is_committed(store: Any) -> bool:
    """True when the store holds a readable commit record (a slide without one is not done)."""
    try:
        read_commit(store)
    except HeatmapStoreError:
        return False
    return True
