"""The frozen teacher: an open_clip image encoder fed the very images the discriminator sees.

``distill.teacher`` is an open_clip model name (ViT-B-32), a model-config JSON file in open_clip's format, or the name
of one shipped in genkd/teacher_configs (``tiny-vit``, a random-weight stand-in for tests and smoke runs). Weights
come from ``distill.weights`` (a local file), else the open_clip ``distill.pretrained`` tag (downloaded once into the
open_clip / Hugging Face cache); random weights only with ``distill.random_teacher``.

``distill.dtype`` bf16/fp16 casts the encoder's weights once, at build time, the way open_clip's ``precision``
argument does (OpenAI's scheme: matmul and conv weights in low precision, LayerNorm computed in float32). Casting
beats autocast here because the teacher is frozen: autocast would re-cast every weight at every step (it caches
casts only for weights that require grad) and keep the float32 copy in memory as well. Measured on a 2-core AVX512-BF16
CPU, ViT-B-32 at 224 px, batch 20: fp32 2.79 s, bf16 autocast 3.89 s, bf16 weights 1.09 s; features within cosine
0.999 of fp32 on real CIFAR images (tests/test_teachers.py). Attention is open_clip's ``nn.MultiheadAttention``
called with ``need_weights=False``, which runs torch's fused scaled-dot-product attention (SDPA; a test checks).

Knobs that change the teacher's features on purpose, off by default (cost and drift: bench/bench_distill.py):
``distill.teacher_resolution`` feeds the encoder smaller images (open_clip's ``force_image_size``; loaded weights get
their positional embedding resampled by open_clip), and ``distill.every`` (genkd/train.py) distils on 1 of every k
discriminator steps.
"""
import json
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

TEACHER_CONFIGS = Path(__file__).parent / "teacher_configs"
PREPROCESSING = ("clip", "kd-dlgan")


class TeacherError(ValueError):
    """A teacher that cannot be built as configured; the message names the option to change."""


def resolve_model_name(teacher: str) -> str:
    """The open_clip model name for ``teacher``, registering a model-config JSON file with open_clip if needed."""
    path = Path(teacher)
    if path.suffix == ".json":
        if not path.is_file():
            raise TeacherError(f"teacher config file not found: {teacher} (--distill.teacher)")
        config = json.loads(path.read_text())
        if open_clip.get_model_config(path.stem) != config:
            open_clip.add_model_config(path)
        if open_clip.get_model_config(path.stem) != config:
            raise TeacherError(f"{teacher} is not an open_clip model config (needs embed_dim, vision_cfg and text_cfg)")
        return path.stem
    if teacher.replace("/", "-") in open_clip.list_models():  # open_clip accepts ViT-B/32 for ViT-B-32
        return teacher.replace("/", "-")
    if (TEACHER_CONFIGS / f"{teacher}.json").is_file():
        return resolve_model_name(str(TEACHER_CONFIGS / f"{teacher}.json"))
    shipped = ", ".join(path.stem for path in sorted(TEACHER_CONFIGS.glob("*.json")))
    raise TeacherError(
        f"unknown teacher {teacher!r}: pass an open_clip model name (e.g. ViT-B-32; see open_clip.list_models()), "
        f"a model-config JSON file, or one of genkd's: {shipped}"
    )


def checkpoint_file(distill_cfg: Mapping, model_name: str) -> str | None:
    """The local weights file to load (downloading the pretrained tag if needed), or None for random weights."""
    if distill_cfg["random_teacher"]:
        if distill_cfg["weights"]:
            raise TeacherError("both --distill.weights and --distill.random-teacher true are set: choose one")
        warnings.warn(
            f"distill.random_teacher: the {model_name} teacher has RANDOM weights; distilling it is only good for "
            "tests and smoke runs",
            stacklevel=3,
        )
        return None
    if distill_cfg["weights"]:
        if not Path(distill_cfg["weights"]).is_file():
            raise TeacherError(f"teacher weights file not found: {distill_cfg['weights']} (--distill.weights)")
        return str(distill_cfg["weights"])
    tag = distill_cfg["pretrained"]
    if not tag:
        raise TeacherError(
            f"no weights for the {model_name} teacher: set --distill.pretrained TAG, --distill.weights FILE, "
            "or --distill.random-teacher true for a smoke test"
        )
    tag_cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not tag_cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        raise TeacherError(
            f"unknown open_clip pretrained tag {tag!r} for {model_name} (known: {known}); "
            "for a local file use --distill.weights"
        )
    advice = (
        f"could not load open_clip weights {tag!r} for {model_name} (offline?): pass --distill.weights "
        "/path/to/open_clip_pytorch_model.bin, or --distill.random-teacher true for a smoke test"
    )
    try:
        path = open_clip.download_pretrained(tag_cfg)
    except Exception as error:  # offline, firewalled, disk full: every failure ends in the same advice
        cause = str(error).splitlines()[0] if str(error) else ""
        raise TeacherError(f"{advice} [{type(error).__name__}: {cause}]") from error
    if not path:  # a tag without any download source
        raise TeacherError(advice)
    return path


class Teacher(nn.Module):
    """A frozen image encoder mapping discriminator inputs (B, 3, H, W) in [-1, 1] to features (B, feature_dim).

    Always in eval mode (``train()`` is a no-op, so a training loop's ``.train()`` cannot turn dropout on), never
    trained, and run under ``no_grad``: its features are a target, not a path for gradients to the images.
    Preprocessing ``clip`` is what the encoder was trained with: [-1, 1] -> [0, 1], resized to its input size with
    its interpolation (antialiased, which matches PIL's kernel, and clamped to [0, 1] like a PIL image), normalised with
    its mean/std. ``kd-dlgan`` reproduces the KD-DLGAN reference code: nearest-neighbour upsampling (x7 for 32 -> 224)
    of the [-1, 1] images, no normalisation.
    """

    def __init__(self, encoder: nn.Module, feature_dim: int, preprocess: str = "clip"):
        super().__init__()
        if preprocess not in PREPROCESSING:
            raise TeacherError(f"unknown teacher preprocessing {preprocess!r}; accepted: {', '.join(PREPROCESSING)}")
        self.encoder = encoder.requires_grad_(False)
        self.feature_dim = feature_dim
        self.preprocess = preprocess
        config = encoder.preprocess_cfg
        size = config["size"]
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        self.interpolation = "bilinear" if config["interpolation"] == "bilinear" else "bicubic"
        self.register_buffer("mean", torch.tensor(config["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config["std"]).view(1, 3, 1, 1), persistent=False)
        self.train(False)

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's input for images in [-1, 1] (float32)."""
        images = images.float()
        if self.preprocess == "kd-dlgan":
            return F.interpolate(images, size=self.image_size, mode="nearest")
        pixels = (images + 1) / 2
        if pixels.shape[-2:] != self.image_size:
            pixels = F.interpolate(
                pixels, size=self.image_size, mode=self.interpolation, align_corners=False, antialias=True
            ).clamp(0, 1)
        return (pixels - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features (B, feature_dim), float32, whatever the encoder's dtype and any surrounding autocast."""
        inputs = self.prepare(images)
        with torch.autocast(inputs.device.type, enabled=False):
            return self.encoder(inputs.to(self.input_dtype())).float()

    def zero_shot_logits(self, features: torch.Tensor) -> torch.Tensor:
        """CLIP's zero-shot class logits: logit_scale * cos(image feature, prompt embedding), (B, num_prompts)."""
        if not hasattr(self, "prompt_embeddings"):
            raise TeacherError("this teacher was built without class prompts (build_teacher(..., prompts=...))")
        return self.logit_scale * F.normalize(features.float(), dim=1) @ self.prompt_embeddings.T

    def input_dtype(self) -> torch.dtype:
        """The dtype of the first conv (a ViT's patch embedding): bf16/fp16 when built so, and after .to(dtype)."""
        stem = next((module for module in self.encoder.modules() if isinstance(module, nn.Conv2d)), None)
        return stem.weight.dtype if stem is not None else torch.float32


def build_teacher(distill_cfg: Mapping, prompts: Sequence[str] = ()) -> Teacher:
    """The frozen open_clip image encoder described by ``distill_cfg`` (see the module docstring).

    With ``prompts`` the teacher also keeps their unit text embeddings and CLIP's logit scale, for
    ``zero_shot_logits``; the text tower itself is dropped after this one use.
    """
    model_name = resolve_model_name(distill_cfg["teacher"])
    checkpoint = checkpoint_file(distill_cfg, model_name)
    # the pretrained tag describes the weights even when they come from a local file: activation, mean/std, resize
    tag = distill_cfg["pretrained"]
    tag_cfg = open_clip.get_pretrained_cfg(model_name, tag) if checkpoint and tag else {}
    model = open_clip.create_model(
        model_name,
        pretrained=checkpoint,
        precision=distill_cfg["dtype"],
        force_quick_gelu=tag_cfg.get("quick_gelu", False),
        force_preprocess_cfg={key: tag_cfg[key] for key in ("mean", "std", "interpolation") if key in tag_cfg},
        force_image_size=distill_cfg.get("teacher_resolution") or None,
    )
    feature_dim = open_clip.get_model_config(model_name)["embed_dim"]
    teacher = Teacher(model.visual, feature_dim, distill_cfg["preprocess"])
    if prompts:
        with torch.no_grad():
            text = model.encode_text(open_clip.get_tokenizer(model_name)(list(prompts))).float()
        teacher.register_buffer("prompt_embeddings", F.normalize(text, dim=1), persistent=False)
        teacher.logit_scale = model.logit_scale.exp().item()
    return teacher
