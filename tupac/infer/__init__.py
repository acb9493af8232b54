"""Cohort inference: per-slide heatmap stores, commit records, the run ledger and the manifest.

Importing this package is cheap (no zarr, dask, ray or torch at import time).
"""
