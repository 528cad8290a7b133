"""Projectors from student (discriminator) features to the teacher's feature space.

VkD's point is that the projector should be orthogonal: it then cannot rescale or shear the student's features, so
every bit of matching the teacher has to happen in the student itself, and the student's inner products (its feature
geometry) pass to the loss unchanged. ``linear`` is the unconstrained FitNets projector, ``identity`` the no-projector
case for equal widths, ``mlp`` KD-DLGAN's head (see ``kd_dlgan_head``).
"""
import torch
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from genkd.models.biggan import sn

PROJECTORS = ("identity", "linear", "orthogonal", "mlp")
MLP_HIDDEN = 1024  # KD-DLGAN's linear_cls_1 width
ORTHOGONAL_MAPS = ("matrix_exp", "cayley")


def kd_dlgan_head(in_dim: int, out_dim: int, hidden: int = MLP_HIDDEN) -> nn.Sequential:
    """KD-DLGAN's student head: spectrally normalised linear in_dim -> 1024 -> out_dim, biases, NO activation between.

    From cuikaiwen18/KD_DLGAN ``third_party/BigGAN.py``: ``Discriminator.linear_cls_1`` / ``linear_cls_2`` are
    ``which_linear`` = BigGAN's ``SNLinear`` (nn.Linear, bias on, one power iteration per step) and ``forward`` applies
    them back to back to the sum-pooled features. They are initialised like every D layer, N(0, 0.02) weights (the
    scripts' ``--D_init N02``) and PyTorch's default biases. Without an activation the two layers compose to one
    linear map of rank <= in_dim; the factorisation only changes the optimisation (and SN caps each factor).
    Indices 0 and 1 of the Sequential are the reference's ``linear_cls_1`` and ``linear_cls_2``.
    """
    return nn.Sequential(sn(nn.Linear(in_dim, hidden)), sn(nn.Linear(hidden, out_dim)))


def build_projector(kind: str, in_dim: int, out_dim: int, orthogonal_map: str = "matrix_exp") -> nn.Module:
    """A map (B, in_dim) -> (B, out_dim); bias-free except ``mlp`` (``kd_dlgan_head``).

    ``orthogonal`` has orthonormal columns (``W^T W = I`` for ``in_dim <= out_dim``: inner products are preserved) or
    orthonormal rows (``W W^T = I`` otherwise), exactly, at every step: the weight is the matrix exponential (or the
    Cayley transform) of a skew-symmetric matrix, sliced to shape, via torch's ``parametrizations.orthogonal``. It
    starts at a Haar-random orthogonal matrix (``nn.init.orthogonal_``) rather than a slice of the identity: the
    teacher's coordinate axes carry no meaning (nor any order), so no subset of them should be preferred.
    """
    if kind == "identity":
        if in_dim != out_dim:
            raise ValueError(
                f"the identity projector needs equal widths, got student {in_dim} and teacher {out_dim}: "
                "use --distill.head orthogonal or linear"
            )
        return nn.Identity()
    if kind == "mlp":
        return kd_dlgan_head(in_dim, out_dim)
    if kind not in ("linear", "orthogonal"):
        raise ValueError(f"unknown projector {kind!r}; accepted: {', '.join(PROJECTORS)}")
    projector = nn.Linear(in_dim, out_dim, bias=False)
    if kind == "linear":
        return projector
    if orthogonal_map not in ORTHOGONAL_MAPS:
        raise ValueError(f"unknown orthogonal map {orthogonal_map!r}; accepted: {', '.join(ORTHOGONAL_MAPS)}")
    with torch.no_grad():
        nn.init.orthogonal_(projector.weight)
    return orthogonal(projector, orthogonal_map=orthogonal_map)
