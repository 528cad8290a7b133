"""An open_clip image encoder with a linear head: a linear probe that can then serve as a teacher."""
from typing import Mapping, Sequence

import torch
from torch import nn

from genkd.classifier.models.base import ClassifierOutput
from genkd.teachers import build_teacher


class ClipClassifier(nn.Module):
    """Frozen encoder (genkd.teachers.Teacher, images in [-1, 1] -> (B, feature_dim)) + trainable nn.Linear head.

    It takes the same normalised images as the CNNs of the zoo and undoes the normalisation itself. It has no
    convolutional stages (``stages`` is empty), so it can be the teacher of every method but MLDR-KD's stage heads
    need a CNN student. Its state dict is the head alone: the encoder is rebuilt from its own weights (the ``clip``
    config section), which keeps checkpoints small.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.encoder = encoder
        self.num_classes = num_classes
        self.feature_dim = encoder.feature_dim
        self.stage_channels: list[int] = []
        self.head = nn.Linear(self.feature_dim, num_classes)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, clip_cfg: Mapping, num_classes: int, mean, std) -> "ClipClassifier":
        return cls(build_teacher(clip_cfg), num_classes, mean, std)

    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        images = (x.float() * self.std + self.mean) * 2 - 1
        pooled = self.encoder(images)
        return ClassifierOutput([], pooled, self.head(pooled))

    def state_dict(self, *args, **kwargs):
        return self.head.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.head.load_state_dict(state_dict, strict, assign)
