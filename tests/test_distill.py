"""Distiller: losses against direct formulas and at their minima, only the head in the module state, accelerate;
KD-DLGAN's terms against the reference code's definitions, every recipe end to end on the tiny random teacher."""
import warnings

import numpy as np

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genkd.config import as_config
from genkd.defaults import DEFAULTS
from genkd.distill import (
    CLASS_NAMES,
    RECIPES,
    DistillError,
    Distiller,
    build_distiller,
    class_prompts,
    paired_loss,
    probability_transfer_loss,
    similarity_preserving_loss,
    soft_label_loss,
)
from genkd.normalize import normalize_features


def distill_cfg(**overrides):
    cfg = as_config(DEFAULTS).distill
    cfg.update({"enabled": True, "teacher": "tiny-vit", "random_teacher": True, **overrides})
    return cfg


def distiller_for(student_dim: int = 256, num_classes: int = 10, **overrides) -> Distiller:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-teacher warning, tested in test_teachers.py
        return build_distiller(distill_cfg(**overrides), student_dim, num_classes)


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
    expected = sum(pt[i][j] * torch.tensor(pt[i][j] / ps[i][j]).log().item() for i in range(5) for j in range(5)) / 25
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
    with pytest.raises(DistillError, match="unknown distillation method 'crd'; accepted: vkd, kd-dlgan, clip-kd, fitnets"):
        distiller_for(method="crd")


# ---- KD-DLGAN, written from cuikaiwen18/KD_DLGAN (biggan_cifar/losses.py, third_party/train_fns.py), row by row


def reference_triplet_reverse(anchor, positive, negative) -> float:
    """KD-DLGAN's TripletLoss_reverse: mean_i ||a_i - p_i||_2 + mean_i ||a_i - n_i||_2 (both terms pull)."""
    rows = range(len(anchor))
    to_positive = sum(sum((a - p) ** 2 for a, p in zip(anchor[i], positive[i])) ** 0.5 for i in rows) / len(anchor)
    to_negative = sum(sum((a - n) ** 2 for a, n in zip(anchor[i], negative[i])) ** 0.5 for i in rows) / len(anchor)
    return to_positive + to_negative


def reference_kd_dlgan_feature_term(student_real, student_fake, teacher_real, teacher_fake) -> float:
    """D_loss_real_reg + D_loss_fake_reg without the text terms, before the weight 10."""
    return reference_triplet_reverse(teacher_real, student_real, student_fake) + reference_triplet_reverse(
        teacher_fake, student_fake, student_real
    )


def test_aggregated_l2_equals_kd_dlgan_reference_terms():
    generator = torch.Generator().manual_seed(0)
    student, target = torch.randn(6, 4, generator=generator), torch.randn(6, 4, generator=generator)
    from genkd.distill import l2_distance_loss

    expected = reference_kd_dlgan_feature_term(student[:3].tolist(), student[3:].tolist(), target[:3].tolist(), target[3:].tolist())
    assert paired_loss(l2_distance_loss, student, target, "aggregated", 3).item() == pytest.approx(expected, rel=1e-6)
    own = sum(((student[i] - target[i]) ** 2).sum().sqrt().item() for i in range(6)) / 6
    assert paired_loss(l2_distance_loss, student, target, "own", None).item() == pytest.approx(own, rel=1e-6)


def test_aggregated_and_own_pairings_differ_as_defined():
    """Aggregated: both halves against both targets (so swapping the target halves changes nothing); own: row i
    against target i only (so it does change)."""
    generator = torch.Generator().manual_seed(1)
    student, target = torch.randn(8, 5, generator=generator), torch.randn(8, 5, generator=generator)
    swapped = torch.cat([target[4:], target[:4]])
    aggregated = paired_loss(F.mse_loss, student, target, "aggregated", 4)
    torch.testing.assert_close(paired_loss(F.mse_loss, student, swapped, "aggregated", 4), aggregated)
    own = paired_loss(F.mse_loss, student, target, "own", 4)
    assert (paired_loss(F.mse_loss, student, swapped, "own", 4) - own).abs() > 0.1
    cross = F.mse_loss(student[:4], target[4:]) + F.mse_loss(student[4:], target[:4])
    torch.testing.assert_close(aggregated, 2 * own + cross)  # the own terms are half-batch means, summed
    with pytest.raises(DistillError, match="equal real and fake halves, got 8 rows and num_real=None"):
        paired_loss(F.mse_loss, student, target, "aggregated", None)
    with pytest.raises(DistillError, match="got 8 rows and num_real=3"):
        paired_loss(F.mse_loss, student, target, "aggregated", 3)


def test_kd_dlgan_recipe_is_the_reference_pipeline(images):
    distiller = distiller_for(method="kd-dlgan", preprocess="clip", head="orthogonal")  # the row ignores both
    assert (distiller.pairing, distiller.loss, distiller.weight, distiller.norm) == ("aggregated", "l2", 10.0, "none")
    assert distiller.teacher.preprocess == "kd-dlgan"
    first, second = distiller.projector
    assert (first.in_features, first.out_features, second.out_features) == (256, 1024, 512)
    assert first.bias is not None and second.bias is not None
    student = torch.randn(12, 256)
    teacher = distiller.teacher(images)
    projected = distiller.projector(student).detach()
    expected = reference_kd_dlgan_feature_term(projected[:6].tolist(), projected[6:].tolist(), teacher[:6].tolist(), teacher[6:].tolist())
    distiller.eval()  # no power iteration: the head's weights stay those used for `projected`
    assert distiller(student, images, num_real=6).item() == pytest.approx(expected, rel=1e-5)


def test_clip_kd_is_kd_dlgan_without_aggregation(images):
    distiller = distiller_for(method="clip-kd")
    assert (distiller.pairing, distiller.loss, distiller.weight, distiller.teacher.preprocess) == ("own", "l2", 10.0, "kd-dlgan")
    distiller.eval()
    student = torch.randn(12, 256)
    expected = (distiller.projector(student) - distiller.teacher(images)).norm(dim=1).mean()
    torch.testing.assert_close(distiller(student, images), expected)


def test_vkd_reads_pairing_target_scale_and_loss_from_the_config(images):
    distiller = distiller_for(pairing="aggregated", target_scale="layernorm", loss="l2", preprocess="kd-dlgan")
    assert distiller.teacher.preprocess == "kd-dlgan" and distiller.weight == 1.0
    student = torch.randn(12, 256)
    target = normalize_features(distiller.teacher(images), "whitening") * 512**0.5  # over the whole real+fake batch
    projected = distiller.projector(student).detach()
    expected = reference_kd_dlgan_feature_term(projected[:6].tolist(), projected[6:].tolist(), target[:6].tolist(), target[6:].tolist())
    assert distiller(student, images, num_real=6).item() == pytest.approx(expected, rel=1e-5)


def test_weight_is_the_recipes_unless_the_config_sets_one():
    assert {method: recipe["weight"] for method, recipe in RECIPES.items()} == {
        "vkd": 1.0, "kd-dlgan": 10.0, "clip-kd": 10.0, "fitnets": 100.0, "spkd": 3000.0, "pkt": 30000.0, "label": 0.9,
    }
    assert distiller_for(method="spkd").weight == 3000.0
    assert distiller_for(method="spkd", weight=2).weight == 2.0


def test_soft_label_loss_against_hintons_formula():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(3, 5, generator=generator), 5 * torch.randn(3, 5, generator=generator)
    expected = 0.0
    for i in range(3):
        ps, pt = F.softmax(student[i] / 4, dim=0), F.softmax(teacher[i] / 4, dim=0)
        expected += sum(pt[c].item() * np.log(pt[c].item() / ps[c].item()) for c in range(5))
    assert soft_label_loss(student, teacher).item() == pytest.approx(16 * expected / 3, rel=1e-5)
    assert soft_label_loss(teacher, teacher) < 1e-6


def test_label_distills_clip_zero_shot_probabilities_into_a_class_head(images):
    distiller = distiller_for(method="label", num_classes=10)
    teacher = distiller.teacher
    assert teacher.prompt_embeddings.shape == (10, 512)
    torch.testing.assert_close(teacher.prompt_embeddings.norm(dim=1), torch.ones(10))
    features = teacher(images)
    cosines = F.normalize(features, dim=1) @ teacher.prompt_embeddings.T
    torch.testing.assert_close(teacher.zero_shot_logits(features), teacher.logit_scale * cosines)
    head = distiller.projector
    assert (head.in_features, head.out_features) == (256, 10) and head.bias is not None
    distiller.eval()
    student = torch.randn(12, 256)
    expected = soft_label_loss(head(student), teacher.zero_shot_logits(features))
    torch.testing.assert_close(distiller(student, images), expected)


def test_class_names_are_the_official_ones(cifar10_npz, cifar100_npz):
    for classes, path in ((10, cifar10_npz), (100, cifar100_npz)):
        with np.load(path) as data:
            assert CLASS_NAMES[classes] == [str(name) for name in data["class_names"]]
    assert class_prompts(10)[:2] == ["a airplane", "a automobile"]  # KD-DLGAN's prompt form
    assert class_prompts(100)[1] == "a aquarium fish"
    with pytest.raises(DistillError, match="CIFAR-10's and CIFAR-100's, not 7 classes"):
        class_prompts(7)


@pytest.mark.parametrize("method", list(RECIPES))
def test_every_recipe_builds_and_gives_a_finite_loss_with_gradients(images, method):
    distiller = distiller_for(method=method)
    student = (10 * torch.randn(12, 256)).requires_grad_()
    loss = distiller(student, images, num_real=6)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in distiller.parameters())


def test_mlp_head_checkpoint_round_trips_through_the_distiller(images):
    torch.manual_seed(0)
    saved = distiller_for(method="kd-dlgan")
    for _ in range(3):  # training-mode calls advance the spectral-norm power iteration (buffers u, v)
        saved(torch.randn(12, 256), images, num_real=6)
    torch.manual_seed(1)
    restored = distiller_for(method="kd-dlgan")
    restored.load_state_dict(saved.state_dict())
    assert any(key.endswith("_u") for key in saved.state_dict())
    saved.eval(), restored.eval()
    student = torch.randn(5, 256)
    torch.testing.assert_close(restored.projector(student), saved.projector(student))


def test_config_knows_the_new_methods_and_rejects_a_bad_weight():
    from genkd.config import ConfigError
    from genkd.defaults import gan_config

    cfg = gan_config(["--distill.method", "kd-dlgan", "--distill.pairing", "aggregated", "--distill.head", "mlp"])
    assert cfg.distill.weight is None and cfg.distill.target_scale == "unit"
    assert gan_config(["--distill.weight", "10"]).distill.weight == 10
    with pytest.raises(ConfigError, match="bad value for 'distill.weight': 'ten'"):
        gan_config(["--distill.weight", "ten"])
    with pytest.raises(ConfigError, match="bad value for 'distill.pairing'"):
        gan_config(["--distill.pairing", "cross"])
