"""Loading a trained stage model (tumor or mitosis) with everything inference needs from its folder.

A trained model folder (``MODELS/tumor``, ``MODELS/mitosis``) holds ``model.safetensors``,
``card.json`` and the stain template the model was trained with (named by ``card.stain_reference``),
so inference standardizes slides towards the training template without being told which.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tupac.errors import ModelFileError
from tupac.models import load_model
from tupac.preprocess.stain import StainReference


@dataclass(frozen=True)
class TrainedModel:
    """A loaded model with its card, stain reference and decision threshold.

    Attributes
    ----------
    model : TupacModel
        In eval mode, on ``device``.
    reference : StainReference or None
        The training template (None when the model was trained without standardization).
    threshold : float
        Decision threshold on the positive-class probability (tumor: ``card.extra["threshold"]``;
        mitosis: ``card.detection_threshold``), 0.5 when the card has none.
    weights_sha256 : str
        Hash of ``model.safetensors``, recorded in commit records and ledgers.
    """

    model: Any
    reference: Any
    threshold: float
    weights_sha256: str
    model_dir: Path

    @property
    def card(self):
        return self.model.card


def weights_hash(model_dir: str | Path) -> str:
    """SHA-256 of a model folder's ``model.safetensors`` (streamed)."""
    path = Path(model_dir) / "model.safetensors"
    if not path.is_file():
        raise ModelFileError(path, "no model weights (expected model.safetensors from `tupac train`)")
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def load_trained(model_dir: str | Path, device: str = "cpu") -> TrainedModel:
    """Load ``model_dir`` (weights, card, stain reference) for inference."""
    model_dir = Path(model_dir)
    digest = weights_hash(model_dir)
    model = load_model(model_dir, device=device)
    model.eval()
    card = model.card
    reference = None
    if card.stain_reference:
        ref_path = model_dir / card.stain_reference
        if not ref_path.is_file():
            raise ModelFileError(ref_path, "the card names this stain reference but the file is missing")
        reference = StainReference.load(ref_path)
    return TrainedModel(model, reference, card.decision_threshold, digest, model_dir)
