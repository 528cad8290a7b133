"""``genkd evaluate``: FID, KID, IS, precision, recall, density and coverage of a run, a checkpoint, an image folder or
an ``.npz`` of samples; the history plot of a run; reference statistics for pytorch-fid / clean-fid.

    genkd evaluate runs/cifar10-0.1                       # EMA generator of best.pt, else last.pt -> metrics.json
    genkd evaluate runs/cifar10-0.1 --checkpoint last     # ... of checkpoints/last.pt -> metrics_last.json
    genkd evaluate runs/x/checkpoints/step_050000.pt --num-samples 10000 --repeat 3   # mean +- std over 3 sample seeds
    genkd evaluate samples.npz --dataset cifar10          # arr_0 (guided-diffusion, clean-fid, genkd sample) or x
    genkd evaluate my_samples/ --dataset cifar10 --data-root data --out my_samples.json
    genkd evaluate runs/x --plot                          # runs/x/metrics.png from runs/x/metrics.jsonl
    genkd evaluate --export-stats cifar10_test.npz --dataset cifar10     # mu / sigma for pytorch-fid, clean-fid
    genkd evaluate --make-random-inception random.pth     # offline smoke tests only: random-weight Inception
    accelerate launch -m genkd.evaluate runs/x            # sampling and Inception spread over the GPUs

A run is compared with its own dataset (its config.yaml) unless --data.* says otherwise; images with --data.*
(default: CIFAR-10 under data/). A run directory is evaluated from checkpoints/best.pt (the best-FID EMA generator of
the evaluations during training, as the reference reports) when it has one, else last.pt; the checkpoint evaluated is
printed with its step. The record goes to metrics.json of the run for that choice, metrics_<name>.json for another
checkpoint, metrics.json in an image folder and metrics_<name>.json beside an .npz; it holds the metrics under their
plain keys (``metrics``), under names with the sample count (``counted``: fid10k, kid10k, ...), and what they were
computed from, so that genkd.tables / eval/compare_norms.py can tell whether they are up to date.

A folder or .npz file must hold at least eval.num_samples images (a seeded subset of that many is used when it holds
more); greyscale, palette and opaque RGBA images are converted to RGB with a note, anything else that is not a
readable RGB image stops the evaluation with one line. SIGTERM / SIGINT / SIGUSR1 stop it where it is with exit status
75; nothing is written unless every metric was computed, and the file is replaced atomically.
"""
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from genkd.checkpoint import GENERATOR_CHECKPOINTS, CheckpointError, generator_checkpoint, load_generator
from genkd.config import Config, ConfigError, help_text, load_config, save_config, source_comments, wants_help
from genkd.data import DataError
from genkd.defaults import ALIASES, CHECKS, CHOICES, DEFAULTS
from genkd.evaluation import EvaluationError, Evaluator, counted, load_images, plot_history, select_images
from genkd.metrics import METRIC_KEYS, InceptionWeightsError, save_random_inception_weights
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
OPTIONS = {  # this command's own options: name -> (takes a value, help)
    "--out": (True, "FILE: where the record goes (default: metrics.json beside the run or the images)"),
    "--device": (True, "cpu | cuda | cuda:1: evaluate in this process only (default: accelerate's choice)"),
    "--checkpoint": (True, f"{'|'.join(GENERATOR_CHECKPOINTS)}: of a run directory (default auto: best.pt, else last.pt)"),
    "--repeat": (True, "R: evaluate a generator R times (sample seeds eval.seed .. eval.seed + R - 1), mean +- std"),
    "--plot": (False, "plot RUN_DIR/metrics.jsonl (evaluations during training) to RUN_DIR/metrics.png; no evaluation"),
    "--export-stats": (True, "FILE.npz: write the reference statistics (mu, sigma float64) for pytorch-fid / clean-fid"),
    "--make-random-inception": (True, "FILE: write random Inception weights (offline smoke tests; numbers meaningless)"),
}
USAGE = """usage: genkd evaluate [RUN_DIR | CHECKPOINT.pt | IMAGE_DIR | SAMPLES.npz] [options] [--data.KEY V] [--eval.KEY V]
       (also python -m genkd.evaluate, python eval/evaluate.py, accelerate launch -m genkd.evaluate)

""" + "\n".join(f"  {name} {text}" for name, (_, text) in OPTIONS.items())


# eval.* keys that change the numbers (the sampling mode and batch do in train mode: batch statistics)
STALE_EVAL_KEYS = (
    "num_samples", "split", "reference_images", "seed", "prdc_k", "sample_mode", "sample_batch_size", "kid_subsets",
    "kid_subset_size", "fd_extractors",
)  # fmt: skip


def evaluation_settings(cfg: Config, weights: Path) -> dict:
    """Everything besides the source that changes the numbers; metrics.json is stale when any of it differs."""
    return {
        "data": {key: cfg.data[key] for key in ("dataset", "root")},
        "eval": {key: cfg.eval[key] for key in STALE_EVAL_KEYS},
        "inception_weights": file_identity(weights),
    }


def locate(source: Path, which: str = "auto") -> tuple[str, Path, Path]:
    """(kind, checkpoint / folder / npz, default output file) of a run directory (its checkpoint ``which``), a
    checkpoint file, an image folder or an .npz of images. metrics.json of a run always describes its ``auto`` choice."""
    if not source.exists():
        raise EvaluationError(
            f"{source} not found: pass a run directory, a checkpoint (.pt) file, an image folder or a samples .npz"
        )
    if source.is_file() and source.suffix == ".npz":  # generated images: genkd sample, clean-fid, BigGAN-PyTorch
        return "npz", source, source.with_name(f"metrics_{source.stem}.json")
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


def mean_and_std(runs: list[dict]) -> tuple[dict, dict]:
    """Per metric, the mean and the sample standard deviation (n - 1; 0 for a single run) over repeated runs."""
    keys = runs[0].keys()
    values = {key: np.array([run[key] for run in runs], dtype=np.float64) for key in keys}
    std = {key: float(value.std(ddof=1)) if len(value) > 1 else 0.0 for key, value in values.items()}
    return {key: float(value.mean()) for key, value in values.items()}, std


def evaluate_source(
    source: str | Path, overrides=(), out: str | Path | None = None, device=None, accelerator=None, repeat: int = 1,
    which: str = "auto",
):  # fmt: skip
    """Evaluate (a run directory: its checkpoint ``which``), write the record to ``out`` (main process), return it."""
    kind, path, default_out = locate(Path(source), which)
    if repeat < 1 or (repeat > 1 and kind != "checkpoint"):
        raise ConfigError(f"--repeat {repeat}: repeats need a generator (run or checkpoint) and R >= 1")
    main_process = accelerator is None or accelerator.is_main_process
    report = print if main_process else lambda line: None
    step = None
    if kind == "checkpoint":
        generator, run_cfg, num_classes, _, step = load_generator(
            path, device or (accelerator.device if accelerator else "cpu")
        )
        report(f"checkpoint {path} (step {step})")
        cfg = resolve_config(run_cfg, list(overrides))
    else:
        cfg = resolve_config(None, list(overrides))
    evaluator = Evaluator(cfg, accelerator, device)
    if kind == "checkpoint":
        runs = [evaluator(generator, num_classes, seed=cfg.eval.seed + index) for index in range(repeat)]
    else:
        images = select_images(load_images(path, report), cfg.eval.num_samples, cfg.eval.seed, path, report)
        runs = [evaluator.evaluate_images(images)]
    count = cfg.eval.num_samples
    metrics, std = mean_and_std(runs)
    record = {
        "metrics": metrics,
        "counted": counted(metrics, count),
        "num_samples": count,
        "source": file_identity(path) if kind == "checkpoint" else {"path": str(path.resolve()), "kind": kind},
        "step": step,  # of the checkpoint; None for images
        "settings": evaluation_settings(cfg, evaluator.weights),
    }
    if repeat > 1:
        record.update(repeat=repeat, std=std, runs=runs)
    if main_process:
        out = Path(out) if out else default_out
        out.parent.mkdir(parents=True, exist_ok=True)
        temp = out.with_name(f".{out.name}.tmp")  # a stop or crash while writing leaves no partial file
        temp.write_text(json.dumps(record, indent=2) + "\n")
        temp.replace(out)
        title = f"{source} vs {cfg.data.dataset} {cfg.eval.split}" + (f", {repeat} seeds" if repeat > 1 else "")
        print(format_table(metrics, count, f"{title} -> {out}", std if repeat > 1 else None))
    return record


def format_table(metrics: dict, count: int, title: str, std: dict | None = None) -> str:
    keys = [key for key in METRIC_KEYS if key in metrics] + [key for key in metrics if key not in METRIC_KEYS]
    names = counted({key: metrics[key] for key in keys}, count)
    rows = []
    for key, name in zip(keys, names):
        spread = f" +- {std[key]:.4f}" if std is not None else ""
        rows.append(f"{name:<18} {metrics[key]:>12.4f}{spread}")
    return "\n".join([title, f"{'metric':<18} {'value':>12}", *rows])


def split_arguments(argv: list[str]) -> tuple[str | None, dict, list[str]]:
    """(source or None, this command's options, the remaining --key value overrides)."""
    args, options = list(argv), {}
    for name, (takes_value, _) in OPTIONS.items():
        if name in args:
            at = args.index(name)
            if takes_value and (at + 1 >= len(args) or args[at + 1].startswith("--")):
                raise ConfigError(f"{name} needs a value")
            options[name] = args[at + 1] if takes_value else True
            del args[at : at + 1 + takes_value]
    source = args.pop(0) if args and not args[0].startswith("--") else None
    return source, options, args


def evaluate_help() -> str:
    sections = {key: DEFAULTS[key] for key in ("data", "eval")}
    return help_text(USAGE, sections, source_comments("genkd.defaults"), CHOICES, CHECKS, EVAL_ALIASES)


def run(argv: list[str]) -> None:
    source, options, overrides = split_arguments(argv)
    if "--make-random-inception" in options:
        path = save_random_inception_weights(options["--make-random-inception"])
        print(f"random Inception weights -> {path} (smoke tests only: pass --eval.inception-weights {path})")
        return
    if "--plot" in options:
        if source is None:
            raise ConfigError("--plot needs a run directory: genkd evaluate RUN_DIR --plot")
        print(f"history plot -> {plot_history(source)}")
        return
    accelerator = None
    if "--device" not in options:
        from accelerate import Accelerator

        accelerator = Accelerator()
    which = options.get("--checkpoint", "auto")
    if "--export-stats" in options:
        kind, path, _ = locate(Path(source), which) if source else (None, None, None)
        run_cfg = load_generator(path).config if kind == "checkpoint" else None  # a run: its own dataset
        evaluator = Evaluator(resolve_config(run_cfg, overrides), accelerator, options.get("--device"))
        if accelerator is None or accelerator.is_main_process:
            print(f"reference statistics (mu, sigma) -> {evaluator.export_reference(options['--export-stats'])}")
        return
    if source is None:
        raise ConfigError("usage: genkd evaluate RUN_DIR|CHECKPOINT.pt|IMAGE_DIR|SAMPLES.npz [options] (see --help)")
    repeat = options.get("--repeat", "1")
    if not str(repeat).isdigit():
        raise ConfigError(f"--repeat needs a whole number of evaluations, got {repeat!r}")
    with torch.no_grad():
        evaluate_source(source, overrides, options.get("--out"), options.get("--device"), accelerator, int(repeat), which)


def main(argv: list[str] | None = None) -> None:
    """SIGTERM / SIGINT / SIGUSR1 stop the evaluation where it is (nothing is written) with exit status 75."""
    argv = sys.argv[1:] if argv is None else argv
    if wants_help(argv):
        return print(evaluate_help())
    try:
        with GracefulStop(immediate=True):
            run(argv)
    except ERRORS as error:
        sys.exit(f"error: {error}")
    except Preempted as stopped:
        print(f"evaluation {stopped}: nothing written; run the same command again", file=sys.stderr)
        raise SystemExit(EXIT_PREEMPTED) from None


if __name__ == "__main__":
    main()
