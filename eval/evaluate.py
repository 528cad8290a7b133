"""Evaluate a GAN run, one of its checkpoints, or a folder of images: FID, IS, precision, recall, density, coverage.

    python eval/evaluate.py runs/cifar10-0.1                      # EMA generator of best.pt, else last.pt
    python eval/evaluate.py runs/cifar10-0.1 --checkpoint last    # ... of checkpoints/last.pt
    python eval/evaluate.py runs/x/checkpoints/step_050000.pt --num-samples 10000
    python eval/evaluate.py my_samples/ --dataset cifar10 --data-root data --out my_samples.json
    python eval/evaluate.py samples.npz --num-samples 10000         # uint8 images under x (BigGAN-PyTorch), images or arr_0
    accelerate launch eval/evaluate.py runs/x                      # sampling and Inception spread over the GPUs

A run is compared with its own dataset (its config.yaml) unless --data.* says otherwise; a folder of images with
--data.* (default: CIFAR-10 under data/). The split is eval.split (test). Options: --num-samples, --batch-size,
--split, --inception-weights (short for --eval.*), any --data.* or --eval.* key, --device (default: accelerate's
choice), --checkpoint auto|best|last (of a run directory; default auto: checkpoints/best.pt, the best-FID EMA generator
of the evaluations during training as the reference reports, when the run has one, else last.pt), --out FILE (default:
metrics.json in the run directory for the run's auto choice, metrics_<name>.json for another checkpoint, metrics.json
in an image folder). Prints the checkpoint it evaluates (path and step), writes the metrics with what they were
computed from (so eval/compare_norms.py can tell whether they are up to date) and prints a table.

A folder or .npz file must hold at least eval.num_samples images (a seeded subset of that many is used when it holds
more); greyscale, palette and opaque RGBA images are converted to RGB with a note, anything else that is not a
readable RGB image stops the evaluation with one line. Nothing is written unless every metric was computed.
"""
import json
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: import this checkout's genkd
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from genkd.checkpoint import GENERATOR_CHECKPOINTS, CheckpointError, generator_checkpoint, load_generator
from genkd.config import Config, ConfigError, load_config, save_config
from genkd.data import DataError
from genkd.defaults import ALIASES, CHECKS, CHOICES, DEFAULTS
from genkd.evaluation import EvaluationError, Evaluator, load_images, select_images
from genkd.metrics import METRIC_KEYS, InceptionWeightsError
from genkd.metrics.inception import file_identity
from genkd.preemption import EXIT_PREEMPTED, GracefulStop, Preempted

EVAL_ALIASES = {
    **ALIASES,
    "num-samples": "eval.num_samples",
    "batch-size": "eval.batch_size",
    "split": "eval.split",
    "inception-weights": "eval.inception_weights",
}
ERRORS = (CheckpointError, ConfigError, DataError, EvaluationError, InceptionWeightsError)


def evaluation_settings(cfg: Config, weights: Path) -> dict:
    """Everything besides the source that changes the numbers; metrics.json is stale when any of it differs."""
    return {
        "data": {key: cfg.data[key] for key in ("dataset", "root")},
        "eval": {key: cfg.eval[key] for key in ("num_samples", "split", "reference_images", "seed", "prdc_k")},
        "inception_weights": file_identity(weights),
    }


def locate(source: Path, which: str = "auto") -> tuple[str, Path, Path]:
    """(kind, checkpoint or folder, default output file) of a run directory (its checkpoint ``which``), a checkpoint
    file or an image folder. metrics.json of a run always describes the run's ``auto`` choice."""
    if not source.exists():
        raise EvaluationError(f"{source} not found: pass a run directory, a checkpoint (.pt) file or an image folder")
    if source.is_file() and source.suffix == ".npz":  # generated images, e.g. BigGAN-PyTorch's samples.npz
        return "images", source, source.with_name(f"metrics_{source.stem}.json")
    if source.is_file() or (source / "config.yaml").is_file() or (source / "checkpoints").is_dir():
        checkpoint = generator_checkpoint(source, which)
        run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
        reported = checkpoint.resolve() == generator_checkpoint(run_dir).resolve()
        return "checkpoint", checkpoint, run_dir / ("metrics.json" if reported else f"metrics_{checkpoint.stem}.json")
    return "images", source, source / "metrics.json"


def resolve_config(run_cfg: Config | None, overrides: list[str]) -> Config:
    """The run's config (or the defaults), then the command line's --data.* / --eval.* overrides."""
    with tempfile.TemporaryDirectory() as folder:
        base_files = []
        if run_cfg is not None:
            base_files.append(Path(folder) / "run.yaml")
            save_config(run_cfg, base_files[0])
        return load_config(DEFAULTS, overrides, EVAL_ALIASES, CHOICES, CHECKS, base_files)


def evaluate_source(
    source: str | Path, overrides=(), out: str | Path | None = None, device=None, accelerator=None, which="auto"
):
    """Evaluate (a run directory: its checkpoint ``which``), write the record to ``out`` (main process), return it."""
    kind, path, default_out = locate(Path(source), which)
    main_process = accelerator is None or accelerator.is_main_process
    step = None
    if kind == "checkpoint":
        generator, run_cfg, num_classes, _, step = load_generator(
            path, device or (accelerator.device if accelerator else "cpu")
        )
        if main_process:
            print(f"checkpoint {path} (step {step})", flush=True)
        cfg = resolve_config(run_cfg, list(overrides))
    else:
        cfg = resolve_config(None, list(overrides))
    evaluator = Evaluator(cfg, accelerator, device)
    if kind == "checkpoint":
        metrics = evaluator(generator, num_classes)
    else:
        report = print if accelerator is None or accelerator.is_main_process else lambda line: None
        images = select_images(load_images(path, report), cfg.eval.num_samples, cfg.eval.seed, path, report)
        metrics = evaluator.evaluate_images(images)
    record = {
        "metrics": metrics,
        "source": file_identity(path) if kind == "checkpoint" else {"path": str(path.resolve()), "kind": "images"},
        "step": step,  # of the checkpoint; None for images
        "settings": evaluation_settings(cfg, evaluator.weights),
    }
    if main_process:
        out = Path(out) if out else default_out
        out.parent.mkdir(parents=True, exist_ok=True)
        temp = out.with_name(f".{out.name}.tmp")  # a stop or crash while writing leaves no partial file
        temp.write_text(json.dumps(record, indent=2) + "\n")
        temp.replace(out)
        print(format_table(metrics, f"{source} vs {cfg.data.dataset} {cfg.eval.split} -> {out}"))
    return record


def format_table(metrics: dict, title: str) -> str:
    rows = [f"{key:<10} {metrics[key]:>10.4f}" for key in METRIC_KEYS]
    return "\n".join([title, f"{'metric':<10} {'value':>10}", *rows])


def split_arguments(argv: list[str]) -> tuple[str, str | None, str | None, str, list[str]]:
    """(source, --out, --device, --checkpoint, the remaining --key value overrides)."""
    args, source, options = list(argv), None, {"--out": None, "--device": None, "--checkpoint": "auto"}
    for name in options:
        if name in args:
            at = args.index(name)
            if at + 1 >= len(args):
                raise ConfigError(f"{name} needs a value")
            options[name] = args[at + 1]
            del args[at : at + 2]
    if args and not args[0].startswith("--"):
        source = args.pop(0)
    if source is None:
        raise ConfigError(
            "usage: eval/evaluate.py RUN_DIR|CHECKPOINT.pt|IMAGE_DIR [--out F] [--device D] [--checkpoint "
            f"{'|'.join(GENERATOR_CHECKPOINTS)}] [--key val]"
        )
    return source, options["--out"], options["--device"], options["--checkpoint"], args


def main(argv: list[str] | None = None) -> None:
    """SIGTERM / SIGINT / SIGUSR1 stop the evaluation where it is (nothing is written) with exit status 75."""
    try:
        source, out, device, which, overrides = split_arguments(sys.argv[1:] if argv is None else argv)
        accelerator = None
        if device is None:
            from accelerate import Accelerator

            accelerator = Accelerator()
        with torch.no_grad(), GracefulStop(immediate=True):
            evaluate_source(source, overrides, out, device, accelerator, which)
    except ERRORS as error:
        sys.exit(f"error: {error}")
    except Preempted as stopped:
        print(f"evaluation {stopped}: nothing written; run the same command again", file=sys.stderr)
        raise SystemExit(EXIT_PREEMPTED) from None


if __name__ == "__main__":
    main()
