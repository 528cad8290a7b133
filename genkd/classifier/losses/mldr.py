"""MLDR-KD: multi-level decoupled relational distillation (2025; protocol learned from the authors' code,
Ethan-Yang02/MLDR-KD, and re-written here).

DFRA (decoupled fine-grained relation alignment) compares student and teacher logits z (divided by T) three ways:
- class-wise relations: for each sample, the outer product z z^T / sqrt(N) of its own N-vector of logits, an N x N
  matrix per sample (B x N x N in all): entry (i, j) says how strongly classes i and j co-fire for that image;
- sample-wise relations: for each class c, the outer product of the logit column z[:, c] (a B-vector) with itself,
  also scaled by 1 / sqrt(N) (N, not B, as in the authors' code), N x B x B in all;
- the probabilities themselves.
Each relation matrix is turned into distributions by a softmax over its second-to-last axis (every column is a
distribution), and teacher and student are compared with KL(teacher || student) averaged over all those distributions.
DFRA = KL_class + KL_sample + lambda * KL(softmax(t/T) || softmax(s/T)), lambda = 2, T = 1 (authors' defaults; no
T^2 factor).

MSDF (multi-scale dynamic fusion): every student stage gets a trainable head (depth-wise separable stride-2 convs
down to the last stage's resolution, the last one widening to ``project_dim`` channels; a 1x1 conv for a stage
already there; global pooling -> a descriptor, linear -> class logits). A gate (MLP on each stage's descriptor ->
per-class scores, softmax over the stages) fuses the stage logits per sample and per class. Only the student has
stage heads: the teacher contributes its final logits to every comparison. The loss is
    ce_weight * CE(student logits, label smoothing 0.1) + logit_weight * DFRA(student logits)
    + stage_weight * sum_stages DFRA(stage logits) + fused_weight * DFRA(fused logits),
all weights 1. Heads and gate are training-only: inference uses the plain student.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from genkd.classifier.losses.base import ClassifierLoss, logits_of


def class_relations(logits: torch.Tensor) -> torch.Tensor:
    """(B, N) -> (B, N, N): per sample, the outer product of its logit vector with itself, / sqrt(N)."""
    return logits[:, :, None] * logits[:, None, :] / logits.shape[1] ** 0.5


def sample_relations(logits: torch.Tensor) -> torch.Tensor:
    """(B, N) -> (N, B, B): per class, the outer product of its logit column over the batch, / sqrt(N)."""
    columns = logits.T
    return columns[:, :, None] * columns[:, None, :] / logits.shape[1] ** 0.5


def relation_kl(student_relations: torch.Tensor, teacher_relations: torch.Tensor) -> torch.Tensor:
    """Softmax over the second-to-last axis, KL(teacher || student) per distribution, mean over distributions."""
    log_student = F.log_softmax(student_relations, dim=-2)
    log_teacher = F.log_softmax(teacher_relations, dim=-2)
    return (log_teacher.exp() * (log_teacher - log_student)).sum(dim=-2).mean()


def dfra(student_logits, teacher_logits, temperature: float, prob_weight: float) -> torch.Tensor:
    s, t = student_logits / temperature, teacher_logits.detach() / temperature
    probability_kl = F.kl_div(F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), reduction="batchmean", log_target=True)
    return (
        relation_kl(class_relations(s), class_relations(t))
        + relation_kl(sample_relations(s), sample_relations(t))
        + prob_weight * probability_kl
    )


def separable_downsample(in_channels: int, out_channels: int) -> nn.Sequential:
    """Halve the resolution with a depth-wise separable stride-2 conv, then refine with a second separable conv."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False),
        nn.Conv2d(in_channels, in_channels, 1, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(),
        nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class StageHead(nn.Module):
    """Stage feature map -> (descriptor (B, project_dim), logits (B, num_classes))."""

    def __init__(self, in_channels: int, downsamples: int, project_dim: int, num_classes: int):
        super().__init__()
        if downsamples == 0:
            self.body = nn.Conv2d(in_channels, project_dim, 1, bias=False)
        else:
            widths = [in_channels * 2**step for step in range(downsamples)] + [project_dim]
            self.body = nn.Sequential(*(separable_downsample(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.classifier = nn.Linear(project_dim, num_classes)

    def forward(self, features):
        descriptor = self.body(features).mean(dim=(2, 3))
        return descriptor, self.classifier(descriptor)


def stage_sizes(student: nn.Module, image_size: int = 32) -> list[int]:
    """Side length of each stage output: one no-grad forward of a blank image in eval mode (BN statistics untouched)."""
    parameter = next(student.parameters())
    was_training = student.training
    student.eval()
    with torch.no_grad():
        blank = torch.zeros(1, 3, image_size, image_size, device=parameter.device, dtype=parameter.dtype)
        stages = student(blank).stages
    student.train(was_training)
    return [stage.shape[-1] for stage in stages]


def init_head_weights(module: nn.Module) -> None:
    """The authors' init of stage heads and gate (mldr_kd/msdf.py): He-normal (fan-out) convs, unit batch norms,
    truncated-normal (std 0.02) linear layers with zero biases."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


class MLDRKD(ClassifierLoss):
    def __init__(
        self,
        stage_channels: list[int],
        stage_sizes: list[int],
        num_classes: int,
        project_dim: int,
        gate_hidden_dim: int,
        temperature: float,
        prob_weight: float,
        label_smoothing: float,
        ce_weight: float,
        logit_weight: float,
        stage_weight: float,
        fused_weight: float,
    ):
        super().__init__()
        downsamples = [max(0, round(math.log2(size / stage_sizes[-1]))) for size in stage_sizes]
        self.stage_heads = nn.ModuleList(
            StageHead(channels, steps, project_dim, num_classes) for channels, steps in zip(stage_channels, downsamples)
        )
        self.gate = nn.Sequential(
            nn.Linear(project_dim, gate_hidden_dim), nn.GELU(), nn.Linear(gate_hidden_dim, num_classes)
        )
        self.apply(init_head_weights)
        self.temperature, self.prob_weight, self.label_smoothing = temperature, prob_weight, label_smoothing
        self.ce_weight, self.logit_weight = ce_weight, logit_weight
        self.stage_weight, self.fused_weight = stage_weight, fused_weight

    def stage_logits(self, stages):
        """Per-stage logits (list of (B, C)) and their gated fusion (B, C)."""
        if len(stages) != len(self.stage_heads) or any(features.dim() != 4 for features in stages):
            shapes = [tuple(features.shape) for features in stages]
            raise ValueError(
                f"MLDR-KD was built for {len(self.stage_heads)} student stages of shape (B, C, H, W), got {shapes}"
            )
        descriptors, logits = zip(*(head(features) for head, features in zip(self.stage_heads, stages)))
        logits = [stage_logits.float() for stage_logits in logits]  # fp32 for the relation softmaxes, as logits_of
        weights = F.softmax(self.gate(torch.stack(descriptors, dim=1)).float(), dim=1)  # (B, stages, C): convex
        return logits, (weights * torch.stack(logits, dim=1)).sum(dim=1)

    def forward(self, student, teacher, labels, epoch=0, virtual=None):
        s, t = logits_of(student), logits_of(teacher)
        per_stage, fused = self.stage_logits(student.stages)
        return {
            "ce": self.ce_weight * F.cross_entropy(s, labels, label_smoothing=self.label_smoothing),
            "logit_distill": self.logit_weight * self.distill(s, t),
            "stage_distill": self.stage_weight * sum(self.distill(logits, t) for logits in per_stage),
            "fused_distill": self.fused_weight * self.distill(fused, t),
        }

    def distill(self, student_logits, teacher_logits):
        return dfra(student_logits, teacher_logits, self.temperature, self.prob_weight)
