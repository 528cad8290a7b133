"""Projectors: exact orthogonality (before and after training steps), preserved inner products, gradients, errors."""
import pytest
import torch
from torch import nn

from torch.nn.utils import parametrize

from genkd.projectors import build_projector

SHAPES = {"tall": (16, 40), "wide": (40, 16), "square": (24, 24)}  # (in_dim, out_dim)


def orthogonality_error(weight: torch.Tensor) -> float:
    """max |W^T W - I| for orthonormal columns (out >= in, nn.Linear weights are (out, in)), else |W W^T - I|."""
    gram = weight.T @ weight if weight.shape[0] >= weight.shape[1] else weight @ weight.T
    return (gram - torch.eye(len(gram))).abs().max().item()


@pytest.mark.parametrize("orthogonal_map", ["matrix_exp", "cayley"])
@pytest.mark.parametrize("shape", SHAPES)
def test_orthogonal_projector_stays_orthogonal_while_training(shape, orthogonal_map):
    in_dim, out_dim = SHAPES[shape]
    torch.manual_seed(0)
    projector = build_projector("orthogonal", in_dim, out_dim, orthogonal_map)
    initial = projector.weight.detach().clone()
    assert initial.shape == (out_dim, in_dim)
    assert orthogonality_error(initial) < 1e-5
    optimizer = torch.optim.Adam(projector.parameters(), lr=0.05)
    for _ in range(5):
        x, target = torch.randn(8, in_dim), torch.randn(8, out_dim)
        loss = (projector(x) - target).square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained = projector.weight.detach()
    assert (trained - initial).abs().max() > 0.05  # it did move ...
    assert orthogonality_error(trained) < 1e-5  # ... and stayed on the manifold


def test_tall_orthogonal_projector_preserves_inner_products():
    torch.manual_seed(0)
    projector = build_projector("orthogonal", 16, 40)
    x = torch.randn(10, 16)
    y = projector(x)
    assert y.shape == (10, 40)
    torch.testing.assert_close(y @ y.T, x @ x.T, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "orthogonal"])
def test_gradients_reach_projector_parameters(kind):
    torch.manual_seed(0)
    projector = build_projector(kind, 16, 40)
    projector(torch.randn(6, 16)).square().sum().backward()
    grads = [p.grad for p in projector.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_orthogonal_init_is_random_orthogonal_and_reproducible():
    torch.manual_seed(0)
    first = build_projector("orthogonal", 16, 40).weight.detach()
    torch.manual_seed(0)
    again = build_projector("orthogonal", 16, 40).weight.detach()
    torch.manual_seed(1)
    other = build_projector("orthogonal", 16, 40).weight.detach()
    torch.testing.assert_close(first, again)
    assert (first - other).abs().max() > 0.1
    assert not torch.allclose(first[:16], torch.eye(16), atol=0.1)  # not a slice of the identity


def test_orthogonal_projector_state_dict_round_trip():
    """The parametrization's random base is a buffer: a checkpoint must bring back the same matrix."""
    torch.manual_seed(0)
    saved = build_projector("orthogonal", 16, 40)
    torch.manual_seed(1)
    restored = build_projector("orthogonal", 16, 40)
    restored.load_state_dict(saved.state_dict())
    torch.testing.assert_close(restored.weight, saved.weight)


def test_linear_and_identity_projectors():
    linear = build_projector("linear", 16, 40)
    assert isinstance(linear, nn.Linear) and linear.bias is None and linear.weight.shape == (40, 16)
    identity = build_projector("identity", 16, 16)
    x = torch.randn(3, 16)
    assert identity(x) is x
    assert list(identity.parameters()) == []


def test_projector_errors():
    with pytest.raises(ValueError, match="identity projector needs equal widths, got student 256 and teacher 512"):
        build_projector("identity", 256, 512)
    with pytest.raises(ValueError, match="unknown projector 'conv'; accepted: identity, linear, orthogonal, mlp"):
        build_projector("conv", 4, 4)
    with pytest.raises(ValueError, match="unknown orthogonal map 'householder'; accepted: matrix_exp, cayley"):
        build_projector("orthogonal", 4, 8, "householder")


def test_mlp_head_is_kd_dlgans_two_spectrally_normalised_affine_maps():
    """SN linear 256 -> 1024 -> 512 with biases and nothing between (KD-DLGAN's linear_cls_1 / linear_cls_2)."""
    torch.manual_seed(0)
    head = build_projector("mlp", 256, 512)
    first, second = head
    assert (first.weight.shape, second.weight.shape) == ((1024, 256), (512, 1024))
    assert first.bias.shape == (1024,) and second.bias.shape == (512,)
    for layer in head:
        assert parametrize.is_parametrized(layer, "weight")
        assert type(layer.parametrizations.weight[0]).__name__ == "_SpectralNorm"
        assert layer.parametrizations.weight.original.std().item() == pytest.approx(0.02, rel=0.05)  # N02 init
    x = 10 * torch.randn(8, 256)
    for _ in range(300):  # training-mode calls run the power iteration: sigma converges to the top singular value
        head(x)
    head.eval()
    for layer in head:
        assert torch.linalg.matrix_norm(layer.weight.detach(), ord=2).item() == pytest.approx(1.0, abs=1e-3)
    affine = (x @ first.weight.T + first.bias) @ second.weight.T + second.bias  # no activation: negatives pass
    torch.testing.assert_close(head(x), affine)


def test_mlp_head_state_dict_round_trip():
    """The spectral-norm power-iteration vectors are buffers: a checkpoint brings back the same normalised weights."""
    torch.manual_seed(0)
    saved = build_projector("mlp", 16, 40)
    for _ in range(3):
        saved(torch.randn(8, 16))
    torch.manual_seed(1)
    restored = build_projector("mlp", 16, 40)
    restored.load_state_dict(saved.state_dict())
    saved.eval(), restored.eval()
    x = torch.randn(5, 16)
    torch.testing.assert_close(restored(x), saved(x))
