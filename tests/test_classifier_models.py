"""The CIFAR model zoo: parameter counts of the papers, output structure, RepDistiller checkpoints, the CLIP probe."""
import warnings
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch

import genkd  # noqa: F401  (before torchvision / open_clip)
from genkd.checkpoint import CheckpointError, save_checkpoint
from genkd.classifier.models import MODELS, ModelError, build_model, load_weights
from genkd.classifier.losses import build_classifier_loss
from genkd.classifier.models.clip import ClipClassifier
from genkd.classifier.models.timm_zoo import TimmClassifier, TimmModelError
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


# --- RepDistiller's ResNet50 ------------------------------------------------------------------------------------------


def repdistiller_resnet50_keys():
    """The state-dict keys of RepDistiller's ResNet50 (models/resnetv2.py), written out from reading that file:
    conv1/bn1 stem; layer1..4 of 3/4/6/3 Bottlenecks, each conv1-3 + bn1-3 and, where the shape changes (the first
    block of every layer: 64 -> 256 channels in layer1, stride 2 after), a ``shortcut`` = Sequential(conv, bn);
    the ``linear`` head. (The identity shortcut is an empty Sequential: no keys.)"""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = ["conv1.weight", *(f"bn1.{name}" for name in bn)]
    for layer, blocks in enumerate((3, 4, 6, 3), start=1):
        for block in range(blocks):
            prefix = f"layer{layer}.{block}"
            for index in (1, 2, 3):
                keys += [f"{prefix}.conv{index}.weight", *(f"{prefix}.bn{index}.{name}" for name in bn)]
            if block == 0:
                keys += [f"{prefix}.shortcut.0.weight", *(f"{prefix}.shortcut.1.{name}" for name in bn)]
    return keys + ["linear.weight", "linear.bias"]


def test_resnet50_is_repdistillers():
    model = build_model("resnet50", 100)
    assert sum(p.numel() for p in model.parameters()) == 23_705_252  # RepDistiller's ResNet50 for 100 classes
    assert list(model.state_dict()) == repdistiller_resnet50_keys()
    assert model.stage_channels == [256, 512, 1024, 2048]
    output = model(torch.zeros(2, 3, 32, 32))
    assert [tuple(stage.shape[1:]) for stage in output.stages] == [(256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)]


# --- timm models (heterogeneous setting) ------------------------------------------------------------------------------

# (channels, height, width) of the four stages at 224 px. ResNets: MLDR-KD's _RESNET_STAGE_SHAPES (mldr_kd/models.py);
# ViT-S / Mixer-B/16 / DeiT-T / ResMLP-S12: OFA's stage_info token shapes (197 or 196 tokens of width C: a 14 x 14
# grid once the class token is dropped); Swin-T: OFA's (3136, 96) ... (49, 768) = 56^2 ... 7^2 tokens.
PAPER_STAGE_SHAPES = {
    "resnet18": [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)],
    "resnet101": [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)],
    "vit_small_patch16_224": [(384, 14, 14)] * 4,
    "deit_tiny_patch16_224": [(192, 14, 14)] * 4,
    "mixer_b16_224": [(768, 14, 14)] * 4,
    "resmlp_12_224": [(384, 14, 14)] * 4,
    "swin_tiny_patch4_window7_224": [(96, 56, 56), (192, 28, 28), (384, 14, 14), (768, 7, 7)],
    "convnext_tiny": [(96, 56, 56), (192, 28, 28), (384, 14, 14), (768, 7, 7)],
}
OFA_BLOCKS = [1, 3, 9, 11]  # OFA's stage indices of 12-block ViT / Mixer / ResMLP (custom_forward/*.py)


@pytest.mark.parametrize("arch", PAPER_STAGE_SHAPES)
def test_timm_stage_shapes_at_224_match_the_references(arch):
    """Full-size models on the meta device (shapes only, no memory, no weights)."""
    with torch.device("meta"):
        model = TimmClassifier(arch, 100)
        output = model(torch.empty(2, 3, 224, 224))
    assert [tuple(stage.shape[1:]) for stage in output.stages] == PAPER_STAGE_SHAPES[arch]
    assert model.stage_channels == [shape[0] for shape in PAPER_STAGE_SHAPES[arch]]
    assert output.pooled.shape == (2, model.feature_dim) and output.logits.shape == (2, 100)
    if PAPER_STAGE_SHAPES[arch][0][1] == 14:  # isotropic
        assert model.stage_indices == OFA_BLOCKS


# Tiny random timm models (timm's test_* models, a ViT-S shrunk by arguments, a Mixer-S/16) at 32 px, on the CPU.
TINY_TIMM = {
    "test_resnet": {},
    "test_convnext": {},
    "test_efficientnet": {},
    "test_vit": {},
    "vit_small_patch16_224": {"img_size": 32, "patch_size": 4, "embed_dim": 32, "depth": 4, "num_heads": 2},
    "mixer_s16_224": {"img_size": 32},  # Mixer names fix their patch size and width: only the input shrinks
}


@pytest.mark.parametrize("arch", TINY_TIMM)
def test_timm_models_expose_four_stages_and_pooled_features_for_msdf_heads(arch, images):
    torch.manual_seed(0)
    model = TimmClassifier(arch, 10, **TINY_TIMM[arch]).eval()
    with torch.no_grad():
        output = model(images)
        direct = model.model(images)  # timm's own forward: the wrapper's logits are the model's
    assert len(output.stages) == 4 and all(stage.dim() == 4 and len(stage) == 4 for stage in output.stages)
    assert [stage.shape[1] for stage in output.stages] == model.stage_channels
    sides = [stage.shape[-1] for stage in output.stages]
    assert sides == sorted(sides, reverse=True) and all(stage.shape[-1] == stage.shape[-2] for stage in output.stages)
    assert output.pooled.shape == (4, model.feature_dim)
    torch.testing.assert_close(output.logits, direct, rtol=1e-5, atol=1e-5)
    # MLDR-KD's MSDF heads take these stages: one head per stage, each down to the last stage's side.
    loss = build_classifier_loss({"method": "mldr"}, model, SimpleNamespace(feature_dim=24), 10)
    per_stage, fused = loss.stage_logits(output.stages)
    assert len(loss.stage_heads) == 4 and all(logits.shape == (4, 10) for logits in [*per_stage, fused])


def test_timm_weights_round_trip_in_timm_and_wrapped_layouts(tmp_path, images):
    """A timm training checkpoint ({'state_dict': ...}, DataParallel 'module.' keys) loads into the wrapper, and
    timm.pretrained PATH initialises the backbone from a local file."""
    torch.manual_seed(1)
    source = TimmClassifier("test_vit", 10).eval()
    weights = {f"module.{key}": value for key, value in source.model.state_dict().items()}
    torch.save({"state_dict": weights, "epoch": 3}, tmp_path / "teacher.pth")
    loaded = load_weights(TimmClassifier("test_vit", 10), tmp_path / "teacher.pth", "test_vit").eval()
    torch.save(source.model.state_dict(), tmp_path / "plain.pth")
    initialised = TimmClassifier("test_vit", 10, pretrained=str(tmp_path / "plain.pth")).eval()
    with torch.no_grad():
        expected = source(images).logits
        torch.testing.assert_close(loaded(images).logits, expected)
        # timm.pretrained loads the backbone; the classifier is re-initialised (timm's pretrained configs are for
        # 1000 classes: fine-tuning semantics), so the features match, not the logits
        torch.testing.assert_close(initialised(images).pooled, source(images).pooled)


def test_timm_errors_name_the_option(monkeypatch):
    with pytest.raises(TimmModelError, match="timm has no model 'resnet9000': set timm.student"):
        TimmClassifier("resnet9000", 10)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # answer at once instead of retrying
    with pytest.raises(TimmModelError, match="offline\\? .*timm.pretrained PATH, or model.teacher_checkpoint PATH") as error:
        TimmClassifier("test_resnet", 10, pretrained="timm")
    assert "\n" not in str(error.value)
