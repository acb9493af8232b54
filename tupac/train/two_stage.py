"""The two-stage schedule of the paper, one skeleton for every task that trains with it.

Stage 1 trains a model on the task's first sample. The task's refine step then uses that model to
correct the sample (tumor: the regions stage 1 maps as tumor join the positives, the active learning
of :mod:`tupac.tumor.training`; mitosis: its confident false detections join the negatives, the
hard-negative mining of :mod:`tupac.mitosis.training`), and a fresh model trains on the refined
sample (stage 2). The task's validation metric chooses the stage whose weights are saved.

The task supplies its steps as a :class:`TwoStageTask`; :func:`run_stages` runs the schedule and
:func:`save_chosen` writes the chosen model with its card, the training record and the tracked
summary. What the tasks share around the stages (the seeded loop config of a stage, the stage
tracker, the first fields of a stage summary, the card's training fields) is here too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from tupac.models import save_model
from tupac.train.config import TrainConfig
from tupac.train.data import PatchDataset, training_set_hash
from tupac.train.tracking import StageTracker, Tracker, is_number

STAIN_REFERENCE_FILE = "stain_reference.json"
TRAINING_RECORD_FILE = "training.json"


class TwoStageTask(Protocol):
    """A task's steps of the schedule; ``data`` is whatever the task trains a stage on."""

    def train(self, stage: int, data: Any) -> tuple[Any, dict[str, Any]]:
        """Train a fresh model for ``stage`` (1 or 2) on ``data``; return it and its summary
        (a dict whose ``"stage"`` is ``stage``, with the validation figures :meth:`choose` reads)."""
        ...

    def keep(self, stage: int, model: Any, summary: dict[str, Any]) -> None:
        """Called after each stage is trained (mitosis keeps each stage's selected weights)."""
        ...

    def refine(self, model: Any, summary: dict[str, Any], data: Any) -> Any:
        """The step between the stages: stage 1's model, its summary (the step may add its figures)
        and data -> the stage-2 data."""
        ...

    def rescore(self, model: Any, summary: dict[str, Any], data: Any) -> None:
        """Called after stage 2 with stage 1's model and summary and the stage-2 data, so that both
        stages can be compared on the same validation set (tumor refines its validation set too)."""
        ...

    def choose(self, stages: list[dict[str, Any]]) -> int:
        """The stage to keep, by the task's validation metric."""
        ...


@dataclass(frozen=True)
class StageOutcome:
    """The trained stages and the chosen one.

    Attributes
    ----------
    models : list
        The model of each stage, in stage order.
    stages : list of dict
        Their summaries (``stage``, patch counts, best epoch, validation figures).
    chosen : int
        The chosen stage number (1-based).
    """

    models: list[Any]
    stages: list[dict[str, Any]]
    chosen: int

    @property
    def model(self) -> Any:
        """The chosen stage's model."""
        return self.models[self.chosen - 1]

    @property
    def summary(self) -> dict[str, Any]:
        """The chosen stage's summary."""
        return self.stages[self.chosen - 1]


def run_stages(task: TwoStageTask, data: Any, two_stage: bool = True, setup: dict[str, Any] | None = None) -> StageOutcome:
    """Stage 1, the task's refine step and stage 2, then the task's choice between them.

    Parameters
    ----------
    task : TwoStageTask
    data
        The stage-1 data, as the task's ``train`` takes it.
    two_stage : bool
        False stops after stage 1 (which is then chosen if the task's ``choose`` says so).
    setup : dict, optional
        Figures of the preparation before the stages, added to the stage-1 summary once it is
        trained (mitosis: ``prepare_seconds``).

    Returns
    -------
    StageOutcome
    """
    model, summary = task.train(1, data)
    summary.update(setup or {})
    task.keep(1, model, summary)
    models, stages = [model], [summary]
    if two_stage:
        data2 = task.refine(model, summary, data)
        model2, summary2 = task.train(2, data2)
        task.keep(2, model2, summary2)
        task.rescore(model, summary, data2)
        models.append(model2)
        stages.append(summary2)
    return StageOutcome(models, stages, task.choose(stages))


def save_chosen(
    outcome: StageOutcome,
    out: Path,
    card: dict[str, Any],
    record: dict[str, Any],
    tracker: Tracker | None,
    metrics: Sequence[dict[str, float]],
    artifacts: Sequence[Path],
) -> Path:
    """Save the chosen stage's model in ``out`` with its card and the training record, and report them.

    Parameters
    ----------
    outcome : StageOutcome
    out : path
        The model folder (``MODELS/<task>``).
    card : dict
        Card metadata (:func:`card_fields`); set on the chosen model before it is saved.
    record : dict
        Written to ``out/training.json`` (indented JSON).
    tracker : Tracker, optional
        Receives each dict of ``metrics`` (step 0), then ``training.json`` and ``artifacts``.
    metrics : sequence of dict
    artifacts : sequence of path
        Further files to track (the stain reference).

    Returns
    -------
    Path
        The model folder.
    """
    final = outcome.model
    final.update_card(**card)
    save_model(final, final.card, out)
    (out / TRAINING_RECORD_FILE).write_text(json.dumps(record, indent=2, default=float))
    if tracker is not None:
        for m in metrics:
            tracker.log_metrics(m, step=0)
        tracker.log_artifact(out / TRAINING_RECORD_FILE)
        for path in artifacts:
            tracker.log_artifact(path)
    return out


def card_fields(names: list[str], root: str | Path, stain_method: str, seed: int, **task_fields: Any) -> dict[str, Any]:
    """The card's training metadata every task sets, plus the task's own (``task_fields``).

    ``names`` are the training items (slide ids, image keys) under the dataset ``root``; the stain
    reference is the file saved beside the model.
    """
    return {
        "training_data_hash": training_set_hash(names, root),
        "stain_reference": STAIN_REFERENCE_FILE,
        "stain_method": stain_method,
        "seed": seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **task_fields,
    }


def stage_config(options: dict[str, Any], seed: int, stage: int) -> TrainConfig:
    """The training-loop config of one stage: the task's ``train`` options, seeded ``seed + stage``."""
    return TrainConfig.from_dict({**options, "seed": seed + stage})


def stage_tracker(tracker: Tracker | None, stage: int) -> StageTracker | None:
    """``tracker`` with the stage's name prefix (``stage1.``), or None without one."""
    return StageTracker(tracker, stage) if tracker is not None else None


def stage_summary(stage: int, train_ds: PatchDataset, best_epoch: int) -> dict[str, Any]:
    """The first fields of a stage summary: stage, training patches and positives, chosen epoch."""
    return {
        "stage": stage,
        "train_patches": len(train_ds),
        "train_positives": int(np.sum(train_ds.labels)),
        "best_epoch": best_epoch,
    }


def stage_metrics(stages: list[dict[str, Any]], name: str) -> dict[str, float]:
    """Every number of every stage summary as a metric named ``name.format(stage=..., key=...)``."""
    return {name.format(stage=s["stage"], key=k): float(v) for s in stages for k, v in s.items() if is_number(v)}
