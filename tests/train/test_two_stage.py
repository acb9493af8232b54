"""The two-stage schedule's order of steps, on a made-up task (the real ones: tests/tumor, tests/mitosis)."""

from __future__ import annotations

from tupac.train.two_stage import run_stages, stage_metrics


class _Task:
    """Records every step; a stage's "model" is its name, its data a string."""

    def __init__(self, chosen: int = 2) -> None:
        self.calls: list[tuple] = []
        self.chosen = chosen

    def train(self, stage, data):
        self.calls.append(("train", stage, data))
        return f"model{stage}", {"stage": stage, "val_score": 0.5 + stage / 10}

    def keep(self, stage, model, summary):
        self.calls.append(("keep", stage, model))

    def refine(self, model, summary, data):
        self.calls.append(("refine", model, data))
        summary["mined"] = 3
        return data + "+refined"

    def rescore(self, model, summary, data):
        self.calls.append(("rescore", model, data))

    def choose(self, stages):
        self.calls.append(("choose", [s["stage"] for s in stages]))
        return self.chosen


def test_two_stages_run_in_the_schedule_order():
    task = _Task(chosen=1)
    outcome = run_stages(task, "sample", setup={"prepare_seconds": 1.5})
    assert task.calls == [
        ("train", 1, "sample"),
        ("keep", 1, "model1"),
        ("refine", "model1", "sample"),
        ("train", 2, "sample+refined"),
        ("keep", 2, "model2"),
        ("rescore", "model1", "sample+refined"),
        ("choose", [1, 2]),
    ]
    assert outcome.chosen == 1 and outcome.model == "model1"
    assert outcome.summary == {"stage": 1, "val_score": 0.6, "prepare_seconds": 1.5, "mined": 3}
    assert [s["stage"] for s in outcome.stages] == [1, 2]


def test_one_stage_skips_the_refine_step():
    task = _Task(chosen=1)
    outcome = run_stages(task, "sample", two_stage=False)
    assert [c[0] for c in task.calls] == ["train", "keep", "choose"]
    assert outcome.models == ["model1"]


def test_stage_metrics_are_named_by_the_task():
    stages = [{"stage": 1, "auroc": 0.9, "flag": True, "name": "x"}, {"stage": 2, "auroc": 0.95}]
    assert stage_metrics(stages, "stage{stage}_{key}") == {"stage1_stage": 1.0, "stage1_auroc": 0.9,
                                                           "stage2_stage": 2.0, "stage2_auroc": 0.95}
