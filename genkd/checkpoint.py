"""Checkpoints written atomically (temp file + rename), so a crash mid-save never destroys the last good one."""
import os
import pickle
import zipfile
from pathlib import Path

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


def load_generator(run_dir_or_file: str | Path, device: str | torch.device = "cpu"):
    """The EMA generator of a GAN run, in eval mode: ``(generator, config, num_classes)``."""
    from genkd.models.biggan import build_models

    state = load_checkpoint(run_dir_or_file)
    cfg: Config = as_config(state["config"])
    generator, _ = build_models(cfg.model, state["num_classes"])
    generator.load_state_dict(state["G_ema"])
    return generator.to(device).eval(), cfg, state["num_classes"]
