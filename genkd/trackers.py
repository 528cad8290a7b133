"""Experiment trackers for both trainers through accelerate: ``train.trackers`` is a comma list of accelerate's names.

Every run is named after its run directory and logs its resolved config as hyper-parameters. TensorBoard keeps its
events in ``RUN_DIR/tensorboard`` (``tensorboard --logdir runs`` lists each run by its folder); wandb and MLflow get
the project ``genkd`` and the run name; the other trackers of accelerate (aim, comet_ml, clearml, dvclive, swanlab,
trackio) take the run name as accelerate's ``project_name``.
"""
from pathlib import Path
from typing import Mapping

from accelerate.tracking import (
    LOGGER_TYPE_TO_CLASS,
    GeneralTracker,
    MLflowTracker,
    TensorBoardTracker,
    WandBTracker,
    get_available_trackers,
)

from genkd.config import ConfigError

PROJECT = "genkd"
TENSORBOARD_FOLDER = "tensorboard"
# Trackers whose project and run name are set apart (accelerate gives them one ``project_name`` for both).
NAMED_TRACKERS = {
    "tensorboard": lambda run_dir: TensorBoardTracker(TENSORBOARD_FOLDER, run_dir),
    "wandb": lambda run_dir: WandBTracker(PROJECT, name=run_dir.name, dir=str(run_dir)),
    "mlflow": lambda run_dir: MLflowTracker(PROJECT, str(run_dir), run_name=run_dir.name),
}


def tracker_names(spec: str) -> list[str]:
    """The names in a ``train.trackers`` string, checked: known to accelerate and installed."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    available = {str(tracker) for tracker in get_available_trackers()}
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ConfigError(f"unknown tracker {name!r} in train.trackers; accepted: {', '.join(LOGGER_TYPE_TO_CLASS)}")
        if name not in available:
            raise ConfigError(f"train.trackers names {name} but its package is not installed: pip install {name}")
    return names


def build_trackers(spec: str, run_dir: str | Path) -> list[str | GeneralTracker]:
    """What ``Accelerator(log_with=...)`` takes for ``train.trackers``."""
    run_dir = Path(run_dir)
    return [NAMED_TRACKERS[name](run_dir) if name in NAMED_TRACKERS else name for name in tracker_names(spec)]


def hyperparameters(cfg: Mapping, prefix: str = "") -> dict:
    """The config flattened to ``{"train.g_lr": 0.0002, ...}`` with values every tracker stores (lists and None as text)."""
    flat = {}
    for key, value in cfg.items():
        if isinstance(value, Mapping):
            flat.update(hyperparameters(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def start_trackers(accelerator, cfg: Mapping, run_dir: str | Path) -> None:
    """Start the accelerator's trackers under the run's name, with the resolved config as hyper-parameters."""
    accelerator.init_trackers(Path(run_dir).name, config=hyperparameters(cfg))
