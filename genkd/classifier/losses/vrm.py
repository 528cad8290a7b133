"""VRM: knowledge distillation via virtual relation matching (Zhang, Xie, Cai, Ma; ICCV 2025, arXiv 2502.20760).

Relation matching transfers how predictions relate to each other instead of the predictions themselves. VRM makes the
relations richer (against over-fitting) and drops the ones a single bad prediction would corrupt (against "spurious
gradients": in plain relation matching one wrong prediction moves every other sample of the batch).

Protocol, with where each choice comes from:
- Every image has a second, "virtual" view (RandAugment of the same image; the trainer makes it and passes the
  models' outputs on it as ``virtual``). Relations are built on logits. [paper, Sec. 3]
- Logits are first standardised per sample (zero mean, unit std over the classes). [the reviews of the paper name
  this "ZSNorm" (logit standardisation) as one of VRM's ingredients; knob ``standardize``]
- Inter-sample graph: vertices are the 2B predictions of both views, the edge between predictions a and b is the
  L2-normalised difference vector (z_a - z_b) / ||z_a - z_b||_2 in R^C (not a Gram-matrix scalar, which would
  collapse the class dimension). [paper, Eq. for E^IS, and the reviews' "L2Norm"]
- Inter-class graph: the same over logit columns, vertices are the C class columns w_i in R^B of each view, edges
  (w_i - w~_j) / ||w_i - w~_j||_2 in R^B.
- Redundant edges are dropped: the full 2B x 2B graph is antisymmetric (E_ab = -E_ba), so half of it is redundant,
  and the intra-view (real-real, virtual-virtual) blocks are dropped, which leaves exactly the real-to-virtual block:
  E_mn = (z_m - z~_n) / ||z_m - z~_n|| for m, n in the batch, a B x B x C tensor whose diagonal holds the inter-view
  relation of each image with itself. The inter-class graph is pruned the same way to C x C x B. [paper, "pruning
  redundant edges"; the real-to-virtual-only reading is this project's]
- Unreliable edges are dropped from the inter-sample graph, re-decided every step: an edge's "joint entropy" is taken
  as the cross-entropy of the student's (detached, T = 1) predictions at its two endpoints, both ways:
  H(p_m, p~_n) + H(p~_n, p_m) with H(p, q) = -sum_c p[c] log q[c] (= H(p) + H(q) + KL(p||q) + KL(q||p)), which is
  high when the two predictions disagree or are uncertain; only the ``keep_ratio`` share of edges with the lowest
  value is matched (a batch percentile). [paper: pruning by a joint-entropy criterion on student predictions that
  measures the discrepancy of the two predictions rather than the certainty of each vertex alone (which would bias
  learning to easy samples). The exact formula and the paper's keep share were not accessible here: this reading and
  keep_ratio = 0.8 are this project's choices. The inter-class graph is not entropy-pruned: its edges join classes,
  not predictions.]
- Kept edges are matched with the Huber (smooth-L1) loss, averaged over kept edges and edge components, weighted
  alpha = 128 (inter-sample) and beta = 32 (inter-class), plus cross-entropy on the real view. Instance-level KD on the
  two views is not part of the default method (the paper studies "vertex matching" only as an extra analysis).
"""
import torch
import torch.nn.functional as F

from genkd.classifier.losses.base import ClassifierLoss, logits_of


def standardize_logits(logits: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-sample z-score over the classes, so relations do not depend on each model's logit scale."""
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True)
    return (logits - mean) / (std + eps)


def relation_edges(real: torch.Tensor, virtual: torch.Tensor, eps: float = 1e-2) -> torch.Tensor:
    """(R, K) x (R, K) -> (R, R, K): edge [m, n] = (real[m] - virtual[n]) / max(||real[m] - virtual[n]||_2, eps).

    Rows are the vertices: samples for the inter-sample graph (pass logits), classes for the inter-class graph (pass
    the transposed logits). The direction of a vanishing difference is undefined and its gradient grows like
    1 / ||difference|| (two identical views of one image give exactly zero), so differences shorter than ``eps`` (far
    below the sqrt(2K) of two unrelated standardised logit vectors) shrink linearly to a zero edge instead.
    """
    return F.normalize(real[:, None, :] - virtual[None, :, :], dim=-1, eps=eps)


def edge_entropy(student_real_logits: torch.Tensor, student_virtual_logits: torch.Tensor) -> torch.Tensor:
    """(B, B) joint entropy of each real-to-virtual edge: H(p_m, p~_n) + H(p~_n, p_m), the cross-entropy of the
    student's predictions at the edge's two ends taken both ways (so it does not depend on which end is which view)."""
    log_p_real = F.log_softmax(student_real_logits, dim=1)
    log_p_virtual = F.log_softmax(student_virtual_logits, dim=1)
    return -(log_p_real.exp() @ log_p_virtual.T) - (log_p_real @ log_p_virtual.exp().T)


def reliable_edges(entropy: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """Boolean mask of the round(keep_ratio * #edges) edges with the lowest entropy (ties broken by position)."""
    num_keep = max(1, round(keep_ratio * entropy.numel()))
    keep = torch.zeros(entropy.numel(), dtype=torch.bool, device=entropy.device)
    keep[torch.topk(entropy.flatten(), num_keep, largest=False).indices] = True
    return keep.view_as(entropy)


class VRM(ClassifierLoss):
    needs_virtual_view = True

    def __init__(
        self,
        ce_weight: float,
        inter_sample_weight: float,
        inter_class_weight: float,
        keep_ratio: float,
        huber_delta: float,
        standardize: bool,
    ):
        super().__init__()
        if not 0.0 < keep_ratio <= 1.0:
            raise ValueError(f"VRM keep_ratio must be in (0, 1] (share of inter-sample edges kept), got {keep_ratio}")
        self.ce_weight, self.keep_ratio, self.huber_delta = ce_weight, keep_ratio, huber_delta
        self.inter_sample_weight, self.inter_class_weight = inter_sample_weight, inter_class_weight
        self.standardize = standardize

    def forward(self, student, teacher, labels, epoch=0, virtual=None):
        if virtual is None:
            raise ValueError(
                "VRM needs a second (RandAugment) view of the batch: call loss(student, teacher, labels, "
                "virtual=(student_outputs_on_view, teacher_outputs_on_view))"
            )
        student_virtual, teacher_virtual = virtual
        s_real, s_virtual = logits_of(student), logits_of(student_virtual)
        t_real, t_virtual = logits_of(teacher).detach(), logits_of(teacher_virtual).detach()
        keep = reliable_edges(edge_entropy(s_real.detach(), s_virtual.detach()), self.keep_ratio)
        if self.standardize:
            s_real, s_virtual, t_real, t_virtual = map(standardize_logits, (s_real, s_virtual, t_real, t_virtual))

        inter_sample = F.smooth_l1_loss(
            relation_edges(s_real, s_virtual)[keep],
            relation_edges(t_real, t_virtual)[keep],
            beta=self.huber_delta,
        )
        inter_class = F.smooth_l1_loss(
            relation_edges(s_real.T, s_virtual.T), relation_edges(t_real.T, t_virtual.T), beta=self.huber_delta
        )
        return {
            "ce": self.ce_weight * F.cross_entropy(logits_of(student), labels),
            "inter_sample": self.inter_sample_weight * inter_sample,
            "inter_class": self.inter_class_weight * inter_class,
        }
