"""BigGAN at 32x32, the architecture of the DiffAugment BigGAN-CIFAR reference (mit-han-lab/data-efficient-gans,
DiffAugment-biggan-cifar, itself ajbrock/BigGAN-PyTorch with its CIFAR arch and the flags of its scripts).

Generator: z -> linear -> (4w, 4, 4) -> ``blocks`` up-sampling residual blocks of 4w channels with class-conditional
batch norm -> BN-ReLU-conv3x3 -> tanh. Discriminator: residual blocks of 4w channels, the first two down-sampling
(32 -> 16 -> 8) and the rest keeping 8x8 (the reference's D_arch[32]: downsample [True, True, False, False]) -> ReLU
-> global sum pooling -> features (4w) -> linear + projection onto a class embedding (Miyato & Koyama 2018).
Spectral norm on every conv and linear layer of both nets and on D's class embedding; G's class embeddings stay plain,
as in the reference ("SN on G's embedding seems to randomly cripple G"). N(0, 0.02) init (the scripts' N02), no
attention (the scripts' --G_attn 0 --D_attn 0).

Checked against DiffAugment-biggan-cifar BigGAN.py / layers.py (same files in BigGAN-PyTorch and KD_DLGAN's
third_party/): class conditioning per layer (``model.shared_dim`` 0: G_shared is off in every script, so each ccbn's
gain and bias are ``nn.Embedding(n_classes, channels)``, N02-initialised, no SN, applied as ``bn(x) * (1 + gain[y]) +
bias[y]``); hier off; bottom width 4; batch norm eps 1e-5 and momentum 0.1 (ccbn's F.batch_norm; the output layer's
``layers.bn`` has a learnable gain 1 / bias 0, i.e. an affine BatchNorm2d); spectral-norm eps 1e-8 (utils.py
``--SN_eps`` default, passed to both nets; torch's default is 1e-12); one power iteration per training forward. The
power iteration runs its two half-steps in the other order than layers.SN (see genkd/convert.py, which maps their
vectors); the 1x1 shortcuts commute with the up- and down-sampling, so their order only changes rounding.
"""
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

IMAGE_SIZE = 32
SN_EPS = 1e-8  # layers.SN's eps as the reference scripts set it (utils.py --SN_eps)


def normal_init(module: nn.Module) -> nn.Module:
    """The reference's N02 init: weights ~ N(0, 0.02), biases keep PyTorch's default."""
    nn.init.normal_(module.weight, 0.0, 0.02)
    return module


def sn(module: nn.Module) -> nn.Module:
    """N02 init, then spectral norm, so that its power-iteration vectors start from the final weights."""
    return spectral_norm(normal_init(module), eps=SN_EPS)


def sn_conv(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Module:
    return sn(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2))


class ConditionalBatchNorm(nn.Module):
    """Batch norm whose per-channel gain (1 + .) and bias depend on the class (BigGAN's ccbn).

    With a shared class embedding (``shared_dim`` > 0) gain and bias are spectrally normalised linear maps of it;
    with ``shared_dim`` 0 each layer has class embeddings of its own (the reference scripts, which leave G_shared off).
    """

    def __init__(self, channels: int, num_classes: int, shared_dim: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        if shared_dim:
            self.gain = sn(nn.Linear(shared_dim, channels, bias=False))
            self.bias = sn(nn.Linear(shared_dim, channels, bias=False))
        else:
            self.gain = normal_init(nn.Embedding(num_classes, channels))
            self.bias = normal_init(nn.Embedding(num_classes, channels))

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        gain = 1.0 + self.gain(condition)[:, :, None, None]
        return self.norm(x) * gain + self.bias(condition)[:, :, None, None]


class GeneratorBlock(nn.Module):
    """BN-ReLU-up-conv-BN-ReLU-conv, plus a 1x1-conv shortcut of the up-sampled input."""

    def __init__(self, in_channels: int, out_channels: int, num_classes: int, shared_dim: int):
        super().__init__()
        self.bn1 = ConditionalBatchNorm(in_channels, num_classes, shared_dim)
        self.conv1 = sn_conv(in_channels, out_channels)
        self.bn2 = ConditionalBatchNorm(out_channels, num_classes, shared_dim)
        self.conv2 = sn_conv(out_channels, out_channels)
        self.shortcut = sn_conv(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, condition)), scale_factor=2)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), condition)))
        # A 1x1 conv commutes with nearest up-sampling: same result as the reference's order, at a quarter of the cost.
        return h + F.interpolate(self.shortcut(x), scale_factor=2)


class Generator(nn.Module):
    def __init__(self, num_classes: int, width: int = 64, z_dim: int = 128, shared_dim: int = 0, blocks: int = 3):
        super().__init__()
        if not 1 <= blocks <= 5:
            raise ValueError(
                f"the generator needs 1 to 5 up-sampling blocks for {IMAGE_SIZE}x{IMAGE_SIZE} images, got {blocks}"
            )
        channels = 4 * width
        self.z_dim = z_dim
        self.bottom_width = IMAGE_SIZE >> blocks
        self.shared = normal_init(nn.Embedding(num_classes, shared_dim)) if shared_dim else nn.Identity()
        self.linear = sn(nn.Linear(z_dim, channels * self.bottom_width**2))
        self.blocks = nn.ModuleList(GeneratorBlock(channels, channels, num_classes, shared_dim) for _ in range(blocks))
        self.output = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(), sn_conv(channels, 3))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, 32, 32) in [-1, 1] for noise z (B, z_dim) and class labels y (B,)."""
        condition = self.shared(y)
        h = self.linear(z).view(z.size(0), -1, self.bottom_width, self.bottom_width)
        for block in self.blocks:
            h = block(h, condition)
        return torch.tanh(self.output(h))


class DiscriminatorBlock(nn.Module):
    """(ReLU)-conv-ReLU-conv-(avg-pool), plus a shortcut: 1x1 conv when the shape changes, identity otherwise.

    The first block skips the leading ReLU because its input is the image. The shortcut pools before its 1x1 conv
    (they commute; pooling first is cheaper).
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool, preactivation: bool):
        super().__init__()
        self.downsample, self.preactivation = downsample, preactivation
        self.conv1 = sn_conv(in_channels, out_channels)
        self.conv2 = sn_conv(out_channels, out_channels)
        changes_shape = downsample or in_channels != out_channels
        self.shortcut = sn_conv(in_channels, out_channels, kernel_size=1) if changes_shape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self.conv2(F.relu(self.conv1(h)))
        if self.downsample:
            h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
        return h + self.shortcut(x)


class Discriminator(nn.Module):
    def __init__(self, num_classes: int, width: int = 64, blocks: int = 4):
        super().__init__()
        channels = 4 * width
        self.feature_dim = channels
        # The first block sees the image (no leading ReLU); the first two halve the size, as the reference's D_arch[32].
        self.blocks = nn.Sequential(
            *(
                DiscriminatorBlock(channels if index else 3, channels, downsample=index < 2, preactivation=index > 0)
                for index in range(blocks)
            )
        )
        self.linear = sn(nn.Linear(channels, 1))
        self.embed = sn(nn.Embedding(num_classes, channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor, return_features: bool = False):
        """Logits (B,) for images x (B, 3, H, W) of classes y; with ``return_features`` also the pooled features."""
        features = F.relu(self.blocks(x)).sum(dim=(2, 3))
        logits = self.linear(features).squeeze(1) + (self.embed(y) * features).sum(dim=1)
        return (logits, features) if return_features else logits


def build_models(model_cfg: Mapping, num_classes: int) -> tuple[Generator, Discriminator]:
    generator = Generator(
        num_classes, model_cfg["g_width"], model_cfg["z_dim"], model_cfg["shared_dim"], model_cfg["g_blocks"]
    )
    discriminator = Discriminator(num_classes, model_cfg["d_width"], model_cfg["d_blocks"])
    return generator, discriminator
