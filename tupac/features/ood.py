"""Per-slide out-of-distribution check: is this slide far outside what the models were trained on?

Where no training helps enough, the pipeline says so at run time instead of handing out a confident
wrong grade. Three steps, each a small function here (no torch, no slide I/O beyond a reader given in):

1. **Statistics of pixels** (:func:`image_stats`): from a few tissue tiles read at a model's
   resolution, the optical density (OD) of hematoxylin and eosin (fixed Ruifrok-Johnston colour
   deconvolution: it describes the *raw* stain, which is what differs between labs and scanners),
   the mean and spread of the OD, and a texture statistic, the variance of the Laplacian of the
   grey level (sharpness: a blurred scan or a wrong focus plane lowers it by orders of magnitude).
2. **Reference ranges** (:func:`reference_from_stats`), computed at training over the training
   items (slides or images), one set of statistics per item, and kept in the model card as
   ``card.extra["ood_reference"]`` (a few hundred bytes of JSON): per statistic the median, the
   median absolute deviation (MAD), the 1st and 99th percentiles and the number of items. Cards
   without it (models trained before it existed) still load; the check then says
   ``no reference statistics in the model card``.
3. **The rule** (:func:`check_slide`): a statistic ``x`` of a slide is out of distribution when
   both

   - its robust z-score ``|x - median| / max(1.4826 * MAD, floor)`` exceeds ``max_z`` (default
     5), the floor being ``rel_floor * |median|`` (default 15 %): raw stain differs between labs
     and scanners by tens of percent (the phantom centers' stain strengths span 0.8-1.2), which
     stain standardization exists to absorb, so only a gross departure is a warning, and a
     training set of nearly identical items does not make every new slide an outlier; and
   - ``x`` lies outside the training range ``[q01, q99]`` widened on each side by ``margin``
     times its width (default 0.25).

   A reference of fewer than ``min_items`` training items (default 3) says too little about a
   distribution to call anything far from it: that model's statistics are not checked, and the
   verdict's note says so.

   A slide is flagged (``ood``) when any statistic of any model is out of distribution; each such
   statistic gives one reason, e.g. ``"hematoxylin OD (median) 0.92 above the training range
   0.41-0.63 (tumor model, z=+9.1)"``.

Where the slide statistics come from: the inference job measures them in the slide's preparation
(:func:`tupac.infer.slide_task.prepare_slide`, reader already open, at most ``QC_TILES`` tiles of
``QC_TILE_PX`` pixels per model resolution: no extra pass over the slide), adds the tumor fraction
of tissue and the mitotic density (detections per mm² of tumor; both only when the mitosis stage
ran, which is when the job measures the tumor area) when it finalizes the slide, runs
:func:`check_slide` against the models' cards and stores everything in the commit record
(``extra["ood"]``: verdict, reasons, the statistics compared). Why there and not in the features
stage: the job has the cards and the open slide, the features stage may run without either
(``--no-pixels``, no ``--models``). The job summary (``ood``), the features stage (the table's
``qc_ood`` flag, ``features/qc.csv`` with ``qc_ood_reasons``, its summary), the HTML report and the
CLI read the verdict from the record.

Where the references come from: ``tupac train tumor`` records one over its training slides
(:func:`tupac.tumor.training.training_ood_reference`); ``tupac ood-reference`` adds one to an
existing model from its training inputs (slides, or images such as the mitosis fields:
:func:`reference_from_inputs`) or from a run over its training cohort (:func:`reference_from_run`,
the only source of the tumor fraction and mitotic density as the models see them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tupac.preprocess.ood_stats import (  # re-exported: the check's public names (see __all__)
    MIN_TISSUE_PIXELS,
    QC_TILE_PX,
    QC_TILES,
    REFERENCE_KEY,
    TISSUE_OD,
    image_stats,
    reference_from_inputs,
    reference_from_stats,
    slide_density_stats,
    slide_stats,
)

if TYPE_CHECKING:
    import pandas as pd

NO_REFERENCE = "no reference statistics in the model card"

#: Human-readable names of the statistics, used in reasons.
STAT_LABELS = {
    "od_mean": "mean optical density",
    "od_std": "optical density spread (std)",
    "h_od_p50": "hematoxylin OD (median)",
    "h_od_p95": "hematoxylin OD (95th percentile)",
    "e_od_p50": "eosin OD (median)",
    "sharpness": "sharpness (Laplacian variance)",
    "tumor_fraction": "tumor fraction of tissue",
    "mitoses_per_mm2": "mitoses per mm² of tumor",
}

__all__ = [
    "MIN_TISSUE_PIXELS",
    "QC_TILES",
    "QC_TILE_PX",
    "TISSUE_OD",
    "reference_from_inputs",
    "REFERENCE_KEY",
    "STAT_LABELS",
    "OodConfig",
    "OodResult",
    "image_stats",
    "slide_stats",
    "reference_from_stats",
    "check_slide",
    "check_with_cards",
    "slide_density_stats",
    "NO_REFERENCE",
]

@dataclass(frozen=True)
class OodConfig:
    """Thresholds of the out-of-distribution rule (see the module docstring).

    Attributes
    ----------
    max_z : float
        Robust z-score above which a statistic may be out of distribution.
    margin : float
        Widening of the training range ``[q01, q99]`` on each side, as a fraction of its width.
    rel_floor : float
        Floor of the robust scale as a fraction of ``|median|``.
    min_items : int
        Fewest training items a reference needs to be used.
    """

    max_z: float = 5.0
    margin: float = 0.25
    rel_floor: float = 0.15
    min_items: int = 3


@dataclass
class OodResult:
    """The verdict on one slide.

    Attributes
    ----------
    ood : bool
        Some statistic is out of distribution.
    reasons : list of str
        One line per out-of-distribution statistic.
    checked : list of str
        ``"<task>:<stat>"`` of every statistic compared.
    note : str
        Why nothing (or not everything) could be checked, e.g. ``NO_REFERENCE``; empty otherwise.
    stats : dict
        The slide's statistics per task, as compared.
    """

    ood: bool = False
    reasons: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    note: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def reasons_text(self) -> str:
        """Reasons joined with ``"; "``; the note when nothing was flagged and something was not checked."""
        return "; ".join(self.reasons) if self.reasons else self.note

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "OodResult | None":
        if not d:
            return None
        return cls(bool(d.get("ood")), list(d.get("reasons") or []), list(d.get("checked") or []),
                   str(d.get("note") or ""), dict(d.get("stats") or {}))


def _one(name: str, x: float, ref: Mapping[str, float], task: str, cfg: OodConfig) -> str | None:
    """The reason ``x`` is out of distribution against ``ref``, or None."""
    med, mad, lo, hi = (float(ref[k]) for k in ("median", "mad", "q01", "q99"))
    scale = max(1.4826 * mad, cfg.rel_floor * abs(med), 1e-12)
    z = (x - med) / scale
    pad = cfg.margin * (hi - lo)
    outside = x > hi + pad or x < lo - pad
    if abs(z) <= cfg.max_z or not outside:
        return None
    side = "above" if x > hi else "below"
    label = STAT_LABELS.get(name, name)
    return f"{label} {x:.3g} {side} the training range {lo:.3g}-{hi:.3g} ({task} model, z={z:+.1f})"


def check_slide(stats: Mapping[str, Mapping[str, float] | None],
                references: Mapping[str, Mapping[str, Any] | None],
                config: OodConfig = OodConfig()) -> OodResult:
    """Compare a slide's statistics with the models' training references.

    Parameters
    ----------
    stats : mapping of task to (dict of str to float, or None)
        Per model task (``"tumor"``, ``"mitosis"``), the slide's statistics at that model's
        resolution (:func:`image_stats`, plus :func:`slide_density_stats`).
    references : mapping of task to (dict or None)
        Per task, ``card.extra["ood_reference"]`` (:func:`reference_from_stats`); None or missing
        when the card has none.
    config : OodConfig

    Returns
    -------
    OodResult
        Statistics absent on either side are not compared; tasks without a reference are named
        in ``note``.
    """
    res = OodResult(stats={t: dict(s) if s else None for t, s in stats.items()})
    missing, few = [], []
    for task in sorted(stats):
        ref = (references.get(task) or {}).get("stats") if references.get(task) else None
        if not ref:
            missing.append(task)
            continue
        n = int((references.get(task) or {}).get("n", 0))
        if n < config.min_items:
            few.append(f"{task}: {n}")
            continue
        for name, x in sorted((stats[task] or {}).items()):
            if name not in ref or x is None or not np.isfinite(x):
                continue
            res.checked.append(f"{task}:{name}")
            why = _one(name, float(x), ref[name], task, config)
            if why:
                res.reasons.append(why)
    res.ood = bool(res.reasons)
    notes = [f"{NO_REFERENCE} ({', '.join(missing)})"] if missing else []
    if few:
        notes.append(f"reference from fewer than {config.min_items} training items ({', '.join(few)}): not checked")
    res.note = "; ".join(notes)
    return res


def check_with_cards(stats: Mapping[str, Mapping[str, float] | None], cards: Mapping[str, Any],
                     config: OodConfig = OodConfig()) -> OodResult:
    """:func:`check_slide` with each task's reference taken from its model card (``extra``)."""
    refs = {t: dict(getattr(c, "extra", None) or {}).get(REFERENCE_KEY) for t, c in cards.items()}
    return check_slide(stats, refs, config)


# ---------------------------------------------------------------- the feature table's columns

QC_OOD = "qc_ood"
"""The feature table's flag of an out-of-distribution slide (1.0 / 0.0; NaN on a slide without tissue)."""
QC_OOD_REASONS = "qc_ood_reasons"
"""The reasons of the flag, or why the check could not run: a text column of ``RUN/features/qc.csv``
(not of ``features.parquet``, whose columns are all numeric: every consumer reads it as a matrix)."""
QC_PREFIX = "qc_"
"""Columns with this prefix are quality control, not features: the fit stage drops them."""
QC_FILE = "qc.csv"
"""``RUN/features/qc.csv``: ``slide_id, qc_ood, qc_ood_reasons``, one row per slide of the table."""


def qc_dictionary() -> list:
    """The dictionary entry (:class:`tupac.features.dictionary.Feature`) of the QC column of the table."""
    from tupac.features.dictionary import Feature

    return [
        Feature(QC_OOD, "flags", "flag",
                "1 when the slide is out of distribution for the models (stain, texture, tumor fraction or mitotic "
                "density far outside their training data; tupac.features.ood): its grade may be confidently wrong. "
                "The reasons are in features/qc.csv (qc_ood_reasons). Quality control, not a feature: the fits "
                "ignore it. 0 also when the check could not run (qc.csv says why); NaN on a slide without tissue."),
    ]


def qc_frame(verdicts: Mapping[str, Mapping[str, Any] | None], ids: Sequence[str],
             blank: Iterable[str] = ()) -> pd.DataFrame:
    """The QC table of a cohort, in ``ids`` order, from each slide's recorded verdict.

    Parameters
    ----------
    verdicts : mapping of slide id to (dict or None)
        ``OodResult.to_dict()`` as in the commit record (None: a record written before the check).
    ids : sequence of str
    blank : iterable of str
        Slides without tissue: flag NaN (like every value of their feature row).

    Returns
    -------
    DataFrame
        ``slide_id`` (str), ``qc_ood`` (float64 1/0/NaN), ``qc_ood_reasons`` (str).
    """
    import pandas as pd

    blank = set(blank)
    flags, reasons = [], []
    for sid in ids:
        res = OodResult.from_dict(verdicts.get(sid))
        if sid in blank:
            flags.append(np.nan)
            reasons.append("not checked: no tissue on the slide")
        elif res is None:
            flags.append(0.0)
            reasons.append("not checked: the slide was computed before the out-of-distribution check existed")
        else:
            flags.append(float(res.ood))
            reasons.append(res.reasons_text)
    return pd.DataFrame({"slide_id": pd.Series(list(ids), dtype=object),
                         QC_OOD: pd.Series(flags, dtype=np.float64),
                         QC_OOD_REASONS: pd.Series(reasons, dtype=object)})


# ---------------------------------------------------------------- references of existing models

def record_reference(model_dir: str | Path, reference: Mapping[str, Any]) -> Path:
    """Write ``reference`` into the model's card (``extra["ood_reference"]``); weights untouched.

    The weights' hash, which decides whether a run's outputs are stale, is of ``model.safetensors``
    alone, so recording a reference does not make earlier outputs stale. Returns the card's path.
    """
    from tupac.heatmaps.commit import atomic_write_bytes
    from tupac.models.io import load_card

    card = load_card(model_dir)
    card = card.with_metadata(extra={**card.extra, REFERENCE_KEY: dict(reference)})
    return atomic_write_bytes(Path(model_dir) / "card.json", (card.to_json() + "\n").encode())


def reference_from_run(run: str | Path, task: str, slide_ids: Iterable[str] | None = None) -> dict[str, Any]:
    """Reference ranges from a run's commit records: the statistics the job measured on each slide
    (``extra["ood"]["stats"][task]``), pixel statistics and the tumor fraction / mitotic density alike.

    Run the job on the model's training cohort, then take the reference from it: the only way to
    get the densities as the models themselves see them (tumor fraction of the tumor net's regions,
    detections of the mitosis net per mm² of them), at no cost beyond that run.

    Parameters
    ----------
    run : path
        ``RUN`` with ``slides/<id>.zarr/commit.json``.
    task : {"tumor", "mitosis"}
    slide_ids : iterable of str, optional
        Only these slides (the training slides); default every committed slide.
    """
    from tupac.errors import HeatmapStoreError
    from tupac.heatmaps.commit import read_commit

    want = set(slide_ids) if slide_ids is not None else None
    items = []
    for store in sorted((Path(run) / "slides").glob("*.zarr")):
        if want is not None and store.name.removesuffix(".zarr") not in want:
            continue
        try:
            extra = read_commit(store).extra
        except HeatmapStoreError:
            continue  # not committed: no statistics to use
        if extra.get("no_tissue"):
            continue
        items.append(((extra.get("ood") or {}).get("stats") or {}).get(task))
    return reference_from_stats(items)
