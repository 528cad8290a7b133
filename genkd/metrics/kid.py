"""Kernel Inception distance (Bińkowski et al. 2018, "Demystifying MMD GANs"), as torch-fidelity computes it.

torch-fidelity's definition (torch_fidelity/metric_kid.py, 0.4.0): ``kid_subsets`` (100) times, draw
``kid_subset_size`` (1000) features of each set without replacement with one ``np.random.RandomState(rng_seed=2020)``
(first set 1, then set 2), take the unbiased MMD^2 estimate with the cubic polynomial kernel
k(x, y) = (x.y / D + 1)^3, and report the mean and the (population) standard deviation over subsets.
Same random draws as torch-fidelity, so the same subsets; the kernel sums here run in float64 on the features' device
(torch-fidelity runs them in the features' dtype in numpy: float32 for Inception features).
"""
import numpy as np
import torch

KID = {
    "subsets": 100,  # torch-fidelity kid_subsets
    "subset_size": 1000,  # kid_subset_size
    "degree": 3,  # kid_kernel_poly_degree
    "gamma": None,  # kid_kernel_poly_gamma; None = 1 / D
    "coef0": 1.0,  # kid_kernel_poly_coef0
    "seed": 2020,  # torch-fidelity's rng_seed
}


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor, degree: int, gamma: float | None, coef0: float) -> torch.Tensor:
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef0) ** degree


def unbiased_mmd2(k_xx: torch.Tensor, k_xy: torch.Tensor, k_yy: torch.Tensor) -> torch.Tensor:
    """MMD^2 with the diagonals of K_XX and K_YY left out and all of K_XY kept (torch-fidelity's "unbiased")."""
    m = len(k_xx)
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return within - 2 * k_xy.sum() / (m * m)


def compute_kid(
    features_1: torch.Tensor,
    features_2: torch.Tensor,
    subsets: int = KID["subsets"],
    subset_size: int = KID["subset_size"],
    degree: int = KID["degree"],
    gamma: float | None = KID["gamma"],
    coef0: float = KID["coef0"],
    seed: int = KID["seed"],
) -> tuple[float, float]:
    """(KID mean, KID std) of two (N, D) feature sets; torch-fidelity passes the generated set first.

    A subset size above the smaller set is capped to it (torch-fidelity stops with an error instead), so quick
    evaluations with fewer than 1000 images still get a number; with >= ``subset_size`` images both agree.
    """
    if features_1.ndim != 2 or features_2.ndim != 2 or features_1.shape[1] != features_2.shape[1]:
        raise ValueError(f"KID needs two (N, D) feature sets, got {tuple(features_1.shape)} and {tuple(features_2.shape)}")
    size = min(subset_size, len(features_1), len(features_2))
    if size < 2:
        raise ValueError(f"KID needs at least 2 features per set, got {len(features_1)} and {len(features_2)}")
    x_all, y_all = features_1.double(), features_2.to(features_1.device).double()
    rng = np.random.RandomState(seed)
    mmds = []
    for _ in range(subsets):
        x = x_all[torch.from_numpy(rng.choice(len(x_all), size, replace=False)).to(x_all.device)]
        y = y_all[torch.from_numpy(rng.choice(len(y_all), size, replace=False)).to(y_all.device)]
        k_xx, k_xy, k_yy = (polynomial_kernel(a, b, degree, gamma, coef0) for a, b in ((x, x), (x, y), (y, y)))
        mmds.append(unbiased_mmd2(k_xx, k_xy, k_yy))
    mmds = torch.stack(mmds)
    return float(mmds.mean()), float(mmds.std(unbiased=False))
