"""The cohort's cross-validation folds, shared by every stage that splits slides.

The features stage's cross-fitting (:mod:`tupac.features.general`) and the predictive models'
cross-validation (:mod:`tupac.predict.cv`) must split the same slides the same way, so that no
out-of-fold feature of a slide was fitted with that slide's label. Both take the splitter from here.
"""

from __future__ import annotations

from sklearn.model_selection import KFold, StratifiedKFold

__all__ = ["outer_splitter"]


def outer_splitter(task: str, n_splits: int, seed: int) -> KFold | StratifiedKFold:
    """Shuffled K-fold, stratified by grade for task ``"grade"``, with ``random_state=seed``."""
    cls = StratifiedKFold if task == "grade" else KFold
    return cls(n_splits=n_splits, shuffle=True, random_state=seed)
