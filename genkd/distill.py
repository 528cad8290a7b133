"""Distilling a frozen teacher into the discriminator's features: VkD and the usual feature-distillation baselines.

- ``vkd`` (Miles, Elezi, Deng, CVPR 2024): projector (default orthogonal) from the discriminator's pooled features
  to the teacher's width, teacher features normalised across the batch (default whitening), ``mse`` or ``smooth_l1``.
- ``fitnets`` (Romero et al. 2015): linear projector, raw teacher features, mse.
- ``spkd`` (Tung & Mori 2019): match the row-normalised batch Gram matrices of student and teacher; no projector.
- ``pkt`` (Passalis & Tefas 2018): KL divergence between the cosine-similarity conditional distributions
  P(j | i) of teacher and student; no projector.
The baselines are fixed recipes: only ``vkd`` reads distill.projector / norm / loss.

``mse`` and ``smooth_l1`` are torch's element-wise means. Scale check for ``distill.weight`` 1: BigGAN's sum-pooled
discriminator features have norm ~160 at initialisation against unit-norm whitened targets, so the mse gradient on a
feature vector starts at 2 * 160 / (512 B) = 0.6 / B, the hinge loss's order (at most 2 / B, spectrally normalised).
"""
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from genkd.normalize import normalize_features
from genkd.projectors import build_projector
from genkd.teachers import Teacher, build_teacher

# projector / normalisation / loss of each method; None = the config's choice
RECIPES = {
    "vkd": {"projector": None, "norm": None, "loss": None},
    "fitnets": {"projector": "linear", "norm": "none", "loss": "mse"},
    "spkd": {"projector": "none", "norm": "none", "loss": "spkd"},
    "pkt": {"projector": "none", "norm": "none", "loss": "pkt"},
}
METHODS = tuple(RECIPES)


def similarity_preserving_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """SP-KD: ||G_s - G_t||_F^2 / B^2 for the batch Gram matrices G = X X^T with L2-normalised rows."""
    student_gram = F.normalize(student @ student.T, dim=1)
    teacher_gram = F.normalize(teacher @ teacher.T, dim=1)
    return (student_gram - teacher_gram).square().sum() / len(student) ** 2


def probability_transfer_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """PKT: mean over i of KL(P_t(. | i) || P_s(. | i)), P(j | i) proportional to (1 + cos(x_i, x_j)) / 2."""

    def conditional(features: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(features, dim=1)
        kernel = (unit @ unit.T + 1) / 2
        return kernel / kernel.sum(dim=1, keepdim=True)

    student_p, teacher_p = conditional(student), conditional(teacher)
    return (teacher_p * ((teacher_p + eps).log() - (student_p + eps).log())).sum() / len(student)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": F.mse_loss,
    "smooth_l1": F.smooth_l1_loss,
    "spkd": similarity_preserving_loss,
    "pkt": probability_transfer_loss,
}


class Distiller(nn.Module):
    """``distiller(student_features, images)`` -> the unweighted distillation loss (a scalar).

    ``images`` are exactly the (augmented) images the discriminator saw, in [-1, 1]; the teacher embeds them under
    no_grad. Only the projector is a submodule, so ``parameters()`` and ``state_dict()`` hold the trainable projector
    alone; the teacher sits in a plain attribute (it never trains, and a checkpoint should not carry 350 MB of CLIP),
    and ``_apply`` forwards ``.to()`` / ``.cuda()`` / dtype moves to it. ``projector`` may be reassigned (e.g. to
    what ``accelerator.prepare`` returns).
    """

    def __init__(self, teacher: Teacher, projector: nn.Module, norm: str, loss: str):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"unknown distillation loss {loss!r}; accepted: {', '.join(LOSSES)}")
        self.__dict__["teacher"] = teacher  # bypasses nn.Module's registration on purpose
        self.projector = projector
        self.norm = norm
        self.loss = loss

    def _apply(self, fn, recurse=True):
        self.teacher._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def forward(self, student_features: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        target = normalize_features(self.teacher(images), self.norm)
        projected = self.projector(student_features)
        with torch.autocast(projected.device.type, enabled=False):
            return LOSSES[self.loss](projected.float(), target)

    def extra_repr(self) -> str:
        teacher = f"{type(self.teacher.encoder).__name__}({self.teacher.feature_dim})"
        return f"teacher={teacher}, norm={self.norm}, loss={self.loss}"


def build_distiller(distill_cfg: Mapping, student_dim: int) -> Distiller | None:
    """The configured distiller for student features of width ``student_dim``; None when distillation is off."""
    if not distill_cfg["enabled"]:
        return None
    if distill_cfg["method"] not in RECIPES:
        raise ValueError(f"unknown distillation method {distill_cfg['method']!r}; accepted: {', '.join(METHODS)}")
    recipe = {key: value or distill_cfg[key] for key, value in RECIPES[distill_cfg["method"]].items()}
    teacher = build_teacher(distill_cfg)
    if recipe["projector"] == "none":
        projector = nn.Identity()
    else:
        projector = build_projector(
            recipe["projector"], student_dim, teacher.feature_dim, distill_cfg["orthogonal_map"]
        )
    return Distiller(teacher, projector, recipe["norm"], recipe["loss"])
