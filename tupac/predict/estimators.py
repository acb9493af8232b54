"""The candidate models, each a scikit-learn pipeline with a small hyperparameter grid.

Every step that learns from data (median imputation, dropping constant columns, scaling, univariate
feature selection, the model) sits inside one :class:`~sklearn.pipeline.Pipeline`, so a
cross-validation split refits all of them on its training part only and nothing leaks across
folds. Regressors standardize the target too (``TransformedTargetRegressor``) so that the SVR
epsilon and the elastic-net alpha mean the same thing whatever the scale of the RNA score.

Grids are deliberately small (2-4 points): the nested CV fits every grid point ``inner_folds``
times per outer fold and repeat, and it has to run on a CPU in minutes for a few hundred slides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.feature_selection import SelectKBest, VarianceThreshold, f_classif, f_regression
from sklearn.impute import SimpleImputer
from sklearn.linear_model import ElasticNet, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, SVR

from tupac.errors import ConfigError

__all__ = ["Candidate", "GRADE_MODELS", "RNA_MODELS", "make_candidate", "TASKS"]

TASKS = ("grade", "rna")


@dataclass(frozen=True)
class Candidate:
    """A named pipeline and the grid searched over it.

    ``grid`` keys are pipeline parameter names (``model__C``, or ``regressor__model__alpha`` for
    regressors, which wrap the pipeline).
    """

    task: str
    name: str
    estimator: object
    grid: dict[str, list]


def _steps(score_func, k: int, n_features: int, model) -> Pipeline:
    return Pipeline(
        [
            # keep_empty_features keeps column positions stable when a fold sees an all-NaN column,
            # so feature names and importances map back to the table.
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("drop_constant", VarianceThreshold(0.0)),
            ("scale", StandardScaler()),
            ("select", SelectKBest(score_func, k=min(k, n_features))),
            ("model", model),
        ]
    )


def _grade_logreg(seed: int, k: int, n: int) -> Candidate:
    model = LogisticRegression(solver="saga", l1_ratio=0.5, C=1.0, max_iter=5000, random_state=seed)
    return Candidate("grade", "logreg_enet", _steps(f_classif, k, n, model),
                     {"model__C": [0.1, 1.0], "model__l1_ratio": [0.2, 0.8]})


def _grade_svm(seed: int, k: int, n: int) -> Candidate:
    # Platt scaling via CalibratedClassifierCV (SVC(probability=True) is deprecated since
    # scikit-learn 1.9); ensemble=False calibrates cross-validated decision values, then refits
    # one SVC on all the data, which is what libsvm's probability=True did.
    svc = SVC(kernel="rbf", class_weight="balanced", random_state=seed)
    model = CalibratedClassifierCV(svc, method="sigmoid", cv=3, ensemble=False)
    return Candidate("grade", "svm", _steps(f_classif, k, n, model), {"model__estimator__C": [1.0, 10.0]})


def _grade_rf(seed: int, k: int, n: int) -> Candidate:
    model = RandomForestClassifier(n_estimators=150, class_weight="balanced", random_state=seed, n_jobs=1)
    return Candidate("grade", "random_forest", _steps(f_classif, k, n, model), {"model__min_samples_leaf": [1, 4]})


def _grade_gb(seed: int, k: int, n: int) -> Candidate:
    model = GradientBoostingClassifier(n_estimators=80, max_depth=2, subsample=0.8, random_state=seed)
    return Candidate("grade", "gradient_boosting", _steps(f_classif, k, n, model), {"model__learning_rate": [0.05, 0.2]})


def _scaled_target(pipe: Pipeline) -> TransformedTargetRegressor:
    return TransformedTargetRegressor(regressor=pipe, transformer=StandardScaler())


def _rna_enet(seed: int, k: int, n: int) -> Candidate:
    model = ElasticNet(alpha=0.1, l1_ratio=0.5, max_iter=20000, random_state=seed)
    return Candidate("rna", "elastic_net", _scaled_target(_steps(f_regression, k, n, model)),
                     {"regressor__model__alpha": [0.01, 0.1], "regressor__model__l1_ratio": [0.2, 0.8]})


def _rna_svr(seed: int, k: int, n: int) -> Candidate:
    model = SVR(kernel="rbf", epsilon=0.1)
    return Candidate("rna", "svr", _scaled_target(_steps(f_regression, k, n, model)), {"regressor__model__C": [1.0, 10.0]})


def _rna_rf(seed: int, k: int, n: int) -> Candidate:
    model = RandomForestRegressor(n_estimators=150, random_state=seed, n_jobs=1)
    return Candidate("rna", "random_forest", _scaled_target(_steps(f_regression, k, n, model)),
                     {"regressor__model__min_samples_leaf": [1, 4]})


def _rna_gb(seed: int, k: int, n: int) -> Candidate:
    model = GradientBoostingRegressor(n_estimators=80, max_depth=2, subsample=0.8, random_state=seed)
    return Candidate("rna", "gradient_boosting", _scaled_target(_steps(f_regression, k, n, model)),
                     {"regressor__model__learning_rate": [0.05, 0.2]})


GRADE_MODELS: dict[str, Callable[[int, int, int], Candidate]] = {
    "logreg_enet": _grade_logreg,
    "svm": _grade_svm,
    "random_forest": _grade_rf,
    "gradient_boosting": _grade_gb,
}
RNA_MODELS: dict[str, Callable[[int, int, int], Candidate]] = {
    "elastic_net": _rna_enet,
    "svr": _rna_svr,
    "random_forest": _rna_rf,
    "gradient_boosting": _rna_gb,
}


def make_candidate(task: str, name: str, *, seed: int, k_features: int, n_features: int) -> Candidate:
    """A fresh, unfitted candidate.

    Parameters
    ----------
    task : {"grade", "rna"}
    name : str
        A key of :data:`GRADE_MODELS` or :data:`RNA_MODELS`.
    seed : int
        ``random_state`` of every randomized step.
    k_features : int
        Features kept by the univariate selection (capped at ``n_features``).
    n_features : int
        Columns in the feature table.
    """
    table = {"grade": GRADE_MODELS, "rna": RNA_MODELS}.get(task)
    if table is None:
        raise ConfigError(f"task must be one of {TASKS}, got {task!r}")
    if name not in table:
        raise ConfigError(f"unknown {task} model {name!r}; expected one of {sorted(table)}")
    if k_features < 1:
        raise ConfigError(f"k_features must be >= 1, got {k_features}")
    return table[name](seed, k_features, n_features)
