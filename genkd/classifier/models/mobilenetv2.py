"""MobileNetV2 (Sandler et al. 2018) for CIFAR as in the KD literature ("mobile_half": width x0.5, expansion 6).

A stride-2 stem brings 32x32 inputs to 16x16; the 17 inverted-residual blocks end at 2x2, then a 1x1 conv widens to
1280 channels (kept at 1280 for width multipliers <= 1, as in the paper).
"""
import torch
from torch import nn

from genkd.classifier.models.base import CifarClassifier, conv1x1, conv3x3

# (expansion, channels, blocks, stride) per group; expansion None means the model's expansion factor.
BLOCK_GROUPS = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))
STAGE_ENDS = (1, 2, 4)  # groups ending the 16x16, 8x8 and 4x4 resolutions; the 2x2 stage ends with the 1x1 conv


def conv_bn_relu(conv: nn.Conv2d) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(conv.out_channels), nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expansion, depthwise 3x3, linear 1x1 projection; a residual when the shape allows it."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.conv = nn.Sequential(
            *conv_bn_relu(conv1x1(in_channels, hidden)),
            *conv_bn_relu(conv3x3(hidden, hidden, stride, groups=hidden)),
            conv1x1(hidden, out_channels),
            nn.BatchNorm2d(out_channels),
        )
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(CifarClassifier):
    head_name = "classifier"

    def __init__(self, num_classes: int, width_mult: float = 0.5, expansion: int = 6):
        widths = [int(channels * width_mult) for _, channels, _, _ in BLOCK_GROUPS]
        last_channels = max(1280, int(1280 * width_mult))
        super().__init__(num_classes, [widths[i] for i in STAGE_ENDS] + [last_channels])
        in_channels = int(32 * width_mult)
        self.conv1 = conv_bn_relu(conv3x3(3, in_channels, stride=2))
        self.blocks = nn.ModuleList()
        for (group_expansion, _, blocks, stride), width in zip(BLOCK_GROUPS, widths):
            units = []
            for i in range(blocks):
                units.append(InvertedResidual(in_channels, width, stride if i == 0 else 1, group_expansion or expansion))
                in_channels = width
            self.blocks.append(nn.Sequential(*units))
        self.conv2 = conv_bn_relu(conv1x1(in_channels, last_channels))
        self.classifier = nn.Sequential(nn.Linear(last_channels, num_classes))
        self.init_weights()
        nn.init.normal_(self.classifier[0].weight, std=0.01)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.conv1(x)
        stages = []
        for index, group in enumerate(self.blocks):
            x = group(x)
            if index in STAGE_ENDS:
                stages.append(x)
        return stages + [self.conv2(x)]
