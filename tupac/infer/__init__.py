"""Cohort inference on Ray: the driver (:mod:`~tupac.infer.job`), the model actors, the per-slide
tasks and the progress display.

This is the only folder that imports Ray (with ``features/``, which is handed a scheduler). What a
run writes and every later stage reads, the heatmap stores, commit records and the ledger, is the
Ray-free :mod:`tupac.heatmaps`; the cohort manifest is :mod:`tupac.data.manifest`; loading the
trained models is :mod:`tupac.models.trained`. Importing this package imports nothing heavy: the
Ray actors live in their own modules.
"""
