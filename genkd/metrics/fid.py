"""Fréchet Inception distance (Heusel et al. 2017) between two Gaussians fitted to Inception pool features.

Everything is float64. The trace of the matrix square root of sigma1 @ sigma2 is taken from the symmetric form
sqrt(sigma1) @ sigma2 @ sqrt(sigma1), which has the same eigenvalues but is symmetric positive semi-definite, so an
``eigh`` (fast, exact on GPU and CPU) replaces scipy's ``sqrtm`` or a general eigen-solver and never yields complex
values from rounding noise. Same numbers as torch-fidelity (to ~1e-5 relative when the covariances are singular,
where its general eigen-solver adds square roots of rounding noise).
"""
import torch


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, covariance) of (N, D) features in float64, with the unbiased (N - 1) covariance of numpy's ``np.cov``."""
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"FID needs at least 2 feature vectors (N, D), got shape {tuple(features.shape)}")
    features = features.double()
    mean = features.mean(dim=0)
    centered = features - mean
    return mean, centered.T @ centered / (len(features) - 1)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def _sum_of_square_roots(symmetric: torch.Tensor) -> torch.Tensor:
    """Sum of the square roots of the eigenvalues of a positive semi-definite matrix (up to rounding)."""
    eigenvalues = torch.linalg.eigvalsh((symmetric + symmetric.T) / 2)
    # Fewer samples than dimensions leave a null space whose eigenvalues are rounding noise (~1e-17 of the largest);
    # their square roots (~1e-9 each, thousands of them) would add up to a visible error, so they count as zero.
    noise = eigenvalues.abs().max() * len(eigenvalues) * torch.finfo(torch.float64).eps
    return eigenvalues.where(eigenvalues > noise, 0).sqrt().sum()


def frechet_distance(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> float:
    """|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), computed on the device of the inputs."""
    mean1, cov1 = mean1.double(), cov1.double()
    mean2, cov2 = mean2.to(mean1), cov2.to(cov1)
    root1 = _psd_sqrt(cov1)
    trace_sqrt = _sum_of_square_roots(root1 @ cov2 @ root1)
    return float((mean1 - mean2).square().sum() + cov1.trace() + cov2.trace() - 2 * trace_sqrt)


def fid_from_features(mean1: torch.Tensor, cov1: torch.Tensor, features2: torch.Tensor) -> float:
    """FID between fitted reference statistics and the (N, D) features of an image set.

    With fewer images than dimensions (quick evaluations) the D x D eigen-decompositions are replaced by one of an
    N x N matrix: with A the centred features, cov2 = A^T A / (N - 1) and the nonzero eigenvalues of cov1 cov2 are
    those of A cov1 A^T / (N - 1). Same number, a fraction of the time, and no null space of rounding noise.
    """
    count, dim = features2.shape
    if count >= dim:
        return frechet_distance(mean1, cov1, *feature_statistics(features2))
    if count < 2:
        raise ValueError(f"FID needs at least 2 feature vectors, got {count}")
    mean1, cov1 = mean1.double(), cov1.double()
    features2 = features2.to(cov1)
    mean2 = features2.mean(dim=0)
    centred = features2 - mean2
    trace_sqrt = _sum_of_square_roots(centred @ cov1 @ centred.T / (count - 1))
    trace2 = centred.square().sum() / (count - 1)
    return float((mean1 - mean2).square().sum() + cov1.trace() + trace2 - 2 * trace_sqrt)
