"""Phantom cohorts: synthetic H&E whole-slide images in the TUPAC16 layout, with exact ground truth.

The default data of the project and the ground truth of every quality figure (tumor localization,
mitosis detection, grade and proliferation prediction). See ``tupac.synth.cohort`` for the layout.

The names below load on first use (PEP 562): the command line reads the small style registry
(``tupac.synth.style``) for its help text, which must not pull in the renderer and numpy.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CohortSummary": "tupac.synth.cohort",
    "SlideSummary": "tupac.synth.cohort",
    "generate_cohort": "tupac.synth.cohort",
    "grade_from_density": "tupac.synth.cohort",
    "slide_id": "tupac.synth.cohort",
    "read_truth_mask": "tupac.synth.truth",
}

__all__ = ["CohortSummary", "SlideSummary", "generate_cohort", "grade_from_density", "read_truth_mask", "slide_id"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tupac.synth' has no attribute {name!r}")
