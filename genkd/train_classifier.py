"""Train a CIFAR classifier alone (``distill.method ce``: teachers and baselines) or distil it from a frozen teacher
(kd, dist, dkd, vkd, vrm, mldr), with the CRD / RepDistiller protocol: 240 epochs of SGD, batch 64, lr x0.1 at epochs
150, 180 and 210, random crop + flip.

    python -m genkd.train_classifier --config configs/classifier/quickstart_teacher.yaml
    accelerate launch genkd/train_classifier.py --config configs/classifier/resnet32x4_resnet8x4.yaml --distill.method dkd
    accelerate launch genkd/train_classifier.py --resume runs/classifier/cifar100-resnet8x4-kd-resnet32x4

Any key of DEFAULTS below can be overridden as ``--section.key value`` (``--distill.dkd.beta 6``). The run directory
gets config.yaml, checkpoints/{last,best}.pt, metrics.json, curves.png and TensorBoard logs.
"""
import copy
import json
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file (accelerate launch genkd/train_classifier.py)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from matplotlib.figure import Figure
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from tqdm import tqdm

from genkd.checkpoint import (
    CheckpointError, accelerator_state, checkpoint_path, gather_random_states, load_resume_checkpoint,
    restore_accelerator_state, restore_random_states, save_checkpoint,
)
from genkd.classifier.losses import LOSS_DEFAULTS, LOSS_METHODS, build_classifier_loss
from genkd.classifier.models import MODELS, ClassifierOutput, build_model, load_weights
from genkd.classifier.models.clip import ClipClassifier
from genkd.classifier.models.timm_zoo import TimmClassifier, TimmModelError, warn_random_teacher
from genkd.classifier.recipes import HETERO_NORMALIZATION, VIRTUAL_VIEW_KNOBS, VirtualView, hetero_transform
from genkd.classifier.recipes import learning_rate as recipe_learning_rate
from genkd.config import Config, ConfigError, config_and_resume, load_config, save_config
from genkd.data import ArrayDataset, load_arrays, subset_indices
from genkd.defaults import CHECKS as GAN_CHECKS
from genkd.defaults import CHOICES as GAN_CHOICES
from genkd.defaults import DEFAULTS as GAN_DEFAULTS
from genkd.preemption import GracefulStop, Preempted, stop_message

CLIP = "clip"  # an open_clip image encoder (the clip section) with a linear head: ClipClassifier
TIMM = "timm"  # a timm architecture (the timm section): TimmClassifier, the heterogeneous setting (OFA-KD / MLDR-KD)
SMALL_LR_MODELS = ("mobilenetv2", "shufflenetv1", "shufflenetv2")  # CRD trains these with lr 0.01

DEFAULTS = {
    "run_dir": "",  # "" = runs/classifier/<dataset>-<student>[-<method>-<teacher>]
    "seed": 0,
    "data": {
        **copy.deepcopy(GAN_DEFAULTS["data"]),  # the GAN track's data keys
        "dataset": "cifar100",
        "pipeline": "cifar",  # cifar = 32 px crop + flip (CRD); hetero = timm 224 px pipeline (OFA / MLDR-KD): recipes.py
        "image_size": 224,  # side of the images the hetero pipeline feeds the models (the cifar pipeline keeps 32)
    },
    "model": {
        "student": "resnet8x4",  # the model trained (a teacher, when distill.method is ce)
        "teacher": "",  # frozen teacher architecture; "" = none (method ce)
        "teacher_checkpoint": "",  # .pt of this trainer (checkpoints/best.pt), RepDistiller's {'model': state_dict}, a
        # timm state dict (OFA / MLDR-KD teachers), or "timm" = timm's own weights of timm.teacher (online)
    },
    "train": {
        "epochs": 240,
        "batch_size": 64,  # per process
        "lr": 0.0,  # 0 = CRD's choice: 0.01 for mobilenetv2 / shufflenet students, 0.05 otherwise
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "lr_milestones": [150, 180, 210],  # epochs after which the lr is multiplied by lr_decay
        "lr_decay": 0.1,
        "schedule": "step",  # step (CRD) | cosine (OFA / MLDR-KD: warm-up, then cosine to min_lr): recipes.py
        "min_lr": 1e-3,  # cosine: the lr of the last epoch
        "warmup_epochs": 0,  # cosine: epochs of linear warm-up from warmup_lr (MLDR-KD: 3)
        "warmup_lr": 1e-4,  # cosine: the lr of the first warm-up epoch (MLDR-KD's value)
        "nesterov": False,  # Nesterov momentum (OFA / MLDR-KD: on)
        "mixed_precision": "no",  # no | fp16 | bf16 (accelerate)
        "log_every": 50,  # steps between progress-bar updates of the loss
        "keep_checkpoints": 2,  # last.pt and the previous good ones (last.1.pt ...) to fall back on if it is damaged
    },
    "eval": {
        "split": "test",  # test | train (the run's training subset, without augmentation: how well it fits)
        "batch_size": 256,
    },
    "distill": {"method": "ce", **copy.deepcopy(LOSS_DEFAULTS)},  # knobs of each method: genkd/classifier/losses
    # The open_clip encoder used when model.student or model.teacher is "clip" (keys of the GAN track's distill
    # section, read by genkd.teachers.build_teacher).
    "clip": {key: GAN_DEFAULTS["distill"][key] for key in ("teacher", "pretrained", "weights", "random_teacher", "preprocess", "dtype")},
    # The timm architectures used when model.student or model.teacher is "timm" (genkd/classifier/models/timm_zoo.py).
    "timm": {
        "student": "resnet18",  # MLDR-KD's / OFA's CNN student
        "teacher": "vit_small_patch16_224",
        "pretrained": "",  # init of the model trained: "" = random, "timm" = timm's weights (online), or a local file
        "random_teacher": False,  # a random teacher instead of model.teacher_checkpoint: for tests only (warns)
        "student_kwargs": None,  # extra timm.create_model arguments, e.g. {img_size: 32} for a ViT at 32 px
        "teacher_kwargs": None,
    },
}

MODEL_NAMES = (*MODELS, CLIP, TIMM)
CHOICES = {
    "data.dataset": GAN_CHOICES["data.dataset"],
    "train.mixed_precision": ("no", "fp16", "bf16"),
    "eval.split": ("test", "train"),
    "data.pipeline": ("cifar", "hetero"),
    "train.schedule": ("step", "cosine"),
    "distill.method": LOSS_METHODS,
    "model.student": MODEL_NAMES,
    "model.teacher": ("", *MODEL_NAMES),
    "clip.preprocess": GAN_CHOICES["distill.preprocess"],
    "clip.dtype": GAN_CHOICES["distill.dtype"],
}
CHECKS = {
    "data.frac": GAN_CHECKS["data.frac"],
    "train.epochs": (lambda n: n >= 1, "a number of epochs >= 1"),
    "train.batch_size": (lambda n: n >= 2, "a batch size >= 2 (batch norm needs two images)"),
    "train.lr": (lambda lr: lr >= 0, "a learning rate >= 0 (0 = automatic)"),
    "train.keep_checkpoints": GAN_CHECKS["train.keep_checkpoints"],
    "eval.batch_size": (lambda n: n >= 1, "a batch size >= 1"),
    "data.image_size": (lambda n: n >= 8, "an image side >= 8 pixels"),
    "train.warmup_epochs": (lambda n: n >= 0, "a number of warm-up epochs >= 0"),
    "timm.student_kwargs": (lambda v: v is None or isinstance(v, dict), "a mapping of timm.create_model arguments, or null"),
    "timm.teacher_kwargs": (lambda v: v is None or isinstance(v, dict), "a mapping of timm.create_model arguments, or null"),
}
ALIASES = {"dataset": "data.dataset", "data-root": "data.root", "data-frac": "data.frac", "run-dir": "run_dir"}

# Per-channel statistics of the full training sets (RepDistiller's CIFAR-100 values, so its teachers see what they
# were trained on); other datasets use the statistics of their own training split.
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}


class NonFiniteLossError(RuntimeError):
    """Training diverged; checkpoints/last.pt is from the last finished epoch."""


def model_label(cfg: Config, role: str) -> str:
    """The architecture of model.student / model.teacher, timm ones by their timm name (run names, metrics, checks)."""
    name = cfg.model[role]
    return cfg.timm[role] if name == TIMM else name


def classifier_config(argv=(), base_files=()) -> Config:
    """Defaults, config files, overrides; ``train.lr`` and ``run_dir`` filled in, teacher settings checked."""
    cfg = load_config(DEFAULTS, argv, ALIASES, CHOICES, CHECKS, base_files)
    if cfg.train.lr == 0:
        cfg.train.lr = 0.01 if cfg.model.student in SMALL_LR_MODELS else 0.05
    distilling = cfg.distill.method != "ce"
    if cfg.model.student == CLIP and distilling:
        raise ConfigError("model.student clip trains a linear probe on a frozen encoder: use --distill.method ce")
    random_timm_teacher = cfg.model.teacher == TIMM and cfg.timm.random_teacher
    if distilling and not (cfg.model.teacher and (cfg.model.teacher_checkpoint or random_timm_teacher)):
        raise ConfigError(
            f"distill.method {cfg.distill.method} needs a trained teacher: set model.teacher (one of "
            f"{', '.join(MODEL_NAMES)}) and model.teacher_checkpoint, or use --distill.method ce"
        )
    if not cfg.run_dir:
        student, teacher = model_label(cfg, "student"), model_label(cfg, "teacher")
        suffix = f"-{cfg.distill.method}-{teacher}" if distilling else ""
        cfg.run_dir = f"runs/classifier/{cfg.data.dataset}-{student}{suffix}"
    return cfg


# ---------------------------------------------------------------- data


def normalization(data_cfg, train_images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel in [0, 1] units: the published CIFAR values (those of OFA / MLDR-KD for the hetero
    pipeline), else those of the whole training split."""
    if data_cfg.get("pipeline") == "hetero" and data_cfg.dataset in HETERO_NORMALIZATION:
        return HETERO_NORMALIZATION[data_cfg.dataset]
    if data_cfg.dataset in NORMALIZATION:
        return NORMALIZATION[data_cfg.dataset]
    pixels = train_images.reshape(-1, 3)
    total, squares = np.zeros(3), np.zeros(3)
    for chunk in np.array_split(pixels, max(1, len(pixels) // 1_000_000)):  # bounded memory for large sets
        chunk = chunk.astype(np.float64) / 255.0
        total += chunk.sum(0)
        squares += (chunk**2).sum(0)
    mean = total / len(pixels)
    std = np.sqrt(np.maximum(squares / len(pixels) - mean**2, 1e-12))
    return tuple(mean.round(4).tolist()), tuple(std.round(4).tolist())


def image_transform(mean, std, train: bool, randaugment: bool | VirtualView = False) -> v2.Compose:
    """uint8 CHW -> normalised float. Training: random crop 32 (zero padding 4) + horizontal flip (+ the virtual view's
    RandAugment, and Cutout after normalisation; ``randaugment=True`` = VirtualView(): RandAugment n=2, magnitude 9)."""
    virtual = VirtualView() if randaugment is True else randaugment or None
    steps = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()] if train else []
    steps += virtual.augment() if virtual else []
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose([*steps, *(virtual.erase() if virtual else [])])


class TwoViews:
    """Both views of one image: the standard training view and a RandAugment "virtual" view (VRM)."""

    def __init__(self, standard, virtual):
        self.standard, self.virtual = standard, virtual

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.standard(image), self.virtual(image)


def training_transform(mean, std, virtual_view: bool, data_cfg=None, virtual: VirtualView | None = None):
    """The training view, or both views (TwoViews) when the loss needs a virtual one (``virtual``: how to make it)."""
    build = data_transform(data_cfg)
    standard = build(mean, std, train=True)
    return TwoViews(standard, build(mean, std, train=True, randaugment=virtual or True)) if virtual_view else standard


def virtual_view_of(criterion) -> VirtualView:
    """The virtual-view augmentation a loss asks for (VRM's knobs), RandAugment(2, 9) when it names none."""
    defaults = VirtualView()
    return VirtualView(*(getattr(criterion, name, getattr(defaults, field)) for field, name in VIRTUAL_VIEW_KNOBS))


def data_transform(data_cfg=None):
    """``image_transform`` (cifar pipeline) or the 224 px timm pipeline of recipes.py (hetero), as f(mean, std, train)."""
    if data_cfg is None or data_cfg.pipeline == "cifar":
        return image_transform
    return lambda mean, std, train, randaugment=False: hetero_transform(mean, std, data_cfg.image_size, train, randaugment)


def loader(dataset, batch_size: int, train: bool, num_workers: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(dataset) > batch_size,  # no tiny last batch for batch norm and batch relations
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


# ---------------------------------------------------------------- models


def build_classifier(name: str, num_classes: int, cfg: Config, mean, std, role: str = "student", pretrained: str = "") -> torch.nn.Module:
    """A model of the zoo, the CLIP probe, or timm's ``cfg.timm[role]`` (role: student | teacher)."""
    if name == CLIP:
        return ClipClassifier.from_config(cfg.clip, num_classes, mean, std)
    if name == TIMM:
        return TimmClassifier(cfg.timm[role], num_classes, pretrained, **(cfg.timm[f"{role}_kwargs"] or {}))
    return build_model(name, num_classes)


def load_teacher(cfg: Config, num_classes: int, mean, std) -> torch.nn.Module:
    """The frozen teacher: weights from model.teacher_checkpoint (a file; "timm" = timm's own weights of a timm
    teacher, for as many classes as the dataset has), or random ones for a timm teacher with timm.random_teacher."""
    checkpoint, timm_teacher = cfg.model.teacher_checkpoint, cfg.model.teacher == TIMM
    if timm_teacher and checkpoint == "timm":
        teacher = build_classifier(TIMM, num_classes, cfg, mean, std, "teacher", pretrained="timm")
        if teacher.model.pretrained_cfg.get("num_classes") != num_classes:
            raise TimmModelError(
                f"timm's weights of {cfg.timm.teacher} are for {teacher.model.pretrained_cfg.get('num_classes')} classes, "
                f"not {num_classes}: fine-tune a teacher first (--distill.method ce --model.student timm --timm.pretrained "
                "timm) and pass its checkpoints/best.pt as model.teacher_checkpoint"
            )
    elif timm_teacher and not checkpoint and cfg.timm.random_teacher:
        teacher = build_classifier(TIMM, num_classes, cfg, mean, std, "teacher")
        warn_random_teacher(cfg.timm.teacher)
    else:
        teacher = build_classifier(cfg.model.teacher, num_classes, cfg, mean, std, "teacher")
        load_weights(teacher, checkpoint, cfg.timm.teacher if timm_teacher else cfg.model.teacher)
    return teacher.eval().requires_grad_(False)


def forward_views(model, images, virtual_view: bool, joint: bool):
    """(outputs on the training view, outputs on the virtual view or None). Two views go through the model as one
    batch [view 1; view 2] (``joint``: batch-norm statistics shared by both) or as one batch each."""
    if not virtual_view:
        return model(images), None
    if joint:
        return split_output(model(torch.cat(images)), len(images[0]))
    return model(images[0]), model(images[1])


def split_output(output: ClassifierOutput, size: int) -> tuple[ClassifierOutput, ClassifierOutput]:
    """Outputs of a forward over [view 1; view 2] -> the outputs of each view."""
    first = ClassifierOutput([s[:size] for s in output.stages], output.pooled[:size], output.logits[:size])
    second = ClassifierOutput([s[size:] for s in output.stages], output.pooled[size:], output.logits[size:])
    return first, second


@torch.no_grad()
def evaluate(model, data_loader, accelerator) -> float:
    """Top-1 accuracy in percent over the whole loader (all processes)."""
    model.eval()
    correct = total = 0
    for images, labels in data_loader:
        with accelerator.autocast():
            predictions = model(images).logits.argmax(1)
        predictions, labels = accelerator.gather_for_metrics((predictions, labels))
        correct += (predictions == labels).sum().item()
        total += len(labels)
    return 100.0 * correct / total


def learning_rate(cfg: Config, epoch: int) -> float:
    """The lr of a 0-based epoch under train.schedule (step: CRD's milestones; cosine: OFA / MLDR-KD): recipes.py."""
    return recipe_learning_rate(cfg.train, epoch)


# ---------------------------------------------------------------- results


def save_curves(history: list[dict], initial_top1: float, split: str, path: Path) -> None:
    """Training loss and evaluation top-1 per epoch (epoch 0: before training)."""
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(10, 4))  # no pyplot: no global state, no display needed
    loss_axis, accuracy_axis = figure.subplots(1, 2)
    loss_axis.plot(epochs, [row["train_loss"] for row in history], marker=".")
    loss_axis.set(xlabel="epoch", ylabel="training loss", title="training loss (sum of terms)")
    accuracy_axis.plot([0, *epochs], [initial_top1, *(row["top1"] for row in history)], marker=".")
    accuracy_axis.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title=f"{split} accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def write_json(data: dict, path: Path) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(data, indent=2))
    temp.replace(path)


# ---------------------------------------------------------------- training


def loader_generator(data_loader) -> torch.Generator | None:
    """The generator accelerate gives a shuffling loader on several processes (broadcast from process 0 at every
    epoch); on one process the sampler seeds itself from the global torch stream, which the random states cover."""
    return getattr(data_loader, "synchronized_generator", None)


def main(argv=None) -> dict:
    """Train; returns the metrics written to metrics.json. SIGTERM / SIGINT / SIGUSR1: finish the batch, checkpoint
    (mid-epoch), exit with status 75."""
    with GracefulStop() as stop:
        return run_training(argv, stop)


def run_training(argv, stop: GracefulStop) -> dict:
    cfg, resume = config_and_resume(sys.argv[1:] if argv is None else argv, classifier_config)
    run_dir = Path(cfg.run_dir)
    if resume is None and checkpoint_path(run_dir).is_file():
        raise ConfigError(f"{run_dir} already holds a checkpoint: pass --resume {run_dir}, or choose another --run-dir")
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision, log_with="tensorboard", project_dir=str(run_dir))
    set_seed(cfg.seed)

    # ---- data: the run's subset of the training split (saved in the run directory), the whole evaluation split
    train_images, train_labels, num_classes = load_arrays(cfg.data, "train")
    mean, std = normalization(cfg.data, train_images)
    with accelerator.main_process_first():
        chosen = subset_indices(cfg.data, train_labels, run_dir)
    train_images, train_labels = train_images[chosen], train_labels[chosen]
    eval_images, eval_labels = (train_images, train_labels) if cfg.eval.split == "train" else load_arrays(cfg.data, "test")[:2]

    # ---- models and loss: the student, the frozen teacher (when the method uses one), the loss's trainable parts
    student = build_classifier(cfg.model.student, num_classes, cfg, mean, std, "student", cfg.timm.pretrained)
    distilling = cfg.distill.method != "ce"
    teacher = load_teacher(cfg, num_classes, mean, std) if distilling else None
    if not distilling and cfg.model.teacher:
        accelerator.print(f"note: distill.method ce trains {model_label(cfg, 'student')} alone; model.teacher is not used")
    image_size = cfg.data.image_size if cfg.data.pipeline == "hetero" else 32
    criterion = build_classifier_loss(cfg.distill, student, teacher, num_classes, image_size=image_size)
    trainable = [p for p in [*student.parameters(), *criterion.parameters()] if p.requires_grad]
    optimizer = torch.optim.SGD(
        trainable, lr=cfg.train.lr, momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay, nesterov=cfg.train.nesterov
    )

    virtual_view, needs_teacher = criterion.needs_virtual_view, criterion.needs_teacher and teacher is not None
    joint_forward = getattr(criterion, "joint_forward", True)
    transform = training_transform(mean, std, virtual_view, cfg.data, virtual_view_of(criterion))
    train_loader = loader(ArrayDataset(train_images, train_labels, transform), cfg.train.batch_size, True, cfg.data.num_workers)
    eval_set = ArrayDataset(eval_images, eval_labels, data_transform(cfg.data)(mean, std, train=False))
    eval_loader = loader(eval_set, cfg.eval.batch_size, False, cfg.data.num_workers)

    start_epoch, history, best_top1, initial_top1 = 0, [], -1.0, None
    if resume is not None:
        state = load_resume_checkpoint(run_dir)  # last.pt, or an older one if it is unreadable
        student.load_state_dict(state["model"])
        criterion.load_state_dict(state["criterion"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history, best_top1, initial_top1 = state["epoch"], state["history"], state["best_top1"], state["initial_top1"]
    student, optimizer, train_loader, eval_loader = accelerator.prepare(student, optimizer, train_loader, eval_loader)
    if any(p.requires_grad for p in criterion.parameters()):
        criterion = accelerator.prepare(criterion)  # its gradients are synchronised across processes too
    else:
        criterion.to(accelerator.device)
    if teacher is not None:
        teacher.to(accelerator.device)

    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    accelerator.init_trackers("tensorboard")
    unwrapped_student = accelerator.unwrap_model(student)
    unwrapped_criterion = accelerator.unwrap_model(criterion)
    if initial_top1 is None:
        initial_top1 = evaluate(student, eval_loader, accelerator)
        accelerator.print(f"{model_label(cfg, 'student')} before training: {cfg.eval.split} top-1 {initial_top1:.2f}%")
        accelerator.log({"eval/top1": initial_top1}, step=0)
    teacher_top1 = evaluate(teacher, eval_loader, accelerator) if teacher is not None else None
    if teacher is not None:
        accelerator.print(f"teacher {model_label(cfg, 'teacher')}: {cfg.eval.split} top-1 {teacher_top1:.2f}%")

    def metrics() -> dict:
        last = history[-1] if history else {}
        return {
            "student": model_label(cfg, "student"),
            "teacher": model_label(cfg, "teacher") if distilling else "",
            "method": cfg.distill.method,
            "eval_split": cfg.eval.split,
            "teacher_top1": teacher_top1,
            "initial_top1": initial_top1,
            "best_top1": best_top1,
            "best_epoch": max(history, key=lambda row: row["top1"])["epoch"] if history else 0,
            "last_top1": last.get("top1"),
            "epochs": history,
        }

    def checkpoint(name: str, epoch: int, batch: int = 0, partial_sums: dict | None = None, epoch_start=None) -> None:
        """``epoch`` finished epochs and ``batch`` batches of the next one; a mid-epoch checkpoint (batch > 0) also
        holds the epoch's running sums and the random states at its start, from which resume replays the loader."""
        saved_with = accelerator_state(accelerator)  # collectives: every process takes part
        if epoch_start is None:  # at an epoch boundary the next epoch starts from the current streams
            generator = loader_generator(train_loader)
            epoch_start = {"rng": saved_with["rng"], "loader": generator.get_state() if generator else None}
        if accelerator.is_main_process:
            state = {
                "model": unwrapped_student.state_dict(),
                "model_name": model_label(cfg, "student"),
                "num_classes": num_classes,
                "normalization": {"mean": list(mean), "std": list(std)},
                "epoch": epoch,
                "criterion": unwrapped_criterion.state_dict(),
                "optimizer": optimizer.state_dict(),
                "history": history,
                "best_top1": best_top1,
                "initial_top1": initial_top1,
                "config": cfg.to_dict(),
                "batch": batch,
                "partial_sums": partial_sums,
                "epoch_start_rng": epoch_start["rng"],
                "loader_generator": epoch_start["loader"],
                **saved_with,
            }
            keep = cfg.train.keep_checkpoints if name == "last" else 1
            save_checkpoint(state, checkpoint_path(run_dir, name), keep=keep, step=epoch * len(train_loader) + batch)

    def stop_now(epoch: int, batch: int) -> None:
        accelerator.wait_for_everyone()
        accelerator.end_training()
        where = f"in epoch {epoch + 1} after batch {batch}" if batch else f"after epoch {epoch}"
        message = stop_message(stop.signal_name, where, checkpoint_path(run_dir), run_dir, "genkd.train_classifier", accelerator.num_processes)
        accelerator.print(message)
        raise Preempted(message)

    def start_epoch_batches(resume_state: dict | None):
        """(batch iterator, index of its first batch, running sums, images seen, the epoch's starting streams).

        Resuming mid-epoch restores the streams of the epoch's start, replays the loader up to the stop (the same
        order and augmentations) and then restores the streams of the stop: the rest of the epoch is drawn exactly
        as without the stop. The sums so far are carried by process 0."""
        sums, seen = {}, torch.zeros((), device=accelerator.device)
        first_batch = resume_state["batch"] if resume_state else 0
        if resume_state:
            if first_batch:
                restore_random_states(resume_state["epoch_start_rng"], accelerator)
            else:  # at an epoch boundary the current streams start the epoch
                restore_accelerator_state(resume_state, accelerator)
            if resume_state["loader_generator"] is not None and loader_generator(train_loader) is not None:
                loader_generator(train_loader).set_state(resume_state["loader_generator"])
        generator = loader_generator(train_loader)
        epoch_start = {"rng": gather_random_states(accelerator), "loader": generator.get_state() if generator else None}
        batches = iter(train_loader)
        if first_batch:
            for _ in range(first_batch):
                next(batches)
            for key, total in resume_state["partial_sums"].items():
                total = total.to(accelerator.device)
                sums[key] = total if accelerator.is_main_process else torch.zeros_like(total)
            seen = sums.pop("seen")
            restore_accelerator_state(resume_state, accelerator)
        return batches, first_batch, sums, seen, epoch_start

    resume_state = state if resume is not None else None  # restored at the first epoch: the evaluations above draw
    if resume_state and "rng" not in resume_state:  # written before random states were saved
        accelerator.print("note: the checkpoint holds no random states: the resumed run draws new random numbers")
        resume_state = None
    elif resume_state and resume_state["batch"] and len(resume_state["rng"]) != accelerator.num_processes:
        accelerator.print(
            f"warning: stopped mid-epoch on {len(resume_state['rng'])} processes, resuming on {accelerator.num_processes}: "
            f"epoch {start_epoch + 1} restarts from its first batch"
        )
        resume_state = {**resume_state, "batch": 0}
    for epoch in range(start_epoch, cfg.train.epochs):
        lr = learning_rate(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        student.train()
        criterion.train()
        batches, first_batch, sums, seen, epoch_start = start_epoch_batches(resume_state)
        resume_state = None
        progress = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False, initial=first_batch,
                        total=len(train_loader), disable=not accelerator.is_local_main_process)  # fmt: skip
        for batch_index, (images, labels) in enumerate(progress, start=first_batch):
            size = len(labels)
            with accelerator.autocast():
                student_out, student_virtual = forward_views(student, images, virtual_view, joint_forward)
                with torch.no_grad():
                    teacher_out, teacher_virtual = forward_views(teacher, images, virtual_view, joint_forward) if needs_teacher else (None, None)
                virtual = (student_virtual, teacher_virtual) if virtual_view else None
                terms = criterion(student_out, teacher_out, labels, epoch=epoch, virtual=virtual)
                loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            for key, value in [("loss", loss), *terms.items()]:
                sums[key] = sums.get(key, 0.0) + value.detach().float() * size
            sums["correct"] = sums.get("correct", 0.0) + (student_out.logits.detach().argmax(1) == labels).sum()
            seen += size
            if batch_index % cfg.train.log_every == 0:
                progress.set_postfix(loss=f"{loss.item():.3f}")
            if batch_index + 1 < len(train_loader) and stop.should_stop(accelerator):  # all processes, same batch
                partial = {key: accelerator.reduce(value, "sum") for key, value in {**sums, "seen": seen}.items()}
                checkpoint("last", epoch, batch_index + 1, partial, epoch_start)
                stop_now(epoch, batch_index + 1)
        sums = {key: accelerator.reduce(value, "sum") for key, value in sums.items()}
        seen = accelerator.reduce(seen, "sum")
        train_loss = (sums.pop("loss") / seen).item()
        if not np.isfinite(train_loss):
            raise NonFiniteLossError(
                f"the training loss became NaN or infinite in epoch {epoch + 1}; {checkpoint_path(run_dir)} holds the last "
                "finished epoch: lower train.lr or use train.mixed_precision no, then --resume"
            )
        train_top1 = (100.0 * sums.pop("correct") / seen).item()
        top1 = evaluate(student, eval_loader, accelerator)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_top1": train_top1, "top1": top1}
        row.update({f"loss_{key}": (value / seen).item() for key, value in sums.items()})
        history.append(row)
        accelerator.log(
            {"train/loss": train_loss, "train/top1": train_top1, "train/lr": lr, "eval/top1": top1,
             **{f"train/{key[5:]}": value for key, value in row.items() if key.startswith("loss_")}},
            step=epoch + 1,
        )
        accelerator.print(
            f"epoch {epoch + 1}/{cfg.train.epochs}: loss {train_loss:.4f}, train top-1 {train_top1:.2f}%, "
            f"{cfg.eval.split} top-1 {top1:.2f}% (best {max(best_top1, top1):.2f}%)"
        )
        if top1 > best_top1:
            best_top1 = top1
            checkpoint("best", epoch + 1)
        checkpoint("last", epoch + 1)
        if accelerator.is_main_process:
            write_json(metrics(), run_dir / "metrics.json")
            save_curves(history, initial_top1, cfg.eval.split, run_dir / "curves.png")
        if epoch + 1 < cfg.train.epochs and stop.should_stop(accelerator):
            stop_now(epoch + 1, 0)
    accelerator.wait_for_everyone()  # tear down together: an early destroy_process_group can hang a peer
    accelerator.end_training()
    result = metrics()
    accelerator.print(
        f"done: {model_label(cfg, 'student')} {cfg.eval.split} top-1 best {result['best_top1']:.2f}% (epoch {result['best_epoch']}), "
        f"last {result['last_top1']:.2f}%, from {initial_top1:.2f}%; {run_dir / 'metrics.json'}, {run_dir / 'curves.png'}"
    )
    return result


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, CheckpointError, NonFiniteLossError, ValueError) as error:  # data/model/teacher errors are ValueErrors
        sys.exit(f"error: {error}")
