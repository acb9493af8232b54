"""Slide metadata that both backends agree on: MPP, objective power, vendor.

MPP is read from the slide's own metadata, in OpenSlide's property vocabulary, so that both
backends give the same answer. cuCIM's ``spacing()`` is deliberately not used: for Aperio SVS it
reads ``[1.0, 1.0]`` with no unit, which would silently turn a 20x slide into a 1 um/px one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from tupac.errors import ConfigError, MissingMPPError, SlideOpenError

_APERIO_MPP = re.compile(r"(?:^|\|)\s*MPP\s*=\s*([0-9.eE+-]+)")
_APERIO_MAG = re.compile(r"(?:^|\|)\s*AppMag\s*=\s*([0-9.eE+-]+)")
# TIFF ResolutionUnit -> micrometers per unit; "none" (1) carries no physical scale.
_UM_PER_UNIT = {"centimeter": 1e4, "cm": 1e4, "3": 1e4, "inch": 25400.0, "2": 25400.0}


def _positive_float(text: str | None) -> float | None:
    """``float(text)`` when it is a finite positive number, else None."""
    if text is None:
        return None
    try:
        value = float(str(text).strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def mpp_from_properties(props: Mapping[str, str]) -> float | None:
    """Level-0 microns per pixel from OpenSlide-style properties, or None.

    Looked up in order: ``openslide.mpp-x``, ``aperio.MPP``, ``MPP = ...`` in
    ``tiff.ImageDescription`` (Aperio), then ``tiff.XResolution`` with a physical
    ``tiff.ResolutionUnit`` (centimeter or inch).
    """
    for key in ("openslide.mpp-x", "aperio.MPP"):
        value = _positive_float(props.get(key))
        if value is not None:
            return value
    match = _APERIO_MPP.search(props.get("tiff.ImageDescription", "") or "")
    if match and (value := _positive_float(match.group(1))) is not None:
        return value
    unit = str(props.get("tiff.ResolutionUnit", "")).strip().lower()
    res = _positive_float(props.get("tiff.XResolution"))
    if res is not None and unit in _UM_PER_UNIT:
        return _UM_PER_UNIT[unit] / res
    return None


def objective_from_properties(props: Mapping[str, str]) -> float | None:
    """Objective power from ``openslide.objective-power``, ``aperio.AppMag`` or the description."""
    for key in ("openslide.objective-power", "aperio.AppMag"):
        value = _positive_float(props.get(key))
        if value is not None:
            return value
    match = _APERIO_MAG.search(props.get("tiff.ImageDescription", "") or "")
    return _positive_float(match.group(1)) if match else None


@dataclass(frozen=True)
class SlideInfo:
    """What a reader knows about a slide before reading pixels.

    Attributes
    ----------
    level_dimensions : tuple of (width, height)
        Pixels of each pyramid level, level 0 first.
    level_downsamples : tuple of float
        Downsample of each level relative to level 0 (1.0 first).
    mpp : float
        Level-0 micrometers per pixel.
    mpp_source : str
        ``"slide"`` (from the metadata) or ``"user"`` (the caller's ``mpp=``).
    objective_power : float or None
        Scanner objective (20, 40) when known.
    vendor : str or None
        Format vendor in OpenSlide's words ("aperio", "generic-tiff", ...).
    """

    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float
    mpp_source: str
    objective_power: float | None
    vendor: str | None

    def __post_init__(self) -> None:
        if not self.level_dimensions or len(self.level_dimensions) != len(self.level_downsamples):
            raise ValueError("level_dimensions and level_downsamples must be non-empty and of equal length")
        if not (math.isfinite(self.mpp) and self.mpp > 0):
            raise ValueError(f"mpp must be a positive number, got {self.mpp!r}")


def build_info(
    path: Path,
    props: Mapping[str, str],
    level_dimensions: tuple[tuple[int, int], ...],
    level_downsamples: tuple[float, ...],
    vendor: str | None,
    mpp: float | None,
) -> SlideInfo:
    """Combine a backend's geometry with the metadata; the caller's ``mpp`` wins over the slide's.

    Raises
    ------
    MissingMPPError
        The metadata has no MPP and ``mpp`` is None.
    SlideOpenError
        The slide reports no level or an empty level 0.
    """
    if not level_dimensions or min(level_dimensions[0]) <= 0:
        raise SlideOpenError(path, f"slide has no readable pyramid (levels: {level_dimensions!r})")
    if mpp is not None:
        if _positive_float(str(mpp)) is None:
            raise ConfigError(f"{path}: mpp= must be a positive number of micrometers per pixel, got {mpp!r}")
        slide_mpp, source = float(mpp), "user"
    else:
        slide_mpp, source = mpp_from_properties(props), "slide"
        if slide_mpp is None:
            raise MissingMPPError(
                path,
                "no microns-per-pixel in the slide metadata (openslide.mpp-x, Aperio MPP, TIFF resolution); "
                "pass mpp= (CLI: --mpp) if you know the scan resolution",
            )
    return SlideInfo(
        level_dimensions=tuple((int(w), int(h)) for w, h in level_dimensions),
        level_downsamples=tuple(float(d) for d in level_downsamples),
        mpp=slide_mpp,
        mpp_source=source,
        objective_power=objective_from_properties(props),
        vendor=vendor,
    )
