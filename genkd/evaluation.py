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
    """Bad evaluation input (an empty, mixed-size or unreadable image folder, a malformed .npz, too few images); the
    message says what to do."""


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


def _rgb(image: Image.Image, path: Path) -> tuple[np.ndarray, str | None]:
    """(uint8 (H, W, 3) pixels, what was converted or None).

    Greyscale, 1-bit and palette images are converted (the grey value in all three channels: how they look, and what
    PIL's convert("RGB") gives torch-fidelity and clean-fid too); an alpha channel is dropped when every pixel is
    opaque (lossless). Transparent pixels are refused: their colour depends on a background we would have to invent.
    Other modes (16-bit, float, CMYK, ...) are refused rather than guessed at."""
    if image.mode == "RGB":
        return np.asarray(image), None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            raise EvaluationError(
                f"{path} has transparent pixels ({image.mode}): flatten it onto a background and save it as RGB"
            )
        return np.asarray(image.convert("RGB")), f"{image.mode} (opaque)"
    if image.mode in ("L", "1", "P"):
        return np.asarray(image.convert("RGB")), {"L": "greyscale", "1": "1-bit", "P": "palette"}[image.mode]
    raise EvaluationError(f"{path} is a {image.mode} image, which genkd does not convert: save it as 8-bit RGB")


def load_image_folder(folder: str | Path, report=print) -> np.ndarray:
    """Every image under ``folder`` (recursively, sorted by path) as uint8 (N, H, W, 3); all must share one size.

    Files without an image suffix (``IMAGE_SUFFIXES``; e.g. the metrics.json written here) are skipped, and
    conversions to RGB (see ``_rgb``) are counted, each with one ``report`` line; an unreadable image stops it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{folder} is not a folder of images")
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    paths = [path for path in files if path.suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        raise EvaluationError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {folder}")
    images, converted = [], {}
    for path in paths:
        try:
            with Image.open(path) as image:
                pixels, conversion = _rgb(image, path)
        except (OSError, SyntaxError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
            if isinstance(error, EvaluationError):
                raise
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise EvaluationError(f"{path} is not a readable image ({reason}): remove or re-save it") from None
        if conversion:
            converted[conversion] = converted.get(conversion, 0) + 1
        images.append(pixels)
        if images[-1].shape != images[0].shape:
            raise EvaluationError(
                f"images under {folder} differ in size ({paths[0].name}: {images[0].shape[:2]}, {path.name}: "
                f"{images[-1].shape[:2]}): resize them to one size first"
            )
    if len(files) > len(paths):
        report(f"note: skipped {len(files) - len(paths)} files under {folder} that are not images")
    for conversion, count in converted.items():
        report(f"note: converted {count} {conversion} images under {folder} to RGB")
    return np.stack(images)


NPZ_IMAGE_KEYS = ("x", "images", "arr_0")  # BigGAN-PyTorch's sample.py; a plain name; np.savez(path, array)


def load_image_npz(path: str | Path) -> np.ndarray:
    """Generated images saved as an .npz: uint8, (N, H, W, 3) or (N, 3, H, W) (BigGAN-PyTorch's sample.py writes
    ``x`` as (N, 3, H, W)); returned as (N, H, W, 3)."""
    path = Path(path)
    try:
        with np.load(path) as data:
            key = next((key for key in NPZ_IMAGE_KEYS if key in data.files), None)
            if key is None:
                raise EvaluationError(
                    f"{path} has no images under {', '.join(NPZ_IMAGE_KEYS)} (it holds {', '.join(data.files) or 'nothing'}): "
                    "save them as np.savez(path, x=images)"
                )
            images = data[key]
    except (OSError, ValueError) as error:
        if isinstance(error, EvaluationError):
            raise
        raise EvaluationError(f"{path} is not a readable .npz file ({str(error).splitlines()[0]})") from None
    if images.dtype != np.uint8:
        raise EvaluationError(
            f"{path}: {key} is {images.dtype}, expected uint8 pixels in 0..255: quantise first, e.g. "
            "np.clip(np.rint((x + 1) * 127.5), 0, 255).astype(np.uint8) for images in [-1, 1]"
        )
    if images.ndim == 4 and images.shape[1] == 3 and images.shape[-1] != 3:
        images = images.transpose(0, 2, 3, 1)
    if images.ndim != 4 or images.shape[-1] != 3 or not len(images):
        raise EvaluationError(f"{path}: {key} has shape {images.shape}, expected (N, H, W, 3) or (N, 3, H, W) RGB, N >= 1")
    return np.ascontiguousarray(images)


def load_images(source: str | Path, report=print) -> np.ndarray:
    """An image folder or an .npz file of images."""
    source = Path(source)
    return load_image_npz(source) if source.suffix == ".npz" else load_image_folder(source, report)


def select_images(images: np.ndarray, count: int, seed: int, source, report=print) -> np.ndarray:
    """``count`` (eval.num_samples) of the given images: all of them, or a seeded subset; never fewer, since FID
    depends on the number of samples and runs are compared at one count."""
    if count > len(images):
        raise EvaluationError(
            f"{source} holds {len(images)} images but eval.num_samples is {count}: pass --num-samples {len(images)} "
            "(compare only results at one count) or add images"
        )
    if count < len(images):
        report(f"note: using {count} of the {len(images)} images of {source} (a random subset, eval.seed {seed})")
        images = images[np.sort(np.random.default_rng(seed).choice(len(images), count, replace=False))]
    return images


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
    """Metrics of ``eval.num_samples`` images of ``folder`` (or an .npz file) against the reference split of ``cfg``."""
    evaluator = Evaluator(cfg, accelerator, device, progress)
    report = print if accelerator is None or accelerator.is_main_process else lambda line: None
    images = select_images(load_images(folder, report), cfg["eval"]["num_samples"], cfg["eval"]["seed"], folder, report)
    return evaluator.evaluate_images(images)
