"""The classifier trainer on real CIFAR-10 images: it learns, writes its results, round-trips teachers, distils."""
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torchvision.transforms import v2

import genkd  # noqa: F401  (before torchvision)
from genkd.classifier.models import MODELS, build_model, load_weights
from genkd.classifier.recipes import Cutout, VirtualView
from genkd.config import ConfigError
from genkd.train_classifier import (
    classifier_config, data_transform, forward_views, image_transform, learning_rate, main, normalization,
    training_transform, virtual_view_of,
)

AIRPLANE, FROG = 0, 6
HETERO = Path(__file__).resolve().parents[1] / "configs" / "classifier" / "hetero"


@pytest.fixture(scope="module")
def two_class_npz(tmp_path_factory, cifar10_arrays):
    """Real airplanes (label 0) and frogs (label 1): 64 + 64 training and 50 + 50 test images. An easy task, so that
    two short epochs surely beat the chance-level start."""
    x_train, y_train, x_test, y_test = cifar10_arrays

    def pick(images, labels, count):
        index = np.concatenate([np.flatnonzero(labels == c)[:count] for c in (AIRPLANE, FROG)])
        return images[index], (labels[index] == FROG).astype(np.int64)

    path = tmp_path_factory.mktemp("data") / "airplane_frog.npz"
    (a, b), (c, d) = pick(x_train, y_train, 64), pick(x_test, y_test, 50)
    np.savez(path, x_train=a, y_train=b, x_test=c, y_test=d)
    return path


def options(npz, run_dir, *extra):
    base = ["--data.dataset", "npz", "--data.root", str(npz), "--data.num_workers", "0", "--train.batch_size", "16"]
    return [*base, "--eval.split", "train", "--run-dir", str(run_dir), *extra]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, two_class_npz):
    """A wrn_16_1 trained alone (method ce) for two epochs; evaluated on its (non-augmented) training images."""
    run_dir = tmp_path_factory.mktemp("runs") / "teacher"
    metrics = main(options(two_class_npz, run_dir, "--model.student", "wrn_16_1", "--train.epochs", "2"))
    return run_dir, metrics


def test_training_improves_and_writes_results(teacher_run):
    run_dir, metrics = teacher_run
    assert metrics["initial_top1"] <= 55.0  # chance level on two balanced classes
    assert metrics["best_top1"] >= metrics["initial_top1"] + 15.0
    assert metrics["last_top1"] == metrics["epochs"][-1]["top1"] and len(metrics["epochs"]) == 2
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    assert [row["lr"] for row in metrics["epochs"]] == [0.05, 0.05]  # automatic lr of a non-mobile student
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    for name in ("config.yaml", "subset_indices.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.rglob("*.tmp"))  # atomic writes leave no temp files


def test_checkpoint_round_trip(teacher_run, two_class_npz):
    """best.pt loads into a fresh model that scores exactly the recorded best accuracy."""
    run_dir, metrics = teacher_run
    model = load_weights(build_model("wrn_16_1", 2), run_dir / "checkpoints" / "best.pt", "wrn_16_1").eval()
    with np.load(two_class_npz) as data:
        images, labels = data["x_train"], torch.from_numpy(data["y_train"])
    mean, std = normalization(classifier_config(["--data.dataset", "npz"]).data, images)
    transform = image_transform(mean, std, train=False)
    batch = torch.stack([transform(torch.from_numpy(image).permute(2, 0, 1)) for image in images])
    with torch.no_grad():
        correct = (model(batch).logits.argmax(1) == labels).sum().item()
    assert 100.0 * correct / len(labels) == pytest.approx(metrics["best_top1"])


def test_same_seed_same_run(teacher_run, two_class_npz, tmp_path):
    _, metrics = teacher_run
    again = main(options(two_class_npz, tmp_path / "again", "--model.student", "wrn_16_1", "--train.epochs", "1"))
    assert again["initial_top1"] == metrics["initial_top1"]
    assert again["epochs"][0] == metrics["epochs"][0]


def test_resume_continues_the_run(teacher_run, two_class_npz, tmp_path):
    run_dir, metrics = teacher_run
    copy = tmp_path / "resumed"
    shutil.copytree(run_dir, copy)
    with pytest.raises(ConfigError, match="already holds a checkpoint: pass --resume"):
        main(options(two_class_npz, copy, "--model.student", "wrn_16_1"))
    resumed = main(["--resume", str(copy), "--train.epochs", "3"])
    assert resumed["epochs"][:2] == metrics["epochs"] and resumed["epochs"][2]["epoch"] == 3
    assert resumed["initial_top1"] == metrics["initial_top1"]


@pytest.mark.parametrize("method, terms", [("kd", {"ce", "kd"}), ("vrm", {"ce", "inter_sample", "inter_class"}), ("vkd", {"ce", "kd", "feature"})])
def test_distillation_from_trained_teacher(method, terms, teacher_run, two_class_npz, tmp_path):
    run_dir, teacher_metrics = teacher_run
    metrics = main(
        options(two_class_npz, tmp_path / method, "--model.student", "resnet20", "--train.epochs", "1", "--data.frac", "0.5",
                "--model.teacher", "wrn_16_1", "--model.teacher_checkpoint", str(run_dir / "checkpoints" / "best.pt"),
                "--distill.method", method)
    )
    # the loaded teacher scores what it scored at the end of its own run (evaluated on a half subset here)
    assert 50.0 < metrics["teacher_top1"]
    row = metrics["epochs"][0]
    assert {key[5:] for key in row if key.startswith("loss_")} == terms
    assert all(np.isfinite(row[f"loss_{term}"]) for term in terms)
    assert row["train_loss"] == pytest.approx(sum(row[f"loss_{term}"] for term in terms), rel=1e-5)
    state = torch.load(tmp_path / method / "checkpoints" / "last.pt", weights_only=True)
    assert state["model_name"] == "resnet20" and bool(state["criterion"]) == (method == "vkd")  # the projector is saved


def test_clip_linear_probe_as_teacher(two_class_npz, tmp_path):
    clip = ["--clip.teacher", "tiny-vit", "--clip.random_teacher", "true", "--train.epochs", "1", "--data.frac", "0.5"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-weight teacher warnings
        probe = main(options(two_class_npz, tmp_path / "probe", "--model.student", "clip", *clip))
        state = torch.load(tmp_path / "probe" / "checkpoints" / "best.pt", weights_only=True)
        assert state["model_name"] == "clip" and set(state["model"]) == {"weight", "bias"}  # the head alone
        student = main(options(two_class_npz, tmp_path / "student", "--model.student", "wrn_16_1", *clip,
                               "--model.teacher", "clip", "--model.teacher_checkpoint", str(tmp_path / "probe" / "checkpoints" / "best.pt"),
                               "--distill.method", "kd"))
    assert probe["epochs"][0]["loss_ce"] > 0 and student["teacher"] == "clip"
    assert {"loss_ce", "loss_kd"} <= set(student["epochs"][0])


def test_two_views_for_vrm(cifar10_arrays):
    image = torch.from_numpy(cifar10_arrays[0][0]).permute(2, 0, 1)
    torch.manual_seed(0)
    standard, virtual = training_transform((0.5,) * 3, (0.25,) * 3, virtual_view=True)(image)
    assert standard.shape == virtual.shape == (3, 32, 32) and standard.dtype == virtual.dtype == torch.float32
    assert not torch.equal(standard, virtual)
    assert isinstance(training_transform((0.5,) * 3, (0.25,) * 3, virtual_view=False)(image), torch.Tensor)


def test_normalization_statistics(cifar10_arrays):
    images = cifar10_arrays[0]
    mean, std = normalization(classifier_config(["--data.dataset", "npz"]).data, images)
    pixels = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, pixels.mean(0), atol=1e-4)
    np.testing.assert_allclose(std, pixels.std(0), atol=1e-4)
    assert normalization(classifier_config([]).data, images) == ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))


def test_config_defaults_and_errors():
    assert classifier_config(["--model.student", "mobilenetv2"]).train.lr == 0.01
    assert classifier_config(["--model.student", "shufflenetv2"]).train.lr == 0.01
    assert classifier_config([]).train.lr == 0.05
    assert classifier_config(["--model.student", "mobilenetv2", "--train.lr", "0.1"]).train.lr == 0.1
    cfg = classifier_config(["--model.teacher", "resnet32x4", "--model.teacher_checkpoint", "t.pt", "--distill.method", "dkd"])
    assert cfg.run_dir == "runs/classifier/cifar100-resnet8x4-dkd-resnet32x4" and cfg.distill.dkd.beta == 8.0
    with pytest.raises(ConfigError, match="unknown config key 'train.epoch'; accepted keys in train: .*epochs"):
        classifier_config(["--train.epoch", "3"])
    with pytest.raises(ConfigError, match="bad value for 'model.student': 'resnet9'; accepted: .*resnet8x4"):
        classifier_config(["--model.student", "resnet9"])
    with pytest.raises(ConfigError, match="distill.method kd needs a trained teacher"):
        classifier_config(["--distill.method", "kd"])
    with pytest.raises(ConfigError, match="linear probe"):
        classifier_config(["--model.student", "clip", "--distill.method", "kd", "--model.teacher", "wrn_16_2", "--model.teacher_checkpoint", "t.pt"])


TRAINING_CONFIGS = [p for p in sorted(Path(__file__).resolve().parents[1].glob("configs/classifier/*.yaml")) if p.stem != "published"]


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    cfg = classifier_config(["--config", str(path)])
    assert cfg.model.student in MODELS
    if cfg.distill.method != "ce":  # a pair file is named after its teacher and student
        assert cfg.model.teacher in MODELS
        assert path.stem in (f"{cfg.model.teacher}_{cfg.model.student}", "quickstart")


# --- the heterogeneous setting (OFA-KD / MLDR-KD recipe, timm models) ------------------------------------------------


def test_cosine_schedule_is_mldr_kds():
    """MLDR-KD train.py set_learning_rate: linear warm-up from 1e-4 over 3 epochs, cosine from 0.05 to 1e-3."""
    cfg = classifier_config(["--config", str(HETERO / "resnet18_vit_small_patch16_224.yaml")])
    lrs = [learning_rate(cfg, epoch) for epoch in range(300)]
    assert lrs[:4] == pytest.approx([1e-4, 1e-4 + (0.05 - 1e-4) / 3, 1e-4 + 2 * (0.05 - 1e-4) / 3, 0.05])
    assert lrs[-1] == pytest.approx(1e-3) and lrs[151] == pytest.approx(1e-3 + 0.5 * (0.05 - 1e-3) * (1 + math.cos(math.pi * 148 / 296)))
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    step = classifier_config([])
    assert [learning_rate(step, epoch) for epoch in (149, 150, 180, 239)] == pytest.approx([0.05, 0.005, 0.0005, 0.00005])


def test_hetero_pipeline_sizes_and_statistics(cifar10_arrays):
    image = torch.from_numpy(cifar10_arrays[0][0]).permute(2, 0, 1)
    cfg = classifier_config(["--config", str(HETERO / "resnet18_vit_small_patch16_224.yaml")])
    mean, std = normalization(cfg.data, cifar10_arrays[0])
    assert (mean, std) == ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))  # OFA's / MLDR-KD's statistics
    torch.manual_seed(0)
    train_view = training_transform(mean, std, False, cfg.data)(image)
    eval_view = data_transform(cfg.data)(mean, std, train=False)(image)
    assert train_view.shape == eval_view.shape == (3, 224, 224)
    # evaluation: resize to 256 and centre-crop 224, deterministic
    torch.testing.assert_close(eval_view, data_transform(cfg.data)(mean, std, train=False)(image))


def test_vrm_virtual_view_follows_its_knobs(cifar10_arrays):
    from genkd.classifier.losses import build_classifier_loss

    loss = build_classifier_loss({"method": "vrm", "vrm": {"randaugment_ops": 3, "randaugment_magnitude": 5, "cutout": 8}},
                                 None, object(), 10)
    virtual = virtual_view_of(loss)
    assert virtual == VirtualView(ops=3, magnitude=5, cutout=8)
    transform = training_transform((0.5,) * 3, (0.25,) * 3, True, None, virtual)
    randaugment = [step for step in transform.virtual.transforms if isinstance(step, v2.RandAugment)]
    assert [(step.num_ops, step.magnitude) for step in randaugment] == [(3, 5)]
    assert not any(isinstance(step, v2.RandAugment) for step in transform.standard.transforms)
    # Cutout zeroes a square of side 8 (fewer pixels where it is clipped at a border) after normalisation
    image = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    erased = Cutout(8)(torch.ones(3, 32, 32))
    zeros = (erased == 0).all(0)
    rows, cols = zeros.any(1).sum().item(), zeros.any(0).sum().item()
    assert 1 <= rows <= 8 and 1 <= cols <= 8 and zeros.sum().item() == rows * cols
    assert (Cutout(8)(image.float()) == 0).any() and (erased != 0).any()


def test_views_share_one_batch_or_go_separately():
    """joint_forward: batch norm in training mode sees both views at once, or each view alone."""
    torch.manual_seed(0)
    model = build_model("resnet20", 10).train()
    standard, virtual = torch.randn(4, 3, 32, 32), 3 + torch.randn(4, 3, 32, 32)
    joint = forward_views(model, (standard, virtual), True, joint=True)
    separate = forward_views(model, (standard, virtual), True, joint=False)
    torch.testing.assert_close(separate[0].logits, model(standard).logits)
    torch.testing.assert_close(joint[0].logits, model(torch.cat([standard, virtual])).logits[:4])
    assert not torch.allclose(joint[0].logits, separate[0].logits)
    assert forward_views(model, standard, False, joint=True)[1] is None


def test_mldr_kd_vit_teacher_to_resnet_student_on_cpu(two_class_npz, tmp_path):
    """MLDR-KD on the heterogeneous path: a (tiny, random) timm ViT teacher -> a 4-stage timm ResNet student with the
    cosine + warm-up recipe; every MLDR-KD term is finite and the checkpoint is in timm's layout."""
    with pytest.warns(UserWarning, match="RANDOM weights"):
        metrics = main(options(
            two_class_npz, tmp_path / "mldr", "--data.pipeline", "hetero", "--data.image_size", "32", "--data.frac", "0.5",
            "--model.student", "timm", "--timm.student", "test_resnet", "--model.teacher", "timm", "--timm.teacher", "test_vit",
            "--timm.random_teacher", "true", "--distill.method", "mldr", "--train.epochs", "2", "--train.schedule", "cosine",
            "--train.warmup_epochs", "1", "--train.nesterov", "true",
        ))
    assert metrics["student"] == "test_resnet" and metrics["teacher"] == "test_vit"
    rows = metrics["epochs"]
    assert [row["lr"] for row in rows] == pytest.approx([1e-4, 0.05])  # the warm-up epoch from 1e-4, then the cosine starts at lr
    terms = {"ce", "logit_distill", "stage_distill", "fused_distill"}
    assert {key[5:] for key in rows[0] if key.startswith("loss_")} == terms
    assert all(np.isfinite(row[f"loss_{term}"]) and row[f"loss_{term}"] > 0 for row in rows for term in terms)
    state = torch.load(tmp_path / "mldr" / "checkpoints" / "last.pt", weights_only=True)
    assert state["model_name"] == "test_resnet" and "fc.weight" in state["model"]  # timm's own key names
    assert len([key for key in state["criterion"] if key.startswith("stage_heads.") and key.endswith("classifier.weight")]) == 4


def test_timm_teacher_needs_weights_or_the_explicit_random_flag():
    pair = ["--model.student", "timm", "--model.teacher", "timm", "--distill.method", "mldr"]
    with pytest.raises(ConfigError, match="needs a trained teacher"):
        classifier_config(pair)
    assert classifier_config([*pair, "--timm.random_teacher", "true"]).run_dir == (
        "runs/classifier/cifar100-resnet18-mldr-vit_small_patch16_224"
    )


@pytest.mark.parametrize("path", sorted(HETERO.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_hetero_configs_load(path):
    cfg = classifier_config(["--config", str(path)])
    assert cfg.data.pipeline == "hetero" and cfg.model.student == "timm"
    assert timm.is_model(cfg.timm.student) and timm.is_model(cfg.timm.teacher)
    if path.stem not in ("teacher", "tiny_cpu"):  # MLDR-KD's recipe, and the file is named student_teacher
        assert path.stem == f"{cfg.timm.student}_{cfg.timm.teacher}" and cfg.distill.method == "mldr"
        recipe = (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.nesterov, cfg.train.weight_decay,
                  cfg.train.schedule, cfg.train.warmup_epochs, cfg.train.min_lr, cfg.data.image_size)
        assert recipe == (300, 128, 0.05, True, 2e-3, "cosine", 3, 1e-3, 224)
        assert cfg.distill.mldr.label_smoothing == 0.1 and cfg.distill.ce.label_smoothing == 0.1
