"""Evaluation samples of a class-conditional generator: balanced labels, seeded latents, uint8 images.

The latent codes and labels of all N samples are drawn on the CPU from one seed and each process generates its
contiguous share of them, so the N images are the same at any number of processes, and there are exactly N of them
(no padding duplicates, unlike a plain gather of equal-sized per-process batches).

Sampling modes (``eval.sample_mode``):

- ``train`` (the reference): batch norm normalises each generator call by that batch's own statistics. The reference
  (data-efficient-gans DiffAugment-biggan-cifar, KD_DLGAN) never passes ``--G_eval_mode``, so train.py keeps
  ``G_ema.train()`` and ``utils.sample`` draws ``G_ema(z, y)`` in batches of ``--batch_size`` 50, in train.py's
  FID tests and in eval.py alike. Here the batches form one global grid of ``batch_size`` samples (the last one
  padded with extra seeded latents, whose images are dropped, as the reference drops the rest of its last batch),
  so every image still does not depend on the process count. Only the batch-norm layers switch to batch statistics,
  with ``track_running_stats`` off for the call: nothing is written, so G_ema's running statistics and everything
  else in its state dict stay exactly as they were, with no copy to save and restore and no state left modified if
  sampling fails half-way. Spectral norm keeps its stored power-iteration vectors: the reference's train-mode
  forward computes sigma from its stored u exactly as its eval mode does (layers.SN.W_; the update it then stores
  only moves later batches by a further power-iteration step, nil for a trained model's converged vectors).
- ``eval``: running statistics (PyTorch's usual evaluation), each sample a function of its own (z, y) only.
"""
import math
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm import tqdm

SAMPLE_MODES = ("train", "eval")


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


@contextmanager
def sampling_mode(generator: nn.Module, mode: str):
    """The generator in eval mode, its batch-norm layers on batch statistics in ``train`` mode (see the module
    docstring); its modes and flags are put back afterwards."""
    if mode not in SAMPLE_MODES:
        raise ValueError(f"unknown sample mode {mode!r}; accepted: {', '.join(SAMPLE_MODES)}")
    was_training = generator.training
    norms = [module for module in generator.modules() if isinstance(module, _BatchNorm)] if mode == "train" else []
    tracking = [norm.track_running_stats for norm in norms]
    generator.eval()
    for norm in norms:
        norm.train()
        norm.track_running_stats = False  # batch statistics, and no running-statistics update
    try:
        yield generator
    finally:
        for norm, flag in zip(norms, tracking):
            norm.track_running_stats = flag
        generator.train(was_training)


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
    mode: str = "eval",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (n, 3, H, W), labels (n,)) on the generator's device, from ``G(z, y)`` in sampling ``mode``.

    ``gather`` returns all ``num_samples`` on every process; otherwise only this process's share. In ``train`` mode
    ``batch_size`` is also the number of images whose statistics each batch norm uses (the reference's 50).
    """
    if accelerator is not None:
        generator = accelerator.unwrap_model(generator)
    device = next(generator.parameters()).device
    latent_generator = torch.Generator().manual_seed(seed)
    labels = balanced_labels(num_samples, num_classes, seed)
    latents = torch.randn(num_samples, generator.z_dim, generator=latent_generator)
    share = process_share(num_samples, accelerator)
    if mode == "train":  # whole batches of the global grid that overlap this share, the last one padded
        padding = math.ceil(num_samples / batch_size) * batch_size - num_samples
        latents = torch.cat([latents, torch.randn(padding, generator.z_dim, generator=latent_generator)])
        padded_labels = torch.cat([labels, torch.randint(num_classes, (padding,), generator=latent_generator)])
        first = share.start // batch_size * batch_size
        last = math.ceil(share.stop / batch_size) * batch_size if share.stop > share.start else first
        inputs, keep = (latents[first:last], padded_labels[first:last]), slice(share.start - first, share.stop - first)
    else:
        inputs, keep = (latents[share], labels[share]), slice(None)

    batches = []
    show = progress and (accelerator is None or accelerator.is_local_main_process)
    with sampling_mode(generator, mode):
        for start in tqdm(range(0, len(inputs[0]), batch_size), desc="sampling", disable=not show, leave=False):
            z, y = (part[start : start + batch_size].to(device) for part in inputs)
            batches.append(quantize(generator(z, y)))
    images = torch.cat(batches)[keep] if batches else torch.empty(0, 3, 32, 32, dtype=torch.uint8, device=device)
    labels = labels[share].to(device)
    if gather:
        images = gather_shares(images, num_samples, accelerator)
        labels = gather_shares(labels, num_samples, accelerator)
    return images, labels
