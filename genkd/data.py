"""Training images for the GAN track: CIFAR-10/100 (torchvision), an .npz file or an image folder, and the run's subset.

Everything is held in memory as uint8 (N, 32, 32, 3) arrays: CIFAR at 32x32 is 150 MB at most, and one array format
lets the subset choice, the training loop and the evaluation statistics share the same images.
The subset of the training split (``data.frac``) is drawn once per run and saved in the run directory, so a resumed
run, the evaluation and anyone reading the run later use exactly the same images.
"""
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

IMAGE_SIZE = 32
SUBSET_FILE = "subset_indices.json"
# Real data shipped inside the package (genkd/sample_data, built by scripts/make_cifar10_sample.py): the quickstart
# runs offline on a fresh install. Read as the npz dataset; data.root is ignored.
PACKAGED_DATASETS = {"cifar10-sample": "cifar10-sample.npz"}
TORCHVISION_DATASETS = {
    "cifar10": ("CIFAR-10", torchvision.datasets.CIFAR10, "cifar-10-batches-py"),
    "cifar100": ("CIFAR-100", torchvision.datasets.CIFAR100, "cifar-100-python"),
}


class DataError(ValueError):
    """Missing or malformed data, or a bad subset setting; the message says what to do."""


def load_arrays(data_cfg: Mapping, split: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(images uint8 (N, 32, 32, 3) RGB, labels int64 (N,), num_classes) of one split ("train" or "test")."""
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; accepted: train, test")
    dataset = data_cfg["dataset"]
    if dataset in TORCHVISION_DATASETS:
        return _load_torchvision(dataset, data_cfg["root"], split, data_cfg["download"])
    if dataset == "npz":
        return _load_npz(data_cfg["root"], split)
    if dataset in PACKAGED_DATASETS:
        return _load_npz(str(packaged_dataset_path(dataset)), split)
    if dataset == "folder":
        return _load_folder(data_cfg["root"], split)
    accepted = ", ".join([*TORCHVISION_DATASETS, *PACKAGED_DATASETS, "npz", "folder"])
    raise DataError(f"unknown data.dataset {dataset!r}; accepted: {accepted}")


def packaged_dataset_path(name: str) -> Path:
    """The file of a dataset shipped in genkd/sample_data."""
    from importlib.resources import files

    return Path(str(files("genkd") / "sample_data" / PACKAGED_DATASETS[name]))


def _load_torchvision(dataset: str, root: str, split: str, download: bool):
    name, dataset_class, folder = TORCHVISION_DATASETS[dataset]
    try:
        data = dataset_class(root, train=split == "train", download=download)
    except (RuntimeError, OSError) as error:  # files missing or corrupt; URLError etc. are OSErrors
        why = "could not be downloaded (offline?)" if download else "data.download is off"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(
            f"{name} not found under {root}/ and {why}: pass --data-root DIR holding {folder}, or use "
            f"--data.dataset npz --data-root path/to/{dataset}.npz [{reason}]"
        ) from None
    return np.ascontiguousarray(data.data), np.asarray(data.targets, dtype=np.int64), len(data.classes)


def _load_npz(path: str, split: str):
    """An .npz with x_train/y_train/x_test/y_test (the layout of ../shared/data/cifar10.npz)."""
    if not Path(path).is_file():
        raise DataError(
            f"npz file {path} not found: pass --data-root path/to/file.npz (keys x_train, y_train, x_test, y_test)"
        )
    with np.load(path) as data:
        missing = [key for key in (f"x_{split}", f"y_{split}", "y_train") if key not in data.files]
        if missing:
            raise DataError(
                f"{path} lacks {', '.join(missing)} (has {', '.join(data.files)}); "
                "expected x_train, y_train, x_test, y_test"
            )
        images, labels = data[f"x_{split}"], data[f"y_{split}"].astype(np.int64)
        num_classes = len(data["class_names"]) if "class_names" in data.files else int(data["y_train"].max()) + 1
    if images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) or len(labels) != len(images):
        raise DataError(
            f"{path}: x_{split} must be uint8 (N, 32, 32, 3) RGB with one label per image in y_{split}, "
            f"got {images.dtype} {images.shape} and {len(labels)} labels"
        )
    if labels.size and not 0 <= labels.min() <= labels.max() < num_classes:
        raise DataError(f"{path}: y_{split} holds labels outside 0..{num_classes - 1}")
    return images, labels, num_classes


def _load_folder(root: str, split: str):
    """Images in one sub-folder per class; class ids follow the sorted class names of the training folder."""
    root = Path(root)
    train_dir = root / "train" if (root / "train").is_dir() else root
    split_dir = train_dir if split == "train" else root / "test"
    if not split_dir.is_dir():
        raise DataError(
            f"image folder {split_dir} not found: data.root must hold one sub-folder per class "
            "(and test/ for the test split)"
        )
    try:
        classes, class_to_idx = torchvision.datasets.folder.find_classes(str(train_dir))
        samples = torchvision.datasets.folder.make_dataset(
            str(split_dir), class_to_idx, extensions=torchvision.datasets.folder.IMG_EXTENSIONS
        )
    except FileNotFoundError as error:
        raise DataError(f"image folder {split_dir}: {error}".splitlines()[0]) from None
    images = np.empty((len(samples), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for index, (path, _) in enumerate(tqdm(samples, desc=f"loading {split_dir}", disable=len(samples) < 5000)):
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
            images[index] = np.asarray(image)
    labels = np.array([label for _, label in samples], dtype=np.int64)
    return images, labels, len(classes)


def select_subset(labels: np.ndarray, frac: float, seed: int, balanced: bool = False) -> np.ndarray:
    """Sorted indices of a seeded ``frac`` share of the images; ``balanced`` takes the same count from every class."""
    if not 0.0 < frac <= 1.0:
        raise DataError(f"data.frac must be in (0, 1], got {frac}")
    labels = np.asarray(labels)
    if frac == 1.0:
        return np.arange(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    if not balanced:
        count = max(1, round(frac * len(labels)))
        return np.sort(rng.permutation(len(labels))[:count]).astype(np.int64)
    classes = np.unique(labels)
    per_class = max(1, round(frac * len(labels) / len(classes)))
    chosen = []
    for label in classes:
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise DataError(
                f"a balanced {frac:g} subset needs {per_class} images of every class but class {label} has "
                f"{len(members)}: lower data.frac or turn off data.balanced"
            )
        chosen.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def subset_indices(data_cfg: Mapping, labels: np.ndarray, run_dir: str | Path | None) -> np.ndarray:
    """The run's training subset: drawn on first use and saved to run_dir/subset_indices.json, then reused.

    A saved choice made with other settings is an error rather than silently replaced: the run's earlier steps (and
    its checkpoints) were trained on the saved images.
    """
    settings = {
        "dataset": data_cfg["dataset"],
        "frac": float(data_cfg["frac"]),
        "seed": int(data_cfg["subset_seed"]),
        "balanced": bool(data_cfg["balanced"]),
        "N": len(labels),
    }
    path = Path(run_dir) / SUBSET_FILE if run_dir is not None else None
    if path is not None and path.is_file():
        try:
            saved = json.loads(path.read_text())
            saved_settings = {key: saved[key] for key in settings}
            indices = np.asarray(saved["indices"], dtype=np.int64)
        except (ValueError, KeyError, TypeError):
            raise DataError(
                f"{path} is not a subset file written by genkd: delete it or choose another --run-dir"
            ) from None
        if saved_settings != settings:
            raise DataError(
                f"{path} was drawn with {_describe(saved_settings)} but this run asks for {_describe(settings)}: "
                "use the saved settings, or choose another --run-dir"
            )
        return indices
    indices = select_subset(labels, settings["frac"], settings["seed"], settings["balanced"])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, json.dumps({**settings, "indices": indices.tolist()}))
    return indices


def _describe(settings: Mapping) -> str:
    return ", ".join(f"{key}={value}" for key, value in settings.items())


def _write_atomically(path: Path, text: str) -> None:
    """Write next to ``path``, then rename: a crash never leaves a half-written file that a resume would read."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(file.name, path)


class ArrayDataset(Dataset):
    """Items (transform(uint8 CHW tensor), int label) of in-memory uint8 NHWC images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None = None):
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, np.asarray(labels, dtype=np.int64), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = torch.from_numpy(self.images[index]).permute(2, 0, 1)
        return (self.transform(image) if self.transform else image), int(self.labels[index])
