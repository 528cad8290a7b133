"""``genkd sample``: images of a trained generator to a PNG folder or an ``.npz``, and latent interpolation grids.

    genkd sample runs/cifar10-0.1 --num 50000 --out samples.npz          # arr_0 (N, 32, 32, 3) uint8, arr_1 labels
    genkd sample runs/x/checkpoints/best.pt --num 1000 --classes 3 --out cats/   # PNGs of one class
    genkd sample exported/ --num 100 --truncation 0.5 --seed 1 --out t05.npz --grid grid.png
    accelerate launch -m genkd.sample runs/x --num 50000 --out samples.npz        # each process makes its share

RUN_DIR or CHECKPOINT: the EMA generator of checkpoints/best.pt when the run kept one, else last.pt (``--checkpoint``
chooses; a .pt file is used as it is); a folder written by ``genkd export`` loads through ``from_pretrained``. Labels are balanced over ``--classes`` (default all) in a seeded order; latents are
standard normal, or truncated at ``--truncation`` t (entries with |z| > t redrawn, BigGAN's truncation trick). The
same seed gives the same images at any number of processes. Batch norms work as in the run's evaluation
(``eval.sample_mode``: ``train`` = each batch of ``--batch-size``, default the run's ``eval.sample_batch_size``, normalised
by its own statistics, the reference's protocol; ``eval`` = running statistics). The ``.npz`` layout is guided-diffusion's and
clean-fid's (``arr_0``; ``arr_1`` holds the labels); PNG files are named ``{index:06d}_{label}.png``.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import save_image

from genkd.checkpoint import GENERATOR_CHECKPOINTS, CheckpointError, load_generator
from genkd.defaults import DEFAULTS
from genkd.sampling import SAMPLE_MODES, chosen_labels, gather_shares, generate, interpolation_grid, truncated_latents


class SampleError(ValueError):
    """Bad sampling options; the message says what to do."""


ERRORS = (SampleError, CheckpointError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genkd sample", description=__doc__.split("\n\n")[0].strip("`"))
    parser.add_argument("source", type=Path, help="run directory, checkpoint .pt, or a folder from genkd export")
    parser.add_argument("--num", type=int, default=50_000, help="number of images (default 50000)")
    parser.add_argument("--out", type=Path, help="FILE.npz, or a folder for PNGs; default: RUN/samples-<num>.npz")
    parser.add_argument("--classes", default="", help="comma list of class ids to draw from, balanced (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of labels and latents (default 0)")
    parser.add_argument("--truncation", type=float, default=0.0, help="redraw latent entries with |z| > t; 0 = off")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per generator call; in train mode also the batch-norm statistics' batch "
                             "(default: the run's eval.sample_batch_size)")  # fmt: skip
    parser.add_argument("--mode", choices=SAMPLE_MODES, default=None,
                        help="batch norms on batch statistics (train, the reference's G_eval_mode off) or running "
                             "statistics (eval); default: the run's eval.sample_mode")  # fmt: skip
    parser.add_argument("--checkpoint", choices=GENERATOR_CHECKPOINTS, default="auto",
                        help="of a run directory: auto = best.pt when the run has one, else last.pt")  # fmt: skip
    parser.add_argument("--grid", type=Path, help="also write a latent interpolation grid PNG (one row per class)")
    parser.add_argument("--grid-steps", type=int, default=8, help="columns of the interpolation grid (default 8)")
    parser.add_argument("--device", help="cpu | cuda | cuda:1: this process only (default: accelerate's choice)")
    return parser


def load_any_generator(source: Path, device, which: str = "auto") -> tuple[torch.nn.Module, int, str, int]:
    """(generator, num_classes, batch-norm mode, sampling batch) of a run, a checkpoint or an exported folder."""
    if (source / "config.json").is_file() and (source / "model.safetensors").is_file():
        from genkd.export import GenkdGenerator

        generator = GenkdGenerator.from_pretrained(str(source), strict=True).to(device).eval()
        return generator, generator.num_classes, generator.sample_mode, generator.sample_batch_size
    loaded = load_generator(source, device, which)
    print(f"checkpoint {loaded.path} (step {loaded.step})")
    eval_cfg = {**DEFAULTS["eval"], **loaded.config.get("eval", {})}
    return loaded.generator, loaded.num_classes, eval_cfg["sample_mode"], eval_cfg["sample_batch_size"]


def sampling_inputs(count: int, batch_size: int, dim: int, num_classes: int, classes, truncation: float, seed: int,
                    mode: str) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The ``count`` latents and labels of a seed; in train mode followed by seeded extra ones (seed + 1) that fill the
    last batch (their images are dropped), so the first ``count`` do not depend on the batch size."""
    latents, labels = truncated_latents(count, dim, truncation, seed), chosen_labels(count, num_classes, classes, seed)
    padding = -count % batch_size if mode == "train" else 0
    if padding:
        latents = torch.cat([latents, truncated_latents(padding, dim, truncation, seed + 1)])
        labels = torch.cat([labels, chosen_labels(padding, num_classes, classes, seed + 1)])
    return latents, labels


def write_images(images: np.ndarray, labels: np.ndarray, out: Path) -> Path:
    """``out.npz`` (arr_0 images, arr_1 labels) or a folder of ``{index:06d}_{label}.png``."""
    if out.suffix == ".npz":
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, arr_0=images, arr_1=labels)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for index, (image, label) in enumerate(zip(images, labels)):
            Image.fromarray(image).save(out / f"{index:06d}_{label}.png")
    return out


def main(argv=None) -> Path | None:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return sample(args)
    except ERRORS as error:
        sys.exit(f"error: {error}")


def sample(args: argparse.Namespace) -> Path:
    if args.num < 1 or (args.batch_size or 1) < 1 or args.truncation < 0 or args.grid_steps < 2:
        raise SampleError("need --num >= 1, --batch-size >= 1, --truncation >= 0 and --grid-steps >= 2")
    accelerator = None
    if args.device is None:
        from accelerate import Accelerator

        accelerator = Accelerator()
    device = args.device or accelerator.device
    generator, num_classes, run_mode, run_batch = load_any_generator(args.source, device, args.checkpoint)
    mode, batch_size = args.mode or run_mode, args.batch_size or run_batch
    try:
        classes = [int(label) for label in args.classes.split(",") if label.strip()] or None
        inputs = sampling_inputs(args.num, batch_size, generator.z_dim, num_classes, classes, args.truncation,
                                 args.seed, mode)  # fmt: skip
    except ValueError as error:
        raise SampleError(f"--classes {args.classes!r}: {error}") from None
    labels = inputs[1][: args.num]
    images = gather_shares(generate(generator, *inputs, args.num, batch_size, accelerator, mode), args.num, accelerator)
    run_dir = args.source if args.source.is_dir() else args.source.parent
    out = args.out or run_dir / f"samples-{args.num}.npz"
    if accelerator is None or accelerator.is_main_process:
        write_images(images.permute(0, 2, 3, 1).cpu().numpy(), labels.numpy(), out)
        print(f"{args.num} images -> {out}")
        if args.grid:
            rows = classes or list(range(min(num_classes, 10)))
            grid = interpolation_grid(generator, rows, args.grid_steps, args.truncation, args.seed, mode)
            args.grid.parent.mkdir(parents=True, exist_ok=True)
            save_image(grid.float() / 255, args.grid, nrow=args.grid_steps)
            print(f"interpolation grid ({len(rows)} classes x {args.grid_steps}) -> {args.grid}")
    return out


if __name__ == "__main__":
    main()
