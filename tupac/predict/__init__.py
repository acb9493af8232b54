"""Cohort-level prediction: grade classifiers and RNA regressors as scikit-learn pipelines,
nested cross-validation, TUPAC16 metrics, figures and biomarker analysis.

No MLflow here: :mod:`tupac.tracking.fits` logs a fit, :mod:`tupac.tracking.loading` loads the registered models.
"""

from tupac.predict.biomarkers import (
    benjamini_hochberg,
    oof_permutation_importance,
    significant_features,
    univariate_associations,
)
from tupac.predict.cohort import Cohort, Exclusion, build_cohort, feature_table_hash, read_feature_table, validate_feature_table
from tupac.predict.estimators import GRADE_MODELS, RNA_MODELS, make_candidate
from tupac.predict.fit import FitConfig, FitResult, fit_cohort, write_outputs
from tupac.predict.metrics import (
    bootstrap_accuracy_ci,
    classification_metrics,
    one_vs_rest_auroc,
    quadratic_weighted_kappa,
    regression_metrics,
)

__all__ = [
    "GRADE_MODELS",
    "RNA_MODELS",
    "Cohort",
    "Exclusion",
    "FitConfig",
    "FitResult",
    "benjamini_hochberg",
    "bootstrap_accuracy_ci",
    "build_cohort",
    "classification_metrics",
    "feature_table_hash",
    "fit_cohort",
    "make_candidate",
    "one_vs_rest_auroc",
    "oof_permutation_importance",
    "quadratic_weighted_kappa",
    "read_feature_table",
    "regression_metrics",
    "significant_features",
    "univariate_associations",
    "validate_feature_table",
    "write_outputs",
]
