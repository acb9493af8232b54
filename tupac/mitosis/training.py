"""Mitosis-detector training on the TUPAC16 auxiliary set, with the paper's two stages.

Stage 1 trains on candidate nuclei (:mod:`tupac.mitosis.sampling`): the candidate at each annotated
mitosis is a positive (shifted copies of it, so the fully convolutional detector fires on the cells
around a figure), a seeded random sample of the other nuclei plus a few random tissue/glass points
are negatives. The stage-1 model then maps every training image; its detections with probability
above 0.8 that lie more than 30 px from every annotated mitosis are *hard negatives* (at most 200
per image). They join the negatives and a fresh model is trained (stage 2).

Held-out validation images choose each stage's epoch (the TUPAC16 F1 of the detections on them,
after every epoch) and the detection threshold (:func:`tupac.mitosis.detect.choose_threshold`); the
stage with the better validation F1 is kept (stage 2 on ties).

All images are stain-standardized towards one template (the first training image), saved beside the
model so inference uses the same one. Outputs in ``out_dir`` (``MODELS/mitosis``):
``model.safetensors`` + ``card.json`` (``detection_threshold``; ``extra``: ``sigma_px``,
``nms_radius_px``, stages), ``stain_reference.json``, ``training.json``, and ``stage1/``,
``stage2/`` run folders, each with ``selected/`` (that stage's chosen weights and threshold;
loadable with :func:`tupac.models.trained.load_trained`).

The schedule itself (stage 1, the mining step, stage 2, the choice, the saved card and record) is
:mod:`tupac.train.two_stage`; this module supplies mitosis's steps (:class:`MitosisStages`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from tupac.config_check import SCHEMA, option
from tupac.data import Tupac16Dataset
from tupac.errors import ConfigError, DatasetLayoutError
from tupac.mitosis.calibration import (
    THRESHOLD_RULES,
    PlattCalibration,
    calibrated_half_threshold,
    f1_curve,
    fit_platt,
    plateau_threshold,
)
from tupac.mitosis.detect import detect_from_heatmap
from tupac.mitosis.inference import mitosis_heatmap, read_image, standardize_image
from tupac.mitosis.sampling import candidate_nuclei, extract_patches, hard_negatives, jittered, label_candidates
from tupac.mitosis.scoring import TUPAC_RADIUS_PX, score_images
from tupac.models import create_model, list_models, save_model
from tupac.preprocess import stain
from tupac.preprocess.ood_stats import REFERENCE_KEY, image_stats, reference_from_stats
from tupac.train import PatchDataset, train
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


@dataclass(frozen=True)
class MitosisTrainConfig:
    """Options of :func:`train_mitosis` (everything that decides the result). Each field's
    description is its ``help`` (:func:`tupac.config_check.option`)."""

    arch: str = option("mitosnet", help="Registered network (see `tupac models`): mitosnet, locnet, densenet121, "
                                        "googlenet, googlenet_fcn.")
    model_kwargs: dict[str, Any] = option(default_factory=dict, help="Extra constructor options of the network.")
    stain_method: str = option("wsics", help="Stain standardization: wsics, macenko or reinhard.")
    val_fraction: float = option(0.2, help="Share of the images held out for validation (at least one when there "
                                           "are two or more).")
    max_images: int | None = option(None, help="Use only the first max_images images of the set (quick runs).")
    negatives_per_image: int = option(120, help="Candidate nuclei sampled as negatives per image (all when fewer).")
    # The detector runs on every pixel, not only on nuclei.
    background_per_image: int = option(30, help="Further negatives at random points of the image (stroma, glass, "
                                                "between nuclei).")
    positive_copies: int = option(16, help="Shifted copies per positive (tupac.mitosis.sampling.jittered).")
    positive_jitter_px: float = option(8.0, help="Largest shift of a copy, pixels per axis.")
    match_radius_px: float = option(TUPAC_RADIUS_PX, help="Candidate-to-annotation radius and hard-negative "
                                                          "exclusion radius (30 px = 7.5 um).")
    hard_min_prob: float = option(0.8, help="Stage-2 hard negatives: detections above this probability.")
    hard_max_per_image: int = option(200, help="Stage-2 hard negatives: at most this many per image.")
    two_stage: bool = option(True, help="Retrain with stage-1 hard negatives (stage 2).")
    sigma_px: float = option(8.0, help="Heatmap smoothing of the detector (px; saved in the card).")
    nms_radius_px: float = option(32.0, help="Suppression radius of the detector (px; saved in the card).")
    # "f1" computes a heatmap of every validation image per epoch: cheap for the FCNs, slow for
    # sliding-window baselines.
    epoch_selection: str = option("f1", help="What chooses the epoch: f1 (the validation images' detection F1 "
                                             "after every epoch) or patch (the training loop's train.monitor).")
    # Issue 17: the best-F1 threshold jumped with the seed (0.998 / 0.646 / 0.740); the other rules
    # choose on Platt-calibrated probabilities (tupac.mitosis.calibration). The default stays today's
    # until a benchmark decides (benchmarks/mitosis_threshold.py).
    threshold_rule: str = option("best_f1", help="How the validation images choose the detection threshold: "
                                                 "best_f1 (highest best-F1 threshold with a margin), calibrated_half "
                                                 "(calibrated probability 0.5) or f1_plateau (calibrated midpoint of "
                                                 "the thresholds within 0.01 of the best F1).")
    seed: int = option(0, help="Seed of the split, the sampling and the networks.")
    train: dict[str, Any] = option(
        default_factory=lambda: {"epochs": 12, "batch_size": 64, "lr": 2e-3, "monitor": "auroc"},
        help="TrainConfig fields of both stages (epochs, batch_size, lr, ...).",
        **{SCHEMA: TrainConfig},  # a config file's `train:` is checked against TrainConfig's fields
    )

    def __post_init__(self) -> None:
        if self.arch not in list_models("mitosis"):
            raise ConfigError(f"arch={self.arch!r}, expected one of {', '.join(list_models('mitosis'))}")
        if self.stain_method not in ("wsics", "macenko", "reinhard"):
            raise ConfigError(f"stain_method={self.stain_method!r}, expected wsics, macenko or reinhard")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction}, expected in [0, 1)")
        if self.threshold_rule not in THRESHOLD_RULES:
            raise ConfigError(f"threshold_rule={self.threshold_rule!r}, expected one of {', '.join(THRESHOLD_RULES)}")
        if self.epoch_selection not in ("f1", "patch"):
            raise ConfigError(f"epoch_selection={self.epoch_selection!r}, expected 'f1' or 'patch'")
        if not 0.0 < self.hard_min_prob < 1.0:
            raise ConfigError(f"hard_min_prob={self.hard_min_prob}, expected in (0, 1)")
        if self.positive_copies < 1:
            raise ConfigError(f"positive_copies={self.positive_copies}, expected >= 1")
        for name in ("negatives_per_image", "background_per_image", "hard_max_per_image"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}, expected >= 0")
        if self.max_images is not None and self.max_images < 1:
            raise ConfigError(f"max_images={self.max_images}, expected >= 1 or None")
        if not self.match_radius_px > 0:
            raise ConfigError(f"match_radius_px={self.match_radius_px}, expected > 0 px")
        for name in ("positive_jitter_px", "sigma_px", "nms_radius_px"):  # 0 turns each off
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name}={getattr(self, name)}, expected >= 0 px")
        if self.seed < 0:  # numpy's generators refuse negative seeds
            raise ConfigError(f"seed={self.seed}, expected >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ImageContext:
    """One auxiliary image with its ground truth and labelled candidates (computed once)."""

    key: str
    path: Path
    truth: pd.DataFrame  # x, y
    positives_xy: np.ndarray
    negative_pool_xy: np.ndarray
    n_candidates: int


@dataclass(frozen=True)
class MitosisTrainResult:
    """Outcome of :func:`train_mitosis`."""

    model_dir: Path
    chosen_stage: int
    threshold: float
    stages: list[dict[str, Any]]
    train_images: list[str]
    val_images: list[str]
    seconds: float


def split_images(counts: dict[str, int], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded train/validation split of image keys (``"NN/MM"``), stratified by "has a mitosis".

    Parameters
    ----------
    counts : dict of str to int
        Annotated mitoses per image key.

    Returns
    -------
    train, val : list of str
        Sorted keys. Validation gets about ``val_fraction`` of the images with mitoses (at least one
        when two or more have some, so F1 is defined) and of those without.
    """
    rng = np.random.default_rng([seed, 0x5B17])
    val: list[str] = []
    for group in (sorted(k for k, n in counts.items() if n > 0), sorted(k for k, n in counts.items() if n == 0)):
        n_val = int(round(len(group) * val_fraction))
        if val_fraction > 0 and len(group) >= 2:
            n_val = min(max(n_val, 1), len(group) - 1)
        elif len(group) < 2:
            n_val = 0
        if n_val:
            val += rng.choice(group, size=n_val, replace=False).tolist()
    return sorted(k for k in counts if k not in set(val)), sorted(val)


def _truth_frame(points_rc: np.ndarray) -> pd.DataFrame:
    rc = np.asarray(points_rc, np.float64).reshape(-1, 2)
    return pd.DataFrame({"x": rc[:, 1], "y": rc[:, 0]})


def prepare_image(entry, reference, config: MitosisTrainConfig) -> tuple[ImageContext, np.ndarray]:
    """Read, standardize and label one auxiliary image; returns its context and standardized pixels."""
    rgb = standardize_image(read_image(entry.path), reference, seed=config.seed)
    truth = _truth_frame(entry.points_rc)
    labels = label_candidates(candidate_nuclei(rgb), truth, config.match_radius_px)
    ctx = ImageContext(entry.key, Path(entry.path), truth, labels.positive_xy, labels.negative_pool_xy,
                       len(labels.negative_pool_xy) + int(labels.from_candidate.sum()))
    return ctx, rgb


def _background_points(shape, truth: pd.DataFrame, n: int, radius: float, rng) -> np.ndarray:
    if n <= 0:
        return np.zeros((0, 2))
    h, w = shape[:2]
    pts = np.stack([rng.uniform(0, w - 1, 2 * n), rng.uniform(0, h - 1, 2 * n)], axis=1)
    t = truth[["x", "y"]].to_numpy()
    if len(t):
        d = np.hypot(pts[:, None, 0] - t[None, :, 0], pts[:, None, 1] - t[None, :, 1]).min(axis=1)
        pts = pts[d > 2 * radius]
    return pts[:n]


def image_patches(ctx: ImageContext, rgb: np.ndarray, patch: int, config: MitosisTrainConfig,
                  rng: np.random.Generator, jitter: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Labelled patches of one image: ``(n, patch, patch, 3)`` uint8 and ``(n,)`` int64."""
    copies = config.positive_copies if jitter else 1
    pos = jittered(ctx.positives_xy, copies, config.positive_jitter_px, rng)
    pool = ctx.negative_pool_xy
    k = min(config.negatives_per_image, len(pool))
    neg = pool[np.sort(rng.choice(len(pool), size=k, replace=False))] if k else np.zeros((0, 2))
    bg = _background_points(rgb.shape, ctx.truth, config.background_per_image, config.match_radius_px, rng)
    centers = np.concatenate([pos, neg, bg])
    labels = np.r_[np.ones(len(pos), np.int64), np.zeros(len(neg) + len(bg), np.int64)]
    return extract_patches(rgb, centers, patch), labels


def validation_detections(model, images: list[np.ndarray], config: MitosisTrainConfig,
                          floor: float = 0.05) -> list[pd.DataFrame]:
    """Detections of every validation image down to probability ``floor`` (the candidates of every
    threshold rule), one ``x, y, prob`` frame per image."""
    dets = []
    for rgb in images:
        hm = mitosis_heatmap(model, rgb)
        dets.append(detect_from_heatmap(hm.prob, hm.stride_px, hm.offset_px, floor, config.sigma_px, config.nms_radius_px))
    return dets


def rule_thresholds(dets: list[pd.DataFrame], truths: list[pd.DataFrame], radius: float,
                    floor: float = 0.05) -> tuple[dict[str, float], PlattCalibration, float]:
    """The raw-scale threshold of every rule of :data:`THRESHOLD_RULES` on the same validation
    detections, the Platt calibration fitted on them, and the best pooled F1.

    Returns
    -------
    thresholds : dict of str to float
        Rule name to threshold on ``prob`` in [0, 1] (1.0 when there is no detection).
    calibration : PlattCalibration
    max_f1 : float
        Best pooled validation F1 over all thresholds (0 without detections).
    """
    thr, f1, probs, flags = f1_curve(dets, truths, radius)
    cal = fit_platt(probs, flags)
    if thr.size == 0:  # nothing above the floor: no detections at any threshold
        return {rule: 1.0 for rule in THRESHOLD_RULES}, cal, 0.0
    best = int(np.argmax(f1))  # thresholds descend: the highest best-F1 threshold
    out = {
        "best_f1": _widest_margin(dets, truths, float(thr[best]), float(f1[best]), radius, floor),
        "calibrated_half": calibrated_half_threshold(cal),
        "f1_plateau": plateau_threshold(thr, f1, cal),
    }
    return {k: min(max(float(v), 0.0), 1.0) for k, v in out.items()}, cal, float(f1[best])


def _evaluate(model, images: list[np.ndarray], truths: list[pd.DataFrame], config: MitosisTrainConfig,
              floor: float = 0.05) -> dict[str, float]:
    """Validation detection metrics: the threshold of ``config.threshold_rule``, the counts at it,
    the best F1 at any threshold (which ranks epochs), every rule's threshold and the calibration."""
    dets = validation_detections(model, images, config, floor)
    thresholds, cal, max_f1 = rule_thresholds(dets, truths, config.match_radius_px, floor)
    thr = thresholds[config.threshold_rule]
    kept = [d[d["prob"] >= thr] for d in dets]
    pooled, _ = score_images(((str(i), k, t) for i, (k, t) in enumerate(zip(kept, truths))), config.match_radius_px)
    return {"threshold": float(thr), "f1": float(pooled.f1) if pooled.tp + pooled.fp + pooled.fn else 0.0,
            "precision": float(pooled.precision), "recall": float(pooled.recall),
            "tp": pooled.tp, "fp": pooled.fp, "fn": pooled.fn, "max_f1": max_f1,
            **{f"threshold_{k}": v for k, v in thresholds.items()},
            "calibrated_threshold": float(cal.apply(thr)),
            "cal_a": cal.a, "cal_b": cal.b, "cal_n": cal.n, "cal_n_pos": cal.n_pos}


def calibration_extra(summary: dict[str, Any], rule: str) -> dict[str, Any]:
    """The card's ``extra`` entries of issue 17 from a stage summary (``val_`` keys): the
    calibration, the rule, and the threshold on the calibrated scale. Empty without validation."""
    if "val_cal_a" not in summary:
        return {}
    cal = PlattCalibration(float(summary["val_cal_a"]), float(summary["val_cal_b"]),
                           int(summary["val_cal_n"]), int(summary["val_cal_n_pos"]))
    return {"calibration": cal.to_dict(), "threshold_rule": rule,
            "calibrated_threshold": float(summary["val_calibrated_threshold"])}


def _pooled_f1(dets, truths, thr: float, radius: float) -> float:
    pooled, _ = score_images(((str(i), d[d["prob"] >= thr], t) for i, (d, t) in enumerate(zip(dets, truths))), radius)
    return float(pooled.f1) if pooled.tp + pooled.fp + pooled.fn else 0.0


def _widest_margin(dets, truths, thr: float, f1: float, radius: float, floor: float) -> float:
    """A best-F1 threshold with a margin: halfway between the lowest detection probability that
    still gives the best validation F1 and the next one below it (which does worse).

    ``choose_threshold`` returns the highest best-F1 threshold: on a few validation images whose
    mitoses all score high it sits right at the weakest validation mitosis, and held-out mitoses
    just below it are lost. Halfway to the first harmful detection keeps the same validation F1
    with a margin on both sides (0.5 * (low + floor) when nothing below does worse).
    """
    probs = np.unique(np.concatenate([d["prob"].to_numpy(np.float64) for d in dets]))[::-1]
    low = thr
    for p in probs[probs < thr]:  # descending; stops at the first threshold that does worse
        if _pooled_f1(dets, truths, float(p), radius) < f1:
            return 0.5 * (low + float(p)) if low > p else low
        low = float(p)
    return 0.5 * (low + floor) if f1 > 0 else thr


class _BestF1:
    """Training callback: validation-image F1 after every epoch; keeps the best epoch's weights."""

    def __init__(self, images, truths, config, tracker) -> None:
        self.images, self.truths, self.config, self.tracker = images, truths, config, tracker
        self.best: tuple[float, int, dict] | None = None
        self.history: list[dict[str, float]] = []

    def __call__(self, state) -> None:
        m = _evaluate(state.model, self.images, self.truths, self.config)
        self.history.append({"epoch": state.epoch, **m})
        if self.tracker is not None:
            self.tracker.log_metrics({f"val_image_{k}": v for k, v in m.items()}, step=state.epoch)
        # The best F1 at any threshold ranks the epochs: it depends on the ranking of the detections
        # only, not on the threshold rule (with best_f1 it equals the F1 at the chosen threshold).
        key = _epoch_key(m["max_f1"], state)
        if self.best is None or key > self.best[0]:
            self.best = (key, state.epoch, copy.deepcopy(state.model.state_dict()))
        state.model.train()


def _epoch_key(image_f1: float, state) -> tuple[float, float]:
    """How epochs rank: validation-image F1, then (on a tie) lower validation patch loss, else the
    later epoch.

    A few validation images often give F1 1.0 from the first epoch on; keeping the first such
    epoch kept an undertrained network (the 60-slide benchmark kept epoch 1 of 4, validation loss
    0.006 against epoch 3's 0.002, and detected mitoses on its slides with precision 0.63).
    """
    loss = float(state.metrics.get("val_loss", float("nan")))
    return (float(image_f1), -loss if np.isfinite(loss) else float(state.epoch))


def _train_stage(stage, config, train_ds, val_ds, val_images, val_truths, out, tracker):
    tcfg = stage_config(config.train, config.seed, stage)
    model = create_model(config.arch, task="mitosis", seed=tcfg.seed, **config.model_kwargs)
    tracked = stage_tracker(tracker, stage)
    callbacks = []
    if config.epoch_selection == "f1" and val_images:
        callbacks.append(_BestF1(val_images, val_truths, config, tracked))
    t0 = time.perf_counter()
    result = train(model, train_ds, val_ds, tcfg, out / f"stage{stage}", tracker=tracked, callbacks=callbacks)
    train_seconds = time.perf_counter() - t0
    best_epoch = result.best_epoch
    if callbacks and callbacks[0].best is not None:
        _, best_epoch, state = callbacks[0].best
        model.load_state_dict(state)
    model.eval()
    summary: dict[str, Any] = {
        **stage_summary(stage, train_ds, int(best_epoch)),
        "epochs": len(result.history),
        "train_seconds": round(train_seconds, 1),
    }
    if val_images:
        summary.update({f"val_{k}": v for k, v in _evaluate(model, val_images, val_truths, config).items()})
    return model, summary


def _save_stage(model, stage: int, summary: dict, config: MitosisTrainConfig, out: Path) -> Path:
    """Keep a stage's selected weights with their own threshold (``stageN/selected``), for comparison."""
    card = model.card.with_metadata(
        stain_reference=f"../../{STAIN_REFERENCE_FILE}",
        detection_threshold=min(max(float(summary.get("val_threshold", 0.5)), 0.0), 1.0),
        extra={**model.card.extra, "sigma_px": config.sigma_px, "nms_radius_px": config.nms_radius_px, "stage": stage,
               **calibration_extra(summary, config.threshold_rule)},
    )
    return save_model(model, card, out / f"stage{stage}" / "selected")


def _patch_set(contexts, rgbs, patch, config, stream, jitter=True, extra_negatives=None):
    xs, ys = [], []
    for i, (ctx, rgb) in enumerate(zip(contexts, rgbs)):
        rng = np.random.default_rng([config.seed, stream, i])
        x, y = image_patches(ctx, rgb, patch, config, rng, jitter=jitter)
        xs.append(x)
        ys.append(y)
        hard = (extra_negatives or {}).get(ctx.key)
        if hard is not None and len(hard):
            xs.append(extract_patches(rgb, hard, patch))
            ys.append(np.zeros(len(hard), np.int64))
    if not xs:
        return None
    return PatchDataset(np.concatenate(xs), np.concatenate(ys))


def mine_hard_negatives(model, contexts: list[ImageContext], rgbs: list[np.ndarray],
                        config: MitosisTrainConfig) -> dict[str, np.ndarray]:
    """The stage-1 model's confident false detections on the training images, per image key.

    Detections above ``config.hard_min_prob`` farther than ``config.match_radius_px`` from every
    annotated mitosis, at most ``config.hard_max_per_image`` per image
    (:func:`tupac.mitosis.sampling.hard_negatives`); ``(k, 2)`` float ``x, y`` pixel arrays.
    """
    hard = {}
    for ctx, rgb in zip(contexts, rgbs):
        hm = mitosis_heatmap(model, rgb)
        det = detect_from_heatmap(hm.prob, hm.stride_px, hm.offset_px, config.hard_min_prob,
                                  config.sigma_px, config.nms_radius_px)
        hard[ctx.key] = hard_negatives(det, ctx.truth, config.hard_min_prob, config.match_radius_px,
                                       config.hard_max_per_image)
    return hard


def _choose_stage(stages: list[dict[str, Any]]) -> int:
    """The stage with the best validation F1; the later stage on ties (it saw the hard negatives)."""
    scored = [(s.get("val_f1", float("nan")), s["stage"]) for s in stages]
    valid = [(f, st) for f, st in scored if np.isfinite(f)]
    if not valid:
        return stages[-1]["stage"]
    best = max(f for f, _ in valid)
    return max(st for f, st in valid if f == best)


@dataclass(frozen=True)
class MitosisStages:
    """Mitosis's steps of the two-stage schedule (:class:`tupac.train.two_stage.TwoStageTask`).

    A stage's data is its training patch set; the validation patches and images are the same for
    both stages. The refine step mines hard negatives with the stage-1 model
    (:func:`mine_hard_negatives`) and adds them to the same sample; each stage's selected weights
    are kept in ``stageN/selected``; the choice is :func:`_choose_stage` on validation F1.
    """

    config: MitosisTrainConfig
    train_ctx: list[ImageContext]
    train_rgb: list[np.ndarray]
    val_ds: PatchDataset | None
    val_rgb: list[np.ndarray]
    val_truths: list[pd.DataFrame]
    patch: int
    out: Path
    tracker: Any
    say: Callable[[str], None]

    def train(self, stage: int, data: PatchDataset) -> tuple[Any, dict[str, Any]]:
        return _train_stage(stage, self.config, data, self.val_ds, self.val_rgb, self.val_truths, self.out, self.tracker)

    def keep(self, stage: int, model, summary: dict[str, Any]) -> None:
        _save_stage(model, stage, summary, self.config, self.out)

    def refine(self, model, summary: dict[str, Any], data: PatchDataset) -> PatchDataset:
        self.say("stage 2: mining hard negatives on the training images with the stage-1 model")
        t0 = time.perf_counter()
        hard = mine_hard_negatives(model, self.train_ctx, self.train_rgb, self.config)
        summary["hard_negatives"] = int(sum(len(v) for v in hard.values()))
        summary["mining_seconds"] = round(time.perf_counter() - t0, 1)
        refined = _patch_set(self.train_ctx, self.train_rgb, self.patch, self.config, stream=1, extra_negatives=hard)
        self.say(f"stage 2: {summary['hard_negatives']} hard negatives; retraining on {len(refined)} patches")
        return refined

    def rescore(self, model, summary: dict[str, Any], data: PatchDataset) -> None:
        """Nothing: both stages are scored on the same validation images."""

    def choose(self, stages: list[dict[str, Any]]) -> int:
        return _choose_stage(stages)


def _mitosis_images(root: str | Path, config: MitosisTrainConfig) -> list:
    """The auxiliary images of the dataset (the first ``config.max_images``); refuses none."""
    entries = list(Tupac16Dataset(Path(root)).mitosis_images)
    if config.max_images is not None:
        entries = entries[: config.max_images]
    if not entries:
        raise DatasetLayoutError(Path(root) / "mitoses", "no auxiliary mitosis images (mitoses/mitoses_image_data/NN/MM.tif)")
    return entries


def _split(root: str | Path, by_key: dict, config: MitosisTrainConfig) -> tuple[list[str], list[str]]:
    """:func:`split_images` of the entries; refuses a training split without an annotated mitosis."""
    train_keys, val_keys = split_images({k: len(e.points_rc) for k, e in by_key.items()}, config.val_fraction, config.seed)
    if not any(len(by_key[k].points_rc) for k in train_keys):
        raise DatasetLayoutError(Path(root) / "mitoses", "no annotated mitosis in the training images")
    return train_keys, val_keys


def _stages(prepared: dict, train_keys: list[str], val_keys: list[str], config: MitosisTrainConfig, out: Path,
            tracker, say) -> tuple[MitosisStages, PatchDataset]:
    """The stage steps over the prepared images, and the stage-1 training patches."""
    train_ctx = [prepared[k][0] for k in train_keys]
    train_rgb = [prepared[k][1] for k in train_keys]
    val_ctx = [prepared[k][0] for k in val_keys]
    val_rgb = [prepared[k][1] for k in val_keys]
    patch = create_model(config.arch, task="mitosis", **config.model_kwargs).card.patch_size
    train_ds = _patch_set(train_ctx, train_rgb, patch, config, stream=1)
    val_ds = _patch_set(val_ctx, val_rgb, patch, config, stream=2, jitter=False)
    say(f"stage 1: training {config.arch} on {len(train_ds)} patches ({int(train_ds.labels.sum())} positive) "
        f"from {len(train_ctx)} images; {len(val_ctx)} validation images")
    task = MitosisStages(config, train_ctx, train_rgb, val_ds, val_rgb, [c.truth for c in val_ctx], patch, out, tracker, say)
    return task, train_ds


def train_mitosis(
    root: str | Path,
    out_dir: str | Path,
    config: MitosisTrainConfig = MitosisTrainConfig(),
    *,
    stain_reference=None,
    tracker=None,
    progress: Callable[[str], None] | None = None,
) -> MitosisTrainResult:
    """Train a mitosis detector on the auxiliary set of a TUPAC16-layout dataset (two stages).

    Parameters
    ----------
    root : path
        Dataset root holding ``mitoses/mitoses_image_data`` and ``mitoses/mitoses_ground_truth``.
    out_dir : path
        Where the model, card, stain reference and ``training.json`` go (``MODELS/mitosis``).
    config : MitosisTrainConfig
    stain_reference : StainReference, optional
        Template to standardize towards; default: fitted on the first training image.
    tracker : tupac.train.Tracker, optional
        Receives params, per-epoch metrics (prefixed ``stage1.``/``stage2.``) and artifacts.
    progress : callable, optional
        Called with a short message at each step.

    Returns
    -------
    MitosisTrainResult
    """
    say = progress or (lambda msg: None)
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = _mitosis_images(root, config)
    by_key = {e.key: e for e in entries}
    train_keys, val_keys = _split(root, by_key, config)
    if stain_reference is None:
        first = by_key[train_keys[0]].path
        stain_reference = stain.StainReference(stain.fit_image(read_image(first), method=config.stain_method,
                                                               seed=config.seed, source=str(first)))
    ref_path = stain_reference.save(out / STAIN_REFERENCE_FILE)
    if tracker is not None:
        tracker.log_params({f"mitosis.{k}": v for k, v in flatten_params(config.to_dict()).items()})
        tracker.log_params({"mitosis.train_images": len(train_keys), "mitosis.val_images": len(val_keys)})
    say(f"preparing {len(entries)} images (stain standardization, candidate nuclei)")
    t0 = time.perf_counter()
    prepared = {k: prepare_image(by_key[k], stain_reference, config) for k in sorted(by_key)}
    prep_seconds = time.perf_counter() - t0
    task, train_ds = _stages(prepared, train_keys, val_keys, config, out, tracker, say)
    del prepared
    outcome = run_stages(task, train_ds, config.two_stage, setup={"prepare_seconds": round(prep_seconds, 1)})
    threshold = float(outcome.summary.get("val_threshold", 0.5))
    seconds = time.perf_counter() - t_start
    # The training fields' raw stain and texture statistics: the reference the job's
    # out-of-distribution check compares each slide with (tupac.features.ood).
    ood_ref = reference_from_stats(image_stats([read_image(by_key[k].path)]) for k in train_keys)
    _save_mitosis(outcome, root, out, config, stain_reference.method, (train_keys, val_keys), threshold, seconds,
                  tracker, ref_path, ood_ref)
    say(f"done in {seconds:.0f} s: stage {outcome.chosen} chosen, threshold {threshold:.3f}, "
        f"validation F1 {outcome.summary.get('val_f1', float('nan')):.3f}; model in {out}")
    return MitosisTrainResult(out, outcome.chosen, threshold, outcome.stages, train_keys, val_keys, seconds)


def _save_mitosis(outcome: StageOutcome, root, out: Path, config: MitosisTrainConfig, stain_method: str,
                  split: tuple[list[str], list[str]], threshold: float, seconds: float, tracker, ref_path: Path,
                  ood_reference: dict | None = None) -> None:
    """The chosen model with its card (detection threshold; detector settings and stages in ``extra``),
    ``training.json``, the tracked summary."""
    train_keys, val_keys = split
    card = card_fields(train_keys, root, stain_method, config.seed, detection_threshold=min(max(threshold, 0.0), 1.0),
                       extra={"sigma_px": config.sigma_px, "nms_radius_px": config.nms_radius_px,
                              "match_radius_px": config.match_radius_px, "stage": outcome.chosen, "stages": outcome.stages,
                              **calibration_extra(outcome.summary, config.threshold_rule),
                              **({REFERENCE_KEY: ood_reference} if ood_reference else {})})
    record = {"config": config.to_dict(), "train_images": train_keys, "val_images": val_keys, "stages": outcome.stages,
              "chosen_stage": outcome.chosen, "threshold": threshold, "seconds": round(seconds, 1)}
    metrics = [stage_metrics(outcome.stages, "stage{stage}.final_{key}"), {"seconds": seconds, "detection_threshold": threshold}]
    save_chosen(outcome, out, card, record, tracker, metrics, [ref_path])
