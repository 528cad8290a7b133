"""timm models (CNNs, ViTs, MLPs) behind the zoo's interface, for the heterogeneous setting of OFA-KD (Hao et al.,
NeurIPS 2023, Hao840/OFAKD) and MLDR-KD (Ethan-Yang02/MLDR-KD).

A ``TimmClassifier`` returns ``ClassifierOutput(stages, pooled, logits)`` like the CIFAR zoo: four stage features as
(B, C, H, W) maps (what MLDR-KD's MSDF stage heads take), the pre-logits features the classifier reads, the logits.
The stages come from timm's own ``forward_intermediates`` (one implementation for every family, kept by timm):
- hierarchical models (ResNet, MobileNetV2, ConvNeXt, Swin, ...): the outputs of their last four resolution stages,
  e.g. timm ResNet18's layer1..layer4, (64, 56, 56) ... (512, 7, 7) at 224 px: MLDR-KD's ``_RESNET_STAGE_SHAPES``
  (mldr_kd/models.py), which hooks the same four modules; Swin's stage ends are OFA's Swin indices (1, 3, 9, 11);
- isotropic models (ViT / DeiT, MLP-Mixer, ResMLP): the outputs of blocks 2, 4, 10 and 12 of 12 (0-based 1, 3, 9, 11:
  OFA's ``stage_info`` in custom_forward/vision_transformer.py and mlp_mixer.py), the same fractions of the depth
  for other depths; patch tokens are laid out on their grid, (B, C, H/p, W/p), prefix (class) tokens dropped.
The state dict is the timm model's own, so teachers fine-tuned with timm (OFA / MLDR-KD releases) load as they are.
"""
import warnings

import timm
import torch
from torch import nn

from genkd.classifier.models.base import ClassifierOutput

OFA_BLOCK_FRACTIONS = (2 / 12, 4 / 12, 10 / 12, 12 / 12)  # blocks 2, 4, 10, 12 of a 12-block isotropic model
NUM_STAGES = 4


class TimmModelError(ValueError):
    """A timm architecture or its weights cannot be had; the message names the option to change."""


def stage_indices(model: nn.Module) -> list[int]:
    """Indices into ``model.feature_info`` (what ``forward_intermediates`` takes) of the four stage features."""
    info = model.feature_info
    reductions = {entry["reduction"] for entry in info}
    count = len(info)
    if count < NUM_STAGES:
        raise TimmModelError(f"{type(model).__name__} has {count} feature levels; four stages are needed")
    if len(reductions) > 1:  # hierarchical: the last four resolution stages
        return list(range(count - NUM_STAGES, count))
    indices = [max(0, round(count * fraction) - 1) for fraction in OFA_BLOCK_FRACTIONS]
    return indices if len(set(indices)) == NUM_STAGES else list(range(count - NUM_STAGES, count))


def create_timm_model(arch: str, num_classes: int, pretrained: str = "", **kwargs) -> nn.Module:
    """``timm.create_model`` with genkd's error messages.

    pretrained: "" = random init; "timm" = timm's weights for ``arch`` (downloaded by name, needs the internet; a tag
    such as ``vit_small_patch16_224.augreg_in21k`` picks the variant); a path = those weights from a local file. A
    classifier of another size than ``num_classes`` is re-initialised by timm (fine-tuning from ImageNet weights).
    """
    options = dict(kwargs)
    if pretrained:
        options["pretrained"] = True
        if pretrained != "timm":
            options["pretrained_cfg_overlay"] = {"file": str(pretrained)}
    try:
        return timm.create_model(arch, num_classes=num_classes, **options)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise TimmModelError(f"timm has no model {arch!r}: set timm.student / timm.teacher to a timm.list_models() name") from None
        raise
    except (OSError, ValueError, ImportError) as error:  # hub / connection / missing-file errors
        if not pretrained:
            raise
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TimmModelError(
            f"could not load timm weights for {arch!r} ({reason}): offline? download them where you are online and "
            "pass the local file instead (timm.pretrained PATH, or model.teacher_checkpoint PATH for a teacher)"
        ) from None


class TimmClassifier(nn.Module):
    """A timm model returning the zoo's ``ClassifierOutput``; ``stage_channels``, ``feature_dim``, ``num_classes``."""

    def __init__(self, arch: str, num_classes: int, pretrained: str = "", **kwargs):
        super().__init__()
        self.arch = arch
        self.model = create_timm_model(arch, num_classes, pretrained, **kwargs)
        self.num_classes = num_classes
        self.stage_indices = stage_indices(self.model)
        self.stage_channels = [self.model.feature_info[index]["num_chs"] for index in self.stage_indices]
        self.feature_dim = self.model.num_features if hasattr(self.model, "num_features") else self.model.head_hidden_size

    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        final, stages = self.model.forward_intermediates(x, indices=self.stage_indices, output_fmt="NCHW")
        pooled = self.model.forward_head(final, pre_logits=True)
        return ClassifierOutput(list(stages), pooled, self.model.get_classifier()(pooled))

    # The timm model's own keys: checkpoints of this trainer and timm-trained teachers are interchangeable.
    def state_dict(self, *args, **kwargs):
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state_dict, strict, assign)


def warn_random_teacher(arch: str) -> None:
    warnings.warn(
        f"the timm teacher {arch} has RANDOM weights (timm.random_teacher): fine for tests, meaningless as a teacher",
        stacklevel=2,
    )
