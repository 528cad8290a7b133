"""CIFAR ResNets (He et al. 2016, section 4.2): a 3x3 stem, three stages of basic blocks at 32, 16 and 8 pixels.

Depth 6n+2 has n blocks per stage. The "x4" models of the KD literature (CRD, Tian et al. 2020) use stage widths
64/128/256 after a 32-channel stem instead of 16/16/32/64.
"""
import torch
import torch.nn.functional as F
from torch import nn

from genkd.classifier.models.base import CifarClassifier, conv1x1, conv3x3


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus the shortcut (a 1x1 projection when the shape changes), then relu."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(CifarClassifier):
    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int):
        if (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n+2 (8, 20, 32, 56, 110), not {depth}")
        blocks = (depth - 2) // 6
        stem, *stage_widths = widths
        super().__init__(num_classes, stage_widths)
        self.conv1 = conv3x3(3, stem)
        self.bn1 = nn.BatchNorm2d(stem)
        in_channels = stem
        for index, (width, stride) in enumerate(zip(stage_widths, (1, 2, 2)), start=1):
            units = [BasicBlock(in_channels if i == 0 else width, width, stride if i == 0 else 1) for i in range(blocks)]
            self.add_module(f"layer{index}", nn.Sequential(*units))
            in_channels = width
        self.fc = nn.Linear(in_channels, num_classes)
        self.init_weights()


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand x4, plus the shortcut (a 1x1 projection when the shape
    changes), then relu. RepDistiller's attribute names (``shortcut`` for the projection), so its ResNet50 loads."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()  # identity; parameter-free, so it adds no state-dict keys
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class CifarResNet50(CifarClassifier):
    """RepDistiller's ``ResNet50`` for 32x32 images (models/resnetv2.py): the ImageNet bottleneck ResNet-50 with a
    3x3 stride-1 stem and no max-pool, stages of 3/4/6/3 blocks at 32, 16, 8 and 4 pixels (widths 256..2048), the
    head named ``linear``. 23,705,252 parameters for 100 classes; four stages, unlike the CIFAR ResNets' three."""

    head_name = "linear"

    def __init__(self, num_classes: int, blocks: tuple[int, ...] = (3, 4, 6, 3)):
        widths = [64 * 2**index for index in range(len(blocks))]
        super().__init__(num_classes, [width * Bottleneck.expansion for width in widths])
        self.conv1 = conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64)
        in_channels = 64
        for index, (count, width) in enumerate(zip(blocks, widths), start=1):
            stride = 1 if index == 1 else 2
            units = []
            for i in range(count):
                units.append(Bottleneck(in_channels, width, stride if i == 0 else 1))
                in_channels = width * Bottleneck.expansion
            self.add_module(f"layer{index}", nn.Sequential(*units))
        self.linear = nn.Linear(in_channels, num_classes)
        self.init_weights()

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        stages = []
        for index in range(1, len(self.stage_channels) + 1):
            x = getattr(self, f"layer{index}")(x)
            stages.append(x)
        return stages
