"""Evaluation metrics from one Inception feature pass per image set: FID, IS and precision/recall/density/coverage.

    features = extract_features(load_inception(weights, device), uint8_images)
    fid = frechet_distance(*feature_statistics(real.pool), *feature_statistics(features.pool))
    is_mean, is_std = compute_inception_score(features.logits)
    kid_mean, kid_std = compute_kid(features.pool, real.pool)  # torch-fidelity's subsets, kernel and seed
    compute_prdc(real.pool, features.pool)  # {"precision", "recall", "density", "coverage"}
"""
import contextlib

import torch

# The reference protocol (DiffAugment BigGAN-CIFAR, KD-DLGAN, VkD: torch-fidelity's inception-v3-compat, IS over
# 10 splits after torch-fidelity's seeded shuffle, PRDC with k = 5) in one place; the functions below default to it.
DEFAULTS = {
    "is_splits": 10,
    "is_shuffle_seed": 2020,  # torch-fidelity's rng_seed: its IS permutes the samples before splitting them
    "prdc_k": 5,
    # Rows and columns of the PRDC distance tiles (a few alive at once): cache-friendly on CPU, big enough on GPU.
    "prdc_tile_size": {"cpu": 2048, "cuda": 8192},
    "feature_batch_size": 200,  # images per Inception forward pass
    # At most this many per forward on CPU: 299 x 299 activations of bigger batches leave the caches, and 16 runs
    # about 1.5x faster than 200 on a 2-core machine.
    "feature_batch_cap": {"cpu": 16},
}
METRIC_KEYS = ("fid", "kid_mean", "kid_std", "is_mean", "is_std", "precision", "recall", "density", "coverage")


@contextlib.contextmanager
def full_float32_precision():
    """True float32 convolutions and matmuls: no TF32 (cuDNN's default on Ampere and later) nor bf16 shortcuts.

    The published numbers come from full-precision Inception features, and PRDC's float32 error bound assumes them.
    """
    matmul_precision, conv_tf32 = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul_precision)
        torch.backends.cudnn.allow_tf32 = conv_tf32


from genkd.metrics.fid import feature_statistics, fid_from_features, frechet_distance  # noqa: E402
from genkd.metrics.inception import (  # noqa: E402
    InceptionFeatures,
    InceptionWeightsError,
    extract_features,
    load_inception,
    resolve_weights,
    save_random_inception_weights,
)
from genkd.metrics.inception_score import compute_inception_score  # noqa: E402
from genkd.metrics.kid import KID, compute_kid  # noqa: E402
from genkd.metrics.prdc import compute_prdc  # noqa: E402

__all__ = [
    "DEFAULTS",
    "METRIC_KEYS",
    "KID",
    "InceptionFeatures",
    "InceptionWeightsError",
    "extract_features",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "full_float32_precision",
    "compute_inception_score",
    "compute_kid",
    "load_inception",
    "compute_prdc",
    "resolve_weights",
    "save_random_inception_weights",
]
