"""Checkpoints written atomically (temp file + rename), so a crash mid-save never destroys the last good one."""
import os
import pickle
import zipfile
from pathlib import Path
from typing import NamedTuple

import torch

from genkd.config import Config, as_config


class CheckpointError(RuntimeError):
    """A missing or unreadable checkpoint; the message says what to do."""


def checkpoint_path(run_dir_or_file: str | Path, name: str = "last") -> Path:
    path = Path(run_dir_or_file)
    return path / "checkpoints" / f"{name}.pt" if path.is_dir() else path


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write to a temp file in the same folder, flush it to disk, then atomically replace ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    try:
        with open(temp, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = checkpoint_path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: pass a run directory holding checkpoints/last.pt or a .pt file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f"checkpoint {path} is corrupt or incomplete ({reason}); resume from another run or retrain"
        ) from None


class LoadedGenerator(NamedTuple):
    generator: torch.nn.Module
    config: Config
    num_classes: int
    path: Path  # the checkpoint file it came from
    step: int  # the generator step it was saved at


GENERATOR_CHECKPOINTS = ("auto", "best", "last")


def generator_checkpoint(run_dir_or_file: str | Path, which: str = "auto") -> Path:
    """The checkpoint of a run to evaluate: ``best`` = checkpoints/best.pt, ``last`` = checkpoints/last.pt, ``auto`` =
    best.pt when the run has one, else last.pt; a .pt file is used as it is.

    best.pt holds the EMA generator of the lowest FID among the evaluations during training (``eval.every``): the
    reference reports that one (data-efficient-gans DiffAugment-biggan-cifar scripts ``--which_best FID`` with
    train_fns.py ``test`` saving ``G_ema_best.pth``, which its README says to evaluate); FID can rise late in
    data-limited runs (data-efficient-gans issue #84), so last.pt alone would report a worse generator.
    """
    if which not in GENERATOR_CHECKPOINTS:
        raise CheckpointError(f"unknown checkpoint choice {which!r}: use one of {', '.join(GENERATOR_CHECKPOINTS)}")
    path = Path(run_dir_or_file)
    if not path.is_dir():
        return path
    best = checkpoint_path(path, "best")
    if which == "best" and not best.is_file():
        raise CheckpointError(
            f"no checkpoint at {best}: it is written by evaluations during training (eval.every > 0); choose last"
        )
    return best if which == "best" or (which == "auto" and best.is_file()) else checkpoint_path(path, "last")


def load_generator(run_dir_or_file: str | Path, device: str | torch.device = "cpu", which: str = "auto"):
    """The EMA generator of a GAN run, in eval mode, from the checkpoint ``generator_checkpoint`` chooses:
    ``(generator, config, num_classes, path, step)``."""
    from genkd.models.biggan import build_models

    path = generator_checkpoint(run_dir_or_file, which)
    state = load_checkpoint(path)
    cfg: Config = as_config(state["config"])
    generator, _ = build_models(cfg.model, state["num_classes"])
    generator.load_state_dict(state["G_ema"])
    return LoadedGenerator(generator.to(device).eval(), cfg, state["num_classes"], path, state["step"])
