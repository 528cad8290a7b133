"""What every classifier-track loss shares: the call convention and Hinton's softened KL.

A loss is called as ``loss(student, teacher, labels, epoch=0, virtual=None)`` where ``student`` and ``teacher`` are the
models' outputs (objects with ``.logits`` (B, C), ``.pooled`` (B, D) and ``.stages``, a list of (B, C_i, H_i, W_i)
maps), ``epoch`` is the 0-based epoch (DKD's warm-up) and ``virtual`` is ``(student_outputs, teacher_outputs)`` of a
second, augmented view of the same images (VRM). It returns a dict of named, already weighted scalar terms; the training
loss is their sum, and the trainer can log each term.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ClassifierLoss(nn.Module):
    """Base class: tells the trainer which inputs a loss needs, so it can skip the teacher or the second view."""

    needs_teacher = True
    needs_virtual_view = False


def logits_of(outputs) -> torch.Tensor:
    """fp32 logits: under bf16/fp16 autocast, softmax relations and KL lose too much precision."""
    return outputs.logits.float()


def kd_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. 2015: KL(softmax(t/T) || softmax(s/T)) * T^2 (the T^2 keeps gradients comparable across T)."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * temperature**2
