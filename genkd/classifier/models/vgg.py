"""VGG with batch norm for CIFAR (the KD literature's "vgg8"/"vgg13"): five conv stages, no fully connected layers
but the classifier. Max-pooling halves the resolution before stages 1-3, so stages 3 and 4 both run at 4x4."""
import torch
import torch.nn.functional as F
from torch import nn

from genkd.classifier.models.base import CifarClassifier, conv3x3


def vgg_stage(in_channels: int, widths: list[int]) -> nn.Sequential:
    layers = []
    for width in widths:
        layers += [conv3x3(in_channels, width, bias=True), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers)


class VGG(CifarClassifier):
    head_name = "classifier"

    def __init__(self, stage_widths: list[list[int]], num_classes: int):
        super().__init__(num_classes, [widths[-1] for widths in stage_widths])
        in_channels = 3
        for index, widths in enumerate(stage_widths):
            self.add_module(f"block{index}", vgg_stage(in_channels, widths))
            in_channels = widths[-1]
        self.classifier = nn.Linear(in_channels, num_classes)
        self.init_weights()
        nn.init.normal_(self.classifier.weight, std=0.01)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        stages = []
        for index in range(len(self.stage_channels)):
            if 1 <= index <= 3:
                x = F.max_pool2d(x, 2)
            x = getattr(self, f"block{index}")(x)
            stages.append(x)
        return stages


VGG8 = [[64], [128], [256], [512], [512]]
VGG13 = [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]
