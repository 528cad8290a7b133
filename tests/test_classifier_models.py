"""The CIFAR model zoo: parameter counts of the papers, output structure, RepDistiller checkpoints, the CLIP probe."""
import warnings

import pytest
import torch

import genkd  # noqa: F401  (before torchvision / open_clip)
from genkd.checkpoint import CheckpointError, save_checkpoint
from genkd.classifier.models import MODELS, ModelError, build_model, load_weights
from genkd.classifier.models.clip import ClipClassifier
from genkd.config import as_config
from genkd.defaults import DEFAULTS
from genkd.teachers import build_teacher

# Millions of parameters for CIFAR-100 (100 classes), as tabulated in the CIFAR-100 KD literature (CRD-style zoo;
# e.g. the "#Params" rows of SimKD, Chen et al. CVPR 2022), rounded to 0.01 M there.
PAPER_PARAMS_M = {
    "resnet20": 0.28,
    "resnet32": 0.47,
    "resnet56": 0.86,
    "resnet110": 1.74,
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "wrn_16_2": 0.70,
    "wrn_40_1": 0.57,
    "wrn_40_2": 2.26,
    "vgg8": 3.96,
    "vgg13": 9.46,
    "mobilenetv2": 0.81,
    "shufflenetv1": 0.95,
    "shufflenetv2": 1.36,
}

# Parameter names of RepDistiller's models (its teachers are shared as {'model': state_dict}).
REPDISTILLER_KEYS = {
    "resnet8x4": ["conv1.weight", "layer1.0.downsample.0.weight", "layer3.0.bn2.running_var", "fc.weight"],
    "wrn_40_2": ["block1.layer.0.convShortcut.weight", "block3.layer.5.bn2.weight", "bn1.weight", "fc.bias"],
    "vgg8": ["block0.0.bias", "block0.1.running_mean", "block4.0.weight", "classifier.weight"],
    "vgg13": ["block0.3.weight", "block0.4.weight", "block4.4.bias", "classifier.weight"],
    "mobilenetv2": ["conv1.0.weight", "blocks.1.0.conv.3.weight", "blocks.6.0.conv.7.running_mean", "conv2.1.weight", "classifier.0.weight"],
    "shufflenetv1": ["layer1.0.conv1.weight", "layer3.3.bn3.weight", "linear.weight"],
    "shufflenetv2": ["layer1.0.conv5.weight", "layer1.3.conv3.weight", "layer3.0.bn4.weight", "conv2.weight", "bn2.weight", "linear.weight"],
}


@pytest.fixture(scope="module")
def images(cifar10_arrays):
    """Four real CIFAR-10 images, normalised like the trainer does."""
    pixels = torch.from_numpy(cifar10_arrays[0][:4]).permute(0, 3, 1, 2).float() / 255
    return (pixels - 0.48) / 0.25


@pytest.mark.parametrize("name", PAPER_PARAMS_M)
def test_parameter_count_matches_papers(name):
    millions = sum(p.numel() for p in build_model(name, 100).parameters()) / 1e6
    assert abs(millions - PAPER_PARAMS_M[name]) <= 0.006, f"{name}: {millions:.4f}M"


@pytest.mark.parametrize("name", MODELS)
def test_output_structure(name, images):
    model = build_model(name, 10).eval()
    with torch.no_grad():
        out = model(images)
    assert [s.shape[1] for s in out.stages] == model.stage_channels
    assert all(s.shape[0] == 4 and s.dim() == 4 for s in out.stages)
    resolutions = [s.shape[-1] for s in out.stages]
    assert resolutions == sorted(resolutions, reverse=True) and resolutions[0] in (16, 32)
    assert out.pooled.shape == (4, model.feature_dim) and model.feature_dim == model.stage_channels[-1]
    assert out.logits.shape == (4, 10) and model.num_classes == 10
    # the head consumes exactly the global average of the last stage
    torch.testing.assert_close(out.pooled, out.stages[-1].mean((2, 3)))
    torch.testing.assert_close(out.logits, model.head(out.pooled))


def test_known_stage_layout():
    expected = {
        "resnet8x4": [64, 128, 256],
        "wrn_16_2": [32, 64, 128],
        "vgg13": [64, 128, 256, 512, 512],
        "mobilenetv2": [12, 16, 48, 1280],
        "shufflenetv1": [240, 480, 960],
        "shufflenetv2": [116, 232, 1024],
    }
    assert {name: build_model(name, 100).stage_channels for name in expected} == expected


@pytest.mark.parametrize("name", REPDISTILLER_KEYS)
def test_repdistiller_parameter_names(name):
    keys = build_model(name, 100).state_dict()
    missing = [key for key in REPDISTILLER_KEYS[name] if key not in keys]
    assert not missing


def test_unknown_model_lists_names():
    with pytest.raises(ModelError, match="unknown model 'resnet9'.*resnet8x4.*shufflenetv2"):
        build_model("resnet9", 10)


def test_repdistiller_checkpoint_round_trip(tmp_path, images):
    torch.manual_seed(0)
    trained = build_model("resnet20", 10).eval()
    path = tmp_path / "resnet20_vanilla.pth"
    # RepDistiller's layout, saved from nn.DataParallel (keys prefixed with "module.")
    save_checkpoint({"epoch": 240, "model": {f"module.{k}": v for k, v in trained.state_dict().items()}, "best_acc": 69.1}, path)
    torch.manual_seed(1)
    loaded = load_weights(build_model("resnet20", 10), path, "resnet20").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).logits, trained(images).logits, rtol=0, atol=0)


def test_load_weights_errors(tmp_path):
    path = tmp_path / "teacher.pt"
    save_checkpoint({"model": build_model("resnet20", 100).state_dict(), "model_name": "resnet20"}, path)
    with pytest.raises(ModelError, match="other shape fc.bias, fc.weight"):
        load_weights(build_model("resnet20", 10), path, "resnet20")
    with pytest.raises(ModelError, match="holds a resnet20, not a resnet32"):
        load_weights(build_model("resnet32", 100), path, "resnet32")
    save_checkpoint({"model": build_model("resnet20", 100).state_dict()}, path)
    with pytest.raises(ModelError, match="does not fit CifarResNet \\(missing layer1.3.bn1.bias"):
        load_weights(build_model("resnet32", 100), path)
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(build_model("resnet20", 10), tmp_path / "absent.pt")


def test_clip_classifier(images):
    clip_cfg = as_config(DEFAULTS).distill
    clip_cfg.update(teacher="tiny-vit", random_teacher=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoder = build_teacher(clip_cfg)
    model = ClipClassifier(encoder, 10, mean=(0.48,) * 3, std=(0.25,) * 3)
    out = model(images)
    assert out.stages == [] and out.pooled.shape == (4, model.feature_dim) and out.logits.shape == (4, 10)
    # the wrapper undoes the classifier normalisation: the encoder sees the images in [-1, 1]
    torch.testing.assert_close(out.pooled, encoder((images * 0.25 + 0.48) * 2 - 1))
    torch.testing.assert_close(out.logits, model.head(out.pooled))
    out.logits.sum().backward()
    assert model.head.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in model.encoder.parameters())
    # only the linear probe is saved: the frozen encoder comes back from its own weights
    assert set(model.state_dict()) == {"weight", "bias"}
