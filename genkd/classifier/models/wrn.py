"""Wide ResNets (Zagoruyko & Komodakis 2016): depth 6n+4, n pre-activation blocks per stage, widths 16k/32k/64k."""
import torch
import torch.nn.functional as F
from torch import nn

from genkd.classifier.models.base import CifarClassifier, conv1x1, conv3x3


class WideBlock(nn.Module):
    """bn-relu-conv twice plus the shortcut; a changing shape takes a 1x1 conv of the activated input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.convShortcut = None
        if stride != 1 or in_channels != out_channels:
            self.convShortcut = conv1x1(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
        return out + (x if self.convShortcut is None else self.convShortcut(activated))


class WideStage(nn.Module):
    """A sequence of wide blocks, the first one changing width and resolution."""

    def __init__(self, blocks: int, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(
            *(WideBlock(in_channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1) for i in range(blocks))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(CifarClassifier):
    def __init__(self, depth: int, widen_factor: int, num_classes: int):
        if (depth - 4) % 6:
            raise ValueError(f"a Wide ResNet has depth 6n+4 (16, 28, 40), not {depth}")
        blocks = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        super().__init__(num_classes, widths)
        self.conv1 = conv3x3(3, 16)
        self.block1 = WideStage(blocks, 16, widths[0], 1)
        self.block2 = WideStage(blocks, widths[0], widths[1], 2)
        self.block3 = WideStage(blocks, widths[1], widths[2], 2)
        self.bn1 = nn.BatchNorm2d(widths[2])  # the pre-activation network's final bn-relu
        self.fc = nn.Linear(widths[2], num_classes)
        self.init_weights()

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        stage1 = self.block1(self.conv1(x))
        stage2 = self.block2(stage1)
        return [stage1, stage2, F.relu(self.bn1(self.block3(stage2)))]
