"""Cost of distillation in a discriminator training step, measured in one run.

    python bench/bench_distill.py                              # cuda if present (ViT-B-32), else cpu (tiny-vit)
    python bench/bench_distill.py --device cpu --iters 5 --rounds 3
    python bench/bench_distill.py --teacher ViT-B-32 --dtype bf16
    python bench/bench_distill.py --device cpu --teacher ViT-B-32 --dtypes fp32,bf16 --projectors linear \
        --resolution 112 --every 2 --iters 1 --rounds 3                    # the cheap-teacher options, one run

One step is what genkd/train.py does per discriminator step: BigGAN D forward on 2 x batch augmented images (real and
fake), hinge loss, plus the distillation loss on the same images, backward, Adam step. Paper widths: D features 256,
teacher 512 (ViT-B-32, random weights: nothing is downloaded; tiny-vit has the same 512-d output), batch 50.
Variants are timed in interleaved rounds, best round reported (other load only ever adds time), so drifts of the
machine hit all of them alike. On a busy CPU whole steps still jitter by more than the projector costs, hence the
second estimate: the projector-only difference over the linear step, which is what the orthogonal variant adds.
Target: an orthogonal projector costs <= 3 % more per training step than a linear one (VkD reports +36 % for its
implementation).

The cheap teacher (issue 12): ``--dtypes`` times the linear-head step with the teacher in each dtype (same weights,
one run), ``--resolution R`` adds a teacher fed R px images (``distill.teacher_resolution``; the same weights, the
positional embedding resampled by open_clip's resize_pos_embed), whose feature drift is printed as the cosine to the
full-resolution fp32 features of the same images; ``--every k`` prints the overhead of ``distill.every k`` (the
teacher and loss on 1 of every k D steps: the measured overhead / k, the other steps being plain ones). Targets for
ViT-B-32 at 224 px: distillation overhead <= +60 % on CPU, <= +25 % on a GPU.
"""
import argparse
import os
import time
import warnings

import torch
import torch.nn.functional as F

import genkd  # noqa: F401  (before anything that may import torchvision or open_clip)
from genkd.config import as_config
from genkd.defaults import DEFAULTS
from genkd.distill import Distiller
from genkd.models.biggan import Discriminator
from genkd.normalize import normalize_features
from genkd.projectors import build_projector
from genkd.teachers import build_teacher
import open_clip.model

NUM_CLASSES = 10
PROJECTORS = {  # name: (kind, orthogonal_map)
    "linear": ("linear", "matrix_exp"),
    "orthogonal (matrix_exp)": ("orthogonal", "matrix_exp"),
    "orthogonal (cayley)": ("orthogonal", "cayley"),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn, iters: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / iters


def discriminator_step(distiller: Distiller | None, images, labels, device):
    """A closure running one training step of a fresh discriminator (+ projector) on fixed images."""
    torch.manual_seed(0)
    discriminator = Discriminator(NUM_CLASSES).to(device)  # a stand-in with 256-d pooled features would go here
    parameters = list(discriminator.parameters()) + (list(distiller.parameters()) if distiller else [])
    optimizer = torch.optim.Adam(parameters, lr=2e-4, betas=(0.0, 0.999))
    batch = len(images) // 2

    def step():
        logits, features = discriminator(images, labels, return_features=True)
        loss = F.relu(1.0 - logits[:batch]).mean() + F.relu(1.0 + logits[batch:]).mean()
        if distiller is not None:
            loss = loss + distiller(features, images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def projector_step(projector, features):
    """Forward + backward of the projector alone (its weight's parametrization included)."""

    def step():
        projector(features).square().sum().backward()
        projector.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--teacher", default=None, help="open_clip name or model-config JSON (default: ViT-B-32 on "
                        "cuda, tiny-vit on cpu, where ViT-B-32 takes seconds per batch)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="teacher dtype")
    parser.add_argument("--dtypes", default=None, help="comma list of teacher dtypes timed in one run (default: --dtype)")
    parser.add_argument("--projectors", default=",".join(PROJECTORS), help=f"comma list of {', '.join(PROJECTORS)}")
    parser.add_argument("--resolution", type=int, default=0, help="also time a teacher at this input size (knob)")
    parser.add_argument("--every", type=int, default=0, help="also print the overhead of distill.every k (knob)")
    parser.add_argument("--batch-size", type=int, default=50, help="real images per step (as many fakes join them)")
    parser.add_argument("--iters", type=int, default=20, help="steps per timing")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timings per variant (best reported)")
    args = parser.parse_args()
    device = torch.device(args.device)
    teacher_name = args.teacher or ("ViT-B-32" if device.type == "cuda" else "tiny-vit")
    dtypes = (args.dtypes or args.dtype).split(",")
    projector_names = args.projectors.split(",")

    def teacher_in(dtype: str, resolution: int = 0):
        distill_cfg = as_config(DEFAULTS).distill
        distill_cfg.update(teacher=teacher_name, random_teacher=True, dtype=dtype, teacher_resolution=resolution)
        torch.manual_seed(0)  # the same random weights in every dtype
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights on purpose: only time matters here
            return build_teacher(distill_cfg), distill_cfg

    teachers = {dtype: teacher_in(dtype)[0] for dtype in dtypes}
    teacher, distill_cfg = teachers[dtypes[0]], teacher_in(dtypes[0])[1]
    if args.resolution:  # the full-resolution weights, positional embedding resampled, as loading a checkpoint does
        small = teacher_in(dtypes[0], args.resolution)[0]
        state = {f"visual.{key}": value for key, value in teacher_in("fp32")[0].encoder.state_dict().items()}
        open_clip.model.resize_pos_embed(state, types_of_visual(small))
        small.encoder.load_state_dict({key[len("visual."):]: value for key, value in state.items()})
        teachers[f"{dtypes[0]} at {args.resolution} px"] = small
    for module in teachers.values():
        module.to(device)
    student_dim = Discriminator(NUM_CLASSES).feature_dim

    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(2 * args.batch_size, 3, 32, 32, generator=generator) * 2 - 1).to(device)
    labels = torch.randint(NUM_CLASSES, (2 * args.batch_size,), generator=generator).to(device)
    features = torch.randn(2 * args.batch_size, student_dim, generator=generator).to(device)

    projectors = {name: build_projector(*PROJECTORS[name][:1], student_dim, teacher.feature_dim, PROJECTORS[name][1])
                  .to(device) for name in projector_names}
    steps = {"no distillation": discriminator_step(None, images, labels, device)}
    for name, projector in projectors.items():
        distiller = Distiller(teacher, projector, distill_cfg.norm, distill_cfg.loss)
        steps[f"vkd, {name}"] = discriminator_step(distiller, images, labels, device)
    linear = build_projector("linear", student_dim, teacher.feature_dim, "matrix_exp").to(device)
    for label, other in list(teachers.items())[1:]:
        distiller = Distiller(other, linear, distill_cfg.norm, distill_cfg.loss)
        steps[f"vkd, linear, {label} teacher"] = discriminator_step(distiller, images, labels, device)
    parts = {
        **{f"teacher forward, {label}": (lambda module=module: module(images)) for label, module in teachers.items()},
        "whitening": lambda: normalize_features(features, "whitening"),
        **{f"projector only, {name}": projector_step(projector, features) for name, projector in projectors.items()},
    }
    timings = {name: [] for name in [*steps, *parts]}
    load_before = os.getloadavg()[0]
    for fn in [*steps.values(), *parts.values()]:  # warm-up: allocator, cuDNN autotuning, lazy inits
        seconds_per_call(fn, 2 if args.iters > 1 else 1, device)
    for _ in range(args.rounds):
        for name, fn in [*steps.items(), *parts.items()]:
            timings[name].append(seconds_per_call(fn, args.iters, device))
    ms = {name: 1e3 * min(values) for name, values in timings.items()}

    threads = f"cpu ({torch.get_num_threads()} threads)"
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else threads
    print(f"device {device_name}, torch {torch.__version__}; D features {student_dim}, teacher {teacher_name} "
          f"({teacher.feature_dim}, {dtypes[0]}), batch {args.batch_size} real + {args.batch_size} fake; "
          f"best of {args.rounds} rounds of {args.iters} calls; load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    for name, value in ms.items():
        print(f"  {name:50s} {value:10.1f} ms")
    plain = ms["no distillation"]
    first = next(iter(projectors))
    overhead = (ms[f"vkd, {first}"] - plain) / plain
    print(f"distillation overhead ({first} head, {dtypes[0]} teacher vs none): {overhead:+8.1%}")
    for label in list(teachers)[1:]:
        print(f"distillation overhead (linear head, {label} teacher vs none): "
              f"{(ms[f'vkd, linear, {label} teacher'] - plain) / plain:+8.1%}")
    if args.every > 1:
        print(f"distill.every {args.every} ({first} head, {dtypes[0]} teacher), per D step on average: "
              f"{overhead / args.every:+8.1%} (derived: overhead / k)")
    if "linear" in projectors:
        for name in [name for name in projectors if name != "linear"]:
            measured = (ms[f"vkd, {name}"] - ms["vkd, linear"]) / ms["vkd, linear"]
            from_parts = (ms[f"projector only, {name}"] - ms["projector only, linear"]) / ms["vkd, linear"]
            print(f"{name} vs linear, per training step: {measured:+8.1%} measured, {from_parts:+8.1%} from the "
                  "projector alone (target <= +3 %)")
    print(f"teacher share of the distillation step:        {ms[f'teacher forward, {dtypes[0]}'] / ms[f'vkd, {first}']:8.1%}")
    reference = teachers[dtypes[0]] if dtypes[0] == "fp32" else teacher_in("fp32")[0].to(device)
    full = reference(images)
    for label, module in list(teachers.items())[1:]:
        cosine = F.cosine_similarity(module(images), full, dim=1)
        print(f"feature drift, {label} teacher vs fp32 at full size: cosine min {cosine.min():.5f}, "
              f"mean {cosine.mean():.5f}")


def types_of_visual(teacher):
    """A stand-in with the ``visual`` attribute open_clip's resize_pos_embed reads (the target grid size)."""
    return type("Model", (), {"visual": teacher.encoder})()


if __name__ == "__main__":
    main()
