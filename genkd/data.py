"""Training images for the GAN track: CIFAR-10/100 (torchvision), an .npz file or an image folder, and the run's subset.

Everything is held in memory as uint8 (N, 32, 32, 3) arrays: CIFAR at 32x32 is 150 MB at most, and one array format
lets the subset choice, the training loop and the evaluation statistics share the same images.
The subset of the training split (``data.frac``) is drawn once per run and saved in the run directory, so a resumed
run, the evaluation and anyone reading the run later use exactly the same images.

Subsets (``data.subset``):

- ``reference`` (default): the call of mit-han-lab/data-efficient-gans ``DiffAugment-biggan-cifar/datasets.py``
  (``CIFAR10.__init__``, which CIFAR100 inherits; KD_DLGAN's ``third_party/datasets.py`` is the same file):
  ``np.random.seed(seed); train_idx = np.random.choice(50000, num_samples, replace=False)`` over the training set in
  the official order, with ``num_samples`` 5000 / 10000 for 10 / 20 % (the ``--num_samples`` of its scripts) and
  ``seed`` the run's ``--seed 0``. The reference keeps ``train_idx`` in draw order; we keep the same images sorted
  (the order only feeds the data loader's shuffle, which nobody can replay). ``np.random.RandomState(seed)`` gives the
  same stream as the seeded global generator without touching it. The draw is made in the OFFICIAL index space,
  whatever the source: torchvision CIFAR is in that order; an npz may carry ``train_index`` (official position of each
  image) and ``y_train_full`` (all official labels), like ../shared/data/cifar10.npz, and then keeps the chosen images
  it holds; an image folder states the order by naming each file with its official index (``train/cat/00042.png``
  is image 42 of the official training order; the class sub-folders alone are NOT that order; the largest number + 1
  is taken as the size of the official set, so a partial folder should hold its last image). The subset has
  ``round(frac * N_official)`` images (5000 of 50000 at 10 %); when the source holds only part of them, one warning
  line says how many it holds and training uses those.
  ``data.balanced`` draws ``round(frac * N / classes)`` per class from one seeded ``RandomState``, class by class in
  label order, with ``choice(len(members), count, replace=False)`` (the reference's own per-class draw, its
  ``val_split`` code).
- ``permutation``: genkd's earlier draw, ``np.random.default_rng(seed).permutation(N)[:n]`` over the loaded images.
"""
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
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
    if dataset == "folder":
        return _load_folder(data_cfg["root"], split)
    accepted = ", ".join([*TORCHVISION_DATASETS, "npz", "folder"])
    raise DataError(f"unknown data.dataset {dataset!r}; accepted: {accepted}")


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


def _folder_samples(root: str, split: str) -> tuple[list[tuple[str, int]], int]:
    """((path, class id) of every image of the split, in sorted class then file order; number of classes)."""
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
    return samples, len(classes)


def _load_folder(root: str, split: str):
    """Images in one sub-folder per class; class ids follow the sorted class names of the training folder."""
    samples, num_classes = _folder_samples(root, split)
    images = np.empty((len(samples), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for index, (path, _) in enumerate(tqdm(samples, desc=f"loading {root} ({split})", disable=len(samples) < 5000)):
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
            images[index] = np.asarray(image)
    labels = np.array([label for _, label in samples], dtype=np.int64)
    return images, labels, num_classes


# How each ``data.subset`` method draws ``count`` of ``n`` positions: (seeded generator, draw).
SUBSET_DRAWS = {
    "reference": (np.random.RandomState, lambda rng, n, count: rng.choice(n, count, replace=False)),
    "permutation": (np.random.default_rng, lambda rng, n, count: rng.permutation(n)[:count]),
}


def select_subset(
    labels: np.ndarray, frac: float, seed: int, balanced: bool = False, method: str = "reference"
) -> np.ndarray:
    """Sorted indices of a seeded ``frac`` share of the images; ``balanced`` takes the same count from every class.

    ``method`` is a key of ``SUBSET_DRAWS`` (see the module docstring); ``labels`` are those of the whole index space
    the draw is made in (for ``reference``, the official training set).
    """
    if not 0.0 < frac <= 1.0:
        raise DataError(f"data.frac must be in (0, 1], got {frac}")
    if method not in SUBSET_DRAWS:
        raise DataError(f"unknown data.subset {method!r}; accepted: {', '.join(SUBSET_DRAWS)}")
    labels = np.asarray(labels)
    if frac == 1.0:
        return np.arange(len(labels), dtype=np.int64)
    make_generator, draw = SUBSET_DRAWS[method]
    rng = make_generator(seed)
    if not balanced:
        count = max(1, round(frac * len(labels)))
        return np.sort(draw(rng, len(labels), count)).astype(np.int64)
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
        chosen.append(members[draw(rng, len(members), per_class)])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


@dataclass
class OfficialOrder:
    """Where the loaded training images sit in the official order of their dataset."""

    positions: np.ndarray  # (N loaded,) int64: official index of each loaded image
    labels: np.ndarray  # (N official,) int64: labels of the whole official set (-1 where a folder does not say)
    source: str  # the source, for messages


def official_order(data_cfg: Mapping, labels: np.ndarray) -> OfficialOrder:
    """The official positions of the loaded training images (``labels``, as ``load_arrays`` gave them).

    torchvision CIFAR is loaded in the official order; an npz states it with ``train_index`` and ``y_train_full``
    (without them its own order is taken as official); an image folder with file names that are official indices
    (``00042.png``); any other folder only has its sorted order, which is said in one warning line.
    """
    labels = np.asarray(labels, dtype=np.int64)
    dataset, root = data_cfg["dataset"], data_cfg["root"]
    identity = OfficialOrder(np.arange(len(labels), dtype=np.int64), labels, f"{dataset} {root}")
    if dataset == "npz":
        with np.load(root) as data:
            present = [key for key in ("train_index", "y_train_full") if key in data.files]
            if not present:
                return identity
            if len(present) == 1:
                raise DataError(
                    f"{root} has {present[0]} but not {({'train_index', 'y_train_full'} - set(present)).pop()}: "
                    "an npz states the official order with both (or neither)"
                )
            positions, full = data["train_index"].astype(np.int64), data["y_train_full"].astype(np.int64)
        if len(positions) != len(labels) or positions.min(initial=0) < 0 or positions.max(initial=-1) >= len(full):
            raise DataError(f"{root}: train_index must give one position in 0..{len(full) - 1} per training image")
        if not np.array_equal(full[positions], labels):
            raise DataError(f"{root}: y_train_full[train_index] differs from y_train; the file is inconsistent")
        return OfficialOrder(positions, full, f"{root}")
    if dataset == "folder":
        stems = [Path(path).stem for path, _ in _folder_samples(root, "train")[0]]
        numbered = [stem.isdigit() for stem in stems]
        if not any(numbered):
            warnings.warn(
                f"image folder {root} does not state the official order (file names are not official indices, e.g. "
                "00042.png): the subset is drawn over its sorted order and differs from the reference's images",
                stacklevel=4,
            )
            return identity
        if not all(numbered):
            raise DataError(
                f"image folder {root}: some file names are official indices and some are not; number all or none"
            )
        positions = np.array([int(stem) for stem in stems], dtype=np.int64)
        if len(np.unique(positions)) != len(positions):
            raise DataError(
                f"image folder {root}: one number names several files (numbered per class?); name each file by its "
                "official index, or use data.subset permutation"
            )
        full = np.full(positions.max(initial=-1) + 1, -1, dtype=np.int64)
        full[positions] = labels
        return OfficialOrder(positions, full, f"image folder {root}")
    return identity


def draw_subset(data_cfg: Mapping, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(indices into the loaded images, their official indices or None) of the subset ``data_cfg`` asks for.

    ``reference`` draws in the official index space and keeps the chosen images the source holds, saying so in one
    warning line when it holds only part of them; ``permutation`` draws over the loaded images.
    """
    frac, seed, balanced = float(data_cfg["frac"]), int(data_cfg["subset_seed"]), bool(data_cfg["balanced"])
    if data_cfg["subset"] != "reference":
        return select_subset(labels, frac, seed, balanced, data_cfg["subset"]), None
    order = official_order(data_cfg, labels)
    if balanced and (order.labels < 0).any():
        raise DataError(
            f"a balanced reference subset needs the labels of the whole official set, but {order.source} holds only "
            "part of it: turn off data.balanced or use data.subset permutation"
        )
    official = select_subset(order.labels, frac, seed, balanced, "reference")
    held = np.flatnonzero(np.isin(order.positions, official))
    if len(held) < len(official):
        warnings.warn(
            f"{order.source} holds {len(held)} of the {len(official)} images of the reference subset "
            f"(frac {frac:g} of {len(order.labels)}, seed {seed}): training uses those {len(held)}",
            stacklevel=3,
        )
    return held.astype(np.int64), order.positions[held]


def subset_indices(data_cfg: Mapping, labels: np.ndarray, run_dir: str | Path | None) -> np.ndarray:
    """The run's training subset (indices into the loaded images): drawn on first use and saved to
    run_dir/subset_indices.json with the method and the images' official indices, then reused.

    A saved choice made with other settings is an error rather than silently replaced: the run's earlier steps (and
    its checkpoints) were trained on the saved images. Files written before ``data.subset`` existed were drawn with
    ``permutation``.
    """
    settings = {
        "dataset": data_cfg["dataset"],
        "frac": float(data_cfg["frac"]),
        "seed": int(data_cfg["subset_seed"]),
        "balanced": bool(data_cfg["balanced"]),
        "subset": data_cfg["subset"],
        "N": len(labels),
    }
    path = Path(run_dir) / SUBSET_FILE if run_dir is not None else None
    if path is not None and path.is_file():
        try:
            saved = json.loads(path.read_text())
            saved_settings = {key: saved.get(key, "permutation") if key == "subset" else saved[key] for key in settings}
            indices = np.asarray(saved["indices"], dtype=np.int64)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise DataError(
                f"{path} is not a subset file written by genkd: delete it or choose another --run-dir"
            ) from None
        if saved_settings != settings:
            raise DataError(
                f"{path} was drawn with {_describe(saved_settings)} but this run asks for {_describe(settings)}: "
                "use the saved settings, or choose another --run-dir"
            )
        return indices
    indices, official = draw_subset(data_cfg, labels)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {**settings, "indices": indices.tolist()}
        if official is not None:
            record["official_indices"] = official.tolist()
        _write_atomically(path, json.dumps(record))
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
