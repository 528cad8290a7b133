"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

The same random augmentation is applied to real and generated images before every discriminator call, and it is
differentiable in the images, so the generator's gradient passes through it: D cannot memorise the few real images,
and G is not pushed to generate augmented-looking images. Every sample draws its own parameters; there are no Python
loops over the batch. Inputs are NCHW float tensors in [-1, 1] on any device.
"""
import torch
import torch.nn.functional as F

TRANSLATION_RATIO = 0.125  # largest shift, as a share of the image size
CUTOUT_RATIO = 0.5  # side of the cut-out square, as a share of the image size


def _per_sample_uniform(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return torch.empty(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device).uniform_(low, high)


def brightness(x: torch.Tensor) -> torch.Tensor:
    """Add U(-0.5, 0.5) to every pixel of a sample."""
    return x + _per_sample_uniform(x, -0.5, 0.5)


def saturation(x: torch.Tensor) -> torch.Tensor:
    """Scale each pixel's distance from its channel mean (its grey value) by U(0, 2)."""
    grey = x.mean(dim=1, keepdim=True)
    return grey + (x - grey) * _per_sample_uniform(x, 0.0, 2.0)


def contrast(x: torch.Tensor) -> torch.Tensor:
    """Scale each image's distance from its mean by U(0.5, 1.5)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + (x - mean) * _per_sample_uniform(x, 0.5, 1.5)


def translation(x: torch.Tensor, ratio: float = TRANSLATION_RATIO) -> torch.Tensor:
    """Move each image by a random whole number of pixels (up to ``ratio`` of its size) per axis, filling with zeros.

    out[:, :, i, j] = x[:, :, i - dy, j - dx]: a zero-padded copy is read at shifted rows, then shifted columns
    (two gathers, whose backward is a scatter-add, so gradients reach exactly the pixels that were kept).
    """
    batch, channels, height, width = x.shape
    max_dy, max_dx = int(height * ratio + 0.5), int(width * ratio + 0.5)
    dy = torch.randint(-max_dy, max_dy + 1, (batch, 1), device=x.device)
    dx = torch.randint(-max_dx, max_dx + 1, (batch, 1), device=x.device)
    padded = F.pad(x, [max_dx, max_dx, max_dy, max_dy])
    rows = torch.arange(height, device=x.device) + max_dy - dy  # (B, H) rows of the padded image to read
    cols = torch.arange(width, device=x.device) + max_dx - dx  # (B, W)
    padded = padded.gather(2, rows[:, None, :, None].expand(batch, channels, height, width + 2 * max_dx))
    return padded.gather(3, cols[:, None, None, :].expand(batch, channels, height, width))


def cutout(x: torch.Tensor, ratio: float = CUTOUT_RATIO) -> torch.Tensor:
    """Zero a square of side ``ratio`` of the image size centred anywhere in the image (clipped at the borders)."""
    batch, _, height, width = x.shape
    size_y, size_x = int(height * ratio + 0.5), int(width * ratio + 0.5)
    # Centres range over 0..H (even sizes) so that every pixel is covered equally often; top = centre - size // 2.
    top = torch.randint(0, height + 1 - size_y % 2, (batch, 1), device=x.device) - size_y // 2
    left = torch.randint(0, width + 1 - size_x % 2, (batch, 1), device=x.device) - size_x // 2
    rows = torch.arange(height, device=x.device)
    cols = torch.arange(width, device=x.device)
    inside_rows = (rows >= top) & (rows < top + size_y)  # (B, H)
    inside_cols = (cols >= left) & (cols < left + size_x)  # (B, W)
    keep = ~(inside_rows[:, :, None] & inside_cols[:, None, :])  # (B, H, W)
    return x * keep[:, None].to(x.dtype)


AUGMENTATIONS = {
    "color": [brightness, saturation, contrast],
    "translation": [translation],
    "cutout": [cutout],
}


def diff_augment(x: torch.Tensor, policy: str) -> torch.Tensor:
    """Apply the comma-separated augmentations of ``policy`` (e.g. "translation,cutout") in order; "" = identity."""
    for name in filter(None, (part.strip() for part in policy.split(","))):
        if name not in AUGMENTATIONS:
            raise ValueError(f"unknown DiffAugment policy {name!r}; accepted: {', '.join(AUGMENTATIONS)}")
        for augment in AUGMENTATIONS[name]:
            x = augment(x)
    return x
