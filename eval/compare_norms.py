"""How the normalisation of teacher features changes diversity: runs trained with distill.norm none / layernorm /
whitening (and without distillation) side by side, in the form of the VkD paper's diversity table (FID, IS,
precision, recall, density, coverage); a use of genkd/tables.py.

    python eval/compare_norms.py runs/c10-kd-none runs/c10-kd-layernorm runs/c10-kd-whitening --out results/norms
    python eval/compare_norms.py --train configs/cifar10.yaml configs/cifar100.yaml --steps 20000 --out results/norms

With --train, four runs of every config are trained first (OUT/runs/<config>-<norm>, and <config>-nokd without
distillation; resumed when they exist) with ``python -m genkd.train`` or, with --launcher accelerate, ``accelerate
launch genkd/train.py``; --train-args passes more options to it. Each run is then evaluated from checkpoints/best.pt
when it has one, else last.pt, as eval/evaluate.py does, unless its metrics file is up to date (same checkpoint file,
same evaluation settings); --data.* / --eval.* options (e.g. --num-samples) apply to all. Runs of one dataset, fraction
and norm (e.g. several seeds) are averaged: mean ± sample std. Writes OUT/norms.md, OUT/norms.csv and OUT/norms.png
(one panel per metric, bars per norm, grouped by dataset).
"""
import argparse
import shlex
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: import this checkout's genkd
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import yaml

from genkd import tables
from genkd.checkpoint import GENERATOR_CHECKPOINTS
from genkd.config import as_config

NORMS = ("none", "layernorm", "whitening")
NO_KD = "no KD"
NORM_ORDER = (NO_KD, *NORMS)
METRICS = tables.DIVERSITY_METRICS
split_overrides = tables.split_overrides
up_to_date_record = tables.up_to_date_record


def run_labels(run_dir: Path) -> tuple[tables.Cell, str]:
    """(dataset and fraction, norm label) of a run, from its config.yaml."""
    cfg = as_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    norm = cfg.distill.norm if cfg.distill.enabled else NO_KD
    return tables.Cell(cfg.data.dataset, cfg.data.frac), norm


def train_runs(configs: list[str], steps: int, out: Path, launcher: str, extra: str) -> list[Path]:
    """Train (or resume) one run per config and norm, and one without distillation; returns their directories."""
    runs = []
    for config in configs:
        for norm in NORM_ORDER:
            run_dir = out / "runs" / f"{Path(config).stem}-{'nokd' if norm == NO_KD else norm}"
            argv = ["--config", config, "--run-dir", str(run_dir), "--distill.enabled", str(norm != NO_KD).lower()]
            argv += [] if norm == NO_KD else ["--distill.norm", norm]
            argv += ["--train.steps", str(steps), *shlex.split(extra)]
            tables.train_run(argv, run_dir, launcher)
            runs.append(run_dir)
    return runs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Other --data.* / --eval.* options go to the evaluation."
    )
    parser.add_argument("runs", nargs="*", type=Path, help="run directories (config.yaml + checkpoints/)")
    parser.add_argument("--out", type=Path, required=True, help="folder for norms.md, norms.csv, norms.png")
    parser.add_argument("--train", nargs="+", default=[], metavar="CONFIG", help="train the runs of each config first")
    parser.add_argument("--steps", type=int, default=2000, help="generator steps of each --train run")
    parser.add_argument("--launcher", choices=("python", "accelerate"), default="python")
    parser.add_argument("--train-args", default="", help='more options for genkd.train, e.g. "--data.frac 0.1"')
    parser.add_argument("--device", default=None, help="evaluation device (default: cuda when there is one)")
    parser.add_argument("--checkpoint", choices=GENERATOR_CHECKPOINTS, default="auto", help="auto: best.pt if any")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_parser()
    own, overrides = split_overrides(sys.argv[1:] if argv is None else argv, parser)
    args = parser.parse_args(own)
    try:
        runs = [*args.runs, *train_runs(args.train, args.steps, args.out, args.launcher, args.train_args)]
        if not runs:
            parser.error("give run directories, or configs to --train")
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        records = []
        for run_dir in runs:
            metrics = tables.run_metrics(run_dir, overrides, device, args.checkpoint)
            cell, norm = run_labels(run_dir)
            records.append({"row": norm, "cell": cell, "run": run_dir, "metrics": metrics})
    except (tables.TablesError, subprocess.CalledProcessError, *tables.evaluation_errors()) as error:
        sys.exit(f"error: {error}")
    records.sort(key=lambda record: (record["cell"], NORM_ORDER.index(record["row"])))
    summaries = tables.summarize(records, METRICS)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "norms.md").write_text(tables.long_table_markdown(summaries, METRICS, row_header="norm"))
    tables.write_long_csv(summaries, METRICS, args.out / "norms.csv", row_header="norm")
    tables.plot_bars(summaries, METRICS, args.out / "norms.png", legend_title="distill.norm")
    print((args.out / "norms.md").read_text() + f"written: {args.out / 'norms.csv'}, {args.out / 'norms.png'}")
    return [{"dataset": s.cell.label, "norm": s.row, "seeds": s.n, **s.mean} for s in summaries]


if __name__ == "__main__":
    main()
