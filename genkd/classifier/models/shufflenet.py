"""ShuffleNet V1 (Zhang et al. 2018, 3 groups) and V2 (Ma et al. 2018, 1x) for CIFAR as in the KD literature: a 1x1
stem without down-sampling, then three stride-2 stages (16, 8, 4 pixels)."""
import torch
import torch.nn.functional as F
from torch import nn

from genkd.classifier.models.base import CifarClassifier, conv1x1, conv3x3

STEM_CHANNELS = 24


class ShuffleUnitV1(nn.Module):
    """Grouped 1x1, channel shuffle, depthwise 3x3, grouped 1x1, at a quarter of the output width. A stride-2 unit
    concatenates its average-pooled input (its branch adds only ``out - in`` channels) instead of adding it."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int, first_groups: int):
        super().__init__()
        branch_channels = out_channels - in_channels if stride == 2 else out_channels
        mid = branch_channels // 4
        self.stride = stride
        self.conv1 = conv1x1(in_channels, mid, groups=first_groups)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle = nn.ChannelShuffle(first_groups)
        self.conv2 = conv3x3(mid, mid, stride, groups=mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = conv1x1(mid, branch_channels, groups=groups)
        self.bn3 = nn.BatchNorm2d(branch_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shuffle(F.relu(self.bn1(self.conv1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(CifarClassifier):
    head_name = "linear"

    def __init__(self, num_classes: int, widths=(240, 480, 960), units=(4, 8, 4), groups: int = 3):
        super().__init__(num_classes, list(widths))
        self.conv1 = conv1x1(3, STEM_CHANNELS)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        in_channels = STEM_CHANNELS
        for index, (width, count) in enumerate(zip(widths, units), start=1):
            layer = []
            for i in range(count):
                first_groups = 1 if index == 1 and i == 0 else groups  # the narrow stem output is not grouped
                layer.append(ShuffleUnitV1(in_channels, width, 2 if i == 0 else 1, groups, first_groups))
                in_channels = width
            self.add_module(f"layer{index}", nn.Sequential(*layer))
        self.linear = nn.Linear(in_channels, num_classes)
        self.init_weights()


class DownUnitV2(nn.Module):
    """Stride-2 unit: both halves see the whole input (depthwise 3x3 + 1x1 | 1x1 + depthwise 3x3 + 1x1)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = conv3x3(in_channels, in_channels, 2, groups=in_channels)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = conv1x1(in_channels, mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = conv1x1(in_channels, mid)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = conv3x3(mid, mid, 2, groups=mid)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = conv1x1(mid, mid)
        self.bn5 = nn.BatchNorm2d(mid)
        self.shuffle = nn.ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        return self.shuffle(torch.cat([left, right], 1))


class BasicUnitV2(nn.Module):
    """Channel split: one half passes through, the other goes 1x1, depthwise 3x3, 1x1; then a shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1 = conv1x1(half, half)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = conv3x3(half, half, groups=half)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = conv1x1(half, half)
        self.bn3 = nn.BatchNorm2d(half)
        self.shuffle = nn.ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, branch = x.chunk(2, dim=1)
        branch = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(branch)))))
        branch = F.relu(self.bn3(self.conv3(branch)))
        return self.shuffle(torch.cat([kept, branch], 1))


class ShuffleNetV2(CifarClassifier):
    head_name = "linear"

    def __init__(self, num_classes: int, widths=(116, 232, 464), units=(3, 7, 3), last_channels: int = 1024):
        super().__init__(num_classes, [*widths[:2], last_channels])
        self.conv1 = conv1x1(3, STEM_CHANNELS)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        in_channels = STEM_CHANNELS
        for index, (width, count) in enumerate(zip(widths, units), start=1):
            self.add_module(f"layer{index}", nn.Sequential(DownUnitV2(in_channels, width), *(BasicUnitV2(width) for _ in range(count))))
            in_channels = width
        self.conv2 = conv1x1(in_channels, last_channels)
        self.bn2 = nn.BatchNorm2d(last_channels)
        self.linear = nn.Linear(last_channels, num_classes)
        self.init_weights()

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        stage1 = self.layer1(x)
        stage2 = self.layer2(stage1)
        return [stage1, stage2, F.relu(self.bn2(self.conv2(self.layer3(stage2))))]
