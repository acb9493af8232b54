"""The model card: everything needed to feed a model and to read its output, saved next to its weights.

A card travels with the weights (``card.json`` beside ``model.safetensors``) so that preprocessing is
derived from the model and never re-typed: the magnification to read at (``mpp``), the native patch
size, the input normalization, and the geometry of the heatmap it returns.

Heatmap geometry (the contract every model in the registry follows): for an input image whose pixel
``(0, 0)`` is the image origin, heatmap cell ``(i, j)`` is the model's answer for the location whose
center, in input pixels (pixel-center convention, so pixel ``k`` spans ``[k - 0.5, k + 0.5]``), is
``(output_offset + i * output_stride, output_offset + j * output_stride)`` (row, column). For the exact
fully convolutional nets and the sliding-window classifiers ``output_offset == (patch_size - 1) / 2``
and cell ``(i, j)`` is the classification of the ``patch_size`` square whose top-left pixel is
``(i * output_stride, j * output_stride)``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from tupac.errors import ModelError

TASKS = ("tumor", "mitosis")
#: Magnification each task reads at, in micrometers per pixel (10x for tumor, 40x for mitosis).
TASK_MPP = {"tumor": 1.0, "mitosis": 0.25}
#: Card fields that describe training, not the network; they may change after the weights do.
METADATA_FIELDS = (
    "training_data_hash",
    "stain_reference",
    "stain_method",
    "detection_threshold",
    "seed",
    "created",
    "extra",
)
CARD_VERSION = 1


@dataclass(frozen=True)
class ModelCard:
    """Description of one model: architecture, input contract, output geometry, training metadata.

    Parameters
    ----------
    name : str
        Registry name the model is rebuilt from (``create_model(name, **model_kwargs)``).
    architecture : str
        Human-readable network name (e.g. ``"LocNet"``).
    task : {"tumor", "mitosis"}
        What the model detects; class 1 is the positive class (tumor / mitotic figure).
    mpp : float
        Input resolution in micrometers per pixel (1.0 for tumor, 0.25 for mitosis).
    patch_size : int
        Native input side in pixels: an input of this size gives exactly one output.
    mean, std : tuple of 3 floats
        Per-channel RGB normalization applied by the model itself to inputs scaled to [0, 1].
    output_stride : int
        Distance in input pixels between adjacent heatmap cells.
    output_offset : float
        Center, in input pixels, of heatmap cell 0 (see the module docstring).
    receptive_field : int
        Side in input pixels of the square of input pixels one output depends on.
    num_classes : int
        Number of output classes (2: background, positive).
    fully_convolutional : bool
        True when the whole-image heatmap is one forward pass; False for sliding-window classifiers.
    model_kwargs : dict
        Constructor keyword arguments (JSON values) beyond ``task`` needed to rebuild the network.
    training_data_hash, stain_reference, stain_method, detection_threshold, seed, created, extra
        Training metadata: a fingerprint of the training set, the stain template (path) and method
        used, the detection threshold chosen on validation data (mitosis), the training seed, an
        ISO-8601 creation time, and free-form JSON (e.g. best epoch and validation metrics).
    """

    name: str
    architecture: str
    task: str
    mpp: float
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output_stride: int
    output_offset: float
    receptive_field: int
    num_classes: int = 2
    fully_convolutional: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    training_data_hash: str | None = None
    stain_reference: str | None = None
    stain_method: str | None = None
    detection_threshold: float | None = None
    seed: int | None = None
    created: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, hash=False)
    card_version: int = CARD_VERSION

    def __post_init__(self) -> None:
        # Normalize JSON lists back to tuples so that a round trip compares equal.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        problems = []
        try:  # JSON-normalize (tuples -> lists) so a saved card compares equal to the live one
            object.__setattr__(self, "model_kwargs", json.loads(json.dumps(dict(self.model_kwargs))))
            object.__setattr__(self, "extra", json.loads(json.dumps(dict(self.extra))))
        except TypeError as e:
            problems.append(f"model_kwargs/extra must be JSON-serializable ({e})")
        if self.task not in TASKS:
            problems.append(f"task={self.task!r}, expected one of {TASKS}")
        if not self.mpp > 0:
            problems.append(f"mpp={self.mpp!r}, expected > 0")
        for name in ("patch_size", "output_stride", "receptive_field"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name}={getattr(self, name)!r}, expected >= 1")
        if self.num_classes < 2:
            problems.append(f"num_classes={self.num_classes!r}, expected >= 2")
        if len(self.mean) != 3 or len(self.std) != 3:
            problems.append(f"mean/std have {len(self.mean)}/{len(self.std)} values, expected 3 (RGB)")
        elif min(self.std) <= 0:
            problems.append(f"std={self.std}, expected all > 0")
        if self.detection_threshold is not None and not 0.0 <= self.detection_threshold <= 1.0:
            problems.append(f"detection_threshold={self.detection_threshold!r}, expected in [0, 1]")
        if problems:
            raise ModelError(f"invalid model card for {self.name!r}: " + "; ".join(problems))

    # -- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelError(f"model card has unknown fields {unknown}; known: {sorted(known)}")
        if d.get("card_version", CARD_VERSION) > CARD_VERSION:
            raise ModelError(
                f"model card version {d['card_version']} is newer than this tupac reads ({CARD_VERSION})"
            )
        try:
            return cls(**d)
        except TypeError as e:  # a required field is missing
            raise ModelError(f"model card is incomplete: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelError(f"model card is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ModelError(f"model card JSON must be an object, got {type(d).__name__}")
        return cls.from_dict(d)

    # -- helpers ----------------------------------------------------------------------------
    def with_metadata(self, **changes: Any) -> ModelCard:
        """A copy with training metadata changed; geometry and architecture fields are refused."""
        bad = sorted(set(changes) - set(METADATA_FIELDS))
        if bad:
            raise ModelError(f"with_metadata() changes only {METADATA_FIELDS}; got {bad}")
        return dataclasses.replace(self, **changes)

    @property
    def decision_threshold(self) -> float:
        """The threshold a trained model is used at: ``detection_threshold`` (mitosis), else
        ``extra["threshold"]`` (tumor regions), else 0.5."""
        if self.detection_threshold is not None:
            return float(self.detection_threshold)
        return float(self.extra.get("threshold", 0.5))

    def heatmap_shape(self, height: int, width: int, stride: int | None = None) -> tuple[int, int]:
        """Heatmap size for an input of ``height x width`` pixels, for the exact-window contract.

        Cells whose whole ``patch_size`` window lies inside the input: ``(H - P) // s + 1``.
        """
        s = stride or self.output_stride
        if height < self.patch_size or width < self.patch_size:
            return (0, 0)
        return ((height - self.patch_size) // s + 1, (width - self.patch_size) // s + 1)

    def cell_centers(self, n: int, stride: int | None = None) -> list[float]:
        """Input-pixel centers of the first ``n`` heatmap cells along one axis."""
        s = stride or self.output_stride
        return [self.output_offset + i * s for i in range(n)]
