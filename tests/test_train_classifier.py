"""The classifier trainer on real CIFAR-10 images: it learns, writes its results, round-trips teachers, distils."""
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import genkd  # noqa: F401  (before torchvision)
from genkd.classifier.models import MODELS, build_model, load_weights
from genkd.config import ConfigError
from genkd.train_classifier import classifier_config, image_transform, main, normalization, training_transform

AIRPLANE, FROG = 0, 6


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


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[1].glob("configs/classifier/*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    cfg = classifier_config(["--config", str(path)])
    assert cfg.model.student in MODELS
    if cfg.distill.method != "ce":  # a pair file is named after its teacher and student
        assert cfg.model.teacher in MODELS
        assert path.stem in (f"{cfg.model.teacher}_{cfg.model.student}", "quickstart")
