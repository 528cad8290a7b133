"""Checkpoints you can fall back on: atomic writes, a size/checksum record beside each file, rotation, random states.

Layout of ``run/checkpoints/``: ``last.pt`` (newest), ``last.1.pt`` ... ``last.{keep-1}.pt`` (older good ones, newest
first), ``best.pt`` (separate, never rotated), and beside every file ``<file>.json``, its record: size in bytes,
SHA-256 and the optimizer step it holds. A save writes a temp file and its record first and only then rotates and
renames, so a crash, a full disk or a permission error at any point leaves every older checkpoint readable. ``--resume``
uses ``load_resume_checkpoint``: the newest file whose record matches, with a warning that says how many steps an
unreadable newer one held.

Random states (``random_state`` / ``set_random_state``): python, numpy, torch CPU and every CUDA device, the same set
accelerate's ``save_state`` writes (accelerate/checkpointing.py); we keep our own single-file format because
``save_state`` writes a folder of files non-atomically and has no fallback. Foreign teacher checkpoints load with
``weights_only=True`` plus an allow-list (``SAFE_GLOBALS``) of the one extra type RepDistiller pickles.
"""
import argparse
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from genkd.config import Config, as_config

# RepDistiller's train_teacher.py / train_student.py save {'opt': argparse.Namespace, 'model', 'optimizer'} as
# *_last.pth; its per-epoch files and mdistiller's (engine/trainer.py) hold only tensors, numbers and dicts.
SAFE_GLOBALS = [argparse.Namespace]
RECORD_SUFFIX = ".json"


class CheckpointError(RuntimeError):
    """A missing, unreadable or unwritable checkpoint; the message says what to do."""


class CheckpointFallbackWarning(UserWarning):
    """The newest checkpoint was unreadable and an older one is used."""


def checkpoint_path(run_dir_or_file: str | Path, name: str = "last") -> Path:
    path = Path(run_dir_or_file)
    return path / "checkpoints" / f"{name}.pt" if path.is_dir() else path


def record_path(path: Path) -> Path:
    return path.with_name(path.name + RECORD_SUFFIX)


def previous_path(path: Path, age: int) -> Path:
    """``last.pt`` -> ``last.1.pt`` (age 1, the one before the newest), ``last.2.pt`` ..."""
    return path.with_name(f"{path.stem}.{age}{path.suffix}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json_atomically(data: dict, path: Path) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    try:
        with open(temp, "w") as file:
            json.dump(data, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` becomes a second name of ``source`` (a hard link costs no space), or a copy where links fail."""
    temp = target.with_name(f".{target.name}.tmp")
    temp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, temp)
        except OSError:  # file systems without hard links
            shutil.copyfile(source, temp)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def _rotate(path: Path, keep: int) -> None:
    """Shift ``last.pt`` -> ``last.1.pt`` -> ... -> ``last.{keep-1}.pt`` (each with its record); ``last.pt`` itself
    stays in place until the caller replaces it, so there is always a newest file."""
    if keep < 2 or not path.is_file():
        return
    staging = path.with_name(f".{path.name}.rotating")
    try:
        _link_or_copy(path, staging)  # the only step that may need space: nothing has moved yet if it fails
        for age in range(keep - 1, 1, -1):
            older, newer = previous_path(path, age), previous_path(path, age - 1)
            if newer.exists():
                os.replace(newer, older)
                if record_path(newer).exists():
                    os.replace(record_path(newer), record_path(older))
        os.replace(staging, previous_path(path, 1))
    finally:
        staging.unlink(missing_ok=True)
    if record_path(path).exists():
        _link_or_copy(record_path(path), record_path(previous_path(path, 1)))
    else:
        record_path(previous_path(path, 1)).unlink(missing_ok=True)


def _prune(path: Path, keep: int) -> None:
    """Delete rotated files beyond ``keep`` (left by a run that kept more)."""
    for old in rotation(path)[max(keep, 1) :]:
        old.unlink(missing_ok=True)
        record_path(old).unlink(missing_ok=True)


def save_checkpoint(state: dict, path: str | Path, keep: int = 1, step: int | None = None) -> None:
    """Write ``state`` to ``path`` atomically with its record; with ``keep`` >= 2 the previous file becomes
    ``<name>.1.pt`` (and so on, ``keep`` files in all). A failed write (disk full, permission) raises CheckpointError
    and changes no existing file."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        record = {"size": temp.stat().st_size, "sha256": _sha256(temp), "step": step}
        _rotate(path, keep)
        record_temp = path.with_name(f".{path.name}{RECORD_SUFFIX}.new")
        _write_json_atomically(record, record_temp)
        os.replace(temp, path)
        os.replace(record_temp, record_path(path))
        _prune(path, keep)
    except OSError as error:
        raise CheckpointError(
            f"could not write checkpoint {path} ({error.strerror or error}); older checkpoints are intact: free disk "
            f"space or fix the permissions of {path.parent}, then --resume"
        ) from None
    finally:
        temp.unlink(missing_ok=True)
        path.with_name(f".{path.name}{RECORD_SUFFIX}.new").unlink(missing_ok=True)


def read_record(path: Path) -> dict | None:
    """The size/checksum record written with ``path``; None for files without one (older or foreign files)."""
    try:
        return json.loads(record_path(path).read_text())
    except (OSError, ValueError):
        return None


def verify(path: Path) -> None:
    """Raise CheckpointError when ``path`` does not match its record (truncated, overwritten, bit rot)."""
    record = read_record(path)
    if record is None:
        return
    size = path.stat().st_size
    if size != record["size"]:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or incomplete ({size} bytes, {record['size']} written); resume from "
            "another checkpoint or retrain"
        )
    if _sha256(path) != record["sha256"]:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or incomplete (its SHA-256 differs from the one written with it); resume "
            "from another checkpoint or retrain"
        )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint file (or a run directory's ``checkpoints/last.pt``), verified against its record when it has one.

    Loaded with ``weights_only=True``: tensors, numbers, strings, containers and ``SAFE_GLOBALS``; a file pickling
    anything else is refused with the name of what it pickles."""
    path = checkpoint_path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: pass a run directory holding checkpoints/last.pt or a .pt file")
    verify(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if found:
            raise CheckpointError(
                f"checkpoint {path} pickles {found.group(1)}, which genkd does not load (only tensors, numbers, "
                "containers and argparse.Namespace): re-save it as {'model': model.state_dict()}"
            ) from None
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or incomplete ({reason}); resume from another run or retrain") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f"checkpoint {path} is corrupt or incomplete ({reason}); resume from another run or retrain"
        ) from None


def rotation(path: Path) -> list[Path]:
    """``path`` and its older rotated copies, newest first."""
    ages = []
    for candidate in path.parent.glob(f"{path.stem}.*{path.suffix}"):
        age = candidate.name[len(path.stem) + 1 : -len(path.suffix)]
        if age.isdigit():
            ages.append(int(age))
    return [path, *(previous_path(path, age) for age in sorted(ages))]


def load_resume_checkpoint(run_dir: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """The newest readable checkpoint of a run: ``last.pt``, else ``last.1.pt`` ... with a CheckpointFallbackWarning
    that says how many steps the unreadable newer file held."""
    newest = checkpoint_path(Path(run_dir), "last") if Path(run_dir).is_dir() else Path(run_dir)
    failures = []
    for path in rotation(newest):
        if not path.is_file():
            continue
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as error:
            failures.append((path, str(error)))
            continue
        if failures:
            newest_step = (read_record(failures[0][0]) or {}).get("step")
            step = (read_record(path) or {}).get("step")
            lost = f"{newest_step - step} steps" if newest_step is not None and step is not None else "an unknown number of steps"
            warnings.warn(
                f"{failures[0][1]}; resuming from the older {path.name} (step {step}): {lost} lost",
                CheckpointFallbackWarning,
                stacklevel=2,
            )
        return state
    if failures:
        raise CheckpointError("; ".join(message for _, message in failures))
    raise CheckpointError(f"no checkpoint at {newest}: pass a run directory holding checkpoints/last.pt")


# ---------------------------------------------------------------- random states (saved per process)


def random_state() -> dict:
    """This process's python, numpy, torch and CUDA generator states, in types ``weights_only`` loading accepts."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": position,
                  "has_gauss": has_gauss, "cached_gaussian": gauss},  # fmt: skip
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_random_state(state: dict) -> None:
    """Restore ``random_state()``; checkpoints written before python/numpy were saved hold only "cpu" and "cuda"."""
    if "python" in state:
        random.setstate(state["python"])
        numpy = state["numpy"]
        keys = numpy["keys"].numpy().astype(np.uint32)
        np.random.set_state((numpy["kind"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state.get("torch", state.get("cpu")))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda) if isinstance(cuda, list) else torch.cuda.set_rng_state(cuda)


def gather_random_states(accelerator) -> list[dict]:
    """Every process's ``random_state()``, in rank order (a collective: call it on every process)."""
    from accelerate.utils import gather_object

    return gather_object([random_state()]) if accelerator.num_processes > 1 else [random_state()]


def restore_random_states(states: list[dict], accelerator) -> None:
    """This process's saved state; on another number of processes a warning, and the streams stay as seeded."""
    if len(states) == accelerator.num_processes:
        set_random_state(states[accelerator.process_index])
    else:
        accelerator.print(
            f"warning: resuming on {accelerator.num_processes} processes, saved with {len(states)}: new random stream"
        )


def accelerator_state(accelerator) -> dict:
    """What a trainer must save besides models and optimizers for an exact resume: accelerate's fp16 GradScaler (its
    scale and growth tracker) and every process's random states (a collective: call it on every process)."""
    scaler = getattr(accelerator, "scaler", None)
    return {"scaler": scaler.state_dict() if scaler is not None else None, "rng": gather_random_states(accelerator)}


def restore_accelerator_state(state: dict, accelerator) -> None:
    """Undo ``accelerator_state``; call it after ``accelerator.prepare``, which may draw random numbers."""
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    restore_random_states(state["rng"], accelerator)


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
