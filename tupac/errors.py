"""The exception hierarchy of tupac.

Every library error (OpenSlide, cuCIM, tifffile, pandas) is turned into one of these in a
single place, so that callers catch ``TupacError`` and users see one line that names the file
and the problem. Each class also inherits the matching built-in, so code that catches
``OSError`` or ``ValueError`` keeps working.
"""

from __future__ import annotations

from pathlib import Path


class TupacError(Exception):
    """Base class of every error raised on purpose by tupac."""

    def __reduce__(self):
        # Pickling (a Ray task's error crossing to the driver) must not call __init__: the subclasses' take
        # (path, problem), not the one message in ``args``, so the default reduction fails to rebuild them and
        # Ray would hand the driver an UnserializableException instead of the error naming the file.
        return _rebuild, (type(self), self.args, dict(self.__dict__))


def _rebuild(cls: type, args: tuple, state: dict) -> TupacError:
    err = cls.__new__(cls, *args)
    err.args = args
    err.__dict__.update(state)
    return err


class SlideError(TupacError):
    """A problem with one slide file; ``path`` names it."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class SlideOpenError(SlideError, OSError):
    """The file cannot be opened as a slide (missing, truncated, unsupported format)."""


class SlideDecodeError(SlideError, OSError):
    """The slide opened, but pixel data could not be decoded (corrupt tiles)."""


class MissingMPPError(SlideError, ValueError):
    """The slide's metadata gives no microns-per-pixel and the caller supplied none."""


class ResolutionError(TupacError, ValueError):
    """A read asked for a resolution the slide cannot provide (e.g. 40x from a 20x slide
    without ``allow_upsample``)."""


class DatasetLayoutError(TupacError, ValueError):
    """A TUPAC16-layout file is missing or malformed; the message names file and line."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else f"{self.path}"
        super().__init__(f"{where}: {problem}")


class ConfigError(TupacError, ValueError):
    """A configuration value is invalid; the message says what was received and expected."""


class StainError(TupacError, ValueError):
    """Stain standardization cannot proceed (unreadable or mismatched reference, no tissue to fit);
    the message names the file or the method and the problem."""


class ModelError(TupacError, ValueError):
    """A model was asked for something it cannot do: an unknown registry name, an input of the
    wrong shape, a model card with invalid values. The message says what was received and expected."""


class ModelFileError(TupacError, OSError):
    """A saved model or training checkpoint on disk is missing or unreadable; ``path`` names it."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class HeatmapStoreError(TupacError, OSError):
    """A per-slide heatmap store (Zarr group) is missing, not a tupac store, committed and so
    read-only, or was asked for an array or chunk it does not have; ``path`` names it."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class StoreExistsError(HeatmapStoreError, FileExistsError):
    """A committed heatmap store is already there and the caller did not ask to overwrite it."""


class LedgerError(TupacError, OSError):
    """The run ledger cannot be opened or updated (not a ledger, corrupt, unknown slide);
    ``path`` names the ledger file."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CohortError(TupacError, ValueError):
    """A feature table and its labels do not make a usable cohort (unreadable or non-numeric
    features, labels out of range, slides on one side only, too few slides per class); the
    message names the file and the problem."""


class UntrustedModelError(TupacError, ValueError):
    """A model was not loaded because it is not provably safe: it lies outside the run's own
    tracking store, is not in the skops format, fails its recorded checksum, or references types
    outside tupac's allow-list."""


class FeatureError(TupacError, ValueError):
    """Slide features cannot be computed from what was given (inputs of the wrong shape, too few
    training vectors to fit the deep-feature clusters); the message says what was received and expected."""


class FeatureFileError(TupacError, OSError):
    """A saved feature artifact (fitted scaler/k-means, heatmap store) is missing or malformed;
    ``path`` names it."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class FeatureTrackingError(TupacError, RuntimeError):
    """The features were computed and written, but logging their fit to MLflow failed (store
    unreachable or unwritable); the message names the store and where the features are."""


class ReportError(TupacError, OSError):
    """A report or QuPath export cannot be made from a run folder (no such run, slide not in
    the run or not committed, slide resolution unknown); ``path`` names the file or folder."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class RunFolderBusyError(TupacError, BlockingIOError):
    """Another tupac job holds the run folder's lock (``RUN/run.lock``); ``path`` names the folder
    and the message names the other job (command, pid, host, start time)."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
