"""Experiment tracking: every MLflow call of the package, behind the :class:`tupac.train.tracking.Tracker`
protocol the stages report to (the stages themselves never import MLflow or this package).

- :mod:`.store`: where runs go (``RUN/mlflow.db`` and ``RUN/mlartifacts``, or ``MLFLOW_TRACKING_URI``),
  and the ``mlflow server`` command that browses a run's store.
- :mod:`.runs`: :class:`~tupac.tracking.runs.MlflowTracker`, a Tracker that writes one MLflow run and
  registers a model folder (safetensors + JSON card).
- :mod:`.training`: a tumor or mitosis network's training as one run and a registered model.
- :mod:`.general`: the general-feature grade network's cross-fit as a parent run with a run per fit.
- :mod:`.fits`: a cohort fit (grade classifier, RNA regressor) as a run with two registered models.
- :mod:`.loading`: loading a registered cohort model without pickle, from the run's own store only.

Nothing is imported here, and MLflow only inside the functions that call it: ``import tupac.tracking``
costs nothing, and a command that does not track never imports MLflow.
"""
