"""Projectors from student (discriminator) features to the teacher's feature space.

VkD's point is that the projector should be orthogonal: it then cannot rescale or shear the student's features, so
every bit of matching the teacher has to happen in the student itself, and the student's inner products (its feature
geometry) pass to the loss unchanged. ``linear`` is the unconstrained FitNets projector, ``identity`` the no-projector
case for equal widths.
"""
import torch
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

PROJECTORS = ("identity", "linear", "orthogonal")
ORTHOGONAL_MAPS = ("matrix_exp", "cayley")


def build_projector(kind: str, in_dim: int, out_dim: int, orthogonal_map: str = "matrix_exp") -> nn.Module:
    """A bias-free map (B, in_dim) -> (B, out_dim).

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
                "use --distill.projector orthogonal or linear"
            )
        return nn.Identity()
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
