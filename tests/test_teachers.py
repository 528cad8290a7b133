"""The frozen open_clip teacher: preprocessing against open_clip's own pipeline, weights files, offline errors."""
import json
import socket
import warnings

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import genkd  # noqa: F401  (before open_clip, which imports torchvision)
import open_clip
from genkd.config import as_config
from genkd.defaults import DEFAULTS
from genkd.teachers import TEACHER_CONFIGS, TeacherError, build_teacher, resolve_model_name


def distill_cfg(**overrides):
    cfg = as_config(DEFAULTS).distill
    cfg.update({"teacher": "tiny-vit", "random_teacher": True, **overrides})
    return cfg


def random_teacher(**overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_teacher(distill_cfg(**overrides))


@pytest.fixture(scope="module")
def cifar_images(cifar10_arrays):
    """uint8 NHWC and the same 8 real test images as D inputs in [-1, 1]."""
    pixels = cifar10_arrays[2][:8]
    return pixels, torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, empty caches: Hugging Face offline mode, and any socket connection fails at once."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_clip_preprocessing_matches_manual_computation(cifar_images):
    teacher = random_teacher()
    _, images = cifar_images
    pixels = F.interpolate((images + 1) / 2, size=(64, 64), mode="bicubic", antialias=True).clamp(0, 1)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    manual = teacher.encoder((pixels - mean) / std)
    features = teacher(images)
    assert features.shape == (8, teacher.feature_dim) == (8, 512) and features.dtype == torch.float32
    torch.testing.assert_close(features, manual)


def test_clip_preprocessing_agrees_with_open_clips_pil_pipeline(cifar_images):
    """open_clip's eval transform (PIL bicubic resize, ToTensor, Normalize) on the uint8 images: same input up to
    uint8 rounding, and features within 1 %."""
    teacher = random_teacher()
    pixels, images = cifar_images
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    transform = open_clip.image_transform(64, is_train=False, mean=mean, std=std, interpolation="bicubic")
    reference = torch.stack([transform(Image.fromarray(image)) for image in pixels])
    assert (teacher.prepare(images) - reference).abs().mean() < 0.01
    expected = teacher.encoder(reference)
    assert ((teacher(images) - expected).norm(dim=1) / expected.norm(dim=1)).max() < 0.01


def test_kd_dlgan_preprocessing_is_nearest_upsampling_without_normalisation(cifar_images, tmp_path):
    config = json.loads((TEACHER_CONFIGS / "tiny-vit.json").read_text())
    config["vision_cfg"].update(image_size=224, patch_size=32)
    (tmp_path / "tiny-vit-224.json").write_text(json.dumps(config))
    teacher = random_teacher(teacher=str(tmp_path / "tiny-vit-224.json"), preprocess="kd-dlgan")
    _, images = cifar_images
    prepared = teacher.prepare(images)
    assert prepared.shape == (8, 3, 224, 224)
    assert torch.equal(prepared, images.repeat_interleave(7, dim=2).repeat_interleave(7, dim=3))
    torch.testing.assert_close(teacher(images), teacher.encoder(prepared))


def test_teacher_is_frozen_and_stays_in_eval_mode(cifar_images):
    teacher = random_teacher()
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not any(module.training for module in teacher.modules())
    images = cifar_images[1].clone().requires_grad_()
    assert not teacher(images).requires_grad  # a target: no gradient path back to the images


def test_teacher_output_ignores_surrounding_autocast(cifar_images):
    teacher = random_teacher()
    _, images = cifar_images
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = teacher(images)
    assert torch.equal(under_autocast, teacher(images))


def test_low_precision_teacher_casts_weights_and_returns_float32(cifar_images):
    _, images = cifar_images
    torch.manual_seed(0)
    full = random_teacher()
    torch.manual_seed(0)
    half = random_teacher(dtype="bf16")
    assert half.encoder.conv1.weight.dtype == torch.bfloat16 and half.input_dtype() == torch.bfloat16
    assert half.encoder.ln_pre.weight.dtype == torch.float32  # LayerNorm stays float32, as in OpenAI's CLIP
    expected, features = full(images), half(images)
    assert features.dtype == torch.float32
    assert ((features - expected).norm(dim=1) / expected.norm(dim=1)).max() < 0.05


def test_weights_file_round_trip(cifar_images, tmp_path):
    name = resolve_model_name("tiny-vit")
    torch.manual_seed(0)
    model = open_clip.create_model(name)
    torch.save(model.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    teacher = build_teacher(distill_cfg(random_teacher=False, weights=str(tmp_path / "open_clip_pytorch_model.bin")))
    _, images = cifar_images
    torch.testing.assert_close(teacher(images), model.visual(teacher.prepare(images)))
    assert not torch.allclose(teacher(images), random_teacher()(images))  # the file's weights, not random ones


def test_random_weights_only_with_the_flag_and_a_warning():
    with pytest.warns(UserWarning, match="tiny-vit teacher has RANDOM weights"):
        build_teacher(distill_cfg())
    with pytest.raises(TeacherError, match="TAG, --distill.weights FILE, or --distill.random-teacher true"):
        build_teacher(distill_cfg(random_teacher=False, pretrained=""))
    with pytest.raises(TeacherError, match="both --distill.weights and --distill.random-teacher true are set"):
        build_teacher(distill_cfg(weights="model.bin"))


def test_offline_without_weights_is_one_clear_error(offline):
    cfg = distill_cfg(teacher="ViT-B-32", pretrained="openai", random_teacher=False)
    with pytest.raises(TeacherError) as error:
        build_teacher(cfg)
    message = str(error.value)
    assert message.startswith(
        "could not load open_clip weights 'openai' for ViT-B-32 (offline?): pass --distill.weights "
        "/path/to/open_clip_pytorch_model.bin, or --distill.random-teacher true for a smoke test"
    )
    assert "\n" not in message


def test_bad_teacher_options(tmp_path):
    with pytest.raises(TeacherError, match="unknown teacher 'ViT-Q-99': pass an open_clip model name"):
        build_teacher(distill_cfg(teacher="ViT-Q-99"))
    with pytest.raises(TeacherError, match="teacher config file not found: .*missing.json"):
        build_teacher(distill_cfg(teacher=str(tmp_path / "missing.json")))
    (tmp_path / "not-a-model.json").write_text('{"width": 3}')
    with pytest.raises(TeacherError, match="is not an open_clip model config"):
        build_teacher(distill_cfg(teacher=str(tmp_path / "not-a-model.json")))
    with pytest.raises(TeacherError, match="teacher weights file not found: .*nope.bin"):
        build_teacher(distill_cfg(random_teacher=False, weights=str(tmp_path / "nope.bin")))
    with pytest.raises(TeacherError, match="unknown open_clip pretrained tag 'imagenet' for ViT-B-32 \\(known: openai"):
        build_teacher(distill_cfg(teacher="ViT-B-32", random_teacher=False, pretrained="imagenet"))
    with pytest.raises(TeacherError, match="unknown teacher preprocessing 'resize'"):
        random_teacher(preprocess="resize")


def feature_cosines(expected: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Per-image cosine after removing the fp32 batch mean: random-weight encoders share a large common component that
    makes raw cosines near 1 more easily."""
    centre = expected.mean(dim=0)
    return F.cosine_similarity(features - centre, expected - centre, dim=1)


@pytest.mark.parametrize("teacher", ["tiny-vit", "ViT-B-32"])
def test_bf16_teacher_features_stay_within_cosine_0999_of_fp32_on_real_images(cifar_images, teacher):
    _, images = cifar_images
    torch.manual_seed(0)
    full = random_teacher(teacher=teacher)
    torch.manual_seed(0)
    half = random_teacher(teacher=teacher, dtype="bf16")
    expected, features = full(images), half(images)
    assert F.cosine_similarity(features, expected, dim=1).min() >= 0.999
    # stricter, without the common component: 0.9995 measured for ViT-B-32, 0.998 for the narrow tiny-vit
    assert feature_cosines(expected, features).min() >= 0.995
    assert feature_cosines(expected, expected.roll(1, dims=0)).max() < 0.9  # the images' features do differ


def test_teacher_attention_runs_fused_scaled_dot_product_attention(cifar_images):
    teacher = random_teacher()
    with torch.profiler.profile() as profile:
        teacher(cifar_images[1])
    names = {event.key for event in profile.key_averages()}
    assert any("scaled_dot_product" in name or "_native_multi_head_attention" in name for name in names), names


def test_lower_teacher_resolution_resamples_the_input_and_the_positional_embedding(cifar_images, tmp_path):
    """distill.teacher_resolution 32: the encoder takes 32 x 32 inputs (4 x 4 patches of 8 instead of 8 x 8), and
    weights saved at 64 px load with their positional embedding resampled (open_clip's resize_pos_embed)."""
    torch.manual_seed(0)
    model = open_clip.create_model(resolve_model_name("tiny-vit"))
    torch.save(model.state_dict(), tmp_path / "weights.bin")
    cfg = distill_cfg(random_teacher=False, weights=str(tmp_path / "weights.bin"))
    full, small = build_teacher(cfg), build_teacher({**cfg, "teacher_resolution": 32})
    _, images = cifar_images
    assert small.prepare(images).shape == (8, 3, 32, 32) and small.image_size == (32, 32)
    assert small.encoder.positional_embedding.shape[0] == 4 * 4 + 1
    expected = full(images)
    cosines = feature_cosines(expected, small(images))
    assert 0 < cosines.mean() < 0.999  # related (same weights), not the same: a knob that changes the features
