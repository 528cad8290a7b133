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
