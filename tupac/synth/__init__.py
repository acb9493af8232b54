"""Phantom cohorts: synthetic H&E whole-slide images in the TUPAC16 layout, with exact ground truth.

The default data of the project and the ground truth of every quality figure (tumor localization,
mitosis detection, grade and proliferation prediction). See ``tupac.synth.cohort`` for the layout.
"""

from tupac.synth.cohort import CohortSummary, SlideSummary, generate_cohort, grade_from_density, slide_id
from tupac.synth.truth import read_truth_mask

__all__ = ["CohortSummary", "SlideSummary", "generate_cohort", "grade_from_density", "read_truth_mask", "slide_id"]
