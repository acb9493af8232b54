"""The OpenSlide backend: reads every format OpenSlide knows (the safe fallback for ``auto``)."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np

from tupac.errors import SlideDecodeError, SlideOpenError
from tupac.slide.base import BaseSlideReader, composite_on_white
from tupac.slide.metadata import build_info


def _open_handle(path: Path):
    import openslide

    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        raise SlideOpenError(path, "not a slide format OpenSlide can open (unsupported or damaged file)") from None
    except openslide.OpenSlideError as e:
        raise SlideOpenError(path, f"OpenSlide cannot open it: {e}") from None
    except FileNotFoundError:
        raise SlideOpenError(path, "no such file") from None
    except OSError as e:  # permission denied, a directory, ...
        raise SlideOpenError(path, f"cannot open: {e.strerror or e}") from None


class OpenSlideReader(BaseSlideReader):
    """A slide read through openslide-python.

    Parameters
    ----------
    path : str or Path
        The slide file.
    mpp : float, optional
        Level-0 um/px to use when the metadata has none (or to override it).

    Raises
    ------
    SlideOpenError
        OpenSlide cannot open the file.
    MissingMPPError
        No MPP in the metadata and ``mpp`` is None.
    """

    backend = "openslide"

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        path = Path(path)
        self._handle = _open_handle(path)
        # OpenSlide's error state is sticky per handle; the lock guards swapping in a fresh one.
        self._lock = threading.Lock()
        self._cache_bytes: int | None = None
        h = self._handle
        try:
            info = build_info(
                path, dict(h.properties), tuple(h.level_dimensions), tuple(h.level_downsamples),
                h.properties.get("openslide.vendor"), mpp,
            )
        except BaseException:
            h.close()
            raise
        super().__init__(path, info)

    def set_cache_size(self, nbytes: int) -> None:
        """Size OpenSlide's decoded-tile cache (default 32 MiB; 0 decodes every read afresh)."""
        import openslide

        self._cache_bytes = int(nbytes)
        self._handle.set_cache(openslide.OpenSlideCache(self._cache_bytes))

    @property
    def properties(self) -> dict[str, str]:
        """OpenSlide's property map (``openslide.*``, ``aperio.*``, ``tiff.*``)."""
        return dict(self._handle.properties)

    def _read_level(self, x_lv: int, y_lv: int, level: int, w: int, h: int) -> np.ndarray:
        import openslide

        ds = self.level_downsamples[level]
        # The level-0 point whose floor(x / ds) is x_lv (exact at level 0; sub-pixel otherwise).
        x0 = x_lv if level == 0 else math.ceil(x_lv * ds)
        y0 = y_lv if level == 0 else math.ceil(y_lv * ds)
        handle = self._handle
        try:
            rgba = np.asarray(handle.read_region((x0, y0), level, (w, h)))
        except openslide.OpenSlideError as e:
            self._recover(handle)
            raise SlideDecodeError(
                self.path, f"cannot decode pixels at level {level}, level-0 ({x0}, {y0}), size {w}x{h}: {e}"
            ) from None
        return composite_on_white(rgba)

    def _recover(self, failed) -> None:
        """Replace a handle that hit a decode error, so later reads of good regions work."""
        with self._lock:
            if self._handle is failed and not self.closed:
                try:
                    self._handle = _open_handle(self.path)
                    if self._cache_bytes is not None:
                        self.set_cache_size(self._cache_bytes)
                except SlideOpenError:
                    pass
                # The failed handle is not closed here: another thread may still be inside it;
                # openslide-python closes it when the last reference goes.

    def _close(self) -> None:
        self._handle.close()
