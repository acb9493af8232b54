"""The whole pipeline as one resumable job: composition only (``tupac run``, ``tupac demo``).

Stages, each a call into the package and each recorded in ``RUN/pipeline/<stage>.json`` with a
*key* (a hash of its configuration and of its inputs' fingerprints):

1. ``train_tumor``  -> ``MODELS/tumor``   (two-stage active learning; skipped when models are given)
2. ``train_mitosis`` -> ``MODELS/mitosis`` (two-stage hard negatives)
3. ``infer``        -> ``RUN/slides/*.zarr`` + detections, ledger, summary (Ray)
4. ``features``     -> ``RUN/features.parquet`` (Dask)
5. ``fit``          -> ``RUN/predict/`` + MLflow run and registered models
6. ``report``       -> ``RUN/report/index.html`` and ``RUN/qupath/*.geojson``

A stage is skipped when its record exists, its key is unchanged and its outputs are still there, so
running the same command twice does no work the second time. ``infer`` also checks every slide's
commit record: delete one slide's outputs and only that slide is recomputed (the ledger skips the
others), after which the stages downstream see a changed input and run again.

Where the work runs: one Ray session for the whole pipeline (``address=``, else ``$RAY_ADDRESS``,
else a local Ray started here), opened only when some stage has work, so an up-to-date rerun starts
no Ray. Each training is one Ray task that asks for a GPU when the cluster has one; inference is
the job of :mod:`tupac.infer.job` (model actors), which reuses the session; the features are
per-slide Ray tasks (:func:`tupac.feature_run.run_features` with the executor); the fit and the
report are one task each. The driver holds no pixels and does no per-slide work, and the same code
runs on a laptop's local Ray. The address is how to run, not what to compute: it enters no stage
key, so a run made locally and resumed on a cluster skips its unchanged stages. Where each stage's
tasks ran is kept in its record and in ``RUN/pipeline/placement.json``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from tupac.config_check import build_checked, check_value, help_of, kind, option, show
from tupac.data.labels import read_labels
from tupac.data.manifest import load_cohort
from tupac.errors import ConfigError
from tupac.feature_run import run_features
from tupac.features import ALGORITHM_VERSION as FEATURES_ALGORITHM_VERSION
from tupac.features.config import FeatureRunConfig
from tupac.heatmaps.commit import is_committed, move_aside
from tupac.heatmaps.prepare import CardInfo
from tupac.heatmaps.store import store_path
from tupac.infer.cluster import RayExecutor
from tupac.infer.job import ACTORS_FILE, JobConfig, run_job
from tupac.infer.placement import PlacementRecorder, cluster_summary, describe, largest_node_cpus, summarize
from tupac.mitosis.training import MitosisTrainConfig
from tupac.models.trained import weights_hash
from tupac.predict.cohort import build_cohort, read_feature_table, read_fit_labels
from tupac.predict.fit import FitConfig, fit_cohort, write_outputs
from tupac.report.config import ReportOptions
from tupac.report.html import build_report
from tupac.report.qupath import export_run
from tupac.runlock import run_lock
from tupac.tracking.fits import log_fit
from tupac.tracking.training import tracked_training
from tupac.tumor.training import TumorTrainConfig

STAGES = ("train_tumor", "train_mitosis", "infer", "features", "fit", "report")
SECTIONS = ("tumor", "mitosis", "infer", "features", "fit", "report")

# The folders of the inference job come from the command line (--models, --out), never from the file.
_INFER_RESERVED = ("models", "out")
# Options of the `infer:` section that say how to run, not what to compute: they stay out of the
# stage key, so that a run made on a laptop and resumed on a cluster skips its unchanged stages.
_HOW_TO_RUN = ("address",)
# Placeholders that let the `infer:` section be built, and so checked, when the config is loaded.
_PLACEHOLDER_MODELS, _PLACEHOLDER_OUT = Path("MODELS"), Path("RUN")


@dataclass(frozen=True)
class StageConfigs:
    """Every stage's own config, built from the sections of a :class:`PipelineConfig` and checked."""

    tumor: TumorTrainConfig
    mitosis: MitosisTrainConfig
    infer: JobConfig  # its folders are placeholders: PipelineConfig.job_config sets the command's
    features: FeatureRunConfig
    fit: FitConfig
    report: ReportOptions


# The config class of each section; the sections in _SEEDED take the top-level seed.
SECTION_CLASSES: dict[str, type] = {
    "tumor": TumorTrainConfig, "mitosis": MitosisTrainConfig, "infer": JobConfig,
    "features": FeatureRunConfig, "fit": FitConfig, "report": ReportOptions,
}
_SEEDED = ("tumor", "mitosis", "features", "fit")


@dataclass(frozen=True)
class PipelineConfig:
    """Options of every stage, as in the YAML config (``tupac run --print-config`` shows them all).

    Each section holds the options the file gives for one stage's config class
    (:data:`SECTION_CLASSES`; ``infer`` without ``models``/``out``); :attr:`stages` holds the
    classes themselves, built at construction with every other option at its default. Every
    section, ``train:`` inside ``tumor:`` and ``mitosis:`` included, is checked for option names,
    types and ranges then (:func:`tupac.config_check.build_checked`), so that a bad config fails
    before any work starts with one line: the dotted key, the value and what was expected.
    """

    seed: int = option(0, help="Seeds every stage.")
    tumor: dict[str, Any] = option(default_factory=dict, help="Options of the tumor training (TumorTrainConfig).")
    mitosis: dict[str, Any] = option(default_factory=dict,
                                     help="Options of the mitosis training (MitosisTrainConfig).")
    infer: dict[str, Any] = option(default_factory=dict, help="Options of the inference job (JobConfig).")
    features: dict[str, Any] = option(default_factory=dict, help="Options of the features (FeatureRunConfig).")
    fit: dict[str, Any] = option(default_factory=dict, help="Options of the predictive models (FitConfig).")
    report: dict[str, Any] = option(default_factory=dict, help="Options of the report (ReportOptions).")
    stages: StageConfigs = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_value(self.seed, int, "seed")
        if self.seed < 0:  # numpy's generators refuse negative seeds, and every stage derives from this one
            raise ConfigError(f"seed = {self.seed}: expected an integer >= 0")
        # Build each stage's config now, so that a typo or a bad value fails before hours of work.
        built = {}
        for name, cls in SECTION_CLASSES.items():
            given: dict[str, Any] = {"seed": self.seed} if name in _SEEDED else {}
            reserved: tuple[str, ...] = ()
            if name == "infer":
                given, reserved = {"models": _PLACEHOLDER_MODELS, "out": _PLACEHOLDER_OUT}, _INFER_RESERVED
            built[name] = build_checked(cls, getattr(self, name), name, given=given, reserved=reserved)
        object.__setattr__(self, "stages", StageConfigs(**built))

    @classmethod
    def from_yaml(cls, path: str | Path) -> PipelineConfig:
        """Load and check a YAML config.

        Raises
        ------
        ConfigError
            One line naming the file, the dotted key, the value and what was expected.
        FileNotFoundError
            No file at ``path``.
        """
        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
        doc = {} if doc is None else doc
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {kind(doc)}")
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        for key, value in doc.items():
            if key not in names:
                raise ConfigError(f"{path}: {key} = {show(value)}: unknown section; expected one of {', '.join(names)}")
        # `tumor:` with every option commented out reads as null: an empty section, not an error.
        doc = {k: ({} if k in SECTIONS and v is None else v) for k, v in doc.items()}
        try:
            return cls(**doc)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """The config as given (the seed and each section's own options), as the run folder records it."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init}

    def effective(self) -> dict[str, Any]:
        """Every option of every stage with the value that will be used (defaults filled in)."""
        out: dict[str, Any] = {"seed": self.seed}
        for name in SECTIONS:
            values = {k: v for k, v in dataclasses.asdict(getattr(self.stages, name)).items()
                      if k not in ("seed", *_INFER_RESERVED)}
            out[name] = json.loads(json.dumps(values, default=str))
        return out

    def to_yaml(self) -> str:
        """The effective config as YAML, each option preceded by its help as a comment."""
        lines = ["# tupac run configuration: every option with the value in effect.",
                 "# Sections map onto each stage's config class; omit what you do not change.",
                 f"seed: {self.seed}  # {help_of(PipelineConfig, 'seed').lower().rstrip('.')}"]
        for section, values in self.effective().items():
            if section == "seed":
                continue
            cls = SECTION_CLASSES[section]
            lines += ["", f"{section}:  # {cls.__module__}.{cls.__qualname__}"]
            for key, value in values.items():
                lines += [f"  # {line}" for line in textwrap.wrap(help_of(cls, key), 96, break_on_hyphens=False)]
                dumped = yaml.safe_dump({key: value}, default_flow_style=True, width=1000).strip()
                lines.append("  " + dumped[1:-1] if dumped.startswith("{") else "  " + dumped)
        return "\n".join(lines) + "\n"

    def tumor_config(self) -> TumorTrainConfig:
        return self.stages.tumor

    def mitosis_config(self) -> MitosisTrainConfig:
        return self.stages.mitosis

    def features_config(self) -> FeatureRunConfig:
        return self.stages.features

    def fit_config(self) -> FitConfig:
        return self.stages.fit

    def job_config(self, models: Path, out: Path, address: str | None = None) -> JobConfig:
        """The inference job's config with the command's folders (and the command's Ray address,
        when given: see :meth:`ray_address`)."""
        job = dataclasses.replace(self.stages.infer, models=models, out=out)
        return dataclasses.replace(job, address=address) if address else job

    def ray_address(self, address: str | None = None) -> str | None:
        """The Ray address of the whole pipeline: the command's, else the ``infer:`` section's (None:
        ``$RAY_ADDRESS``, else a local Ray).

        Raises
        ------
        ConfigError
            Both are given and differ: every stage runs on one Ray, so one of them would be ignored.
        """
        section = self.stages.infer.address
        if address and section and address != section:
            raise ConfigError(f"--address {address} and infer.address = {section} differ: the pipeline runs every "
                              "stage on one Ray; give one of them")
        return address or section

    def report_options(self) -> ReportOptions:
        return self.stages.report


DEMO_CONFIG = PipelineConfig(
    tumor={
        "model_kwargs": {"widths": [8, 16, 24, 32, 64], "fc_width": 64},
        "positives_per_slide": 120,
        "negatives_per_slide": 120,
        "train": {"epochs": 6, "batch_size": 32, "lr": 0.003, "monitor": "loss", "lr_schedule": "cosine"},
    },
    mitosis={"train": {"epochs": 6}},
    features={"n_patches": 6, "n_clusters": 8, "general_patches": 2, "general_epochs": 15, "n_splits": 2},
    # 2 x 2 nested CV: the demo's 12 slides give 4 per grade, the least nested stratified CV needs.
    # No feature-group ablation: with one repeat of two models per task it cost 3-5x the fit
    # (tupac.predict.ablation gives the measurements).
    fit={"repeats": 1, "n_boot": 200, "n_splits": 2, "inner_splits": 2, "k_features": 20,
         "grade_models": ["logreg_enet", "random_forest"], "rna_models": ["elastic_net", "random_forest"],
         "ablation": False},
    report={"n_boot": 200},
)
"""The demo's settings: a narrow LocNet, short training, few fringe patches, light CV. Enough to
exercise every stage on a laptop in minutes; the defaults (``PipelineConfig()``) are the full size."""


# --- stage records -------------------------------------------------------------------------------


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def dataset_fingerprint(root: Path) -> str:
    """Names, sizes and modification times of the dataset's files (cheap; content hashes are the
    commit records' job)."""
    rows = []
    for p in sorted(Path(root).rglob("*")):
        if p.is_file() and "truth" not in p.relative_to(root).parts:
            st = p.stat()
            rows.append((str(p.relative_to(root)), st.st_size, int(st.st_mtime)))
    return _digest(rows)


def _files_fingerprint(paths: list[Path]) -> str:
    """Content hash of small files (commit records, tables): a rewrite with the same bytes is no change."""
    rows = []
    for p in paths:
        if Path(p).exists():
            rows.append((Path(p).name, hashlib.sha256(Path(p).read_bytes()).hexdigest()))
    return _digest(rows)


TRAINING_KEY_FILE = "pipeline_key.txt"


def retire_stale_training(model_dir: Path, key: str) -> Path | None:
    """Make way for a training whose data or config differ from the one in ``model_dir``.

    The trainer resumes from the checkpoints it finds, and refuses (rightly) to resume on other data
    or another config, so a changed config would stop ``tupac run`` there. A folder trained for
    another stage key (recorded in :data:`TRAINING_KEY_FILE` when the training starts; a folder
    without it is from outside the pipeline) moves whole to ``MODELS/superseded/<UTC time>/``;
    nothing is deleted. A folder with the same key is an interrupted training: it stays, and the
    trainer resumes it.

    Returns
    -------
    Path or None
        Where the old folder went; None when nothing moved.
    """
    model_dir = Path(model_dir)
    marker = model_dir / TRAINING_KEY_FILE
    moved = None
    if model_dir.is_dir() and any(model_dir.iterdir()):
        if not (marker.is_file() and marker.read_text().strip() == key):
            moved = move_aside([model_dir], model_dir.parent) / model_dir.name
    model_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(key + "\n")
    return moved


@dataclass
class StageRecord:
    name: str
    key: str
    outputs: list[str]
    seconds: float
    finished: str
    # Where the stage's tasks ran (tupac.infer.placement.summarize); None in records older than it.
    placement: dict[str, Any] | None = None

    @classmethod
    def load(cls, path: Path) -> StageRecord | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


# --- tasks: top-level functions, so that Ray ships them to the workers by reference ------------------


def _task_say(stage: str) -> Callable[[str], None]:
    # A task's stdout reaches the driver's console through Ray's log forwarding, prefixed with the task
    # and node; the stage prefix says which stage it belongs to.
    return lambda msg: print(f"[{stage}] {msg}", flush=True)


def training_task(task: str, data: Path, model_dir: Path, config: TumorTrainConfig | MitosisTrainConfig,
                  threads: int) -> str:
    """One network's training (:func:`tupac.tracking.training.tracked_training`), as one Ray task.

    Parameters
    ----------
    task : {"tumor", "mitosis"}
    data, model_dir : Path
        Absolute: a Ray worker's current folder is not the driver's.
    config : TumorTrainConfig or MitosisTrainConfig
    threads : int
        torch threads: what the training would use in the driver's process, so that the weights are
        the same bits as an in-process training on the same machine (a convolution's float sums
        depend on the thread count). Set explicitly because Ray's ``OMP_NUM_THREADS`` reaches only
        a worker that has not loaded torch yet.

    Returns
    -------
    str
        The model folder.
    """
    # Deferred: torch is loaded already (the trainings import it); here only to set the thread count.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tracked_training(task, Path(data), Path(model_dir), config, say=_task_say(f"train_{task}"))
    finally:
        torch.set_num_threads(before)  # a Ray worker process is reused by later tasks
    return str(model_dir)


def fit_task(run_dir: Path, labels: Path, config: FitConfig) -> str:
    """The fit stage as one task: read ``RUN/features.parquet`` and the labels, fit the predictive
    models (:func:`tupac.predict.fit.fit_cohort`), write ``RUN/predict/`` and log the fit to MLflow.

    A cross-slide step on a table of a few hundred numbers per slide; a task all the same, so that a
    driver on a laptop does none of the cross-validation. Paths are absolute (see
    :func:`training_task`). Returns the outputs folder.
    """
    run_dir, out = Path(run_dir), Path(run_dir) / "predict"
    table_path = run_dir / "features.parquet"
    table = read_feature_table(table_path)
    lab = read_fit_labels(labels, table, run_dir, source=str(table_path))
    cohort = build_cohort(table, lab, strict=config.strict, labels_source=str(labels))
    result = fit_cohort(cohort, config, progress=lambda msg: None)
    write_outputs(result, out)
    log_fit(result, out, run_dir, run_name="tupac run")
    return str(out)


def report_task(run_dir: Path, options: ReportOptions) -> str:
    """The report stage as one task: the QuPath GeoJSON of every slide and the HTML report (they read
    every slide's heatmaps, which the driver does not). Returns the report's path."""
    export_run(Path(run_dir))
    build_report(Path(run_dir), **dataclasses.asdict(options))
    return str(Path(run_dir) / "report" / "index.html")


# --- the pipeline ------------------------------------------------------------------------------------


class Pipeline:
    """Runs the stages in order, skipping those whose record still holds (see the module docstring).

    Parameters
    ----------
    data, out : Path
        The dataset and the run folder.
    config : PipelineConfig
    models : Path, optional
        Trained models to use instead of training (``--models``).
    say : callable(str), optional
        Progress lines.
    labels : Path, optional
        Labels of the features and fit stages (default the dataset's own).
    address : str, optional
        The Ray to run on (see :meth:`PipelineConfig.ray_address`); None: ``$RAY_ADDRESS``, else a
        local Ray started here with the ``infer:`` section's ``local_cpus``, ``object_store_mb``,
        ``include_dashboard`` and ``local_temp_dir``.
    executor : optional
        Run the stages' tasks on this executor (``call``/``map``/``gpus``, as
        :class:`tupac.infer.cluster.LocalExecutor`) instead of opening a Ray session; the caller
        owns it. The inference job still connects to Ray itself.
    """

    def __init__(self, data: Path, out: Path, config: PipelineConfig, models: Path | None = None,
                 say: Callable[[str], None] | None = None, labels: Path | None = None,
                 address: str | None = None, executor: Any = None) -> None:
        self.data, self.out, self.config = Path(data), Path(out), config
        # The dataset's own ground truth unless a labels file (either format) is given.
        self.given_labels = labels is not None
        self.labels = Path(labels) if labels is not None else self.data / "training_ground_truth.csv"
        self.models = Path(models) if models is not None else self.out / "models"
        self.given_models = models is not None
        self.say = say or (lambda msg: None)
        self.records = self.out / "pipeline"
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.address = config.ray_address(address)
        self._given_executor = executor
        self._executor: Any = None
        self._session = contextlib.ExitStack()
        self._placement: dict[str, Any] | None = None  # of the stage running now

    # -- where the work runs -------------------------------------------------------------------------

    def executor(self) -> Any:
        """The executor of every stage's tasks, connected on first use (an up-to-date rerun starts no Ray)."""
        if self._executor is None:
            if self._given_executor is not None:
                self._executor = self._given_executor
            else:
                job = self.config.stages.infer
                # MLflow: the tasks of a cluster log where the driver would; a local Ray's workers
                # inherit this environment anyway.
                env = {k: os.environ[k] for k in ("MLFLOW_TRACKING_URI",) if os.environ.get(k)}
                ex = RayExecutor(self.address, log_dir=self.out / "logs", local_cpus=job.local_cpus,
                                 object_store_mb=job.object_store_mb, include_dashboard=job.include_dashboard,
                                 temp_dir=job.local_temp_dir, env_vars=env or None)
                self._executor = self._session.enter_context(ex)
                if ex.started and not (self.address or os.environ.get("RAY_ADDRESS")):
                    how = "local Ray started for this pipeline"
                elif ex.started:
                    how = f"connected to Ray at {self.address or os.environ.get('RAY_ADDRESS')}"
                else:
                    how = "using the Ray this process is connected to"
                self.say(f"[ray] {how}: {cluster_summary()}"
                         + (f"; dashboard {ex.dashboard}" if ex.dashboard else ""))
        return self._executor

    def _recorded(self) -> PlacementRecorder:
        """The executor, recording where each task runs into the current stage's placement."""
        return PlacementRecorder(self.executor())

    def _placed(self, stage: str, rec: PlacementRecorder) -> None:
        summary = rec.summary()
        if summary is not None:
            self._placement = summary
            self.say(f"[{stage}] {describe(summary)}")

    # each stage: (key, outputs, run)
    def _stage(self, name: str, key_parts: Any, outputs: list[Path], run: Callable[[], None], force: bool = False) -> str:
        key = _digest(key_parts)
        path = self.records / f"{name}.json"
        rec = StageRecord.load(path)
        if not force and rec is not None and rec.key == key and all(Path(o).exists() for o in rec.outputs):
            self.skipped.append(name)
            self.say(f"[{name}] up to date, skipped")
            return key
        self.say(f"[{name}] running")
        t0 = time.perf_counter()
        self._placement = None
        run()
        self.records.mkdir(parents=True, exist_ok=True)
        record = StageRecord(name, key, [str(o) for o in outputs], round(time.perf_counter() - t0, 1),
                             time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), self._placement)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(record), indent=1))
        tmp.replace(path)
        self.ran.append(name)
        self.say(f"[{name}] done in {record.seconds:.0f} s")
        return key

    def run(self) -> dict[str, Any]:
        if self.given_labels:
            # Read it now, so that a broken labels file fails before training and inference, not after.
            read_labels(self.labels, need=("grade", "rna"))
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        data_fp = dataset_fingerprint(self.data)
        with self._session:  # one Ray session for every stage; shut down here if started here
            k_tumor = self._train("tumor", data_fp)
            k_mitosis = self._train("mitosis", data_fp)
            k_infer = self._infer(data_fp, k_tumor, k_mitosis)
            k_features = self._features(k_infer)
            k_fit = self._fit(k_features)
            self._report(k_fit)
        summary = {"ran": self.ran, "skipped": self.skipped, "run": str(self.out),
                   "report": str(self.out / "report" / "index.html")}
        self._write_placement()
        (self.out / "pipeline" / "last.json").write_text(json.dumps(summary, indent=1))
        return summary

    def _write_placement(self) -> None:
        """``RUN/pipeline/placement.json``: each stage's placement from its record (the run that made it)."""
        placement = {}
        for name in STAGES:
            rec = StageRecord.load(self.records / f"{name}.json")
            if rec is not None:
                placement[name] = {"finished": rec.finished, **(rec.placement or {})}
        self.records.mkdir(parents=True, exist_ok=True)
        tmp = self.records / "placement.tmp"
        tmp.write_text(json.dumps(placement, indent=1))
        tmp.replace(self.records / "placement.json")

    def _train(self, task: str, data_fp: str) -> str:
        model_dir = self.models / task
        if self.given_models:
            if not (model_dir / "card.json").is_file():
                raise ConfigError(f"{model_dir}: --models was given but has no trained {task} model (card.json)")
            # The weights and what of the card decides the outputs (a new threshold on the same
            # weights is new inference work: CardInfo.output_params).
            return _digest([weights_hash(model_dir), CardInfo.from_dir(task, model_dir).output_params()])
        cfg = self.config.tumor_config() if task == "tumor" else self.config.mitosis_config()

        key_parts = [data_fp, cfg.to_dict()]

        def run() -> None:
            moved = retire_stale_training(model_dir, _digest(key_parts))
            if moved is not None:
                self.say(f"[train_{task}] data or config changed: the previous {task} model moved to {moved}")
            rec = self._recorded()
            threads = _torch_threads()
            # A GPU when the cluster has one up now; the CPUs are the torch threads, capped at the
            # largest node that can take the task (asking for more CPUs than any has waits forever).
            gpus = 1 if rec.gpus() >= 1 else 0
            cpus = min(threads, largest_node_cpus(with_gpu=gpus > 0) or threads)
            rec.call(training_task, task, self.data.absolute(), model_dir.absolute(), cfg, max(1, int(cpus)),
                     num_cpus=cpus, num_gpus=gpus, name=f"train_{task}")
            self._placed(f"train_{task}", rec)

        return self._stage(f"train_{task}", key_parts,
                           [model_dir / "model.safetensors", model_dir / "card.json"], run)

    def _infer(self, data_fp: str, k_tumor: str, k_mitosis: str) -> str:
        entries = load_cohort(data=self.data)
        stores = [store_path(self.out, e.slide_id) for e in entries]
        job = self.config.job_config(self.models, self.out, self.address)

        def run() -> None:
            self.executor()  # the job reuses this Ray session (run_job connects only when none is open)
            summary = run_job(entries, job, say=self.say)
            if summary.get("failed"):
                self.say(f"[infer] {len(summary['failed'])} slide(s) failed; see RUN/summary.json")
            self._infer_placement()

        # Some slide without its commit record (never run, failed, or its outputs deleted): run the
        # job, whose ledger skips every slide that is done.
        incomplete = not all(is_committed(s) for s in stores)
        key_parts = [data_fp, k_tumor, k_mitosis,
                     {k: str(v) for k, v in self.config.infer.items() if k not in _HOW_TO_RUN}]
        self._stage("infer", key_parts, [self.out / "summary.json"], run, force=incomplete)
        commits = sorted(s / "commit.json" for s in stores if is_committed(s))
        return _files_fingerprint(commits)

    def _infer_placement(self) -> None:
        """The inference job's model actors (its ``actors.json``) as the stage's placement."""
        try:
            actors = json.loads((self.out / ACTORS_FILE).read_text())
        except (OSError, ValueError):
            return
        places = [{"node_id": a.get("node_id") or "unknown", "node_ip": None, "pid": a.get("pid"),
                   "gpu_ids": a.get("gpu_ids") or [],
                   "num_cpus": self.config.stages.infer.cpus_per_actor, "num_gpus": len(a.get("gpu_ids") or [])}
                  for a in actors if isinstance(a, dict)]
        if places:
            self._placement = {**summarize(places), "kind": "model actors"}
            self.say(f"[infer] model actors: {describe(self._placement).replace('Ray task', 'actor')}")

    def _features(self, k_infer: str) -> str:
        labels = self.labels
        cfg = self.config.features_config()
        table = self.out / "features.parquet"

        def run() -> None:
            # The per-slide features and the cross-slide fits as Ray tasks on the pipeline's executor.
            rec = self._recorded()
            # Absolute paths: the per-slide tasks run in Ray workers, whose current folder is not ours.
            run_features(self.out.absolute(), labels=labels.absolute() if self.given_labels or labels.is_file() else None,
                         slides=self.data.absolute(), models=self.models.absolute(), config=cfg, executor=rec)
            self._placed("features", rec)

        key = [k_infer, dataclasses.asdict(cfg), {"features_algorithm": FEATURES_ALGORITHM_VERSION}]
        if self.given_labels:
            # Only then: the key of a run on the dataset's own labels stays what it was before --labels.
            key.append(_files_fingerprint([labels]))
        self._stage("features", key, [table], run)
        return _files_fingerprint([table])

    def _fit(self, k_features: str) -> str:
        labels = self.labels
        cfg = self.config.fit_config()
        out = self.out / "predict"

        def run() -> None:
            rec = self._recorded()
            rec.call(fit_task, self.out.absolute(), labels.absolute(), cfg, num_cpus=1, name="fit")
            self._placed("fit", rec)

        if not self.given_labels and not labels.is_file():
            self.say(f"[fit] no labels ({labels}): predictive models skipped")
            return k_features
        self._stage("fit", [k_features, dataclasses.asdict(cfg), _files_fingerprint([labels])],
                    [out / "metrics.json"], run)
        return _files_fingerprint([out / "metrics.json"])

    def _report(self, k_fit: str) -> None:
        def run() -> None:
            rec = self._recorded()
            rec.call(report_task, self.out.absolute(), self.config.report_options(), num_cpus=1, name="report")
            self._placed("report", rec)

        self._stage("report", [k_fit, self.config.report, _files_fingerprint([self.out / "summary.json"])],
                    [self.out / "report" / "index.html"], run)


def _torch_threads() -> int:
    """The torch threads an in-process training would use here."""
    # Deferred: torch is loaded already (the trainings import it).
    import torch

    return torch.get_num_threads()


def run_pipeline(data: str | Path, out: str | Path, config: PipelineConfig = PipelineConfig(),
                 models: str | Path | None = None, say: Callable[[str], None] | None = None,
                 labels: str | Path | None = None, address: str | None = None,
                 executor: Any = None) -> dict[str, Any]:
    """Run (or resume) the whole pipeline on a TUPAC16-layout dataset; see the module docstring.

    ``address`` is the Ray to run every stage on (default ``$RAY_ADDRESS``, else a local Ray started
    once for the whole pipeline); ``executor`` replaces that Ray session (see :class:`Pipeline`).

    The run folder ``out`` is held for the whole run (:func:`tupac.runlock.run_lock`): a second job
    on it is refused with :class:`~tupac.errors.RunFolderBusyError` before anything is touched, and
    the stages take the same lock again without blocking themselves.
    """
    with run_lock(out, "tupac run"):
        return Pipeline(Path(data), Path(out), config, Path(models) if models else None, say,
                        Path(labels) if labels else None, address=address, executor=executor).run()
