"""How the normalisation of teacher features changes diversity: runs trained with distill.norm none / layernorm /
whitening side by side, in the form of the VkD paper's table (FID, IS, precision, recall, density, coverage).

    python eval/compare_norms.py runs/c10-kd-none runs/c10-kd-layernorm runs/c10-kd-whitening --out results/norms
    python eval/compare_norms.py --train configs/cifar10.yaml configs/cifar100.yaml --steps 20000 --out results/norms

With --train, the three runs of every config are trained first (OUT/runs/<config>-<norm>, resumed when they exist)
with ``python -m genkd.train`` or, with --launcher accelerate, ``accelerate launch genkd/train.py``; --train-args
passes more options to it. Each run is then evaluated as eval/evaluate.py does, unless its metrics.json is up to date
(same checkpoint file, same evaluation settings); --data.* / --eval.* options (e.g. --num-samples) apply to all.
Each run is represented by its checkpoints/best.pt (the best-FID EMA generator of the evaluations during training,
as the reference reports) when it has one, else last.pt (--checkpoint chooses); the checkpoint used and its step are
printed for every run. Writes OUT/norms.md, OUT/norms.csv and OUT/norms.png (one panel per metric, bars per norm,
grouped by dataset).
"""
import argparse
import csv
import json
import shlex
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: import this checkout's genkd and the sibling CLI
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib
import torch
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import genkd  # noqa: E402
from evaluate import ERRORS, evaluate_source, evaluation_settings, locate, resolve_config  # noqa: E402
from genkd.checkpoint import GENERATOR_CHECKPOINTS  # noqa: E402
from genkd.config import as_config  # noqa: E402
from genkd.metrics import resolve_weights  # noqa: E402
from genkd.metrics.inception import file_identity  # noqa: E402

NORMS = ("none", "layernorm", "whitening")
NORM_ORDER = ("no KD", *NORMS)
COLUMNS = (("fid", "FID"), ("is_mean", "IS"), *((key, key) for key in ("precision", "recall", "density", "coverage")))


def run_labels(run_dir: Path) -> tuple[str, str]:
    """(dataset label, norm label) of a run, from its config.yaml."""
    cfg = as_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    norm = cfg.distill.norm if cfg.distill.enabled else "no KD"
    return f"{cfg.data.dataset} {cfg.data.frac:.0%}", norm


def up_to_date_record(run_dir: Path, overrides: list[str], which: str = "auto") -> dict | None:
    """The record in the metrics file eval/evaluate.py writes for checkpoint ``which`` of the run, if it was computed
    from that checkpoint as it is now, with these settings."""
    _, checkpoint, record_path = locate(run_dir, which)
    if not record_path.is_file() or not checkpoint.is_file():
        return None
    record = json.loads(record_path.read_text())
    cfg = resolve_config(as_config(yaml.safe_load((run_dir / "config.yaml").read_text())), overrides)
    settings = evaluation_settings(cfg, resolve_weights(cfg.eval.inception_weights))
    if record.get("source") != file_identity(checkpoint) or record.get("settings") != settings:
        return None
    return record


def train_runs(configs: list[str], steps: int, out: Path, launcher: str, extra: str) -> list[Path]:
    """Train (or resume) one run per config and norm; returns their directories."""
    runs = []
    for config in configs:
        for norm in NORMS:
            run_dir = out / "runs" / f"{Path(config).stem}-{norm}"
            if launcher == "accelerate":
                train_script = str(Path(genkd.__file__).parent / "train.py")
                command = [sys.executable, "-m", "accelerate.commands.launch", train_script]
            else:
                command = [sys.executable, "-m", "genkd.train"]
            if (run_dir / "checkpoints" / "last.pt").is_file():
                command += ["--resume", str(run_dir)]
            else:
                command += ["--config", config, "--run-dir", str(run_dir)]
                command += ["--distill.enabled", "true", "--distill.norm", norm]
            command += ["--train.steps", str(steps), *shlex.split(extra)]
            print("+", shlex.join(command), flush=True)
            subprocess.run(command, check=True)
            runs.append(run_dir)
    return runs


def write_table(rows: list[dict], out: Path) -> None:
    """OUT/norms.csv and OUT/norms.md, one row per run."""
    with open(out / "norms.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["dataset", "norm", *(title for _, title in COLUMNS), "IS std", "run"])
        for row in rows:
            writer.writerow([row["dataset"], row["norm"], *(row[key] for key, _ in COLUMNS), row["is_std"], row["run"]])
    lines = ["| dataset | norm | FID ↓ | IS ↑ | precision ↑ | recall ↑ | density ↑ | coverage ↑ |"]
    lines.append("|---|---|" + "---:|" * 6)
    for row in rows:
        values = [f"{row['fid']:.2f}", f"{row['is_mean']:.2f} ± {row['is_std']:.2f}"]
        values += [f"{row[key]:.3f}" for key in ("precision", "recall", "density", "coverage")]
        lines.append(f"| {row['dataset']} | {row['norm']} | " + " | ".join(values) + " |")
    (out / "norms.md").write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], path: Path) -> None:
    """One panel per metric; in each, a group of bars per dataset, one bar per norm."""
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    norms = [norm for norm in NORM_ORDER if any(row["norm"] == norm for row in rows)]
    width = 0.8 / len(norms)
    figure, axes = plt.subplots(1, len(COLUMNS), figsize=(3.2 * len(COLUMNS), 4.0))
    for axis, (key, title) in zip(axes, COLUMNS):
        for position, norm in enumerate(norms):
            found = {row["dataset"]: row for row in rows if row["norm"] == norm}
            offset = (position - (len(norms) - 1) / 2) * width
            xs = [index + offset for index, name in enumerate(datasets) if name in found]
            values = [found[name][key] for name in datasets if name in found]
            errors = [found[name]["is_std"] for name in datasets if name in found] if key == "is_mean" else None
            axis.bar(xs, values, width, yerr=errors, label=norm, color=f"C{NORM_ORDER.index(norm)}")
        axis.set_title(title + (" (lower is better)" if key == "fid" else ""))
        axis.set_xticks(range(len(datasets)), datasets, rotation=15)
        axis.set_ylim(0, 1.05 if key in ("precision", "recall", "coverage") else None)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, title="distill.norm", loc="upper center", ncol=len(norms), fontsize="small")
    figure.tight_layout(rect=(0, 0, 1, 0.82))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def split_overrides(argv: list[str], parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """(this script's arguments, the --data.* / --eval.* options with their values): argparse alone would take the
    value of an option it does not know for a run directory."""
    options = parser._option_string_actions
    own, overrides, args = [], [], list(argv)
    while args:
        arg = args.pop(0)
        name = arg.split("=")[0]
        if arg.startswith("--") and name not in options:
            overrides.append(arg)
            if "=" not in arg and args and not args[0].startswith("--"):
                overrides.append(args.pop(0))
            continue
        own.append(arg)
        if name in options and "=" not in arg and options[name].nargs is None and options[name].const is None and args:
            own.append(args.pop(0))  # its value, even one like "--data.frac 0.1" for --train-args
    return own, overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Other --data.* / --eval.* options go to the evaluation."
    )
    parser.add_argument("runs", nargs="*", type=Path, help="run directories (config.yaml + checkpoints/)")
    parser.add_argument("--out", type=Path, required=True, help="folder for norms.md, norms.csv, norms.png")
    parser.add_argument("--train", nargs="+", default=[], metavar="CONFIG", help="train the three norms of each first")
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
        rows = []
        for run_dir in runs:
            if not (run_dir / "config.yaml").is_file():
                raise FileNotFoundError(f"{run_dir} is not a genkd run directory (no config.yaml)")
            record = up_to_date_record(run_dir, overrides, args.checkpoint)
            if record is None:  # evaluate_source prints the checkpoint it evaluates
                record = evaluate_source(run_dir, overrides, device=device, which=args.checkpoint)
            else:
                step = record.get("step", "unknown")  # records written before steps were recorded
                print(f"checkpoint {record['source']['path']} (step {step}): metrics up to date", flush=True)
            dataset, norm = run_labels(run_dir)
            rows.append({"dataset": dataset, "norm": norm, "run": str(run_dir), **record["metrics"]})
    except (*ERRORS, FileNotFoundError, subprocess.CalledProcessError) as error:
        sys.exit(f"error: {error}")
    rows.sort(key=lambda row: (row["dataset"], NORM_ORDER.index(row["norm"])))
    args.out.mkdir(parents=True, exist_ok=True)
    write_table(rows, args.out)
    plot(rows, args.out / "norms.png")
    print((args.out / "norms.md").read_text() + f"written: {args.out / 'norms.csv'}, {args.out / 'norms.png'}")
    return rows


if __name__ == "__main__":
    main()
