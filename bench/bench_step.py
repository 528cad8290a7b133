"""Time of one training iteration of genkd in each speed setting, and of the reference implementation, in one run.

    python bench/bench_step.py                                   # paper width 64, genkd settings only
    python bench/bench_step.py --reference /work/scratch/ref/DiffAugment-biggan-cifar --repeats 5
    python bench/bench_step.py --width 4 --reference DIR         # framework overhead
    python bench/bench_step.py --profile eager                   # torch.profiler table of one iteration

One iteration = what genkd/train.py's loop does per generator step with the flags of data-efficient-gans'
DiffAugment-biggan-cifar10-0.1.sh: batch 50, 4 D steps (real batch, G forward without grad, DiffAugment
translation,cutout on real+fake, D on the concatenation, hinge loss, Adam) + 1 G step (hinge, Adam) + the EMA update,
per-layer class embeddings (G_shared off), no attention, N02 init. The loop body below repeats train.py's, on the
same genkd pieces (RealBatches, diff_augment, models, genkd.speed, update_ema).

The reference (``--reference DIR``: a copy of data-efficient-gans/DiffAugment-biggan-cifar, e.g. made with
``git -C <mirror> archive HEAD DiffAugment-biggan-cifar | tar x -C /work/scratch/ref``; never committed here) is
imported from DIR: its BigGAN.py G, D and G_D, its train_fns.GAN_training_function (4 D steps + 1 G step + its EMA),
configured by its own utils.prepare_parser() with the script's flags. Its data loader is not timed (ours holds the
data on the device, RealBatches is timed), nor is its --parallel (nn.DataParallel is a no-op on CPU).

Variants are timed interleaved (A, B, C, A, B, C, ...) after a warm-up iteration each; the median of the repeats and
the spread (min - max) are printed, and every ratio is between medians of the same run, for wall time and for this
process's CPU time (the steadier one on a CPU shared with other jobs).
"""
import argparse
import os
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import genkd  # noqa: F401  (before anything that may import torchvision)
from genkd.diffaug import diff_augment
from genkd.models.biggan import Discriminator, Generator
from genkd.speed import adam, prepare_module
from genkd.train import RealBatches, update_ema

NUM_CLASSES, BATCH, D_STEPS, POLICY = 10, 50, 4, "translation,cutout"
REFERENCE_FLAGS = (  # DiffAugment-biggan-cifar10-0.1.sh, minus its logging, evaluation and data-loading flags
    "--DiffAugment translation,cutout --batch_size 50 --num_G_accumulations 1 --num_D_accumulations 1 "
    "--num_D_steps 4 --G_lr 2e-4 --D_lr 2e-4 --dataset C10 --G_ortho 0.0 --G_attn 0 --D_attn 0 "
    "--G_init N02 --D_init N02 --ema --use_ema --ema_start 1000 --seed 0"
)
SETTINGS = {  # name: genkd.speed settings
    "eager fp32": {"compile": False, "channels_last": False, "fused_adam": False},
    "fused_adam": {"compile": False, "channels_last": False, "fused_adam": True},
    "channels_last": {"compile": False, "channels_last": True, "fused_adam": False},
    "channels_last + fused_adam": {"compile": False, "channels_last": True, "fused_adam": True},
    "compile + fused_adam": {"compile": True, "channels_last": False, "fused_adam": True},
    "compile + channels_last + fused_adam": {"compile": True, "channels_last": True, "fused_adam": True},
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def genkd_iteration(settings: dict, width: int, device: torch.device, mixed_precision: str = "no"):
    """A closure running one training iteration of freshly built genkd models in ``settings``."""
    torch.manual_seed(0)
    generator = Generator(NUM_CLASSES, width=width, shared_dim=0).to(device)
    discriminator = Discriminator(NUM_CLASSES, width=width).to(device)
    generator_ema = Generator(NUM_CLASSES, width=width, shared_dim=0).to(device).requires_grad_(False)
    settings = {**settings, "compile_mode": "default"}
    for module in (generator, discriminator):
        prepare_module(module, settings)
    optimizer_g = adam(generator.parameters(), 2e-4, (0.0, 0.999), settings)
    optimizer_d = adam(discriminator.parameters(), 2e-4, (0.0, 0.999), settings)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5000, 32, 32, 3), dtype=np.uint8)
    real_batches = RealBatches(images, rng.integers(0, NUM_CLASSES, 5000), BATCH, 0, 0, 1, device)
    nonfinite = torch.zeros((), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    counter = [0]

    def iteration():
        nonlocal nonfinite
        discriminator.train()
        for _ in range(D_STEPS):
            real, real_labels = real_batches(counter[0])
            counter[0] += 1
            with torch.no_grad(), autocast():
                fake_labels = torch.randint(NUM_CLASSES, (BATCH,), device=device)
                fake = generator(torch.randn(BATCH, 128, device=device), fake_labels)
            augmented = diff_augment(torch.cat([real, fake.float()]), POLICY)
            with autocast():
                logits, _ = discriminator(augmented, torch.cat([real_labels, fake_labels]), return_features=True)
                loss_d = F.relu(1.0 - logits[:BATCH]).mean() + F.relu(1.0 + logits[BATCH:]).mean()
            optimizer_d.zero_grad(set_to_none=True)
            loss_d.backward()
            optimizer_d.step()
            nonfinite += (~torch.isfinite(loss_d.detach())).float()
        discriminator.requires_grad_(False)
        with autocast():
            fake_labels = torch.randint(NUM_CLASSES, (BATCH,), device=device)
            fake = generator(torch.randn(BATCH, 128, device=device), fake_labels)
            loss_g = -discriminator(diff_augment(fake.float(), POLICY), fake_labels).mean()
        optimizer_g.zero_grad(set_to_none=True)
        loss_g.backward()
        optimizer_g.step()
        discriminator.requires_grad_(True)
        nonfinite += (~torch.isfinite(loss_g.detach())).float()
        update_ema(generator_ema, generator, 0.9999)

    return iteration


def reference_iteration(directory: Path, width: int, device: torch.device):
    """A closure running one iteration of the reference's own training function (see the module docstring)."""
    sys.path.insert(0, str(directory))
    try:
        import h5py  # noqa: F401  (its datasets.py imports it; no data set is read here)
    except ImportError:
        sys.modules["h5py"] = types.ModuleType("h5py")
    import BigGAN
    import train_fns
    import utils

    flags = REFERENCE_FLAGS.split() + ["--G_ch", str(width), "--D_ch", str(width)]
    config = vars(utils.prepare_parser().parse_args(flags))
    config.update(resolution=32, n_classes=NUM_CLASSES, G_activation=torch.nn.ReLU(inplace=False),
                  D_activation=torch.nn.ReLU(inplace=False))
    torch.manual_seed(0)
    generator = BigGAN.Generator(**config).to(device)
    discriminator = BigGAN.Discriminator(**config).to(device)
    generator_ema = BigGAN.Generator(**{**config, "skip_init": True, "no_optim": True}).to(device)
    ema = utils.ema(generator, generator_ema, config["ema_decay"], config["ema_start"])
    pair = BigGAN.G_D(generator, discriminator)
    z, y = utils.prepare_z_y(BATCH, generator.dim_z, NUM_CLASSES, device=device)
    state = {"itr": 2000, "epoch": 0, "save_num": 0, "save_best_num": 0, "best_IS": 0, "best_FID": 999999}
    train = train_fns.GAN_training_function(generator, discriminator, pair, z, y, ema, state, config)
    generator_x = torch.Generator().manual_seed(0)
    x = (torch.rand(BATCH * D_STEPS, 3, 32, 32, generator=generator_x) * 2 - 1).to(device)
    labels = torch.randint(NUM_CLASSES, (BATCH * D_STEPS,), generator=generator_x).to(device)
    return lambda: train(x, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--width", type=int, default=64, help="G and D channel multiplier (64 = paper)")
    parser.add_argument("--reference", type=Path, default=None, help="data-efficient-gans DiffAugment-biggan-cifar copy")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timings per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per variant first (compiles)")
    parser.add_argument("--settings", default="all", help="comma list of genkd settings to time (default: all; "
                        "compile variants only with --compile)")
    parser.add_argument("--compile", action="store_true", help="include the torch.compile variants (long warm-up)")
    parser.add_argument("--bf16", action="store_true", help="also time eager and compiled genkd under bf16 autocast")
    parser.add_argument("--profile", default=None, help="print a torch.profiler table of one iteration of this variant")
    args = parser.parse_args()
    device = torch.device(args.device)

    names = list(SETTINGS) if args.settings == "all" else args.settings.split(",")
    if not args.compile:
        names = [name for name in names if "compile" not in name]
    variants = {f"genkd, {name}": genkd_iteration(SETTINGS[name], args.width, device) for name in names}
    if args.bf16:
        variants["genkd, eager bf16 autocast"] = genkd_iteration(SETTINGS["eager fp32"], args.width, device, "bf16")
        if args.compile:
            variants["genkd, compile + channels_last + fused_adam, bf16 autocast"] = genkd_iteration(
                SETTINGS["compile + channels_last + fused_adam"], args.width, device, "bf16")
    if args.reference:
        variants["reference (data-efficient-gans)"] = reference_iteration(args.reference.resolve(), args.width, device)

    if args.profile:
        fn = variants[args.profile if args.profile in variants else f"genkd, {args.profile}"]
        fn()
        with torch.profiler.profile() as profile:
            fn()
        print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
        return

    load_before = os.getloadavg()
    warmup = {}
    for name, fn in variants.items():  # compiles, allocator, cuDNN autotuning, lazy inits
        synchronize(device)
        start = time.perf_counter()
        for _ in range(args.warmup):
            fn()
        synchronize(device)
        warmup[name] = time.perf_counter() - start
    times, cpu_times = {name: [] for name in variants}, {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            synchronize(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu_start)
    load_after = os.getloadavg()

    threads = f"cpu ({torch.get_num_threads()} threads)"
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else threads
    print(f"device {device_name}, torch {torch.__version__}; width {args.width}, batch {BATCH}, {D_STEPS} D steps + "
          f"1 G step, {POLICY}; median of {args.repeats} interleaved repeats; load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after")
    median = {name: statistics.median(values) for name, values in times.items()}
    base = median[next(iter(median))]
    reference = median.get("reference (data-efficient-gans)")
    for name, values in times.items():
        spread = f"{min(values):.3f}-{max(values):.3f}"
        line = f"  {name:60s} {median[name]:8.3f} s  (spread {spread} s, warm-up {warmup[name]:.1f} s)  " \
               f"{median[name] / base:6.3f}x {next(iter(median))}"
        if reference:
            line += f"  {median[name] / reference:6.3f}x reference"
        print(line)
    # On a shared CPU other jobs' load stretches wall times unevenly; the CPU time of this process (all its threads)
    # is the steadier figure there (on a GPU it only counts the host side).
    cpu_median = {name: statistics.median(values) for name, values in cpu_times.items()}
    cpu_reference = cpu_median.get("reference (data-efficient-gans)")
    for name in cpu_times:
        line = f"  CPU time {name:51s} {cpu_median[name]:8.3f} s  {cpu_median[name] / cpu_median[next(iter(cpu_median))]:6.3f}x"
        if cpu_reference:
            line += f"  {cpu_median[name] / cpu_reference:6.3f}x reference"
        print(line)


if __name__ == "__main__":
    main()
