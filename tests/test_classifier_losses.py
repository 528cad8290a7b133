"""Classifier-track distillation losses: direct formulas, minima at student == teacher, gradients, VRM graphs and
pruning, MLDR-KD relations, the registry, and the VRM paper's pilot experiment (spurious gradients of relation
matching).
"""
import inspect
import math
from collections import namedtuple
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genkd.classifier.losses import LOSS_DEFAULTS, LOSS_METHODS, build_classifier_loss
from genkd.classifier.losses.base import kd_divergence
from genkd.classifier.losses.logit import DIST, DKD, KD, CrossEntropy, decoupled_kd
from genkd.classifier.losses.mldr import MLDRKD, class_relations, dfra, relation_kl, sample_relations
from genkd.classifier.losses.vkd import VkD
from genkd.classifier.losses.vrm import VRM, edge_entropy, relation_edges, reliable_edges

Outputs = namedtuple("Outputs", "logits pooled stages")
NUM_CLASSES = 10
STAGE_CHANNELS = [8, 16, 32]
STAGE_SIZES = [16, 8, 4]


def random_outputs(batch=6, num_classes=NUM_CLASSES, feature_dim=16, seed=0, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(batch, num_classes, generator=generator)
    pooled = torch.randn(batch, feature_dim, generator=generator)
    stages = [torch.randn(batch, c, s, s, generator=generator) for c, s in zip(STAGE_CHANNELS, STAGE_SIZES)]
    for tensor in [logits, pooled, *stages]:
        tensor.requires_grad_(requires_grad)
    return Outputs(logits, pooled, stages)


def labels_for(batch, num_classes=NUM_CLASSES, seed=0):
    return torch.randint(0, num_classes, (batch,), generator=torch.Generator().manual_seed(seed))


class TinyStudent(torch.nn.Module):
    """Stands in for a zoo model: outputs shaped like random_outputs (3 stages at 16, 8 and 4 pixels)."""

    feature_dim, stage_channels = 16, STAGE_CHANNELS

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, images):
        stages = [self.scale * torch.zeros(len(images), c, s, s) for c, s in zip(STAGE_CHANNELS, STAGE_SIZES)]
        return Outputs(torch.zeros(len(images), NUM_CLASSES), torch.zeros(len(images), 16), stages)


def build(method, **knobs):
    teacher = SimpleNamespace(feature_dim=24)
    return build_classifier_loss({"method": method, method: knobs}, TinyStudent(), teacher, NUM_CLASSES)


def distill_terms(terms):
    return {name: value for name, value in terms.items() if name != "ce"}


# --- registry --------------------------------------------------------------------------------------------------------


def test_defaults_are_exactly_the_constructor_knobs():
    """LOSS_DEFAULTS is the single list of knobs: every one reaches the module, none is missing."""
    classes = {"ce": CrossEntropy, "kd": KD, "dist": DIST, "dkd": DKD, "vkd": VkD, "vrm": VRM, "mldr": MLDRKD}
    assert set(classes) == set(LOSS_METHODS)
    structural = {"student_dim", "teacher_dim", "stage_channels", "stage_sizes", "num_classes"}
    for method, cls in classes.items():
        parameters = set(inspect.signature(cls.__init__).parameters) - {"self"} - structural
        assert parameters == set(LOSS_DEFAULTS[method]), method


def test_registry_builds_every_method_and_applies_overrides():
    for method in LOSS_METHODS:
        assert isinstance(build(method), torch.nn.Module)
    assert build("dkd", beta=6.0).beta == 6.0 and build("dkd").beta == 8.0
    assert build("kd").temperature == 4.0
    mldr = build("mldr")
    assert mldr.gate[0].in_features == 24 and mldr.gate[0].out_features == 4 * NUM_CLASSES  # the "auto" sizes
    assert build("mldr", project_dim=12).gate[0].in_features == 12


def test_registry_errors_are_actionable():
    with pytest.raises(ValueError, match="unknown distillation method 'fitnet'; accepted: ce, kd, dist, dkd, vkd"):
        build("fitnet")
    with pytest.raises(ValueError, match="unknown knob.*temprature.*accepted: temperature, ce_weight, kd_weight"):
        build("kd", temprature=2.0)
    with pytest.raises(ValueError, match="needs a teacher model"):
        build_classifier_loss({"method": "kd"}, SimpleNamespace(), None, NUM_CLASSES)
    with pytest.raises(ValueError, match=r"keep_ratio must be in \(0, 1\]"):
        build("vrm", keep_ratio=0.0)
    assert isinstance(build_classifier_loss({"method": "ce"}, SimpleNamespace(), None, NUM_CLASSES), CrossEntropy)


def test_trainer_flags():
    assert not build("ce").needs_teacher and build("kd").needs_teacher
    assert build("vrm").needs_virtual_view and not build("dkd").needs_virtual_view


# --- logit losses against direct formulas ----------------------------------------------------------------------------


def test_kd_matches_the_direct_formula():
    s, t = random_outputs(seed=1).logits, random_outputs(seed=2).logits
    temperature = 4.0
    p_s, p_t = F.softmax(s / temperature, 1).double(), F.softmax(t / temperature, 1).double()
    direct = np.mean([sum(p_t[i, c] * math.log(p_t[i, c] / p_s[i, c]) for c in range(NUM_CLASSES)) for i in range(6)])
    assert kd_divergence(s, t, temperature).item() == pytest.approx(direct * temperature**2, rel=1e-5)
    labels = labels_for(6)
    terms = build("kd")(Outputs(s, None, None), Outputs(t, None, None), labels)
    assert terms["kd"].item() == pytest.approx(0.9 * direct * 16, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(0.1 * F.cross_entropy(s, labels).item(), rel=1e-6)


def test_dkd_matches_direct_formulas_and_decomposes_kd():
    """TCKD/NCKD by explicit binary and renormalised probabilities, and the paper's identity
    KD = TCKD + (1 - p_teacher[target]) * NCKD, per sample."""
    batch, temperature = 6, 4.0
    s, t, labels = random_outputs(seed=3).logits, random_outputs(seed=4).logits, labels_for(batch, seed=5)
    p_s, p_t = F.softmax(s.double() / temperature, 1), F.softmax(t.double() / temperature, 1)
    tckd, nckd, kd = [], [], []
    for i, target in enumerate(labels.tolist()):
        b_s = torch.stack([p_s[i, target], 1 - p_s[i, target]])
        b_t = torch.stack([p_t[i, target], 1 - p_t[i, target]])
        tckd.append((b_t * (b_t / b_s).log()).sum())
        others = [c for c in range(NUM_CLASSES) if c != target]
        q_s, q_t = p_s[i, others] / (1 - p_s[i, target]), p_t[i, others] / (1 - p_t[i, target])
        nckd.append((q_t * (q_t / q_s).log()).sum())
        kd.append((p_t[i] * (p_t[i] / p_s[i]).log()).sum())
        assert kd[-1].item() == pytest.approx((tckd[-1] + (1 - p_t[i, target]) * nckd[-1]).item(), rel=1e-9)
    got_tckd, got_nckd = decoupled_kd(s, t, labels, temperature)
    assert got_tckd.item() == pytest.approx(torch.stack(tckd).mean().item() * temperature**2, rel=1e-4)
    assert got_nckd.item() == pytest.approx(torch.stack(nckd).mean().item() * temperature**2, rel=1e-4)


def test_dkd_warmup_ramps_linearly_over_20_epochs():
    s, t, labels = random_outputs(seed=3), random_outputs(seed=4), labels_for(6)
    dkd = build("dkd")
    full = dkd(s, t, labels, epoch=19)
    assert full["nckd"].item() == pytest.approx(dkd(s, t, labels, epoch=200)["nckd"].item())
    for epoch in (0, 9):
        ramped = dkd(s, t, labels, epoch=epoch)
        for name in ("tckd", "nckd"):
            assert ramped[name].item() == pytest.approx(full[name].item() * (epoch + 1) / 20, rel=1e-6)
        assert ramped["ce"].item() == pytest.approx(full["ce"].item())  # CE is never ramped
    assert build("dkd", warmup_epochs=0)(s, t, labels, epoch=0)["nckd"].item() == pytest.approx(full["nckd"].item())


def test_dist_matches_numpy_correlations():
    s, t, labels = random_outputs(seed=6).logits, random_outputs(seed=7).logits, labels_for(6)
    temperature = 4.0
    p_s, p_t = F.softmax(s / temperature, 1).numpy(), F.softmax(t / temperature, 1).numpy()
    inter = 1 - np.mean([np.corrcoef(p_s[i], p_t[i])[0, 1] for i in range(6)])
    intra = 1 - np.mean([np.corrcoef(p_s[:, c], p_t[:, c])[0, 1] for c in range(NUM_CLASSES)])
    terms = build("dist")(Outputs(s, None, None), Outputs(t, None, None), labels)
    assert terms["inter_class"].item() == pytest.approx(2 * 16 * inter, rel=1e-4)
    assert terms["intra_class"].item() == pytest.approx(2 * 16 * intra, rel=1e-4)


# --- every distillation term is at its minimum when the student equals the teacher ------------------------------------


@pytest.mark.parametrize("method", ["kd", "dist", "dkd", "vrm", "mldr"])
def test_distillation_terms_vanish_when_student_equals_teacher(method):
    outputs, virtual = random_outputs(seed=8), random_outputs(seed=9)
    loss = build(method)
    terms = loss(outputs, outputs, labels_for(6), epoch=30, virtual=(virtual, virtual))
    if method == "mldr":  # its stage heads are untrained, so only the final-logit term is at its minimum
        terms = {"logit_distill": terms["logit_distill"]}
    for name, value in distill_terms(terms).items():
        assert abs(value.item()) < 1e-4, name  # float32 rounding (DIST: 1 - correlation, times 2T^2 = 32)
    other, other_virtual = random_outputs(seed=10), random_outputs(seed=11)
    different = loss(outputs, other, labels_for(6), epoch=30, virtual=(virtual, other_virtual))
    assert all(value.item() > 1e-3 for value in distill_terms(different).values())


def test_vkd_feature_term_vanishes_on_standardised_teacher_features():
    """With an identity projector the feature target is the teacher's per-sample standardised features."""
    teacher = random_outputs(seed=12, feature_dim=24)
    standardised = F.layer_norm(teacher.pooled, (24,))
    vkd = VkD(24, 24, **{**LOSS_DEFAULTS["vkd"], "projector": "identity"})
    student = Outputs(teacher.logits, standardised, teacher.stages)
    assert vkd(student, teacher, labels_for(6))["feature"].item() < 1e-6
    assert vkd(Outputs(teacher.logits, teacher.pooled, None), teacher, labels_for(6))["feature"].item() > 1e-3


# --- gradients reach the student and the trainable parts, never the teacher -------------------------------------------


@pytest.mark.parametrize("method", LOSS_METHODS)
def test_gradients_reach_student_and_trainable_parts_only(method):
    student, teacher = random_outputs(seed=13, requires_grad=True), random_outputs(seed=14, feature_dim=24)
    teacher = Outputs(*(x.requires_grad_() for x in teacher[:2]), teacher.stages)
    student_virtual = random_outputs(seed=15, requires_grad=True)
    loss = build(method)
    terms = loss(student, teacher, labels_for(6), epoch=30, virtual=(student_virtual, random_outputs(seed=16)))
    assert all(value.dim() == 0 for value in terms.values())
    sum(terms.values()).backward()
    assert student.logits.grad is not None and student.logits.grad.abs().sum() > 0
    assert teacher.logits.grad is None and teacher.pooled.grad is None
    if method == "vrm":
        assert student_virtual.logits.grad.abs().sum() > 0
    if method == "vkd":
        assert student.pooled.grad.abs().sum() > 0
    if method == "mldr":
        assert all(stage.grad.abs().sum() > 0 for stage in student.stages)
    trainable = list(loss.parameters())
    assert bool(trainable) == (method in ("vkd", "mldr"))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable if p.requires_grad)


# --- VRM graphs and pruning -------------------------------------------------------------------------------------------


def test_vrm_edges_equal_the_loop_definition_and_the_pruned_full_graph():
    real, virtual = random_outputs(batch=4, seed=17).logits, random_outputs(batch=4, seed=18).logits
    edges = relation_edges(real, virtual)
    assert edges.shape == (4, 4, NUM_CLASSES)
    for m in range(4):
        for n in range(4):
            difference = real[m] - virtual[n]
            assert torch.allclose(edges[m, n], difference / difference.norm(), atol=1e-6)
    # The full graph over the 2B stacked predictions is antisymmetric (half of it is redundant) and its
    # real-to-virtual block is exactly the kept tensor.
    stacked = torch.cat([real, virtual])
    full = torch.stack([torch.stack([F.normalize(a - b, dim=0) for b in stacked]) for a in stacked])
    assert full.shape == (8, 8, NUM_CLASSES)
    assert torch.allclose(full, -full.transpose(0, 1), atol=1e-6)
    assert torch.allclose(full[:4, 4:], edges, atol=1e-6)
    # Inter-class graph: the same over logit columns, C x C x B.
    class_edges = relation_edges(real.T, virtual.T)
    assert class_edges.shape == (NUM_CLASSES, NUM_CLASSES, 4)
    difference = real[:, 2] - virtual[:, 5]
    assert torch.allclose(class_edges[2, 5], difference / difference.norm(), atol=1e-6)


def test_vrm_edge_entropy_equals_the_loop_definition():
    real, virtual = random_outputs(batch=4, seed=19).logits, random_outputs(batch=4, seed=20).logits
    p, q = F.softmax(real.double(), 1), F.softmax(virtual.double(), 1)
    entropy = edge_entropy(real, virtual)
    for m in range(4):
        for n in range(4):
            both_ways = -(p[m] * q[n].log()).sum() - (q[n] * p[m].log()).sum()
            assert entropy[m, n].item() == pytest.approx(both_ways.item(), rel=1e-5)


@pytest.mark.parametrize("keep_ratio", [1.0, 0.8, 0.5, 0.05])
def test_vrm_pruning_keeps_exactly_the_configured_share_of_lowest_entropy_edges(keep_ratio):
    entropy = torch.rand(8, 8, generator=torch.Generator().manual_seed(21))
    keep = reliable_edges(entropy, keep_ratio)
    assert keep.sum().item() == round(keep_ratio * 64)
    if keep_ratio < 1.0:
        assert entropy[keep].max() < entropy[~keep].min()


def test_vrm_gradient_stays_moderate_when_the_two_views_coincide():
    """Identical views make the diagonal (inter-view) edges zero differences, whose direction is undefined."""
    teacher, teacher_virtual = random_outputs(seed=26), random_outputs(seed=27)
    student = random_outputs(seed=28, requires_grad=True)
    sum(build("vrm")(student, teacher, labels_for(6), virtual=(student, teacher_virtual)).values()).backward()
    assert torch.isfinite(student.logits.grad).all() and student.logits.grad.abs().max() < 10


def test_vrm_without_a_virtual_view_says_what_to_pass():
    outputs = random_outputs()
    with pytest.raises(ValueError, match="virtual=\\(student_outputs_on_view, teacher_outputs_on_view\\)"):
        build("vrm")(outputs, outputs, labels_for(6))


# --- MLDR-KD relations and fusion -------------------------------------------------------------------------------------


def test_mldr_relations_shapes_and_direct_definition():
    logits = random_outputs(batch=5, seed=22).logits
    by_class, by_sample = class_relations(logits), sample_relations(logits)
    assert by_class.shape == (5, NUM_CLASSES, NUM_CLASSES) and by_sample.shape == (NUM_CLASSES, 5, 5)
    scale = 1 / math.sqrt(NUM_CLASSES)
    for i in range(5):
        assert torch.allclose(by_class[i], torch.outer(logits[i], logits[i]) * scale)
    for c in range(NUM_CLASSES):
        assert torch.allclose(by_sample[c], torch.outer(logits[:, c], logits[:, c]) * scale)


def test_mldr_relation_kl_is_the_mean_kl_of_column_distributions():
    student, teacher = torch.randn(3, 4, 4, dtype=torch.float64), torch.randn(3, 4, 4, dtype=torch.float64)
    kls = []
    for b in range(3):
        for column in range(4):
            p_t, p_s = F.softmax(teacher[b, :, column], 0), F.softmax(student[b, :, column], 0)
            kls.append((p_t * (p_t / p_s).log()).sum())
    assert relation_kl(student, teacher).item() == pytest.approx(torch.stack(kls).mean().item(), rel=1e-10)


def test_mldr_dfra_combines_both_relations_and_lambda_times_probability_kl():
    s, t = random_outputs(seed=23).logits, random_outputs(seed=24).logits
    class_part = relation_kl(class_relations(s / 2), class_relations(t / 2))
    sample_part = relation_kl(sample_relations(s / 2), sample_relations(t / 2))
    probability_part = kd_divergence(s, t, 2.0) / 4  # KD without its T^2 factor
    assert dfra(s, t, 2.0, 3.0).item() == pytest.approx((class_part + sample_part + 3 * probability_part).item(), 1e-5)


def test_mldr_stage_heads_reach_the_last_stage_resolution_of_zoo_models(cifar10_arrays):
    """Heads are sized by a dry run of the real student (VGG's last two stages share a resolution, so "one stride-2
    step per later stage" would be wrong): every head must end at the last stage's size."""
    from genkd.classifier.models import build_model

    images = torch.from_numpy(cifar10_arrays[0][:2]).permute(0, 3, 1, 2).float() / 127.5 - 1
    labels = torch.from_numpy(cifar10_arrays[1][:2])
    teacher = build_model("resnet20", NUM_CLASSES).eval()
    for name in ("resnet20", "vgg8"):
        student = build_model(name, NUM_CLASSES)
        loss = build_classifier_loss({"method": "mldr"}, student, teacher, NUM_CLASSES)
        assert student.training  # the dry run restored the mode
        outputs = student(images)
        last_size = outputs.stages[-1].shape[-1]
        for head, stage in zip(loss.stage_heads, outputs.stages):
            assert head.body(stage).shape[1:] == (max(student.feature_dim, teacher.feature_dim), last_size, last_size)
        with torch.no_grad():
            teacher_outputs = teacher(images)
        sum(loss(outputs, teacher_outputs, labels).values()).backward()
        assert all(p.grad is not None for p in loss.parameters()), name


def test_mldr_fusion_is_a_per_class_convex_combination_of_stage_logits():
    mldr = build("mldr").eval()
    per_stage, fused = mldr.stage_logits(random_outputs(seed=25).stages)
    assert len(per_stage) == 3 and all(logits.shape == (6, NUM_CLASSES) for logits in per_stage)
    stacked = torch.stack(per_stage)
    assert bool((fused >= stacked.min(0).values - 1e-6).all() and (fused <= stacked.max(0).values + 1e-6).all())
    with pytest.raises(ValueError, match="built for 3 student stages of shape"):
        mldr.stage_logits(random_outputs().stages[:2])


# --- the VRM paper's pilot experiment ---------------------------------------------------------------------------------


def test_pilot_spurious_gradients_kd_vs_relation_matching_vs_vrm():
    """64 teacher predictions, the student equal to the teacher except one sample replaced by a noisy copy.
    KD: only that sample gets a gradient. Relation matching (no pruning): every sample does. VRM's edge pruning
    removes the spurious inter-sample gradients and shrinks the spread of the whole relational loss."""
    torch.manual_seed(0)
    batch, num_classes, noisy = 64, 100, 7
    teacher_real = 3 * torch.randn(batch, num_classes)
    teacher_virtual = teacher_real + torch.randn(batch, num_classes)
    student_real, student_virtual = teacher_real.clone(), teacher_virtual.clone()
    student_real[noisy] += 20 * torch.randn(num_classes)
    student_virtual[noisy] += 20 * torch.randn(num_classes)
    labels = torch.randint(0, num_classes, (batch,))

    def per_sample_gradient(loss, **knobs):
        real, virtual = student_real.clone().requires_grad_(), student_virtual.clone().requires_grad_()
        terms = loss(
            Outputs(real, None, None),
            Outputs(teacher_real, None, None),
            labels,
            virtual=(Outputs(virtual, None, None), Outputs(teacher_virtual, None, None)),
        )
        sum(distill_terms(terms).values()).backward()
        return real.grad.norm(dim=1) + (virtual.grad.norm(dim=1) if virtual.grad is not None else 0)

    others = torch.arange(batch) != noisy
    kd = per_sample_gradient(KD(**LOSS_DEFAULTS["kd"]))
    assert kd[noisy] > 1e-2 and kd[others].max() < 1e-6 * kd[noisy]

    def vrm(keep_ratio, inter_class_weight=32.0):
        knobs = {**LOSS_DEFAULTS["vrm"], "keep_ratio": keep_ratio, "inter_class_weight": inter_class_weight}
        return per_sample_gradient(VRM(**knobs))

    plain = vrm(keep_ratio=1.0)
    noticeable = 0.01 * plain.max()
    assert (plain > noticeable).all()  # every sample is moved by the one spurious prediction
    assert plain[others].min() > 0.03 * plain[noisy]

    plain_inter_sample, pruned_inter_sample = vrm(1.0, inter_class_weight=0.0), vrm(0.8, inter_class_weight=0.0)
    assert (plain_inter_sample > noticeable).sum() == batch
    assert (pruned_inter_sample > noticeable).sum() == 0  # every edge touching the noisy sample was pruned

    pruned = vrm(keep_ratio=0.8)
    assert pruned[others].mean() < 0.5 * plain[others].mean()
    assert pruned.var() < 0.25 * plain.var()


# --- VRM knobs: each changes the loss as its definition says ----------------------------------------------------------


def vrm_batch(batch=6):
    student, teacher = random_outputs(batch, seed=40), random_outputs(batch, seed=41)
    student_virtual, teacher_virtual = random_outputs(batch, seed=42), random_outputs(batch, seed=43)
    return student, teacher, labels_for(batch), (student_virtual, teacher_virtual)


def vrm_terms(**knobs):
    student, teacher, labels, virtual = vrm_batch()
    return build("vrm", **knobs)(student, teacher, labels, virtual=virtual)


def huber(a, b):
    return F.smooth_l1_loss(a, b, reduction="none")


def standardized_views():
    student, teacher, _, (student_virtual, teacher_virtual) = vrm_batch()
    z = [(x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-6)
         for x in (student.logits, student_virtual.logits, teacher.logits, teacher_virtual.logits)]
    return z, student.logits, student_virtual.logits


def test_vrm_joint_entropy_is_the_sum_of_the_two_vertex_entropies():
    real, virtual = random_outputs(batch=4, seed=44).logits, random_outputs(batch=4, seed=45).logits
    p, q = F.softmax(real.double(), 1), F.softmax(virtual.double(), 1)
    joint = edge_entropy(real, virtual, "joint")
    for m in range(4):
        for n in range(4):
            product = torch.outer(p[m], q[n])  # the joint distribution of two independent predictions
            assert joint[m, n].item() == pytest.approx(-(product * product.log()).sum().item(), rel=1e-5)
    assert not torch.allclose(joint, edge_entropy(real, virtual, "cross"))


def test_vrm_entropy_knob_changes_which_edges_are_matched():
    (s, sv, t, tv), raw_real, raw_virtual = standardized_views()
    for kind in ("cross", "joint"):
        keep = reliable_edges(edge_entropy(raw_real, raw_virtual, kind), 0.5)
        expected = 128 * huber(relation_edges(s, sv)[keep], relation_edges(t, tv)[keep]).mean()
        assert vrm_terms(entropy=kind, keep_ratio=0.5)["inter_sample"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert vrm_terms(entropy="cross", keep_ratio=0.5)["inter_sample"] != vrm_terms(entropy="joint", keep_ratio=0.5)["inter_sample"]


def test_vrm_edge_sum_reduction_scales_each_term_by_its_edge_length():
    mean, edge_sum = vrm_terms(), vrm_terms(reduction="edge_sum")
    assert edge_sum["inter_sample"].item() == pytest.approx(NUM_CLASSES * mean["inter_sample"].item(), rel=1e-5)
    assert edge_sum["inter_class"].item() == pytest.approx(6 * mean["inter_class"].item(), rel=1e-5)  # batch 6
    assert edge_sum["ce"] == mean["ce"]


def test_vrm_inter_class_layouts_follow_their_definitions():
    (s, sv, t, tv), _, _ = standardized_views()
    cross = 32 * huber(relation_edges(s.T, sv.T), relation_edges(t.T, tv.T)).mean()
    within = 32 * torch.cat([huber(relation_edges(a.T, a.T), relation_edges(b.T, b.T)).flatten()
                             for a, b in ((s, t), (sv, tv))]).mean()
    assert vrm_terms()["inter_class"].item() == pytest.approx(cross.item(), rel=1e-5)
    assert vrm_terms(inter_class_layout="within_view")["inter_class"].item() == pytest.approx(within.item(), rel=1e-5)


def test_vrm_inter_class_sample_pruning_drops_the_components_of_unreliable_samples():
    (s, sv, t, tv), raw_real, raw_virtual = standardized_views()
    reliable = reliable_edges(edge_entropy(raw_real, raw_virtual).diagonal(), 0.5)
    assert reliable.sum() == 3
    expected = 32 * huber(relation_edges(s.T, sv.T)[..., reliable], relation_edges(t.T, tv.T)[..., reliable]).mean()
    pruned = vrm_terms(inter_class_pruning="samples", keep_ratio=0.5)
    assert pruned["inter_class"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert pruned["inter_sample"] == vrm_terms(keep_ratio=0.5)["inter_sample"]


def test_vrm_virtual_ce_adds_cross_entropy_on_the_virtual_view():
    student, teacher, labels, virtual = vrm_batch()
    assert "virtual_ce" not in vrm_terms()
    terms = vrm_terms(virtual_ce_weight=0.5)
    assert terms["virtual_ce"].item() == pytest.approx(0.5 * F.cross_entropy(virtual[0].logits, labels).item(), rel=1e-6)
    assert {key: value for key, value in terms.items() if key != "virtual_ce"} == vrm_terms()


def test_vrm_standardize_and_huber_delta_knobs():
    (s, sv, t, tv), raw_real, raw_virtual = standardized_views()
    student, teacher, _, (student_virtual, teacher_virtual) = vrm_batch()
    keep = reliable_edges(edge_entropy(raw_real, raw_virtual), 0.8)
    raw = relation_edges(student.logits, student_virtual.logits)[keep], relation_edges(teacher.logits, teacher_virtual.logits)[keep]
    assert vrm_terms(standardize=False)["inter_sample"].item() == pytest.approx(128 * huber(*raw).mean().item(), rel=1e-5)
    delta = F.smooth_l1_loss(relation_edges(s, sv)[keep], relation_edges(t, tv)[keep], beta=0.1)
    assert vrm_terms(huber_delta=0.1)["inter_sample"].item() == pytest.approx(128 * delta.item(), rel=1e-5)


def test_vrm_rejects_unknown_knob_values():
    with pytest.raises(ValueError, match="VRM entropy must be one of cross, joint, got 'mutual'"):
        build("vrm", entropy="mutual")
    with pytest.raises(ValueError, match="VRM inter_class_layout must be one of cross_view, within_view"):
        build("vrm", inter_class_layout="full")
