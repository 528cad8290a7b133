"""Distiller: losses against direct formulas and at their minima, only the projector in the module state, accelerate."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genkd.config import as_config
from genkd.defaults import DEFAULTS
from genkd.distill import Distiller, build_distiller, probability_transfer_loss, similarity_preserving_loss
from genkd.normalize import normalize_features


def distill_cfg(**overrides):
    cfg = as_config(DEFAULTS).distill
    cfg.update({"enabled": True, "teacher": "tiny-vit", "random_teacher": True, **overrides})
    return cfg


def distiller_for(student_dim: int = 256, **overrides) -> Distiller:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-teacher warning, tested in test_teachers.py
        return build_distiller(distill_cfg(**overrides), student_dim)


@pytest.fixture(scope="module")
def images(cifar10_arrays):
    """12 real CIFAR-10 test images as the discriminator sees them: float (12, 3, 32, 32) in [-1, 1]."""
    return torch.from_numpy(cifar10_arrays[2][:12]).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_disabled_gives_none():
    assert build_distiller(distill_cfg(enabled=False), 256) is None


def test_state_holds_only_the_projector_and_moves_reach_the_teacher():
    distiller = distiller_for()
    assert set(distiller.state_dict()) == {f"projector.{key}" for key in distiller.projector.state_dict()}
    assert not any("teacher" in key or "encoder" in key for key in distiller.state_dict())
    assert {id(p) for p in distiller.parameters()} == {id(p) for p in distiller.projector.parameters()}
    distiller.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in distiller.teacher.parameters())
    assert distiller.projector.weight.dtype == torch.float64
    distiller.train()
    assert not distiller.teacher.training
    restored = distiller_for()
    restored.load_state_dict(distiller.float().state_dict())
    torch.testing.assert_close(restored.projector.weight, distiller.projector.weight)


def test_vkd_default_recipe_on_real_images(images):
    torch.manual_seed(0)
    distiller = distiller_for()
    assert distiller.norm == "whitening" and distiller.loss == "mse"
    weight = distiller.projector.weight
    torch.testing.assert_close(weight.T @ weight, torch.eye(256), atol=1e-4, rtol=0)  # 256 -> 512, orthogonal
    student = torch.randn(12, 256, requires_grad=True)
    loss = distiller(student, images)
    target = normalize_features(distiller.teacher(images), "whitening")
    torch.testing.assert_close(loss, ((student @ weight.T - target) ** 2).mean())
    loss.backward()
    assert student.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.parameters())
    assert all(p.grad is None for p in distiller.teacher.parameters())


@pytest.mark.parametrize("loss", ["mse", "smooth_l1"])
def test_vkd_loss_vanishes_when_the_student_reproduces_the_whitened_teacher(images, loss):
    """Square orthogonal projector y = x W^T: the student x = T W lands exactly on the whitened target T."""
    distiller = distiller_for(512, loss=loss)
    target = normalize_features(distiller.teacher(images), "whitening")
    weight = distiller.projector.weight.detach()
    assert distiller(target @ weight, images) < 1e-10
    assert distiller(target @ weight + 0.1 * torch.randn(12, 512), images) > 1e-3


def test_similarity_preserving_loss_against_its_formula():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 7, generator=generator), torch.randn(5, 11, generator=generator)
    expected = 0.0
    student_gram, teacher_gram = student @ student.T, teacher @ teacher.T
    for i in range(5):
        difference = student_gram[i] / student_gram[i].norm() - teacher_gram[i] / teacher_gram[i].norm()
        expected += (difference**2).sum().item()
    assert similarity_preserving_loss(student, teacher).item() == pytest.approx(expected / 25, rel=1e-5)
    assert similarity_preserving_loss(3 * teacher, teacher) < 1e-10  # only the batch geometry counts
    assert similarity_preserving_loss(student, teacher) > 1e-3


def test_probability_transfer_loss_against_its_formula():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 7, generator=generator), torch.randn(5, 11, generator=generator)

    def conditional(x):
        p = [[(1 + F.cosine_similarity(x[i], x[j], dim=0).item()) / 2 for j in range(5)] for i in range(5)]
        return [[value / sum(row) for value in row] for row in p]

    ps, pt = conditional(student), conditional(teacher)
    expected = sum(pt[i][j] * torch.tensor(pt[i][j] / ps[i][j]).log().item() for i in range(5) for j in range(5)) / 5
    assert probability_transfer_loss(student, teacher).item() == pytest.approx(expected, rel=1e-4)
    assert probability_transfer_loss(2 * teacher, teacher) < 1e-6
    assert probability_transfer_loss(student, teacher) > 1e-3


@pytest.mark.parametrize("method, loss", [("spkd", similarity_preserving_loss), ("pkt", probability_transfer_loss)])
def test_relational_baselines_compare_raw_features_without_projector(images, method, loss):
    distiller = distiller_for(method=method)
    assert isinstance(distiller.projector, nn.Identity) and list(distiller.parameters()) == []
    student = torch.randn(12, 256)
    torch.testing.assert_close(distiller(student, images), loss(student, distiller.teacher(images)))


def test_fitnets_is_linear_projector_on_raw_features(images):
    distiller = distiller_for(method="fitnets")
    assert type(distiller.projector) is nn.Linear and distiller.norm == "none"
    student = torch.randn(12, 256)
    expected = ((distiller.projector(student) - distiller.teacher(images)) ** 2).mean()
    torch.testing.assert_close(distiller(student, images), expected)


def test_projector_prepared_by_accelerate_keeps_working(images):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    distiller = distiller_for()
    keys = set(distiller.state_dict())
    try:
        accelerator = Accelerator(cpu=True)
        distiller.projector = accelerator.prepare(distiller.projector)
        loss = distiller(torch.randn(12, 256), images)
        accelerator.backward(loss)
    finally:
        AcceleratorState._reset_state(True)
    assert torch.isfinite(loss) and set(distiller.state_dict()) == keys
    assert all(p.grad is not None for p in distiller.parameters())


def test_bad_method():
    with pytest.raises(ValueError, match="unknown distillation method 'crd'; accepted: vkd, fitnets, spkd, pkt"):
        distiller_for(method="crd")
