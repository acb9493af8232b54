"""Tumor-localization training on a TUPAC16-layout dataset, with the paper's two-stage active learning.

Stage 1 trains on patches inside the annotated ROI boxes (tumor) and random tissue patches outside
them (non-tumor). The stage-1 model then maps every training slide; regions it calls tumor join
the positives (and leave the negative pool, with a margin), and a fresh model is trained on the
enlarged set (stage 2). Held-out slides give the validation patches that choose each stage's epoch
and the probability threshold saved in the card.

Why stage 2 matters here: ROI boxes cover the inside of the largest tumor regions only, so stage-1
positives never reach a tumor's edge while its negatives include the unannotated rims and small
regions. The stage-1 map is therefore drawn inside the true outline, and on small regions that is
a large share of their area. Stage 2 labels the stage-1 tumor as tumor up to its edge and keeps
negatives ``negative_margin_um`` away from it.

Why edge patches (:mod:`tupac.tumor.edges`): the margin leaves a band around every tumor without
labels, and without them the model placed the boundary anywhere in that band, steeply with the
margin. Both stages therefore also train on synthetic edges (a tumor and a non-tumor patch of the
slide cut along a random line, labelled by the side the center falls on), which is the rule the
ground truth follows. Measured on the 60-slide phantom benchmark cohort (narrow LocNet, 25 + 25
patches per slide, 6 epochs; tumor area at 0.5 against the true mask on 15 slides, median and
range of the relative error; the rows without edge patches predate the heatmap edge fix of
:mod:`tupac.heatmaps.windows`, which added +3 to +6 %, so they compare with each other only):

==========================================================  =====================
stage-2 sampling                                            area error
==========================================================  =====================
paper's cutoff 0.95 (nothing reached it), 50 um margin      -35 % (largest 49 %)
stage-1 tumor excluded from negatives, 35 um margin         -26 % (largest 30 %)
stage-1 tumor excluded from negatives, 70 um margin         -4 % (largest 7 %)
stage-1 tumor as positives, 35 / 50 / 70 um margin          -8 / +1 / +2 %
after the heatmap edge fix, 40 / 50 um margin (60 slides)   -13 % / +7 %
edge patches (1 per positive), 50 um margin                 +0.3 % (-2.0 to +3.1)
edge patches (1 per positive), 25 um margin                 -1.0 % (-3.5 to +1.1)
==========================================================  =====================

With edge patches the margin hardly moves the boundary (25 or 50 um: 1.3 points apart, where 40
and 50 um were 20 points apart without them), and the stage-1 map at 0.5 errs -8 % instead of
-28 %.

Every patch is read at the model's mpp (1.0 um/px, "10x") and stain-standardized to the training
template, which is saved beside the model so that inference uses the same template.

Outputs in ``out_dir`` (``MODELS/tumor``): ``model.safetensors`` + ``card.json`` (the chosen stage),
``stain_reference.json``, ``training.json`` (splits, per-stage validation metrics, timings), and
``stage1/``, ``stage2/`` run folders (checkpoints, resumable).

The schedule itself (stage 1, the refine step, stage 2, the choice, the saved card and record) is
:mod:`tupac.train.two_stage`; this module supplies tumor's steps (:class:`TumorStages`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from tupac.config_check import SCHEMA, option
from tupac.data import Tupac16Dataset
from tupac.errors import ConfigError, DatasetLayoutError
from tupac.heatmaps.engine import heatmap_to_array
from tupac.models import create_model, list_models, model_device, to_device_input
from tupac.preprocess import stain
from tupac.preprocess.ood_stats import REFERENCE_KEY, reference_from_stats, slide_stats
from tupac.preprocess.tissue import slide_tissue_mask
from tupac.slide import open_slide
from tupac.train import PatchDataset, binary_metrics, train
from tupac.train.config import TrainConfig
from tupac.train.tracking import flatten_params
from tupac.train.two_stage import (
    STAIN_REFERENCE_FILE,
    StageOutcome,
    card_fields,
    run_stages,
    save_chosen,
    stage_config,
    stage_metrics,
    stage_summary,
    stage_tracker,
)
from tupac.tumor.edges import edge_composites
from tupac.tumor.regions import best_threshold, heatmap_on_grid
from tupac.tumor.sampling import read_patches, sample_patch_centers


@dataclass(frozen=True)
class TumorTrainConfig:
    """Options of :func:`train_tumor` (everything that decides the result). Each field's
    description is its ``help`` (:func:`tupac.config_check.option`)."""

    arch: str = option("locnet", help="Registered network (see `tupac models`).")
    model_kwargs: dict[str, Any] = option(default_factory=dict, help="Extra constructor options (e.g. "
                                          "{widths: [16, 32, 48, 64, 128]} for a narrow LocNet).")
    stain_method: str = option("wsics", help="Stain standardization of every patch: wsics, macenko or reinhard.")
    tissue_mpp: float = option(8.0, help="Resolution of the tissue mask the patches are sampled from (um/px).")
    positives_per_slide: int = option(200, help="Positive patches sampled per slide and stage.")
    negatives_per_slide: int = option(200, help="Negative patches sampled per slide and stage.")
    val_fraction: float = option(0.25, help="Share of the slides with ROIs held out for validation (at least one "
                                            "when there are two).")
    # A fixed value (the paper's high confidence, e.g. 0.95) leaves tissue between the stage-1
    # threshold and the cutoff as possible tumor: neither positive nor negative, and no negatives near it.
    confident: float | None = option(None, help="Stage-2 cutoff: stage-1 probability above which unannotated "
                                                "tissue becomes a positive (null: the stage-1 model's own "
                                                "decision threshold, chosen on validation).")
    # Without edge patches the margin also placed the boundary, steeply (the module docstring's table).
    negative_margin_um: float = option(50.0, help="Distance negative patch centers keep from annotated, stage-2 "
                                                  "positive and possible tumor (um), so that an unannotated tumor "
                                                  "rim is not taught as non-tumor.")
    # They teach the model the rule the ground truth uses, so the boundary does not depend on the margin's gap.
    edge_patches: float = option(1.0, help="Synthetic tumor-edge patches per slide, as a multiple of "
                                           "positives_per_slide: a tumor and a non-tumor patch cut along a random "
                                           "line, labelled by the side the center falls on; 0 turns them off.")
    # The paper uses the second stage; validation negatives are noisy, so small differences in
    # AUROC between the stages are not evidence.
    stage_tolerance: float = option(0.01, help="Stage 2 is kept unless its validation AUROC is lower than stage "
                                               "1's by more than this.")
    two_stage: bool = option(True, help="Run the paper's stage-2 active learning; false stops after stage 1.")
    seed: int = option(0, help="Seed of the split, the sampling and (through train) the networks.")
    # Validation loss (not AUROC) chooses the epoch: the validation negatives are noisy (unannotated
    # tumor), AUROC saturates in the first epochs, and the loss still rewards calibration, which the
    # stage-2 confidence threshold and the saved decision threshold depend on.
    train: dict[str, Any] = option(
        default_factory=lambda: {"epochs": 8, "batch_size": 32, "lr": 0.003, "lr_schedule": "cosine", "monitor": "loss"},
        help="TrainConfig fields of both stages (epochs, batch_size, lr, ...).",
        **{SCHEMA: TrainConfig},  # a config file's `train:` is checked against TrainConfig's fields
    )

    def __post_init__(self) -> None:
        if self.arch not in list_models("tumor"):
            raise ConfigError(f"arch={self.arch!r}, expected one of {', '.join(list_models('tumor'))}")
        if self.stain_method not in ("wsics", "macenko", "reinhard"):
            raise ConfigError(f"stain_method={self.stain_method!r}, expected wsics, macenko or reinhard")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction}, expected in [0, 1)")
        if self.confident is not None and not 0.0 < self.confident < 1.0:
            raise ConfigError(f"confident={self.confident}, expected in (0, 1) or None (the stage-1 threshold)")
        if not self.negative_margin_um >= 0:
            raise ConfigError(f"negative_margin_um={self.negative_margin_um}, expected >= 0 um")
        if not self.edge_patches >= 0:
            raise ConfigError(f"edge_patches={self.edge_patches}, expected >= 0 (a multiple of positives_per_slide)")
        if not self.stage_tolerance >= 0:
            raise ConfigError(f"stage_tolerance={self.stage_tolerance}, expected >= 0")
        if not self.tissue_mpp > 0:
            raise ConfigError(f"tissue_mpp={self.tissue_mpp}, expected > 0 um/px")
        for name in ("positives_per_slide", "negatives_per_slide"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}, expected >= 1")
        if self.seed < 0:  # numpy's generators refuse negative seeds
            raise ConfigError(f"seed={self.seed}, expected >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SlideContext:
    """What training needs of one slide, computed once: tissue mask and stain statistics."""

    slide_id: str
    path: Path
    rois: np.ndarray
    tissue: Any  # TissueMask
    stats: Any  # SlideStainStats
    slide_mpp: float


@dataclass(frozen=True)
class TumorTrainResult:
    """Outcome of :func:`train_tumor`."""

    model_dir: Path
    chosen_stage: int
    threshold: float
    stages: list[dict[str, Any]]
    train_slides: list[str]
    val_slides: list[str]


def split_slides(slide_ids: list[str], with_rois: set[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out a seeded share of the slides that have ROIs for validation.

    Slides without ROIs give no positives; they stay in training (negatives, stage-2 positives).
    """
    annotated = sorted(s for s in slide_ids if s in with_rois)
    if len(annotated) < 1:
        raise DatasetLayoutError("<dataset>", "no slide has an ROI file: tumor training needs annotated regions")
    rng = np.random.default_rng(seed)
    n_val = int(round(len(annotated) * val_fraction))
    if val_fraction > 0 and len(annotated) >= 2:
        n_val = min(max(n_val, 1), len(annotated) - 1)
    else:
        n_val = 0
    val = sorted(rng.choice(annotated, size=n_val, replace=False).tolist()) if n_val else []
    train = sorted(s for s in slide_ids if s not in val)
    return train, val


def prepare_slide(entry, config: TumorTrainConfig, mpp_override: float | None = None) -> SlideContext:
    """Open a slide, compute its tissue mask and stain statistics."""
    with open_slide(entry.path, mpp=mpp_override) as reader:
        tissue = slide_tissue_mask(reader, config.tissue_mpp)
        stats = stain.fit_slide(reader, tissue, method=config.stain_method, seed=config.seed)
        return SlideContext(entry.slide_id, Path(entry.path), np.asarray(entry.rois), tissue, stats, reader.mpp)


def _preprocess(ctx: SlideContext, reference) -> Callable[[np.ndarray], np.ndarray]:
    return lambda tile: stain.transform(tile, ctx.stats, reference)


@dataclass(frozen=True)
class Stage1Map:
    """What the stage-1 model says about one slide, on its tissue-mask grid (bool masks).

    Attributes
    ----------
    confident : ndarray of bool, shape (h, w)
        Tissue with probability above the stage-2 cutoff: stage-2 positives.
    possible : ndarray of bool, shape (h, w)
        Tissue at or above the stage-1 decision threshold: no stage-2 negatives near it.
    """

    confident: np.ndarray
    possible: np.ndarray


def slide_patches(
    ctx: SlideContext,
    reference,
    card,
    config: TumorTrainConfig,
    rng: np.random.Generator,
    stage1: Stage1Map | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample and read one slide's labelled patches: ``(n, P, P, 3)`` uint8 and ``(n,)`` int64 labels.

    ``stage1`` (stage 2 only) adds its confident tumor to the positives and keeps negatives away
    from its possible tumor. Synthetic edge patches (``config.edge_patches``) follow the sampled
    ones, on slides that give both kinds.
    """
    annotated = len(ctx.rois) > 0
    extra_positive = None if stage1 is None else stage1.confident
    # A slide without ROI annotations says nothing about where tumor is *not* (TUPAC16 annotates
    # only some slides, and only part of their tumor), so it gives no negatives; in stage 2 it
    # still gives the positives the stage-1 model is confident about.
    centers = sample_patch_centers(
        ctx.tissue.mask,
        ctx.tissue.mpp,
        ctx.slide_mpp,
        ctx.rois,
        config.positives_per_slide if (annotated or extra_positive is not None) else 0,
        config.negatives_per_slide if annotated else 0,
        rng,
        extra_positive=extra_positive,
        not_negative=None if stage1 is None else stage1.possible,
        negative_margin_um=config.negative_margin_um,
    )
    with open_slide(ctx.path, mpp=ctx.slide_mpp) as reader:
        pre = _preprocess(ctx, reference)
        pos = read_patches(reader, centers.positive_xy_l0, card.patch_size, card.mpp, pre)
        neg = read_patches(reader, centers.negative_xy_l0, card.patch_size, card.mpp, pre)
    edge, edge_labels = edge_composites(pos, neg, int(round(config.edge_patches * config.positives_per_slide)), rng)
    labels = np.r_[np.ones(len(pos), np.int64), np.zeros(len(neg), np.int64), edge_labels]
    return np.concatenate([pos, neg, edge]), labels


def build_patch_set(contexts, reference, card, config, seed_stream: int, stage1: dict[str, Stage1Map] | None = None):
    """Patches of several slides as one :class:`tupac.train.PatchDataset` (``stage1``: per slide id, stage 2)."""
    images, labels = [], []
    for i, ctx in enumerate(contexts):
        rng = np.random.default_rng([config.seed, seed_stream, i])
        x, y = slide_patches(ctx, reference, card, config, rng, (stage1 or {}).get(ctx.slide_id))
        images.append(x)
        labels.append(y)
    p = card.patch_size
    x = np.concatenate(images) if images else np.zeros((0, p, p, 3), np.uint8)
    y = np.concatenate(labels) if labels else np.zeros((0,), np.int64)
    return PatchDataset(x, y)


def stage1_map(ctx: SlideContext, model, reference, confident: float | None, threshold: float) -> Stage1Map:
    """Map one slide with the stage-1 model and split its tissue into confident and possible tumor
    (``confident`` None: the stage-1 ``threshold``, every tumor call is a positive)."""
    prob = tumor_probability_on_tissue_grid(ctx, model, reference)
    tissue = ctx.tissue.mask
    cutoff = threshold if confident is None else confident
    return Stage1Map(confident=(prob >= cutoff) & tissue, possible=(prob >= threshold) & tissue)


def tumor_probability_on_tissue_grid(ctx: SlideContext, model, reference) -> np.ndarray:
    """The model's tumor heatmap of one slide, sampled on the slide's tissue-mask grid.

    Returns
    -------
    ndarray of float32, shape of ``ctx.tissue.mask``
    """
    model.eval()
    with open_slide(ctx.path, mpp=ctx.slide_mpp) as reader:
        heat, geom = heatmap_to_array(
            reader, model, tissue_mask=ctx.tissue.mask, tissue_mpp=ctx.tissue.mpp, preprocess=_preprocess(ctx, reference)
        )
    return heatmap_on_grid(heat, geom.cell_um, geom.offset_px * geom.mpp, ctx.tissue.mask.shape, ctx.tissue.mpp)


def _validation_scores(model, val_ds) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    device = model_device(model)  # still on the training device
    probs = []
    with torch.inference_mode():
        for start in range(0, len(val_ds), 256):
            x = to_device_input(val_ds.images[start : start + 256], device)
            probs.append(model(x)[:, 1].float().cpu().numpy())
    return (np.concatenate(probs) if probs else np.zeros(0)), np.asarray(val_ds.labels)


def _train_stage(stage: int, config: TumorTrainConfig, train_ds, val_ds, out_dir: Path, tracker):
    tcfg = stage_config(config.train, config.seed, stage)
    if val_ds is None and tcfg.monitor != "loss":
        tcfg = tcfg.replace(monitor="loss")
    model = create_model(config.arch, task="tumor", seed=tcfg.seed, **config.model_kwargs)
    t0 = time.perf_counter()
    result = train(model, train_ds, val_ds, tcfg, out_dir / f"stage{stage}", tracker=stage_tracker(tracker, stage))
    summary = {**stage_summary(stage, train_ds, result.best_epoch), "seconds": round(time.perf_counter() - t0, 1)}
    summary.update(validation_summary(model, val_ds))
    return model, summary


def validation_summary(model, val_ds) -> dict[str, Any]:
    """Threshold (best F1 on the validation patches) and the validation metrics at it."""
    if val_ds is None or not len(val_ds):
        return {"threshold": 0.5}
    prob, y = _validation_scores(model, val_ds)
    thr, f1 = best_threshold(prob, y)
    return {"threshold": thr, "val_f1_at_threshold": f1, **{f"val_{k}": v for k, v in binary_metrics(y, prob, thr).items()}}


def _choose_stage(stages: list[dict[str, Any]], tolerance: float = 0.0) -> int:
    """The last stage, unless an earlier one has a validation AUROC higher by more than ``tolerance``."""
    last = stages[-1]
    best = max(stages, key=lambda s: (s.get("val_auroc", float("nan")), s["stage"]))
    a_last, a_best = last.get("val_auroc", float("nan")), best.get("val_auroc", float("nan"))
    if np.isnan(a_last) or np.isnan(a_best) or a_best - a_last <= tolerance:
        return last["stage"]
    return best["stage"]


@dataclass(frozen=True)
class TumorStages:
    """Tumor's steps of the two-stage schedule (:class:`tupac.train.two_stage.TwoStageTask`).

    A stage's data is ``(train_ds, val_ds)`` (``val_ds`` None without validation slides). The
    refine step maps every slide with the stage-1 model (:func:`stage1_map`) and samples both sets
    again with its tumor as positives; the choice is :func:`_choose_stage` on validation AUROC.
    """

    config: TumorTrainConfig
    reference: Any  # StainReference
    card: Any  # ModelCard of the architecture: patch size and mpp
    train_ctx: list[SlideContext]
    val_ctx: list[SlideContext]
    out: Path
    tracker: Any
    say: Callable[[str], None]

    def sample(self, streams: tuple[int, int], maps: dict[str, Stage1Map] | None = None) -> tuple[Any, Any]:
        """Training and validation patch sets, from the seed streams ``(train, val)``."""
        train_ds = build_patch_set(self.train_ctx, self.reference, self.card, self.config, seed_stream=streams[0], stage1=maps)
        val_ds = (build_patch_set(self.val_ctx, self.reference, self.card, self.config, seed_stream=streams[1], stage1=maps)
                  if self.val_ctx else None)
        return train_ds, val_ds

    def train(self, stage: int, data: tuple[Any, Any]) -> tuple[Any, dict[str, Any]]:
        return _train_stage(stage, self.config, data[0], data[1], self.out, self.tracker)

    def keep(self, stage: int, model, summary: dict[str, Any]) -> None:
        """Nothing: only the chosen stage is saved (each stage's run folder keeps its best epoch)."""

    def refine(self, model, summary: dict[str, Any], data: tuple[Any, Any]) -> tuple[Any, Any]:
        self.say("stage 2: mapping training and validation slides with the stage-1 model")
        cfg = self.config
        maps = {c.slide_id: stage1_map(c, model, self.reference, cfg.confident, summary["threshold"])
                for c in self.train_ctx + self.val_ctx}
        mm2 = (cfg.tissue_mpp / 1000.0) ** 2
        summary["confident_area_mm2"] = float(sum(m.confident.sum() for m in maps.values()) * mm2)
        summary["possible_area_mm2"] = float(sum(m.possible.sum() for m in maps.values()) * mm2)
        # The validation slides get the same treatment: their confidently-tumor regions are no
        # longer drawn as negatives. Unannotated tumor among the negatives would otherwise reward
        # the model that misses it, and push the chosen threshold up.
        refined = self.sample((3, 4), maps)
        self.say(f"stage 2: retraining on {len(refined[0])} patches")
        return refined

    def rescore(self, model, summary: dict[str, Any], data: tuple[Any, Any]) -> None:
        """Both stages are compared, and thresholded, on the refined validation set."""
        summary.update(validation_summary(model, data[1]))

    def choose(self, stages: list[dict[str, Any]]) -> int:
        return _choose_stage(stages, self.config.stage_tolerance)


def train_tumor(
    root: str | Path,
    out_dir: str | Path,
    config: TumorTrainConfig = TumorTrainConfig(),
    *,
    stain_reference=None,
    tracker=None,
    progress: Callable[[str], None] | None = None,
) -> TumorTrainResult:
    """Train a tumor localizer on a TUPAC16-layout dataset (two stages by default).

    Parameters
    ----------
    root : path
        Dataset root (``training_image_data/``, ``training_ground_truth.csv``, ROI CSVs).
    out_dir : path
        Where the model, its card and the stain reference go (``MODELS/tumor``).
    config : TumorTrainConfig
    stain_reference : StainReference, optional
        Template to standardize towards; default: the statistics of the first training slide.
    tracker : tupac.train.Tracker, optional
        Receives params, per-epoch metrics and artifacts (e.g. an MLflow tracker).
    progress : callable, optional
        Called with a short message at each step.

    Returns
    -------
    TumorTrainResult
    """
    say = progress or (lambda msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = {s.slide_id: s for s in Tupac16Dataset(Path(root)).slides}
    train_ids, val_ids = split_slides(
        list(entries), {s for s, e in entries.items() if len(e.rois)}, config.val_fraction, config.seed
    )
    t_start = time.perf_counter()
    say(f"preparing {len(entries)} slides (tissue masks, {config.stain_method} statistics)")
    contexts = {sid: prepare_slide(entries[sid], config) for sid in sorted(entries)}
    if stain_reference is None:
        stain_reference = stain.StainReference(contexts[train_ids[0]].stats)
    ref_path = stain_reference.save(out / STAIN_REFERENCE_FILE)
    if tracker is not None:
        tracker.log_params({f"tumor.{k}": v for k, v in flatten_params(config.to_dict()).items()})
    card = create_model(config.arch, task="tumor", **config.model_kwargs).card
    task = TumorStages(config, stain_reference, card, [contexts[s] for s in train_ids], [contexts[s] for s in val_ids],
                       out, tracker, say)
    say(f"stage 1: sampling patches from {len(task.train_ctx)} training and {len(task.val_ctx)} validation slides")
    data = task.sample((1, 2))
    say(f"stage 1: training {config.arch} on {len(data[0])} patches")
    outcome = run_stages(task, data, config.two_stage)
    ood_ref = training_ood_reference(task.train_ctx, card.mpp)
    _save_tumor(outcome, root, out, config, train_ids, val_ids, time.perf_counter() - t_start, tracker, ref_path, ood_ref)
    threshold = outcome.summary["threshold"]
    say(f"done: stage {outcome.chosen} chosen, threshold {threshold:.3f}, model in {out}")
    return TumorTrainResult(out, outcome.chosen, float(threshold), outcome.stages, train_ids, val_ids)


def training_ood_reference(contexts: list[SlideContext], mpp: float) -> dict[str, Any]:
    """Reference ranges of the raw stain and texture statistics over the training slides, for the
    out-of-distribution check at inference (:mod:`tupac.features.ood`; kept in ``card.extra``).

    The same few tissue tiles per slide at the model's resolution (``mpp``, µm/px) as the
    inference job measures (:func:`tupac.preprocess.ood_stats.slide_stats`), so the two compare like with like.
    """
    per_slide = []
    for ctx in contexts:
        with open_slide(ctx.path, mpp=ctx.slide_mpp) as reader:
            per_slide.append(slide_stats(reader, ctx.tissue, mpp))
    return reference_from_stats(per_slide)


def _save_tumor(outcome: StageOutcome, root, out: Path, config: TumorTrainConfig, train_ids: list[str],
                val_ids: list[str], seconds: float, tracker, ref_path: Path,
                ood_reference: dict[str, Any] | None = None) -> None:
    """The chosen model with its card (threshold, stages and the out-of-distribution reference in
    ``extra``), ``training.json``, the tracked summary."""
    extra = {"threshold": outcome.summary["threshold"], "stage": outcome.chosen, "stages": outcome.stages}
    if ood_reference is not None:
        extra[REFERENCE_KEY] = ood_reference
    card = card_fields(train_ids, root, config.stain_method, config.seed, extra=extra)
    record = {"config": config.to_dict(), "train_slides": train_ids, "val_slides": val_ids, "stages": outcome.stages,
              "chosen_stage": outcome.chosen, "seconds": round(seconds, 1)}
    save_chosen(outcome, out, card, record, tracker, [stage_metrics(outcome.stages, "stage{stage}_{key}")], [ref_path])
