"""Distillation losses of the classifier track, one small module per method, behind one registry.

    loss_fn = build_classifier_loss(cfg.distill, student, teacher, num_classes).to(device)
    terms = loss_fn(student_outputs, teacher_outputs, labels, epoch=epoch, virtual=None)  # dict of weighted scalars
    loss = sum(terms.values())

``loss_fn.parameters()`` are the method's trainable parts (VkD projector, MLDR-KD stage heads and gate): give them to
the optimizer with the student's. ``loss_fn.needs_teacher`` / ``loss_fn.needs_virtual_view`` tell the trainer whether
to run the teacher and whether to make a second (RandAugment) view and pass ``virtual=(student_out, teacher_out)``.
Outputs are objects with ``.logits`` (B, C), ``.pooled`` (B, D) and ``.stages`` (list of (B, C_i, H_i, W_i)).
"""
from collections.abc import Mapping

import torch.nn as nn

from genkd.classifier.losses.base import ClassifierLoss, kd_divergence
from genkd.classifier.losses.logit import DIST, DKD, KD, CrossEntropy
from genkd.classifier.losses.mldr import MLDRKD, stage_sizes
from genkd.classifier.losses.vkd import VkD
from genkd.classifier.losses.vrm import VRM

__all__ = ["LOSS_DEFAULTS", "LOSS_METHODS", "build_classifier_loss", "ClassifierLoss", "kd_divergence"]

# The knobs of every method with their defaults: the classifier config's `distill` section is
# {"method": ..., **LOSS_DEFAULTS}, so `--distill.dkd.beta 6` tunes one knob. Defaults are each paper's CIFAR setting.
LOSS_DEFAULTS = {
    "ce": {"label_smoothing": 0.0},
    # Hinton et al. 2015; weights and T from mdistiller's CIFAR-100 KD config (CE 0.1, KD 0.9, T 4).
    "kd": {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9},
    # Huang et al. 2022 (DIST), CIFAR-100 setting of the official release: tau 4, beta = gamma = 2 (ImageNet: 1, 1, 1).
    "dist": {"temperature": 4.0, "ce_weight": 1.0, "beta": 2.0, "gamma": 2.0},
    # Zhao et al. 2022 (DKD), CIFAR-100: alpha 1, beta 8, T 4, 20 warm-up epochs (beta is tuned per pair in the paper).
    "dkd": {"temperature": 4.0, "ce_weight": 1.0, "alpha": 1.0, "beta": 8.0, "warmup_epochs": 20},
    # Miles et al. 2024 (VkD): orthogonal projector, per-sample standardised teacher features, smooth-L1.
    # The CE/KD weights are this project's choice (the paper's classification runs are on ImageNet/DeiT).
    "vkd": {
        "projector": "orthogonal",
        "orthogonal_map": "matrix_exp",
        "norm": "layernorm",
        "feature_weight": 1.0,
        "ce_weight": 1.0,
        "kd_weight": 1.0,
        "temperature": 4.0,
    },
    # Zhang et al. 2025 (VRM). Which of these the paper states and which are readings: genkd/classifier/losses/vrm.py.
    "vrm": {
        "ce_weight": 1.0,
        "inter_sample_weight": 128.0,  # alpha
        "inter_class_weight": 32.0,  # beta
        "keep_ratio": 0.8,  # share of inter-sample edges kept (lowest entropy), per batch
        "huber_delta": 1.0,
        "standardize": True,  # per-sample z-scored logits
        "entropy": "cross",  # cross | joint: the unreliability of an edge
        "reduction": "mean",  # mean | edge_sum: of the Huber loss over edges (scales alpha and beta)
        "inter_class_layout": "cross_view",  # cross_view | within_view
        "inter_class_pruning": "none",  # none | samples (drop unreliable samples' components)
        "virtual_ce_weight": 0.0,  # CE on the virtual view too
        "randaugment_ops": 2,  # the virtual view: RandAugment(num_ops, magnitude) ...
        "randaugment_magnitude": 9,
        "cutout": 0,  # ... then a Cutout square of this side (0 = none)
        "joint_forward": True,  # both views in one 2B batch (shared batch-norm statistics) or one forward each
    },
    # MLDR-KD, the authors' code and configs: T 1, lambda 2, label smoothing 0.1, all term weights 1;
    # project_dim 0 = max(student, teacher feature dim), gate_hidden_dim 0 = 4 * num_classes (their "auto").
    "mldr": {
        "temperature": 1.0,
        "prob_weight": 2.0,
        "label_smoothing": 0.1,
        "ce_weight": 1.0,
        "logit_weight": 1.0,
        "stage_weight": 1.0,
        "fused_weight": 1.0,
        "project_dim": 0,
        "gate_hidden_dim": 0,
    },
}
LOSS_METHODS = tuple(LOSS_DEFAULTS)
LOGIT_ONLY = {"ce": CrossEntropy, "kd": KD, "dist": DIST, "dkd": DKD, "vrm": VRM}  # built from their knobs alone


def build_classifier_loss(
    distill_cfg: Mapping, student: nn.Module, teacher: nn.Module | None, num_classes: int, image_size: int = 32
):
    """The loss module of ``distill_cfg["method"]`` with its knobs from ``distill_cfg[method]`` over LOSS_DEFAULTS.

    VkD reads ``student.feature_dim`` / ``teacher.feature_dim`` (pooled feature widths); MLDR-KD also reads
    ``student.stage_channels`` (channels of each entry of ``.stages``) and runs the student once on a blank
    ``image_size`` x ``image_size`` image (the training resolution) to size its stage heads (no gradients, eval mode).
    """
    method = distill_cfg["method"]
    if method not in LOSS_DEFAULTS:
        raise ValueError(f"unknown distillation method {method!r}; accepted: {', '.join(LOSS_METHODS)}")
    overrides = dict(distill_cfg.get(method) or {})
    unknown = sorted(set(overrides) - set(LOSS_DEFAULTS[method]))
    if unknown:
        raise ValueError(
            f"unknown knob(s) {', '.join(unknown)} for distillation method {method!r}; "
            f"accepted: {', '.join(LOSS_DEFAULTS[method])}"
        )
    knobs = {**LOSS_DEFAULTS[method], **overrides}
    if method != "ce" and teacher is None:
        raise ValueError(f"distillation method {method!r} needs a teacher model; use method 'ce' to train without one")
    if method in LOGIT_ONLY:
        return LOGIT_ONLY[method](**knobs)
    if method == "vkd":
        return VkD(student.feature_dim, teacher.feature_dim, **knobs)
    project_dim = knobs.pop("project_dim") or max(student.feature_dim, teacher.feature_dim)
    gate_hidden_dim = knobs.pop("gate_hidden_dim") or 4 * num_classes
    stages = list(student.stage_channels), stage_sizes(student, image_size)
    return MLDRKD(*stages, num_classes, project_dim, gate_hidden_dim, **knobs)
