"""Evaluation samples of a class-conditional generator: balanced labels, seeded latents, uint8 images.

The latent codes and labels of all N samples are drawn on the CPU from one seed and each process generates its
contiguous share of them, so the N images are the same at any number of processes, and there are exactly N of them
(no padding duplicates, unlike a plain gather of equal-sized per-process batches).
"""
import torch
from torch import nn
from tqdm import tqdm


def balanced_labels(num_samples: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """``num_samples`` labels, each class ``num_samples // num_classes`` times or once more, in a seeded order.

    Which classes get the remainder is seeded too, so no class is favoured across seeds.
    """
    if num_classes < 1 or num_samples < 0:
        raise ValueError(f"need num_classes >= 1 and num_samples >= 0, got {num_classes} and {num_samples}")
    generator = torch.Generator().manual_seed(seed)
    counts = torch.full((num_classes,), num_samples // num_classes, dtype=torch.long)
    counts[torch.randperm(num_classes, generator=generator)[: num_samples % num_classes]] += 1
    labels = torch.repeat_interleave(torch.arange(num_classes), counts)
    return labels[torch.randperm(num_samples, generator=generator)]


def quantize(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats to uint8 the way a saved PNG would hold them: (x + 1) * 127.5, rounded, clamped."""
    return ((images.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def process_share(total: int, accelerator=None) -> slice:
    """This process's contiguous slice of ``total`` items; the slices of all processes tile [0, total) exactly."""
    if accelerator is None:
        return slice(0, total)
    rank, world = accelerator.process_index, accelerator.num_processes
    return slice(rank * total // world, (rank + 1) * total // world)


def gather_shares(local: torch.Tensor, total: int, accelerator=None) -> torch.Tensor:
    """Every process's share (see ``process_share``), concatenated in order, on every process.

    Shares differ by at most one item; each is padded to the largest for the collective and the padding dropped.
    """
    if accelerator is None or accelerator.num_processes == 1:
        return local
    world = accelerator.num_processes
    sizes = [(rank + 1) * total // world - rank * total // world for rank in range(world)]
    padded = local.new_zeros((max(sizes), *local.shape[1:]))
    padded[: len(local)] = local
    gathered = accelerator.gather(padded.contiguous()).view(world, max(sizes), *local.shape[1:])
    return torch.cat([gathered[rank, :size] for rank, size in enumerate(sizes)])


@torch.no_grad()
def sample_images(
    generator: nn.Module,
    num_classes: int,
    num_samples: int,
    batch_size: int = 500,
    seed: int = 0,
    accelerator=None,
    gather: bool = True,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (n, 3, H, W), labels (n,)) on the generator's device, from ``G(z, y)`` in eval mode.

    ``gather`` returns all ``num_samples`` on every process; otherwise only this process's share.
    """
    if accelerator is not None:
        generator = accelerator.unwrap_model(generator)
    device = next(generator.parameters()).device
    labels = balanced_labels(num_samples, num_classes, seed)
    latents = torch.randn(num_samples, generator.z_dim, generator=torch.Generator().manual_seed(seed))
    share = process_share(num_samples, accelerator)
    labels, latents = labels[share], latents[share]

    was_training = generator.training
    generator.eval()
    batches = []
    show = progress and (accelerator is None or accelerator.is_local_main_process)
    for start in tqdm(range(0, len(labels), batch_size), desc="sampling", disable=not show, leave=False):
        z = latents[start : start + batch_size].to(device)
        y = labels[start : start + batch_size].to(device)
        batches.append(quantize(generator(z, y)))
    generator.train(was_training)
    images = torch.cat(batches) if batches else torch.empty(0, 3, 32, 32, dtype=torch.uint8, device=device)
    labels = labels.to(device)
    if gather:
        images = gather_shares(images, num_samples, accelerator)
        labels = gather_shares(labels, num_samples, accelerator)
    return images, labels


# ---------------------------------------------------------------- `genkd sample`: chosen classes, truncation, grids


def truncated_latents(count: int, dim: int, truncation: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Standard normal latents; with ``truncation`` t > 0 every entry with |z| > t is redrawn until it is within t.

    BigGAN's truncation trick (Brock et al. 2019, sec. 3.1: "values which fall outside a range are resampled"):
    smaller t trades variety for fidelity. The redraws come from the same seeded generator, so a seed fixes the set.
    """
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(count, dim, generator=generator)
    if truncation > 0:
        outside = latents.abs() > truncation
        while outside.any():
            latents[outside] = torch.randn(int(outside.sum()), generator=generator)
            outside = latents.abs() > truncation
    return latents


def chosen_labels(count: int, num_classes: int, classes=None, seed: int = 0) -> torch.Tensor:
    """``count`` labels balanced over ``classes`` (all classes when None), in a seeded order (see balanced_labels)."""
    classes = list(range(num_classes)) if classes is None else list(classes)
    bad = [label for label in classes if not 0 <= label < num_classes]
    if bad or not classes:
        raise ValueError(f"classes must be ids in 0..{num_classes - 1}, got {classes}")
    return torch.tensor(classes)[balanced_labels(count, len(classes), seed)]


@torch.no_grad()
def generate(generator: nn.Module, labels, latents, batch_size: int = 500, accelerator=None, train_mode=False,
             progress: bool = True) -> torch.Tensor:  # fmt: skip
    """uint8 images (N, 3, H, W) of ``generator(latents, labels)`` on every process; each process makes its share.

    ``train_mode`` samples with batch statistics in the batch norms (the reference's G_eval_mode off)."""
    if accelerator is not None:
        generator = accelerator.unwrap_model(generator)
    device = next(generator.parameters()).device
    share = process_share(len(labels), accelerator)
    was_training = generator.training
    generator.train(train_mode)
    batches = []
    show = progress and (accelerator is None or accelerator.is_local_main_process)
    local_labels, local_latents = labels[share], latents[share]
    for start in tqdm(range(0, len(local_labels), batch_size), desc="sampling", disable=not show, leave=False):
        y = local_labels[start : start + batch_size].to(device)
        batches.append(quantize(generator(local_latents[start : start + batch_size].to(device), y)))
    generator.train(was_training)
    images = torch.cat(batches) if batches else torch.empty(0, 3, 32, 32, dtype=torch.uint8, device=device)
    return gather_shares(images, len(labels), accelerator)


@torch.no_grad()
def interpolation_grid(generator: nn.Module, classes, steps: int = 8, truncation: float = 0.0, seed: int = 0,
                       train_mode: bool = False) -> torch.Tensor:  # fmt: skip
    """uint8 images (rows * steps, 3, H, W): per class row, ``steps`` points on the line between two seeded latents."""
    ends = truncated_latents(2, generator.z_dim, truncation, seed)
    weights = torch.linspace(0, 1, steps)[:, None]
    line = (1 - weights) * ends[0] + weights * ends[1]  # (steps, z_dim)
    labels = torch.tensor(list(classes)).repeat_interleave(steps)
    return generate(generator, labels, line.repeat(len(classes), 1), train_mode=train_mode, progress=False)
