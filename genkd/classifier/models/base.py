"""What every classifier of the zoo returns, and the base class that makes it so."""
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class ClassifierOutput(NamedTuple):
    """Everything a distillation loss may need, from one forward pass."""

    stages: list[torch.Tensor]  # output of each resolution stage (B, C_i, H_i, W_i); the last one is pooled
    pooled: torch.Tensor  # (B, feature_dim): global average of the last stage, the head's input
    logits: torch.Tensor  # (B, num_classes)


class CifarClassifier(nn.Module):
    """A CNN for 32x32 images: subclasses build their layers and return the stage outputs from ``forward_stages``.

    Layers carry RepDistiller's attribute names (``layer1``, ``fc``, ``block0``, ...) so that the teachers people
    share from that code base (``{'model': state_dict}``) load as they are.
    """

    head_name = "fc"  # attribute holding the linear classifier

    def __init__(self, num_classes: int, stage_channels: list[int]):
        super().__init__()
        self.num_classes = num_classes
        self.stage_channels = list(stage_channels)
        self.feature_dim = self.stage_channels[-1]

    @property
    def head(self) -> nn.Module:
        return getattr(self, self.head_name)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """conv1-bn1-ReLU stem, then the outputs of layer1..layer3: the CIFAR ResNets' and ShuffleNetV1's layout;
        the other models override it."""
        x = F.relu(self.bn1(self.conv1(x)))
        stages = []
        for layer in (self.layer1, self.layer2, self.layer3):
            x = layer(x)
            stages.append(x)
        return stages

    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        stages = self.forward_stages(x)
        pooled = stages[-1].mean((2, 3))
        return ClassifierOutput(stages, pooled, self.head(pooled))

    def init_weights(self) -> None:
        """He-normal convolutions (fan-out, as the CIFAR ResNet/WRN/VGG/MobileNet references), unit batch norms."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride, 1, groups=groups, bias=bias)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride, groups=groups, bias=False)
