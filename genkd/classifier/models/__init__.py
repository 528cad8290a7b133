"""The CIFAR model zoo of the knowledge-distillation literature (CRD / RepDistiller conventions) and its registry.

Every model maps normalised 32x32 images to a `ClassifierOutput` (stage outputs, pooled features, logits) and exposes
``feature_dim``, ``stage_channels`` and ``num_classes``.
"""
from functools import partial
from pathlib import Path
from typing import Callable

from torch import nn

from genkd.checkpoint import CheckpointError, load_checkpoint
from genkd.classifier.models.base import ClassifierOutput, CifarClassifier
from genkd.classifier.models.mobilenetv2 import MobileNetV2
from genkd.classifier.models.resnet import CifarResNet, CifarResNet50
from genkd.classifier.models.shufflenet import ShuffleNetV1, ShuffleNetV2
from genkd.classifier.models.vgg import VGG, VGG8, VGG13
from genkd.classifier.models.wrn import WideResNet

__all__ = ["MODELS", "ClassifierOutput", "CifarClassifier", "ModelError", "build_model", "load_weights"]

NARROW, WIDE = (16, 16, 32, 64), (32, 64, 128, 256)

MODELS: dict[str, Callable[[int], CifarClassifier]] = {
    "resnet20": partial(CifarResNet, 20, NARROW),
    "resnet32": partial(CifarResNet, 32, NARROW),
    "resnet56": partial(CifarResNet, 56, NARROW),
    "resnet110": partial(CifarResNet, 110, NARROW),
    "resnet8x4": partial(CifarResNet, 8, WIDE),
    "resnet32x4": partial(CifarResNet, 32, WIDE),
    "resnet50": CifarResNet50,  # RepDistiller's ResNet50 (bottlenecks, 4 stages), the CRD teacher of vgg8 / mobilenetv2
    "wrn_16_1": partial(WideResNet, 16, 1),
    "wrn_16_2": partial(WideResNet, 16, 2),
    "wrn_40_1": partial(WideResNet, 40, 1),
    "wrn_40_2": partial(WideResNet, 40, 2),
    "vgg8": partial(VGG, VGG8),
    "vgg13": partial(VGG, VGG13),
    "mobilenetv2": MobileNetV2,
    "shufflenetv1": ShuffleNetV1,
    "shufflenetv2": ShuffleNetV2,
}


class ModelError(ValueError):
    """An unknown model name or weights that do not fit the model; the message says what to do."""


def strip_wrappers(key: str, expected: dict) -> str:
    """``key`` without the wrapper prefixes it was saved under, unless the model's own keys use it."""
    while key not in expected and key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def build_model(name: str, num_classes: int) -> CifarClassifier:
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; accepted: {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes)


# Where checkpoints of other code bases keep the weights, in MLDR-KD's order of preference (mldr_kd/models.py):
# timm's train.py writes state_dict (+ state_dict_ema), RepDistiller and genkd write model.
WEIGHT_ENTRIES = ("state_dict_ema", "model_ema", "state_dict", "model")
WRAPPER_PREFIXES = ("module.", "teacher.", "model.")  # DataParallel / distiller wrappers around the saved model


def load_weights(model: nn.Module, path: str | Path, name: str = "") -> nn.Module:
    """Load a checkpoint of this trainer, RepDistiller's ``{'model': state_dict, ...}`` (its ``*_last.pth`` pickles
    an argparse.Namespace, allowed), mdistiller's (its ``student_*`` files, or a whole distiller's
    ``{'model': {'module.student.*', 'module.teacher.*', ...}}``: the student is taken), a timm training checkpoint
    (``state_dict`` / ``state_dict_ema``: the OFA-KD and MLDR-KD teachers) or a bare state dict.

    ``name`` (the expected model name) is checked against the name a genkd checkpoint records.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"teacher checkpoint {path} not found: set model.teacher_checkpoint to a .pt file")
    state = load_checkpoint(path)
    if name and state.get("model_name", name) != name:
        raise ModelError(f"{path} holds a {state['model_name']}, not a {name}: set model.teacher to {state['model_name']}")
    if "model_name" in state:  # genkd's own checkpoint: the student's weights, whatever else it holds
        weights = state["model"]
    else:
        weights = next((state[key] for key in WEIGHT_ENTRIES if isinstance(state.get(key), dict)), state)
    weights = {key.removeprefix("module."): value for key, value in weights.items()}  # saved from DataParallel
    if any(key.startswith("student.") for key in weights):  # mdistiller's whole distiller (engine/trainer.py)
        weights = {key.removeprefix("student."): value for key, value in weights.items() if key.startswith("student.")}
    expected = model.state_dict()
    weights = {strip_wrappers(key, expected): value for key, value in weights.items()}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    resized = sorted(key for key in set(expected) & set(weights) if expected[key].shape != weights[key].shape)
    if missing or unexpected or resized:
        problems = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                    for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", resized)) if keys]
        raise ModelError(
            f"{path} does not fit {name or type(model).__name__} ({'; '.join(problems)}): check model.teacher and the "
            "dataset (number of classes) it was trained on"
        )
    model.load_state_dict(weights)
    return model
