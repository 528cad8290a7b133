"""Teacher-feature normalisations: whitened batches are orthonormal (B < C), finite on degenerate input."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genkd.normalize import normalize_features


@pytest.fixture(scope="module")
def image_features(cifar10_arrays) -> torch.Tensor:
    """Real, strongly correlated features with a large common mean: 50 flattened CIFAR images (50, 3072)."""
    return torch.from_numpy(cifar10_arrays[2][:50].reshape(50, -1).astype(np.float32) / 255)


def test_whitened_batch_is_orthonormal_when_batch_smaller_than_width(image_features):
    whitened = normalize_features(image_features, "whitening")
    assert whitened.shape == image_features.shape and whitened.dtype == torch.float32
    torch.testing.assert_close(whitened @ whitened.T, torch.eye(50), atol=1e-4, rtol=0)
    # the raw batch is nowhere near that: same-image-statistics rows are highly aligned
    unit = F.normalize(image_features, dim=1)
    assert (unit @ unit.T - torch.eye(50)).abs().max() > 0.5


def test_whitening_matches_inverse_square_root_of_gram(image_features):
    """T = (X X^T)^{-1/2} X, computed independently through an eigendecomposition in float64."""
    x = image_features[:20].double()
    values, vectors = torch.linalg.eigh(x @ x.T)
    expected = vectors @ torch.diag(values.rsqrt()) @ vectors.T @ x
    whitened = normalize_features(image_features[:20], "whitening").double()
    torch.testing.assert_close(whitened, expected, atol=1e-4, rtol=0)


def test_whitening_is_rotation_equivariant(image_features):
    x = image_features[:20, :64]
    rotation = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(0)))[0]
    torch.testing.assert_close(
        normalize_features(x @ rotation, "whitening"), normalize_features(x, "whitening") @ rotation, atol=1e-4, rtol=0
    )


def test_whitening_batch_larger_than_width_gives_orthonormal_columns(image_features):
    x = image_features[:, :16]
    whitened = normalize_features(x, "whitening")
    torch.testing.assert_close(whitened.T @ whitened, torch.eye(16), atol=1e-4, rtol=0)


def test_whitening_degenerate_batches_stay_finite(image_features):
    row = image_features[:1, :32]
    single = normalize_features(row, "whitening")
    torch.testing.assert_close(single, row / row.norm())
    repeated = normalize_features(row.repeat(2, 1), "whitening")
    torch.testing.assert_close(repeated, (row / (row.norm() * 2**0.5)).repeat(2, 1))
    zeros = normalize_features(torch.zeros(4, 32), "whitening")
    assert torch.equal(zeros, torch.zeros(4, 32))
    pair = normalize_features(image_features[:2, :32], "whitening")
    torch.testing.assert_close(pair @ pair.T, torch.eye(2), atol=1e-5, rtol=0)
    # three distinct images, each twice: rank 3 of 6 rows, still finite, equal rows stay equal
    doubled = normalize_features(image_features[:3].repeat(2, 1), "whitening")
    assert torch.isfinite(doubled).all()
    torch.testing.assert_close(doubled[:3], doubled[3:])
    torch.testing.assert_close(doubled @ doubled.T, torch.eye(3).repeat(2, 2) / 2, atol=1e-4, rtol=0)


def test_whitening_output_is_a_detached_target(image_features):
    x = image_features[:8].clone().requires_grad_()
    assert not normalize_features(x, "whitening").requires_grad


def test_layernorm_standardises_each_sample(image_features):
    normalized = normalize_features(image_features * 3 + 1, "layernorm")
    torch.testing.assert_close(normalized.mean(dim=1), torch.zeros(50), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalized.var(dim=1, unbiased=False), torch.ones(50), atol=1e-3, rtol=0)
    x = image_features[:4].clone().requires_grad_()
    normalize_features(x, "layernorm").sum().backward()  # the student side may use it, so it keeps gradients
    assert x.grad is not None


def test_none_and_errors(image_features):
    assert torch.equal(normalize_features(image_features, "none"), image_features)
    with pytest.raises(ValueError, match="normalisation 'batchnorm'; accepted: none, layernorm, whitening"):
        normalize_features(image_features, "batchnorm")
    with pytest.raises(ValueError, match=r"a non-empty batch of features \(batch, channels\), got shape \(3,\)"):
        normalize_features(torch.zeros(3), "whitening")


def test_target_scale_gives_unit_or_layernorm_sized_rows(image_features):
    """unit: whitened rows of norm 1 (the paper); layernorm: whitened rows of norm sqrt(C), a layer-normed row's."""
    width = image_features.shape[1]
    unit = normalize_features(image_features, "whitening", "unit")
    scaled = normalize_features(image_features, "whitening", "layernorm")
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(50), atol=1e-4, rtol=0)
    torch.testing.assert_close(scaled.norm(dim=1), torch.full((50,), width**0.5), rtol=1e-4, atol=0)
    torch.testing.assert_close(scaled @ scaled.T / width, torch.eye(50), atol=1e-4, rtol=0)  # still decorrelated
    layer_normed = normalize_features(image_features, "layernorm")
    torch.testing.assert_close(layer_normed.norm(dim=1), torch.full((50,), width**0.5), rtol=1e-3, atol=0)
    with pytest.raises(ValueError, match="rescales whitened targets only, but distill.norm is layernorm"):
        normalize_features(image_features, "layernorm", "layernorm")
    with pytest.raises(ValueError, match="unknown target scale 'sqrt'; accepted: unit, layernorm"):
        normalize_features(image_features, "whitening", "sqrt")
