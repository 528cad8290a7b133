"""FID, IS and precision/recall/density/coverage of a generator, or of a folder of images, against a dataset split.

The protocol of DiffAugment BigGAN-CIFAR, KD-DLGAN and VkD: ``eval.num_samples`` (10,000) class-balanced samples of
the EMA generator (``eval.sample_mode``: by default batch statistics over batches of 50, as the reference; see
genkd/sampling.py), quantised to uint8, torch-fidelity's TF-compatible Inception-v3, reference statistics from the
test split, IS over 10 splits, PRDC with k = 5. One Inception pass per image set feeds all metrics.

We use torch-fidelity only for its feature extractor: in 0.4.0 its generator wrapper crashes for class-conditional
generators on NumPy >= 1.24, its precision/recall uses VGG16 with k = 3, and its cache key ignores the weights file.
The reference statistics are cached here under a key of everything that changes them: the pixels of the reference
images (so dataset, root, split and subset), the extractor and the identity of the weights file.

    evaluator = Evaluator(cfg, accelerator)        # once; fails fast if the Inception weights are missing
    metrics = evaluator(generator_ema, num_classes)  # every process gets the same dict
"""
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from accelerate.utils import broadcast_object_list
from PIL import Image
from torch import nn

from genkd.data import load_arrays
from genkd.metrics import (
    DEFAULTS,
    InceptionFeatures,
    compute_inception_score,
    compute_prdc,
    extract_features,
    feature_statistics,
    fid_from_features,
    load_inception,
    resolve_weights,
)
from genkd.metrics.inception import EXTRACTOR_NAME, POOL, as_uint8_nchw, file_identity, images_fingerprint
from genkd.sampling import gather_shares, process_share, sample_images

CACHE_FORMAT = 1
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


class EvaluationError(ValueError):
    """Bad evaluation input (an empty or mixed-size image folder, too few images); the message says what to do."""


@dataclass
class ReferenceStatistics:
    mean: torch.Tensor  # (2048,) float64
    cov: torch.Tensor  # (2048, 2048) float64
    features: torch.Tensor  # (N, 2048) float32 pool features, for PRDC
    key: dict


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "genkd"


def reference_images(data_cfg: Mapping, split: str, count: int = 0) -> np.ndarray:
    """The split's images, or a seeded random ``count`` of them (not the first ones: folders are sorted by class)."""
    images, _, _ = load_arrays(data_cfg, split)
    if count:
        if count > len(images):
            raise EvaluationError(
                f"eval.reference_images is {count} but the {split} split has {len(images)} images: "
                "lower it, or 0 for all"
            )
        images = images[np.sort(np.random.default_rng(0).choice(len(images), count, replace=False))]
    return images


def load_image_folder(folder: str | Path) -> np.ndarray:
    """Every image under ``folder`` (recursively, sorted by path) as uint8 (N, H, W, 3); all must share one size."""
    folder = Path(folder)
    paths = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise EvaluationError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {folder}")
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(np.asarray(image.convert("RGB")))
        if images[-1].shape != images[0].shape:
            raise EvaluationError(
                f"images under {folder} differ in size ({paths[0].name}: {images[0].shape[:2]}, {path.name}: "
                f"{images[-1].shape[:2]}): resize them to one size first"
            )
    return np.stack(images)


def compute_metrics(fake: InceptionFeatures, reference: ReferenceStatistics, prdc_k: int, device) -> dict[str, float]:
    """All seven numbers from the fake set's one feature pass and the reference statistics."""
    if len(fake.pool) < max(DEFAULTS["is_splits"], prdc_k + 1):
        raise EvaluationError(
            f"{len(fake.pool)} images are too few: IS needs {DEFAULTS['is_splits']} and PRDC more than k = {prdc_k}"
        )
    fid = fid_from_features(reference.mean.to(device), reference.cov.to(device), fake.pool.to(device))
    is_mean, is_std = compute_inception_score(fake.logits)
    prdc = compute_prdc(reference.features.to(device), fake.pool.to(device), k=prdc_k, device=device)
    return {"fid": fid, "is_mean": is_mean, "is_std": is_std, **prdc}


class Evaluator:
    """Evaluates generators against the reference statistics of ``cfg.data``'s ``cfg.eval.split``.

    Build it once (it checks the Inception weights straight away, so a training run fails at start-up rather than at
    its first evaluation); the network and the reference statistics are loaded on first use and kept. With an
    ``accelerator`` every process samples and embeds its share of the images, and all get the same metrics.
    """

    def __init__(self, cfg: Mapping, accelerator=None, device: str | torch.device | None = None, progress: bool = True):
        self.data_cfg, self.eval_cfg = cfg["data"], cfg["eval"]
        self.accelerator = accelerator
        self.device = accelerator.device if accelerator is not None else torch.device(device or "cpu")
        self.progress = progress and (accelerator is None or accelerator.is_local_main_process)
        self.cache_dir = Path(self.eval_cfg["cache_dir"] or default_cache_dir()).expanduser()
        if accelerator is not None:
            with accelerator.main_process_first():  # one download, if any
                self.weights = resolve_weights(self.eval_cfg["inception_weights"])
        else:
            self.weights = resolve_weights(self.eval_cfg["inception_weights"])
        self._inception: nn.Module | None = None
        self._reference: ReferenceStatistics | None = None
        self.reference_was_cached: bool | None = None  # after the first reference(): read from the cache or computed

    @property
    def inception(self) -> nn.Module:
        if self._inception is None:
            self._inception = load_inception(self.weights, self.device)
        return self._inception

    def __call__(self, generator: nn.Module, num_classes: int) -> dict[str, float]:
        """Metrics of ``eval.num_samples`` class-balanced samples of ``generator`` (use the EMA copy)."""
        count = self.eval_cfg["num_samples"]
        images, _ = sample_images(
            generator,
            num_classes,
            count,
            batch_size=self.eval_cfg["sample_batch_size"],
            seed=self.eval_cfg["seed"],
            accelerator=self.accelerator,
            gather=False,
            progress=self.progress,
            mode=self.eval_cfg["sample_mode"],
        )
        return self._metrics(self._features(images, count, "fake"))

    def evaluate_images(self, images: np.ndarray | torch.Tensor) -> dict[str, float]:
        """Metrics of given uint8 images ((N, H, W, 3) arrays or (N, 3, H, W) tensors), e.g. a folder's."""
        images = as_uint8_nchw(images)
        local = images[process_share(len(images), self.accelerator)]
        return self._metrics(self._features(local, len(images), "images"))

    def _metrics(self, features: InceptionFeatures) -> dict[str, float]:
        return compute_metrics(features, self.reference(), self.eval_cfg["prdc_k"], self.device)

    def _features(self, local_images: torch.Tensor, total: int, desc: str) -> InceptionFeatures:
        """Features of every process's share of ``total`` images, gathered in order on every process."""
        batch_size = self.eval_cfg["batch_size"]
        local = extract_features(self.inception, local_images, batch_size, self.progress, f"inception ({desc})")
        return InceptionFeatures(*(gather_shares(part, total, self.accelerator) for part in local))

    def reference(self) -> ReferenceStatistics:
        """Mean, covariance and PRDC features of the reference images: from the cache, or computed and cached."""
        if self._reference is None:
            self._reference = self._load_or_compute_reference()
        return self._reference

    def _load_or_compute_reference(self) -> ReferenceStatistics:
        split, count = self.eval_cfg["split"], self.eval_cfg["reference_images"]
        images = reference_images(self.data_cfg, split, count)
        key = {
            "format": CACHE_FORMAT,
            "extractor": EXTRACTOR_NAME,
            "layer": POOL,
            "dataset": self.data_cfg["dataset"],
            "split": split,
            "reference_images": count,
            "num_images": len(images),
            "pixels_sha256": images_fingerprint(images),
            "weights": file_identity(self.weights),
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = self.cache_dir / "reference" / f"{key['dataset']}-{split}-{len(images)}-{digest}.pt"

        is_main = self.accelerator is None or self.accelerator.is_main_process
        cached = _read_reference(path, key) if is_main else None
        hit = self._broadcast(cached is not None)
        self.reference_was_cached = hit
        if hit:
            if cached is None:  # another process: the cache folder must be shared
                cached = _read_reference(path, key)
                if cached is None:
                    raise EvaluationError(f"cannot read {path} on every process: set eval.cache_dir to a shared folder")
            return cached

        local = as_uint8_nchw(images)[process_share(len(images), self.accelerator)]
        features = self._features(local, len(images), f"reference {split}").pool
        mean, cov = feature_statistics(features)
        reference = ReferenceStatistics(mean.cpu(), cov.cpu(), features.cpu(), key)
        if is_main:
            _write_reference(path, reference)
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
        return reference

    def _broadcast(self, flag: bool) -> bool:
        """The main process's ``flag`` on every process."""
        if self.accelerator is None or self.accelerator.num_processes == 1:
            return flag
        return broadcast_object_list([flag], from_process=0)[0]


def _read_reference(path: Path, key: dict) -> ReferenceStatistics | None:
    """The cached statistics if ``path`` holds them for exactly ``key``, else None (a miss: recompute)."""
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored["key"] != key:
            return None
        return ReferenceStatistics(stored["mean"], stored["cov"], stored["features"], key)
    except Exception:  # a truncated or foreign file is a miss, and gets overwritten
        return None


def _write_reference(path: Path, reference: ReferenceStatistics) -> None:
    """Write beside ``path`` and rename, so a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    state = {"key": reference.key, "mean": reference.mean, "cov": reference.cov, "features": reference.features}
    torch.save(state, temporary)
    os.replace(temporary, path)


def evaluate_folder(folder: str | Path, cfg: Mapping, accelerator=None, device=None, progress=True) -> dict[str, float]:
    """Metrics of the images in ``folder`` against the reference split of ``cfg``."""
    return Evaluator(cfg, accelerator, device, progress).evaluate_images(load_image_folder(folder))
