"""Inception-v3 features, extracted once per image set and shared by FID, IS and PRDC.

The network is torch-fidelity's ``inception-v3-compat``, the port of the TensorFlow graph behind the published FID and
IS numbers (TF-1.x bilinear resize to 299, TF padding rules). We use only its extractor class: torch-fidelity 0.4.0's
generator wrapper, cache key and default precision/recall do not fit our protocol (see genkd/evaluation.py).
"""
import hashlib
import pickle
import socket
import zipfile
from pathlib import Path
from typing import NamedTuple
from unittest import mock

import numpy as np
import torch
from torch import nn
from torch_fidelity import feature_extractor_inceptionv3
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
from tqdm import tqdm

from genkd.metrics import DEFAULTS, full_float32_precision

EXTRACTOR_NAME = "inception-v3-compat"
WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
POOL = "2048"  # pool3 features: FID and PRDC
LOGITS = "logits_unbiased"  # 1008 logits without the fc bias: torch-fidelity's (and the TF reference's) IS input
DOWNLOAD_TIMEOUT_S = 30
RANDOM_FC_STD = 2.0  # save_random_inception_weights: logits that vary between images by a few units
OFFLINE_MESSAGE = (
    f"Inception weights not available offline: pass --eval.inception-weights /path/to/{WEIGHTS_FILE} "
    f"(download it once on a machine with internet from torch-fidelity's release page: {URL_INCEPTION_V3})"
)


class InceptionWeightsError(RuntimeError):
    """The Inception weights file is missing, cannot be downloaded or cannot be read."""


class InceptionFeatures(NamedTuple):
    pool: torch.Tensor  # (N, 2048) float32
    logits: torch.Tensor  # (N, 1008) float32


def default_weights_path() -> Path:
    """Where torch-fidelity itself caches the weights (torch hub's checkpoints folder), so both share one download."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def resolve_weights(path: str | Path | None, download: bool = True) -> Path:
    """A readable local weights file: ``path`` if given, else torch hub's cached copy, else a fresh download there."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise InceptionWeightsError(
                f"Inception weights file {path} not found: pass --eval.inception-weights /path/to/{WEIGHTS_FILE}"
            )
        return path
    cached = default_weights_path()
    if cached.is_file():
        return cached
    if download:
        cached.parent.mkdir(parents=True, exist_ok=True)
        previous_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # torch.hub's urlopen has no timeout: never hang on a dead network
        try:
            torch.hub.download_url_to_file(URL_INCEPTION_V3, str(cached), progress=True)
            return cached
        except OSError:  # URLError, HTTPError, timeouts, DNS failures
            pass
        finally:
            socket.setdefaulttimeout(previous_timeout)
    raise InceptionWeightsError(OFFLINE_MESSAGE)


def file_identity(path: str | Path) -> dict:
    """What tells two files apart without reading them (91 MB of weights): resolved path, size, modification time."""
    path = Path(path).resolve()
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def load_inception(weights: str | Path, device: str | torch.device = "cpu") -> FeatureExtractorInceptionV3:
    """The frozen extractor returning (pool features, unbiased logits) for uint8 NCHW images."""
    try:
        model = FeatureExtractorInceptionV3(EXTRACTOR_NAME, [POOL, LOGITS], feature_extractor_weights_path=str(weights))
    except (RuntimeError, EOFError, OSError, KeyError, zipfile.BadZipFile, pickle.UnpicklingError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InceptionWeightsError(
            f"cannot load Inception weights from {weights} ({reason[:200]}): pass torch-fidelity's {WEIGHTS_FILE}"
        ) from None
    return model.to(device)


def as_uint8_nchw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images as a (N, 3, H, W) tensor; numpy arrays are taken as (N, H, W, 3), the layout of genkd.data."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images (N, H, W, 3), got shape {images.shape}")
        images = torch.from_numpy(images).permute(0, 3, 1, 2)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    return images


@torch.inference_mode()
def extract_features(
    model: FeatureExtractorInceptionV3,
    images: np.ndarray | torch.Tensor,
    batch_size: int = DEFAULTS["feature_batch_size"],
    progress: bool = True,
    desc: str = "inception features",
) -> InceptionFeatures:
    """Pool features and logits of every image, on the model's device (CPU batches capped, see DEFAULTS)."""
    images = as_uint8_nchw(images)
    device = next(model.parameters()).device
    batch_size = min(batch_size, DEFAULTS["feature_batch_cap"].get(device.type, batch_size))
    pools, logits = [], []
    with full_float32_precision():
        for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
            pool, logit = model(images[start : start + batch_size].to(device))
            pools.append(pool)
            logits.append(logit)
    if not pools:
        return InceptionFeatures(torch.empty(0, 2048, device=device), torch.empty(0, 1008, device=device))
    return InceptionFeatures(torch.cat(pools), torch.cat(logits))


def save_random_inception_weights(path: str | Path, seed: int = 0) -> Path:
    """Write a random-weight ``inception-v3-compat`` state dict in the format ``load_inception`` reads.

    For tests and offline smoke runs only: the numbers it gives are not comparable with any paper. Kaiming-normal
    convolutions keep activations alive through the 40-odd layers (PyTorch's default init shrinks them towards zero,
    and every image then has the same features); batch norms stay the identity.
    """
    # The extractor loads weights in its constructor; skip that once to get the bare architecture.
    with (
        mock.patch.object(feature_extractor_inceptionv3, "load_state_dict_from_url", lambda *args, **kwargs: None),
        mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state_dict: None),
    ):
        model = FeatureExtractorInceptionV3(EXTRACTOR_NAME, [POOL, LOGITS])
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
    # Random pool features share a large, nearly constant part: zero-mean fc rows ignore it, and a wide fc layer makes
    # the logits differ between images by a few units, as in the trained network, so the Inception score is not ~1.
    nn.init.normal_(model.fc.weight, std=RANDOM_FC_STD, generator=generator)
    model.fc.weight.data -= model.fc.weight.data.mean(dim=1, keepdim=True)
    nn.init.zeros_(model.fc.bias)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def images_fingerprint(images: np.ndarray | torch.Tensor) -> str:
    """SHA-256 of the pixels: the reference-statistics cache key, robust to moved or silently replaced datasets."""
    images = as_uint8_nchw(images).cpu().contiguous()
    digest = hashlib.sha256(str(tuple(images.shape)).encode())
    digest.update(images.numpy().tobytes())
    return digest.hexdigest()
