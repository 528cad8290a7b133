"""Normalisations of a batch of teacher features (the distillation target), computed in float32.

``whitening`` is the one VkD uses for generation: the rows of the whitened batch are orthonormal, ``T T^T = I``.
Matching such a target through an orthogonal projector asks the discriminator for mutually decorrelated features
of unit norm, i.e. for diverse features, which is what limited-data discriminators lose when they overfit.

Definition: ``T = (X X^T)^{+1/2} X = U V^T`` for the SVD ``X = U S V^T`` of the uncentred batch ``X`` (B, C), with
the singular directions of (relatively) zero singular values dropped, i.e. the polar factor of ``X``, the
semi-orthogonal matrix nearest to it. Why this form:
- Our batches are smaller than the width (B = 100 real+fake images against C = 512), so the C x C covariance has
  rank <= B and ZCA ``X Cov^{-1/2}`` does not exist; shrinkage would fix that only by making the result depend on a
  tuning constant, and no longer give ``T T^T = I``. The polar factor needs only the B x B problem and is the
  pseudo-inverse ZCA of the second-moment matrix, up to the factor sqrt(B) that makes rows unit vectors.
- No centring: subtracting the batch mean caps the rank at B - 1, so the best centred result has Gram
  ``I - 11^T/B`` instead of ``I``. Uncentred, ``T T^T = I`` holds exactly whenever the B features are linearly
  independent (any real batch of distinct images with B <= C). For B > C the columns are orthonormal instead.
- Degenerate batches stay finite: dropped directions map to zero, so an all-zero batch gives zeros, two equal rows
  share one unit direction (each gets norm 1/sqrt(2)), a single row is just scaled to unit norm.
Whitening is a target transform: its output is detached (the SVD's gradient is unstable at repeated singular values).

``layernorm`` (per-sample standardisation over the features, no affine) is VkD's choice for classification.

``scale`` (``distill.target_scale``) sets the size of whitened targets: ``unit`` keeps the paper's orthonormal rows,
``layernorm`` multiplies them by sqrt(C), the norm of a layer-normed row (zero mean, unit variance over C features).
Layer norm and whitening then hand the loss targets of the same size, so a comparison of the two measures
decorrelation alone, not a loss that is C times stronger (512x for CLIP ViT-B/32 under an element-mean mse).
"""
import torch
import torch.nn.functional as F

NORMS = ("none", "layernorm", "whitening")
TARGET_SCALES = ("unit", "layernorm")


def whiten(features: torch.Tensor) -> torch.Tensor:
    """The polar factor of the uncentred batch (see the module docstring): orthonormal rows when B <= C."""
    with torch.no_grad(), torch.autocast(features.device.type, enabled=False):
        u, s, vh = torch.linalg.svd(features.float(), full_matrices=False)
        # numpy's matrix_rank tolerance: singular values below it are rounding noise, their directions arbitrary
        tolerance = s.amax() * max(features.shape) * torch.finfo(torch.float32).eps
        return (u * (s > tolerance)) @ vh


def layernorm(features: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return F.layer_norm(features.float(), features.shape[-1:], eps=eps)


def normalize_features(features: torch.Tensor, kind: str, scale: str = "unit") -> torch.Tensor:
    """(B, C) -> (B, C) float32; ``kind`` is none | layernorm | whitening, ``scale`` unit | layernorm (whitening)."""
    if features.ndim != 2 or len(features) == 0:
        raise ValueError(f"expected a non-empty batch of features (batch, channels), got shape {tuple(features.shape)}")
    if scale not in TARGET_SCALES:
        raise ValueError(f"unknown target scale {scale!r}; accepted: {', '.join(TARGET_SCALES)}")
    if scale != "unit" and kind != "whitening":
        raise ValueError(
            f"distill.target_scale {scale} rescales whitened targets only, but distill.norm is {kind}: "
            "use --distill.norm whitening or --distill.target-scale unit"
        )
    if kind == "none":
        return features.float()
    if kind == "layernorm":
        return layernorm(features)
    if kind == "whitening":
        whitened = whiten(features)
        return whitened * features.shape[1] ** 0.5 if scale == "layernorm" else whitened
    raise ValueError(f"unknown feature normalisation {kind!r}; accepted: {', '.join(NORMS)}")
