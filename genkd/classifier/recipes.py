"""The two training recipes of the classifier track: learning-rate schedules and data pipelines.

"cifar" (CRD / RepDistiller, Tian et al. 2020): 32 px random crop (zero padding 4) + flip, 240 epochs of SGD, batch
64, lr x0.1 at epochs 150/180/210. The trainer's defaults are this recipe.

"hetero" (OFA-KD, Hao et al. NeurIPS 2023, Hao840/OFAKD configs/cifar/cnn.yaml; MLDR-KD, Ethan-Yang02/MLDR-KD
configs/cifar100/*.yaml and train.py): CIFAR images up-sampled to 224 px for timm models; 300 epochs, batch 128, SGD
lr 0.05 with Nesterov momentum 0.9, weight decay 2e-3, 3 warm-up epochs from 1e-4, cosine to 1e-3, label smoothing
0.1. Data: timm's ``create_transform`` with MLDR-KD's settings: RandomResizedCrop to 224 (scale 0.08-1, ratio 3/4-4/3,
bilinear or bicubic drawn per image), horizontal flip 0.5, no colour jitter / AutoAugment / random erasing / mixup;
evaluation resizes to 256 (bilinear) and centre-crops 224 (crop_pct 0.875); normalised with OFA's / MLDR-KD's
CIFAR-100 statistics. Both references set the learning rate once per epoch, as here. Differences between the two
references (followed here: MLDR-KD): OFA builds SGD with timm's optimizer factory (no weight decay on biases and
norms) and takes the evaluation crop and interpolation from each model's pretrained config.
"""
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from timm.data import create_transform
from torchvision.transforms import v2

# OFA-KD train.py / MLDR-KD train.py: the statistics their CIFAR-100 teachers were fine-tuned with.
HETERO_NORMALIZATION = {"cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
HETERO_CROP_PCT = 0.875  # MLDR-KD train.py: evaluation resize to image_size / 0.875, then centre crop


def learning_rate(train_cfg: Mapping, epoch: int) -> float:
    """The lr of a 0-based epoch.

    schedule "step": lr * lr_decay ** (number of lr_milestones passed).
    schedule "cosine" (MLDR-KD train.py ``set_learning_rate``): during the first ``warmup_epochs`` a linear ramp
    warmup_lr -> lr (epoch e gets warmup_lr + (lr - warmup_lr) * e / warmup_epochs), then a cosine from lr at the
    first epoch after warm-up to exactly min_lr at the last epoch.
    """
    lr = train_cfg["lr"]
    if train_cfg["schedule"] == "step":
        return lr * train_cfg["lr_decay"] ** sum(epoch >= milestone for milestone in train_cfg["lr_milestones"])
    warmup, epochs = train_cfg["warmup_epochs"], train_cfg["epochs"]
    if epoch < warmup:
        return train_cfg["warmup_lr"] + (lr - train_cfg["warmup_lr"]) * epoch / warmup
    progress = min(max((epoch - warmup) / max(epochs - warmup - 1, 1), 0.0), 1.0)
    min_lr = train_cfg["min_lr"]
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class Cutout(torch.nn.Module):
    """DeVries & Taylor 2017: zero a ``size`` x ``size`` square at a uniformly drawn centre, clipped at the borders
    (a normalised image, so zero is the mean colour)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        y, x = torch.randint(height, ()).item(), torch.randint(width, ()).item()
        top, left = max(0, y - self.size // 2), max(0, x - self.size // 2)
        image = image.clone()
        image[..., top : y + (self.size + 1) // 2, left : x + (self.size + 1) // 2] = 0
        return image


@dataclass(frozen=True)
class VirtualView:
    """How VRM's second ("virtual") view is made on top of the training view: RandAugment(ops, magnitude) on the
    image, then Cutout of side ``cutout`` (0 = none) on the normalised tensor."""

    ops: int = 2
    magnitude: int = 9
    cutout: int = 0

    def augment(self) -> list:
        return [v2.RandAugment(num_ops=self.ops, magnitude=self.magnitude)]

    def erase(self) -> list:
        return [Cutout(self.cutout)] if self.cutout else []


VIRTUAL_VIEW_KNOBS = (("ops", "randaugment_ops"), ("magnitude", "randaugment_magnitude"), ("cutout", "cutout"))


def hetero_transform(mean, std, image_size: int, train: bool, randaugment: "bool | VirtualView" = False) -> v2.Compose:
    """uint8 CHW tensor -> normalised float at ``image_size`` px, the OFA / MLDR-KD pipeline (timm's own transforms,
    on PIL images as both references feed them). ``randaugment``: VRM's virtual view (True = VirtualView())."""
    virtual = VirtualView() if randaugment is True else randaugment or None
    if train:
        timm_steps = create_transform(
            (3, image_size, image_size), is_training=True, hflip=0.5, vflip=0.0, color_jitter=0.0,
            auto_augment=None, interpolation="random", re_prob=0.0, mean=mean, std=std,
        )
    else:
        timm_steps = create_transform(
            (3, image_size, image_size), is_training=False, interpolation="bilinear", crop_pct=HETERO_CROP_PCT,
            mean=mean, std=std,
        )
    steps = [v2.ToPILImage(), *(virtual.augment() if virtual else [])]
    return v2.Compose([*steps, timm_steps, *(virtual.erase() if virtual else [])])
