"""Per-slide heatmap stores: one Zarr v3 group per slide, each heatmap an OME-NGFF 0.5 image.

On-disk layout (``RUN/slides/<slide_id>.zarr``)::

    <slide_id>.zarr/
      zarr.json            group; attributes["tupac"] = {"format": 1, "slide_id": ..., "images": [...]}
      tissue/              group = one OME-NGFF image: attributes["ome"] = {"version": "0.5",
        zarr.json                "multiscales": [{"axes": [y, x], "datasets": [{"path": "0", ...}]}]}
        0/                 array, full resolution of the heatmap (uint8 0/1 or bool), dims ("y", "x")
        1/, 2/ ...         optional 2x-downsampled levels (written by build_pyramid)
      tumor/0 ...          float32 tumor probability
      mitosis/0 ...        float32 mitosis probability
      commit.json          written last (see tupac.heatmaps.commit); without it the slide is not done

Why one sub-group per heatmap: an NGFF image is a group whose ``multiscales`` describe arrays of
one resolution series. The three heatmaps have different resolutions (tissue from a thumbnail,
tumor at 10x, mitosis at 40x) and meanings, and viewers (napari, ome-zarr-py) show the first
``multiscales`` entry of a group, so each heatmap gets its own image group. Each is then opened
on its own (``napari RUN/slides/X.zarr/tumor``) and addressed by name here
(``store.read("tumor")`` reads ``tumor/0``).

Axes are ``y, x`` of type ``space`` in ``micrometer``; dataset ``k`` has the transformations
``scale = mpp * 2**k`` (µm per heatmap pixel) and ``translation = offset_um + (2**k - 1) / 2 * mpp``
(the translation is omitted when zero). Array index ``i`` is the centre of a pixel, at
``scale * i + translation`` µm from the slide's level-0 origin, so a downsampled pixel sits at the
centre of the pixels it summarizes and ``offset_um`` is the centre of heatmap pixel (0, 0).

Chunks are the tile grid: a job writes one tile's result as one chunk with :meth:`write_tile`,
and each chunk has exactly one writer, so several processes can fill one store without locks
(zarr writes each chunk to its own file, atomically). Writers on several machines need a shared
file system for ``RUN/``.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from tupac.errors import ConfigError, HeatmapStoreError, StoreExistsError
from tupac.geometry import Frame
from tupac.heatmaps.commit import (
    COMMIT_FILE, CommitRecord, InputFingerprint, file_sha256, is_committed, read_commit, write_commit,
)
from tupac.data.manifest import slide_id_problem

__all__ = [
    "ArraySpec", "HeatmapStore", "store_path", "detections_path", "ngff_multiscales", "chunk_manifest",
    "verify_committed", "STORE_FORMAT",
]

STORE_FORMAT = 1
NGFF_VERSION = "0.5"
_DTYPES = {"bool", "uint8", "uint16", "float32", "float64"}


def store_path(run_dir: str | Path, slide_id: str) -> Path:
    """``RUN/slides/<slide_id>.zarr``; ValueError when the ID is not a plain name."""
    problem = slide_id_problem(slide_id)
    if problem:
        raise ValueError(problem)
    return Path(run_dir) / "slides" / f"{slide_id}.zarr"


def detections_path(store: str | Path) -> Path:
    """The detections table beside a slide's store: ``RUN/slides/<id>.zarr`` -> ``RUN/slides/<id>.mitoses.csv``."""
    store = Path(store)
    return store.with_name(f"{store.name.removesuffix('.zarr')}.mitoses.csv")


@dataclass(frozen=True)
class ArraySpec:
    """Shape and meaning of one heatmap, validated at construction.

    Parameters
    ----------
    shape : (int, int)
        ``(rows, cols)`` of the full-resolution heatmap, in heatmap pixels.
    chunks : (int, int)
        The tile grid in heatmap pixels: one chunk per tile.
    dtype : str
        One of ``bool``, ``uint8``, ``uint16``, ``float32``, ``float64``.
    mpp : float
        µm per heatmap pixel (e.g. 1.0 for a 10x heatmap at stride 1).
    fill_value : int, float or bool
        Value of chunks never written (background).
    levels : int
        Number of resolution levels (1 = full resolution only); level k is 2**k smaller.
    offset_um : (float, float)
        ``(y, x)`` in µm, from the slide's level-0 origin, of the *centre* of heatmap pixel
        (0, 0). For a model heatmap whose cell 0 is centred ``o`` pixels at ``m`` µm/px from the
        origin with output stride ``s`` (:class:`tupac.heatmaps.windows.HeatmapGeometry`):
        ``mpp = s * m`` and ``offset_um = (o * m, o * m)``. ``mpp``, ``offset_um`` and ``shape`` are
        the spec's :class:`tupac.geometry.Frame` (:attr:`frame`, :meth:`from_frame`).
    """

    shape: tuple[int, int]
    chunks: tuple[int, int]
    dtype: str
    mpp: float
    fill_value: float | int | bool = 0
    levels: int = 1
    offset_um: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        shape = tuple(int(v) for v in self.shape)
        chunks = tuple(int(v) for v in self.chunks)
        dtype = np.dtype(self.dtype).name
        if len(shape) != 2 or min(shape) < 1:
            raise ConfigError(f"ArraySpec.shape must be (rows, cols) >= 1, got {self.shape!r}")
        if len(chunks) != 2 or min(chunks) < 1:
            raise ConfigError(f"ArraySpec.chunks must be (rows, cols) >= 1, got {self.chunks!r}")
        if dtype not in _DTYPES:
            raise ConfigError(f"ArraySpec.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if not (math.isfinite(self.mpp) and self.mpp > 0):
            raise ConfigError(f"ArraySpec.mpp must be a positive µm/px, got {self.mpp!r}")
        if int(self.levels) < 1 or min(shape) >> (int(self.levels) - 1) < 1:
            raise ConfigError(f"ArraySpec.levels={self.levels!r} leaves an empty level for shape {shape}")
        offset = tuple(float(v) for v in self.offset_um)
        if len(offset) != 2 or not all(map(math.isfinite, offset)):
            raise ConfigError(f"ArraySpec.offset_um must be two finite µm values, got {self.offset_um!r}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "chunks", chunks)
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "mpp", float(self.mpp))
        object.__setattr__(self, "levels", int(self.levels))
        object.__setattr__(self, "offset_um", offset)
        object.__setattr__(self, "fill_value", np.dtype(dtype).type(self.fill_value).item())

    @classmethod
    def from_frame(cls, frame: Frame, chunks: tuple[int, int], dtype: str, fill_value: float | int | bool = 0,
                   levels: int = 1) -> "ArraySpec":
        """The spec of a raster placed by ``frame`` (which must know its ``shape``)."""
        return cls(frame.shape, chunks, dtype, frame.mpp, fill_value, levels, offset_um=frame.offset_um)

    @property
    def frame(self) -> Frame:
        """Where this heatmap (level 0) lies on the slide."""
        return Frame(self.mpp, self.offset_um, self.shape)

    def level_shape(self, k: int) -> tuple[int, int]:
        """Shape of level ``k`` (floor halving: a trailing odd row/column is dropped)."""
        return (self.shape[0] >> k, self.shape[1] >> k)

    def grid(self) -> tuple[int, int]:
        """Number of chunks (tiles) along rows and columns at level 0."""
        return (-(-self.shape[0] // self.chunks[0]), -(-self.shape[1] // self.chunks[1]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape), "chunks": list(self.chunks), "dtype": self.dtype, "mpp": self.mpp,
            "fill_value": self.fill_value, "levels": self.levels, "offset_um": list(self.offset_um),
        }


def ngff_multiscales(name: str, spec: ArraySpec) -> dict[str, Any]:
    """The ``attributes["ome"]`` of one heatmap's image group (OME-NGFF 0.5)."""
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in ("y", "x")]
    datasets = []
    for k in range(spec.levels):
        f = 2**k
        shift = (f - 1) / 2 * spec.mpp
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": [spec.mpp * f, spec.mpp * f]}]
        translation = [spec.offset_um[0] + shift, spec.offset_um[1] + shift]
        if any(translation):
            transforms.append({"type": "translation", "translation": translation})
        datasets.append({"path": str(k), "coordinateTransformations": transforms})
    ms: dict[str, Any] = {"name": name, "axes": axes, "datasets": datasets}
    if spec.levels > 1:
        ms["type"] = "mean" if spec.dtype.startswith("float") else "max"
        ms["metadata"] = {"description": f"2x2 {ms['type']} per level, trailing odd row/column dropped"}
    return {"version": NGFF_VERSION, "multiscales": [ms]}


def _remove_tree(path: Path) -> None:
    """Move aside, then delete: a crash part-way leaves a hidden leftover, never a half store."""
    trash = path.with_name(f".{path.name}.{uuid.uuid4().hex}.trash")
    path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


class HeatmapStore:
    """One slide's heatmaps. Build with :meth:`create` or :meth:`open`, not the constructor."""

    def __init__(self, path: Path, group: Any, mode: str = "r+") -> None:
        self.path = path
        self._group = group
        self._mode = mode
        attrs = dict(group.attrs).get("tupac")
        if not isinstance(attrs, dict) or attrs.get("format") != STORE_FORMAT:
            raise HeatmapStoreError(path, f"not a tupac heatmap store (group attributes lack tupac.format={STORE_FORMAT})")
        self.slide_id: str = attrs["slide_id"]
        self.names: tuple[str, ...] = tuple(attrs["images"])
        self._specs = {n: ArraySpec(**attrs["specs"][n]) for n in self.names}
        self._arrays: dict[tuple[str, int], Any] = {}

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        slide_id: str,
        arrays: Mapping[str, ArraySpec],
        overwrite: bool = False,
    ) -> "HeatmapStore":
        """Create an empty store (metadata only; chunks are written by :meth:`write_tile`).

        Parameters
        ----------
        path : path-like
            The group folder, conventionally ``RUN/slides/<slide_id>.zarr`` (:func:`store_path`).
        slide_id : str
            A plain name (see :func:`tupac.data.manifest.slide_id_problem`).
        arrays : mapping of str to ArraySpec
            Heatmap name (a plain name, e.g. ``tissue``, ``tumor``, ``mitosis``) to its spec.
        overwrite : bool
            Replace whatever is at ``path``. Without it, an uncommitted tupac store (a failed or
            interrupted attempt, which by contract holds no finished result) is replaced, and
            anything else is refused.

        Raises
        ------
        StoreExistsError
            A committed store is at ``path`` and ``overwrite`` is False.
        HeatmapStoreError
            Something that is not a tupac store is at ``path`` and ``overwrite`` is False.
        """
        import zarr  # deferred: importing the run format stays cheap; zarr loads when a store is opened

        path = Path(path)
        problem = slide_id_problem(slide_id)
        if problem:
            raise HeatmapStoreError(path, problem)
        if not arrays:
            raise ConfigError("HeatmapStore.create needs at least one array spec")
        for name, spec in arrays.items():
            if slide_id_problem(name) or name.isdigit():
                raise ConfigError(f"heatmap name {name!r} must be a plain, non-numeric name")
            if not isinstance(spec, ArraySpec):
                raise ConfigError(f"arrays[{name!r}] must be an ArraySpec, got {type(spec).__name__}")
        if path.exists() or path.is_symlink():
            cls._clear(path, overwrite)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)  # leftovers of a create that crashed
        # Build under a temporary name and rename: the final path is never a half-made skeleton.
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        root.attrs["tupac"] = {
            "format": STORE_FORMAT,
            "slide_id": slide_id,
            "images": list(arrays),
            "specs": {n: s.to_dict() for n, s in arrays.items()},
        }
        for name, spec in arrays.items():
            image = root.create_group(name)
            image.attrs["ome"] = ngff_multiscales(name, spec)
            for k in range(spec.levels):
                image.create_array(
                    str(k),
                    shape=spec.level_shape(k),
                    chunks=tuple(min(c, s) for c, s in zip(spec.chunks, spec.level_shape(k))),
                    dtype=spec.dtype,
                    fill_value=spec.fill_value,
                    dimension_names=("y", "x"),
                )
        tmp.rename(path)
        return cls.open(path, mode="r+")

    @staticmethod
    def _clear(path: Path, overwrite: bool) -> None:
        if overwrite:
            if path.is_dir() and not path.is_symlink():
                _remove_tree(path)
            else:
                path.unlink()
            return
        if is_committed(path):
            raise StoreExistsError(path, "a committed heatmap store is already here (pass overwrite=True to replace it)")
        try:
            HeatmapStore.open(path)
        except HeatmapStoreError:
            raise HeatmapStoreError(path, "exists and is not a tupac heatmap store; refusing to replace it") from None
        _remove_tree(path)  # an uncommitted attempt: by contract it holds no finished result

    @classmethod
    def open(cls, path: str | Path, mode: str = "r+") -> "HeatmapStore":
        """Open an existing store (``mode="r"`` for read-only).

        Raises
        ------
        HeatmapStoreError
            Missing, not a Zarr v3 group, or not a tupac store.
        """
        import zarr  # deferred: importing the run format stays cheap; zarr loads when a store is opened

        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise HeatmapStoreError(path, "no heatmap store here (no zarr.json)")
        try:
            group = zarr.open_group(str(path), mode=mode, zarr_format=3)
        except Exception as e:  # zarr raises several unrelated types for a broken group
            raise HeatmapStoreError(path, f"cannot open as a Zarr v3 group: {e}") from None
        try:
            return cls(path, group, mode)
        except (KeyError, TypeError, ConfigError) as e:
            raise HeatmapStoreError(path, f"tupac store metadata is invalid: {e}") from None

    # -- access ---------------------------------------------------------------------------
    def spec(self, name: str) -> ArraySpec:
        """The spec ``name`` was created with; HeatmapStoreError for an unknown name."""
        try:
            return self._specs[name]
        except KeyError:
            raise HeatmapStoreError(self.path, f"no heatmap {name!r} (has {', '.join(self.names)})") from None

    def array(self, name: str, level: int = 0) -> Any:
        """The ``zarr.Array`` of ``name`` at ``level``."""
        spec = self.spec(name)
        if not 0 <= level < spec.levels:
            raise HeatmapStoreError(self.path, f"{name} has levels 0..{spec.levels - 1}, asked for {level}")
        key = (name, level)
        if key not in self._arrays:
            arr = self._group[f"{name}/{level}"]
            if self._mode != "r":
                # Zarr skips chunks equal to the fill value; keep them, so that every window the
                # plan computed has its chunk file and a missing file always means a lost write.
                arr = arr.with_config({"write_empty_chunks": True})
            self._arrays[key] = arr
        return self._arrays[key]

    def mpp(self, name: str, level: int = 0) -> float:
        """µm per pixel of ``name`` at ``level``, as written in its NGFF scale."""
        self.array(name, level)  # validates name and level
        return self.spec(name).mpp * 2**level

    def read(self, name: str, level: int = 0) -> np.ndarray:
        """The whole heatmap as a numpy array of the spec's dtype, shape ``level_shape(level)``."""
        return np.asarray(self.array(name, level)[...])

    def as_dask(self, name: str, level: int = 0) -> Any:
        """A lazy ``dask.array`` over the heatmap, one dask chunk per Zarr chunk (tile)."""
        import dask.array as da  # deferred: dask loads only where a lazy view or the pyramid is asked for

        return da.from_zarr(self.array(name, level))

    @property
    def committed(self) -> bool:
        return is_committed(self.path)

    # -- writing --------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if (self.path / COMMIT_FILE).exists():
            raise HeatmapStoreError(self.path, "store is committed and read-only; create it again to recompute")

    def chunk_bounds(self, name: str, rc_chunk: Sequence[int]) -> tuple[slice, slice]:
        """Level-0 pixel slices of chunk ``(row, col)`` (clipped at the array edge)."""
        spec = self.spec(name)
        r, c = (int(v) for v in rc_chunk)
        gr, gc = spec.grid()
        if not (0 <= r < gr and 0 <= c < gc):
            raise HeatmapStoreError(self.path, f"{name}: chunk {(r, c)} outside the {gr} x {gc} tile grid")
        (ch, cw), (h, w) = spec.chunks, spec.shape
        return slice(r * ch, min((r + 1) * ch, h)), slice(c * cw, min((c + 1) * cw, w))

    def write_tile(self, name: str, rc_chunk: Sequence[int], block: np.ndarray) -> None:
        """Write one whole chunk of level 0.

        Parameters
        ----------
        name : str
            Heatmap name.
        rc_chunk : (int, int)
            Chunk (tile) index along rows and columns.
        block : ndarray, shape = the chunk's extent (smaller at the right/bottom edges)
            Values castable to the array's dtype without changing kind (float64 -> float32 and
            bool -> uint8 are fine; float -> uint8 is refused).

        Raises
        ------
        HeatmapStoreError
            Unknown name, chunk outside the grid, wrong block shape or dtype, committed store.
        """
        ys, xs = self.chunk_bounds(name, rc_chunk)
        spec = self.spec(name)
        block = np.asarray(block)
        want = (ys.stop - ys.start, xs.stop - xs.start)
        if block.shape != want:
            raise HeatmapStoreError(self.path, f"{name}: chunk {tuple(rc_chunk)} needs a block of shape {want}, got {block.shape}")
        if not np.can_cast(block.dtype, spec.dtype, casting="same_kind"):
            raise HeatmapStoreError(self.path, f"{name}: cannot store {block.dtype} values in a {spec.dtype} array")
        self._check_writable()
        self.array(name)[ys, xs] = block.astype(spec.dtype, copy=False)

    def build_pyramid(self, name: str) -> None:
        """Fill levels 1.. of ``name`` from level 0 (2x2 mean for floats, max otherwise), streamed
        chunk by chunk with dask. Call after every tile of level 0 is written, before the commit."""
        import dask.array as da  # deferred: dask loads only where a lazy view or the pyramid is asked for

        spec = self.spec(name)
        self._check_writable()
        reduce = np.mean if spec.dtype.startswith("float") else np.max
        prev = self.as_dask(name, 0)
        for k in range(1, spec.levels):
            target = self.array(name, k)
            down = da.coarsen(reduce, prev, {0: 2, 1: 2}, trim_excess=True).astype(spec.dtype)
            da.store(down.rechunk(target.chunks), target, lock=False)
            prev = self.as_dask(name, k)

    def commit(
        self,
        input_path: str | Path,
        input_fp: InputFingerprint,
        models: Mapping[str, str],
        timings_s: Mapping[str, float] | None = None,
        outputs: Mapping[str, str | Path] | None = None,
        extra: Mapping[str, Any] | None = None,
        durable: bool = True,
        expected_chunks: Mapping[str, Iterable[Sequence[int]]] | None = None,
    ) -> CommitRecord:
        """Write the commit record, last. After this the store is read-only.

        Chunk temp files orphaned by a writer killed mid-chunk (whose batch was re-run) are
        removed first, so the committed store holds exactly the arrays' chunks. Then every chunk
        the plan computed must be on disk: a store that another process cleared or replaced while
        this one wrote it lacks the earlier chunks, and committing it would vouch for an all-zero
        heatmap. The record lists the chunk files found (:func:`chunk_manifest`), so that resume
        can tell later whether they are still the ones committed (:func:`verify_committed`).

        Parameters
        ----------
        input_path, input_fp
            The slide file and its fingerprint (computed before the work started, so a file
            changed during the run does not get committed under the new content's hash).
        models : mapping of str to str
            Model name to weights hash.
        timings_s : mapping of str to float, optional
        outputs : mapping of str to path, optional
            Side files (e.g. ``{"mitoses.csv": RUN/slides/<id>.mitoses.csv}``) whose size and
            SHA-256 go into the record.
        durable : bool
            fsync every file of the store first, so that a power cut after the commit cannot
            leave a record that vouches for chunks still in the page cache.
        expected_chunks : mapping of str to iterable of (int, int), optional
            Per heatmap, the level-0 chunks (windows) the job computed and wrote.

        Raises
        ------
        HeatmapStoreError
            The store is committed already, or a chunk in ``expected_chunks`` has no file.
        """
        self._check_writable()
        _remove_orphaned_writes(self.path)
        for name, want in (expected_chunks or {}).items():
            self._check_chunks_present(name, want)
        if durable:
            _fsync_tree(self.path)
        side = {}
        for key, p in (outputs or {}).items():
            fp = file_sha256(p)
            side[key] = {"path": str(p), "size": fp.size, "sha256": fp.sha256}
        record = CommitRecord(
            slide_id=self.slide_id,
            input_path=str(input_path),
            input=input_fp,
            models=dict(models),
            timings_s={k: float(v) for k, v in (timings_s or {}).items()},
            arrays={n: self._specs[n].to_dict() for n in self.names},
            outputs=side,
            chunks=chunk_manifest(self.path, {n: self._specs[n].levels for n in self.names}),
            extra=dict(extra or {}),
        )
        write_commit(self.path, record)
        return record

    def chunk_files(self, name: str, level: int = 0) -> dict[tuple[int, int], int]:
        """The chunk files of ``name`` at ``level`` on disk: ``{(row, col): size in bytes}``."""
        self.array(name, level)  # validates name and level
        return _chunk_files(self.path / name / str(level))

    def _check_chunks_present(self, name: str, want: Iterable[Sequence[int]]) -> None:
        planned = {(int(r), int(c)) for r, c in want}
        missing = sorted(planned - set(self.chunk_files(name)))
        if missing:
            raise HeatmapStoreError(
                self.path, f"refusing to commit: {name} lacks {len(missing)} of the {len(planned)} chunks the job "
                           f"computed (first {missing[:3]}); another process cleared or replaced this store while it "
                           "was written, so the slide must be recomputed")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Pickles (Ray task arguments, actor state) carry the path and reopen on the other side,
        # so no open zarr handle crosses a process boundary.
        return (HeatmapStore.open, (self.path, self._mode))

    def __repr__(self) -> str:
        return f"HeatmapStore({str(self.path)!r}, slide_id={self.slide_id!r}, images={list(self.names)})"


def _chunk_files(level_dir: Path) -> dict[tuple[int, int], int]:
    """``{(row, col): bytes}`` of a 2-D array's chunk files (Zarr v3 default keys ``c/<row>/<col>``)."""
    out = {}
    base = level_dir / "c"
    if not base.is_dir():
        return out
    for row_dir in base.iterdir():
        if not row_dir.name.isdigit():
            continue
        for f in row_dir.iterdir():
            if f.name.isdigit() and f.is_file():  # temp files (``<col>.<hex>.partial``) are not chunks
                out[(int(row_dir.name), int(f.name))] = f.stat().st_size
    return out


def chunk_manifest(path: str | Path, levels: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """What a commit record vouches for: per array level, the count and digest of its chunk files.

    Parameters
    ----------
    path : path-like
        The store folder.
    levels : mapping of str to int
        Heatmap name to its number of levels.

    Returns
    -------
    dict
        ``{"<name>/<level>": {"count": n, "sha256": hex}}``; the digest is over the sorted
        ``"<row>/<col> <bytes>"`` lines, so a chunk that disappeared, appeared or changed size
        changes it. Listing only (no chunk is read): cheap even for tens of thousands of chunks.
    """
    out = {}
    for name, n_levels in levels.items():
        for k in range(int(n_levels)):
            files = _chunk_files(Path(path) / name / str(k))
            lines = "\n".join(f"{r}/{c} {size}" for (r, c), size in sorted(files.items()))
            out[f"{name}/{k}"] = {"count": len(files), "sha256": hashlib.sha256(lines.encode()).hexdigest()}
    return out


def verify_committed(path: str | Path) -> str | None:
    """Why a committed store cannot be trusted as done, or None when it can.

    A store is adopted as done (by resume, by a rerun) only when its record is readable, lists
    its chunks, the chunk files on disk are still exactly those, and its side outputs (the
    detections CSV) still have the recorded size and SHA-256.

    Returns
    -------
    str or None
        One line naming the store and what does not match.
    """
    path = Path(path)
    try:
        record = read_commit(path)
    except HeatmapStoreError as e:
        return str(e)
    if not record.chunks:
        return f"{path}: the commit record lists no chunks (written by an older tupac); recompute to verify"
    levels = {n: int(spec.get("levels", 1)) for n, spec in record.arrays.items()}
    now = chunk_manifest(path, levels)
    for key, want in record.chunks.items():
        have = now.get(key)
        if have != want:
            count = have["count"] if have else 0
            return (f"{path}: {key} holds {count} chunk file(s), the commit record {want.get('count')}, or they "
                    "changed since the commit")
    for key, out in record.outputs.items():
        side = path.parent / Path(out["path"]).name  # side files live beside the store, wherever RUN now is
        try:
            fp = file_sha256(side)
        except OSError:
            return f"{side}: {key} committed with {path.name} is missing"
        if (fp.size, fp.sha256) != (out["size"], out["sha256"]):
            return f"{side}: {key} changed since {path.name} was committed"
    return None


# Zarr's LocalStore writes each chunk to ``<key>.<32 hex>.partial`` and renames it into place.
_PARTIAL_WRITE = re.compile(r"\.[0-9a-f]{32}\.partial$")


def _remove_orphaned_writes(root: Path) -> list[Path]:
    """Delete chunk temp files left by a writer killed mid-write; return what was removed.

    A model actor killed (or its node lost) between Zarr's temp write and its rename leaves an
    orphan next to the chunk; the re-queued batch rewrites the chunk itself, but the orphan would
    stay in the committed store. By commit time every batch of the slide has finished, so any temp
    file left is an orphan. Only names of Zarr's exact temp-file form are touched.
    """
    removed = []
    for p in root.rglob("*.partial"):
        if p.is_file() and _PARTIAL_WRITE.search(p.name):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _fsync_tree(root: Path) -> None:
    """fsync every file, then every folder (so the chunk files' names are durable too)."""
    paths = sorted(root.rglob("*"), key=lambda p: (p.is_dir(), -len(p.parts)))
    for p in [*paths, root]:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue  # folders cannot be opened on some platforms; files always can here
        try:
            os.fsync(fd)
        except OSError:
            if not p.is_dir():
                raise
        finally:
            os.close(fd)
