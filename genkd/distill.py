"""Distilling a frozen CLIP teacher into the discriminator: VkD, KD-DLGAN and the baselines of VkD's Tab. 4 / 5.

Every method is one row of ``RECIPES``: the student head on D's pooled features, the teacher-feature normalisation and
its scale, the pairing of student rows with teacher rows, the loss, its default weight and (where the method fixes it)
the teacher's input preprocessing. ``vkd`` takes head / norm / target_scale / pairing / loss / preprocess from the
config (``distill.*``); every other row fixes them. ``distill.weight`` (None = the row's weight) overrides any row.

- ``kd-dlgan``, KD-DLGAN's feature-level ("aggregated generative") KD, read from cuikaiwen18/KD_DLGAN:
  head ``mlp`` = ``Discriminator.linear_cls_1/2`` (``third_party/BigGAN.py``: SN linear 256 -> 1024 -> 512, biases,
  no activation); teacher = ``clip.load("ViT-B/32")`` ``encode_image`` (the 512-d image embedding after CLIP's
  projection, unnormalised; fp16 on CUDA), fed ``nn.Upsample(scale_factor=7, mode="nearest")`` of the very
  DiffAugment-ed images D saw, no CLIP mean/std (``third_party/train_fns.py``); loss
  ``10 * TripletLoss_reverse(latent_real, D_real, D_fake) + 10 * TripletLoss_reverse(latent_fake, D_fake, D_real)``
  (``biggan_cifar/losses.py``: ``mean_i ||a_i - p_i||_2 + mean_i ||a_i - n_i||_2``, non-squared, the push-apart
  SoftMarginLoss commented out), i.e. every D feature is PULLED to the teacher feature of its own image and to that
  of the image at the same batch index of the other half: pairing ``aggregated``, loss ``l2``, weight 10. Only the D
  steps have it: the G step's loss is the plain hinge ``-mean D(G(z))`` (``GAN_training_function``, G branch).
  KD-DLGAN's correlated generative KD (``img_lan_similarity_loss``: row-normalised Grams of D features and of CLIP
  image features against the CLIP text embeddings of ten CIFAR-10 prompts, summed squared difference, weight 10) and
  ``img_lan_out_distri_loss`` (teacher-only inputs under no_grad, so it carries no gradient at all) are NOT part of
  this row: "KD-DLGAN (feature level)" is read as the aggregated feature term alone, which is also what VkD kept
  (roymiles/vkd issue #3: the text losses and the out-of-distribution loss were removed).
- ``vkd`` (Miles, Elezi, Deng, CVPR 2024): that pipeline with the orthogonal projector in place of the MLP head and a
  normalised teacher (none / layernorm / whitening). Its exact GAN change is unpublished; issues #3 / #6 of
  roymiles/vkd say it is KD-DLGAN's code minus the text losses plus the "orthogonal feature loss", same CLIP teacher.
  Which pairing, loss and weight it kept is not said: they are the knobs ``distill.pairing`` (own | aggregated),
  ``distill.loss`` (mse | smooth_l1 | l2) and ``distill.weight``; the classification code (roymiles/vkd
  ``engine.py``) uses smooth_l1 against a layer-normed teacher, weight 1.
- ``clip-kd`` ("DA + KD (CLIP)"): KD-DLGAN's feature KD without the aggregation, each image against its own CLIP
  feature (same head, L2, weight 10, preprocessing). The papers' text could not be read here; this is the reading
  that makes the row the plain-KD ablation of KD-DLGAN's term.
- ``label`` ("Label Distillation", Hinton et al. 2015): CLIP's zero-shot class probabilities (cosine to the text
  embeddings of KD-DLGAN's prompts "a {class}", times CLIP's logit scale) as soft labels for an SN linear class head
  on D's features; KL at temperature 4, times T^2 (RepDistiller ``DistillKL``, ``--kd_T 4``). A reading, not pinned
  down by either paper's code: the docs should list it as such.
- ``fitnets`` (Romero et al. 2015): linear projector, raw teacher features, mse. ``spkd`` (Tung & Mori 2019):
  row-normalised batch Gram matrices, no projector. ``pkt`` (Passalis & Tefas 2018; VkD's "PKD" [57]): KL between
  cosine-similarity conditionals, no projector.

Baseline weights are those of RepDistiller's ``scripts/run_cifar_distill.sh`` (the CRD benchmark of these methods):
FitNets ``-b 100``, SP ``-b 3000`` (SP's paper: gamma 3000), PKT ``-b 30000``, KD ``-a 0.9``; our losses use the
same normalisations as RepDistiller's (``HintLoss`` = element-mean mse, ``Similarity`` / B^2, ``PKT`` mean over the
B^2 entries, ``DistillKL`` sum / B * T^2), so the weights carry over unchanged.

``mse`` and ``smooth_l1`` are torch's element-wise means, ``l2`` the mean over rows of the (non-squared) Euclidean
distance. Scale check for ``vkd`` at weight 1: BigGAN's sum-pooled discriminator features have norm ~160 at
initialisation against unit-norm whitened targets, so the mse gradient on a feature vector starts at
2 * 160 / (512 B) = 0.6 / B, the hinge loss's order (at most 2 / B, spectrally normalised). ``l2`` gives each row a
gradient of norm 1 / B per term; under ``aggregated`` a row sits in two terms, so KD-DLGAN's weight 10 puts up to
20 / B on each D feature, ten times the hinge's bound.
"""
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from genkd.models.biggan import sn
from genkd.normalize import normalize_features
from genkd.projectors import build_projector
from genkd.teachers import Teacher, build_teacher

KD_DLGAN = {"head": "mlp", "norm": "none", "target_scale": "unit", "loss": "l2", "weight": 10.0, "preprocess": "kd-dlgan"}
RAW = {"norm": "none", "target_scale": "unit", "pairing": "own", "preprocess": None}
# one row per method; None = the config's choice (distill.<key>). head "none" = no head at all, "classes" = an SN
# linear class head; target "embedding" = the (normalised) teacher features, "zero-shot" = CLIP's class logits
RECIPES = {
    "vkd": {
        "head": None, "norm": None, "target_scale": None, "pairing": None, "loss": None, "weight": 1.0,
        "preprocess": None, "target": "embedding",
    },
    "kd-dlgan": {**KD_DLGAN, "pairing": "aggregated", "target": "embedding"},
    "clip-kd": {**KD_DLGAN, "pairing": "own", "target": "embedding"},
    "fitnets": {**RAW, "head": "linear", "loss": "mse", "weight": 100.0, "target": "embedding"},
    "spkd": {**RAW, "head": "none", "loss": "spkd", "weight": 3000.0, "target": "embedding"},
    "pkt": {**RAW, "head": "none", "loss": "pkt", "weight": 30000.0, "target": "embedding"},
    "label": {**RAW, "head": "classes", "loss": "kd", "weight": 0.9, "target": "zero-shot"},
}
METHODS = tuple(RECIPES)
PAIRINGS = ("own", "aggregated")
KD_TEMPERATURE = 4.0  # RepDistiller's --kd_T default
CLASS_NAMES = {  # the official label names, in label order (checked against the shared CIFAR npz files in the tests)
    10: "airplane automobile bird cat deer dog frog horse ship truck".split(),
    100: (
        "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
        "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
        "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
        "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
        "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
        "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
        "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
    ).split(),
}


class DistillError(ValueError):
    """A distiller that cannot be built or called as configured; the message says what to change."""


def class_prompts(num_classes: int) -> list[str]:
    """KD-DLGAN's CLIP prompts, "a {class}" (``third_party/run_train.py``), for CIFAR-10 or CIFAR-100."""
    if num_classes not in CLASS_NAMES:
        raise DistillError(
            f"label distillation needs class names; genkd knows CIFAR-10's and CIFAR-100's, not {num_classes} classes: "
            "choose another --distill.method"
        )
    return [f"a {name.replace('_', ' ')}" for name in CLASS_NAMES[num_classes]]


def l2_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KD-DLGAN's per-pair term: mean over rows of ||s_i - t_i||_2 (not squared)."""
    return torch.linalg.vector_norm(student - teacher, dim=1).mean()


def similarity_preserving_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """SP-KD: ||G_s - G_t||_F^2 / B^2 for the batch Gram matrices G = X X^T with L2-normalised rows."""
    student_gram = F.normalize(student @ student.T, dim=1)
    teacher_gram = F.normalize(teacher @ teacher.T, dim=1)
    return (student_gram - teacher_gram).square().sum() / len(student) ** 2


def probability_transfer_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """PKT: sum_ij P_t(j | i) log(P_t(j | i) / P_s(j | i)) / B^2, P(j | i) proportional to (1 + cos(x_i, x_j)) / 2.

    The mean over the B x B entries is the authors' code's normalisation (RepDistiller ``PKT``, "code from author"),
    the one its weight 30000 belongs to; it is the mean over i of KL(P_t(. | i) || P_s(. | i)), divided by B.
    """

    def conditional(features: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(features, dim=1)
        kernel = (unit @ unit.T + 1) / 2
        return kernel / kernel.sum(dim=1, keepdim=True)

    student_p, teacher_p = conditional(student), conditional(teacher)
    return (teacher_p * ((teacher_p + eps).log() - (student_p + eps).log())).mean()


def soft_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Hinton's KD: KL(softmax(t / T) || softmax(s / T)) * T^2, summed over classes, mean over the batch."""
    temperature = KD_TEMPERATURE
    teacher_p = F.softmax(teacher_logits / temperature, dim=1)
    student_log_p = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(student_log_p, teacher_p, reduction="batchmean") * temperature**2


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": F.mse_loss,
    "smooth_l1": F.smooth_l1_loss,
    "l2": l2_distance_loss,
    "spkd": similarity_preserving_loss,
    "pkt": probability_transfer_loss,
    "kd": soft_label_loss,
}


def paired_loss(loss: Callable, student: torch.Tensor, target: torch.Tensor, pairing: str, num_real: int | None):
    """``own``: loss(student, target). ``aggregated`` (KD-DLGAN): the batch is num_real real rows then as many fake
    rows, and each half is pulled to both halves' targets, row i against row i:
    loss(s_r, t_r) + loss(s_f, t_r) + loss(s_f, t_f) + loss(s_r, t_f)."""
    if pairing == "own":
        return loss(student, target)
    if num_real is None or 2 * num_real != len(student):
        raise DistillError(
            f"the aggregated pairing needs equal real and fake halves, got {len(student)} rows and num_real={num_real}: "
            "call distiller(features, images, num_real=B) on the real+fake batch of 2B rows"
        )
    student_real, student_fake = student[:num_real], student[num_real:]
    target_real, target_fake = target[:num_real], target[num_real:]
    return (
        loss(student_real, target_real) + loss(student_fake, target_real)
        + loss(student_fake, target_fake) + loss(student_real, target_fake)
    )


class Distiller(nn.Module):
    """``distiller(student_features, images, num_real=None)`` -> the unweighted distillation loss (a scalar).

    ``images`` are exactly the (augmented) images the discriminator saw, in [-1, 1]; the teacher embeds them under
    no_grad. ``num_real``: the first num_real rows are real, the rest fake (needed by the aggregated pairing).
    ``weight`` is the loss weight to apply. Only the student head (``projector``) is a submodule, so ``parameters()``
    and ``state_dict()`` hold the trainable head alone; the teacher sits in a plain attribute (it never trains, and a
    checkpoint should not carry 350 MB of CLIP), and ``_apply`` forwards ``.to()`` / ``.cuda()`` / dtype moves to
    it. ``projector`` may be reassigned (e.g. to what ``accelerate.prepare`` returns).
    """

    def __init__(
        self, teacher: Teacher, projector: nn.Module, norm: str, loss: str, pairing: str = "own",
        target_scale: str = "unit", weight: float = 1.0, target: str = "embedding",
    ):
        super().__init__()
        if loss not in LOSSES:
            raise DistillError(f"unknown distillation loss {loss!r}; accepted: {', '.join(LOSSES)}")
        if pairing not in PAIRINGS:
            raise DistillError(f"unknown pairing {pairing!r}; accepted: {', '.join(PAIRINGS)}")
        self.__dict__["teacher"] = teacher  # bypasses nn.Module's registration on purpose
        self.projector = projector
        self.norm, self.target_scale, self.loss, self.pairing = norm, target_scale, loss, pairing
        self.weight, self.target = weight, target

    def _apply(self, fn, recurse=True):
        self.teacher._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """What the student head is matched to: normalised teacher features, or CLIP's zero-shot class logits."""
        features = self.teacher(images)
        if self.target == "zero-shot":
            return self.teacher.zero_shot_logits(features)
        return normalize_features(features, self.norm, self.target_scale)

    def forward(self, student_features: torch.Tensor, images: torch.Tensor, num_real: int | None = None) -> torch.Tensor:
        target = self.targets(images)
        projected = self.projector(student_features)
        with torch.autocast(projected.device.type, enabled=False):
            return paired_loss(LOSSES[self.loss], projected.float(), target, self.pairing, num_real)

    def extra_repr(self) -> str:
        teacher = f"{type(self.teacher.encoder).__name__}({self.teacher.feature_dim}, {self.teacher.preprocess})"
        return (
            f"teacher={teacher}, target={self.target}, norm={self.norm}, target_scale={self.target_scale}, "
            f"pairing={self.pairing}, loss={self.loss}, weight={self.weight:g}"
        )


def build_head(kind: str, student_dim: int, out_dim: int, orthogonal_map: str) -> nn.Module:
    """The student head: none (identity, any widths), classes (SN linear with bias, like D's linear layers), or a
    projector of genkd.projectors (identity, linear, orthogonal, mlp)."""
    if kind == "none":
        return nn.Identity()
    if kind == "classes":
        return sn(nn.Linear(student_dim, out_dim))
    return build_projector(kind, student_dim, out_dim, orthogonal_map)


def build_distiller(distill_cfg: Mapping, student_dim: int, num_classes: int = 0) -> Distiller | None:
    """The configured distiller for student features of width ``student_dim``; None when distillation is off.

    ``num_classes`` is needed by ``label`` only (its class prompts)."""
    if not distill_cfg["enabled"]:
        return None
    if distill_cfg["method"] not in RECIPES:
        raise DistillError(f"unknown distillation method {distill_cfg['method']!r}; accepted: {', '.join(METHODS)}")
    recipe = RECIPES[distill_cfg["method"]]
    settings = {key: distill_cfg[key] if value is None else value for key, value in recipe.items()}
    if distill_cfg["weight"] is not None:
        settings["weight"] = float(distill_cfg["weight"])
    zero_shot = settings["target"] == "zero-shot"
    teacher = build_teacher(
        {**distill_cfg, "preprocess": settings["preprocess"]}, class_prompts(num_classes) if zero_shot else ()
    )
    head = build_head(
        settings["head"], student_dim, num_classes if zero_shot else teacher.feature_dim, distill_cfg["orthogonal_map"]
    )
    return Distiller(
        teacher, head, settings["norm"], settings["loss"], settings["pairing"], settings["target_scale"],
        settings["weight"], settings["target"],
    )
