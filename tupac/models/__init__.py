"""Networks for tumor localization and mitosis detection: a registry, model cards, save/load.

>>> from tupac.models import create_model, list_models, save_model, load_model
>>> model = create_model("locnet", task="tumor")     # fresh weights; model.card describes it
>>> probs = model(x)                                 # (N, 2) for native (N, 3, P, P) inputs in [0, 1]
>>> heat = model.heatmap(tile)                       # (N, 2, h, w) for any input >= P
>>> save_model(model, model.card, "MODELS/tumor")    # model.safetensors + card.json
>>> model = load_model("MODELS/tumor")               # rebuilt from the card; never unpickles

Registered names: ``locnet``, ``mitosnet``, ``googlenet_fcn`` (fully convolutional) and ``googlenet``,
``densenet121``, ``resnet18``, ``alexnet`` (sliding-window). The task is a keyword
(``task="tumor"`` reads at 1.0 um/px, ``task="mitosis"`` at 0.25 um/px); each name has a default task.
"""

# Importing an architecture module registers its models; any import of tupac.models.* runs this file
# first, so the registry is complete before anything asks it.
from tupac.models import baselines, locnet, mitosnet  # noqa: F401
from tupac.models.base import FCNModel, PatchClassifier, TupacModel, model_device, to_device_input, to_input
from tupac.models.card import TASK_MPP, TASKS, ModelCard
from tupac.models.io import load_model, save_model
from tupac.models.receptive import Geometry, geometry, measure_geometry, output_size
from tupac.models.registry import create_model, list_models, register_model

__all__ = [
    "FCNModel",
    "Geometry",
    "ModelCard",
    "PatchClassifier",
    "TASKS",
    "TASK_MPP",
    "TupacModel",
    "create_model",
    "geometry",
    "list_models",
    "load_model",
    "measure_geometry",
    "model_device",
    "to_device_input",
    "output_size",
    "register_model",
    "save_model",
    "to_input",
]
