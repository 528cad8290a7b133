"""Inception score (Salimans et al. 2016): exp E_x KL(p(y|x) || p(y)), mean and std over splits.

The protocol is torch-fidelity's (and the TF reference's): logits without the fc bias, the samples shuffled by a
seeded permutation, then ``splits`` chunks [i N / splits, (i + 1) N / splits), each with its own marginal p(y).
"""
import numpy as np
import torch

from genkd.metrics import DEFAULTS


def compute_inception_score(
    logits: torch.Tensor, splits: int = DEFAULTS["is_splits"], shuffle_seed: int | None = DEFAULTS["is_shuffle_seed"]
) -> tuple[float, float]:
    """(mean, population std) of the per-split scores of (N, classes) logits; ``shuffle_seed`` None keeps the order."""
    if logits.ndim != 2 or len(logits) < splits:
        raise ValueError(f"an Inception score over {splits} splits needs (N >= {splits}, C) logits, got {logits.shape}")
    count = len(logits)
    if shuffle_seed is not None:
        order = torch.from_numpy(np.random.RandomState(shuffle_seed).permutation(count)).to(logits.device)
        logits = logits[order]
    log_p = logits.double().log_softmax(dim=1)
    scores = []
    for split in range(splits):
        chunk = log_p[split * count // splits : (split + 1) * count // splits]
        log_marginal = chunk.exp().mean(dim=0).log()
        kl = (chunk.exp() * (chunk - log_marginal)).sum(dim=1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))
