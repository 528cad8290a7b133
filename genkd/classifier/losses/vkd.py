"""VkD for classification (Miles et al., CVPR 2024): feature distillation through an orthogonal projector.

The student's pooled features go through a trainable projector (orthogonal by default: it can rotate but not
re-scale or collapse the student's features, so the distillation cannot be "absorbed" by the projector), and are matched
with smooth-L1 to the teacher's pooled features, standardised per sample ("layernorm": the paper's task-specific
normalisation for classification). Projector and normalisation are the ones the GAN track uses (genkd.projectors,
genkd.normalize): one implementation, two tracks. CE and Hinton KD terms are added with configurable weights.
"""
import torch.nn.functional as F

from genkd.classifier.losses.base import ClassifierLoss, kd_divergence, logits_of
from genkd.normalize import normalize_features
from genkd.projectors import build_projector


class VkD(ClassifierLoss):
    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        projector: str,
        orthogonal_map: str,
        norm: str,
        feature_weight: float,
        ce_weight: float,
        kd_weight: float,
        temperature: float,
    ):
        super().__init__()
        self.projector = build_projector(projector, student_dim, teacher_dim, orthogonal_map=orthogonal_map)
        self.norm, self.temperature = norm, temperature
        self.feature_weight, self.ce_weight, self.kd_weight = feature_weight, ce_weight, kd_weight

    def forward(self, student, teacher, labels, epoch=0, virtual=None):
        s, t = logits_of(student), logits_of(teacher)
        projected = self.projector(student.pooled.float())
        target = normalize_features(teacher.pooled.detach().float(), self.norm)
        return {
            "ce": self.ce_weight * F.cross_entropy(s, labels),
            "kd": self.kd_weight * kd_divergence(s, t, self.temperature),
            "feature": self.feature_weight * F.smooth_l1_loss(projected, target),
        }
