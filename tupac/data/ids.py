"""TUPAC16 case identifiers: ``TUPAC-TR-001`` (training) and ``TUPAC-TE-001`` (testing)."""

from __future__ import annotations

import re

__all__ = ["TRAIN_PREFIX", "TEST_PREFIX", "slide_id_for", "parse_slide_id"]

TRAIN_PREFIX = "TUPAC-TR"
TEST_PREFIX = "TUPAC-TE"
_ID = re.compile(r"^(TUPAC-T[RE])-(\d{3})$")


def slide_id_for(index: int, prefix: str = TRAIN_PREFIX) -> str:
    """The ID of case ``index`` (1-based): ``slide_id_for(6) == "TUPAC-TR-006"``."""
    if not 1 <= index <= 999:
        raise ValueError(f"TUPAC16 case numbers run from 1 to 999, got {index}")
    return f"{prefix}-{index:03d}"


def parse_slide_id(slide_id: str) -> tuple[str, int]:
    """``("TUPAC-TR", 6)`` from ``"TUPAC-TR-006"``; ValueError for anything else."""
    m = _ID.match(slide_id)
    if not m or int(m.group(2)) == 0:
        raise ValueError(f"not a TUPAC16 slide ID (expected e.g. TUPAC-TR-006): {slide_id!r}")
    return m.group(1), int(m.group(2))
