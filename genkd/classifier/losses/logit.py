"""Logit-only losses: cross-entropy, KD (Hinton et al. 2015), DIST (Huang et al. 2022), DKD (Zhao et al. 2022)."""
import torch
import torch.nn.functional as F

from genkd.classifier.losses.base import ClassifierLoss, kd_divergence, logits_of


class CrossEntropy(ClassifierLoss):
    """The no-distillation baseline; needs no teacher."""

    needs_teacher = False

    def __init__(self, label_smoothing: float):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, student, teacher, labels, epoch=0, virtual=None):
        return {"ce": F.cross_entropy(logits_of(student), labels, label_smoothing=self.label_smoothing)}


class KD(ClassifierLoss):
    """ce_weight * CE + kd_weight * KL(softmax(t/T) || softmax(s/T)) * T^2."""

    def __init__(self, temperature: float, ce_weight: float, kd_weight: float):
        super().__init__()
        self.temperature, self.ce_weight, self.kd_weight = temperature, ce_weight, kd_weight

    def forward(self, student, teacher, labels, epoch=0, virtual=None):
        s, t = logits_of(student), logits_of(teacher)
        return {
            "ce": self.ce_weight * F.cross_entropy(s, labels),
            "kd": self.kd_weight * kd_divergence(s, t, self.temperature),
        }


def pearson_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """1 - Pearson correlation between matching rows of a and b, averaged over rows."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    correlation = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    return 1.0 - correlation.mean()


class DIST(ClassifierLoss):
    """DIST: match *relations* of softened predictions instead of their values, which tolerates a much stronger teacher.

    Inter-class relation: per image, the correlation of the student's and teacher's class probabilities; intra-class
    relation: per class, their correlation across the batch. Both scaled by T^2 and weighted beta and gamma.
    """

    def __init__(self, temperature: float, ce_weight: float, beta: float, gamma: float):
        super().__init__()
        self.temperature, self.ce_weight, self.beta, self.gamma = temperature, ce_weight, beta, gamma

    def forward(self, student, teacher, labels, epoch=0, virtual=None):
        s, t = logits_of(student), logits_of(teacher).detach()
        p_student = F.softmax(s / self.temperature, dim=1)
        p_teacher = F.softmax(t / self.temperature, dim=1)
        scale = self.temperature**2
        return {
            "ce": self.ce_weight * F.cross_entropy(s, labels),
            "inter_class": self.beta * scale * pearson_distance(p_student, p_teacher),
            "intra_class": self.gamma * scale * pearson_distance(p_student.T, p_teacher.T),
        }


def decoupled_kd(student_logits, teacher_logits, labels, temperature):
    """(TCKD, NCKD) of Zhao et al. 2022, both times T^2 and averaged over the batch.

    TCKD: KL between the binary distributions (p_target, 1 - p_target). NCKD: KL between the distributions over the
    non-target classes only (the softmax of the non-target logits, i.e. the probabilities renormalised without the
    target). Both are computed exactly from log-sum-exps instead of masking the target with a large negative logit.
    """
    batch, num_classes = student_logits.shape
    is_target = F.one_hot(labels, num_classes).bool()

    def binary_and_non_target(logits):
        scaled = logits / temperature
        log_total = torch.logsumexp(scaled, dim=1)
        non_target = scaled[~is_target].view(batch, num_classes - 1)
        log_rest = torch.logsumexp(non_target, dim=1)
        log_binary = torch.stack([scaled[is_target] - log_total, log_rest - log_total], dim=1)
        return log_binary, F.log_softmax(non_target, dim=1)

    log_binary_s, log_non_target_s = binary_and_non_target(student_logits)
    log_binary_t, log_non_target_t = binary_and_non_target(teacher_logits.detach())
    scale = temperature**2
    tckd = F.kl_div(log_binary_s, log_binary_t, reduction="batchmean", log_target=True) * scale
    nckd = F.kl_div(log_non_target_s, log_non_target_t, reduction="batchmean", log_target=True) * scale
    return tckd, nckd


class DKD(ClassifierLoss):
    """DKD: KD split into target-class (TCKD) and non-target-class (NCKD) parts with separate weights.

    The distillation terms ramp in linearly over the first ``warmup_epochs`` epochs: factor
    min((epoch + 1) / warmup_epochs, 1) with a 0-based epoch, i.e. the reference code's min(epoch / warmup, 1) with
    1-based epochs; warmup_epochs = 0 switches the ramp off.
    """

    def __init__(self, temperature: float, ce_weight: float, alpha: float, beta: float, warmup_epochs: int):
        super().__init__()
        self.temperature, self.ce_weight, self.alpha, self.beta = temperature, ce_weight, alpha, beta
        self.warmup_epochs = warmup_epochs

    def forward(self, student, teacher, labels, epoch=0, virtual=None):
        s, t = logits_of(student), logits_of(teacher)
        warmup = min((epoch + 1) / self.warmup_epochs, 1.0) if self.warmup_epochs > 0 else 1.0
        tckd, nckd = decoupled_kd(s, t, labels, self.temperature)
        return {
            "ce": self.ce_weight * F.cross_entropy(s, labels),
            "tckd": warmup * self.alpha * tckd,
            "nckd": warmup * self.beta * nckd,
        }
