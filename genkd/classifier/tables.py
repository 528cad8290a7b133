"""Multi-seed result tables of the classifier track: run a grid of (pair config, method, seed), then tabulate each
(teacher, student, method) as mean +- std over seeds of the best and the last top-1, beside the published numbers of
configs/classifier/published.yaml. Writes table.md, table.csv and table.png.

    python -m genkd.classifier.tables run --configs configs/classifier/resnet32x4_resnet8x4.yaml --methods kd dkd --seeds 0 1 2
    python -m genkd.classifier.tables table runs/classifier/table --out runs/classifier/table

Each run is genkd.train_classifier with ``--seed S --distill.method M --run-dir ROOT/<config>-<method>-s<S>``; a run
whose metrics.json already holds all its epochs is skipped, an unfinished one resumed. The table reads every
metrics.json under a root, so runs made by hand count too (their seed comes from their config.yaml). Pieces shaped to
be shared with the GAN track's table: ``mean_std``, ``write_csv``, ``write_markdown``.
"""
import argparse
import csv
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import yaml
from matplotlib.figure import Figure

PUBLISHED = Path(__file__).resolve().parents[2] / "configs" / "classifier" / "published.yaml"
COLUMNS = ("teacher", "student", "method", "seeds", "best_top1", "last_top1", "published_top1", "published_source")


class TableError(ValueError):
    """No runs to tabulate or a bad published file; the message says what to pass."""


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_mean_std(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f}"


def run_name(config: Path, method: str, seed: int) -> str:
    return f"{config.stem}-{method}-s{seed}"


def run_grid(configs: list[Path], methods: list[str], seeds: list[int], root: Path, extra: list[str] = ()) -> list[Path]:
    """Train every (config, method, seed) not finished yet; returns the run directories."""
    from genkd.train_classifier import main  # the trainer pulls in torch/accelerate: only when running

    run_dirs = []
    for config in configs:
        for method in methods:
            for seed in seeds:
                run_dir = root / run_name(config, method, seed)
                run_dirs.append(run_dir)
                metrics, saved = run_dir / "metrics.json", run_dir / "config.yaml"
                if metrics.is_file() and saved.is_file():
                    epochs = yaml.safe_load(saved.read_text())["train"]["epochs"]
                    if len(json.loads(metrics.read_text())["epochs"]) >= epochs:
                        continue
                    main(["--resume", str(run_dir)])
                    continue
                main(["--config", str(config), "--distill.method", method, "--seed", str(seed), "--run-dir", str(run_dir), *extra])
    return run_dirs


def collect(root: Path) -> dict[tuple[str, str, str], list[dict]]:
    """(teacher, student, method) -> [{seed, best_top1, last_top1, run}] from every metrics.json under ``root``."""
    groups = defaultdict(list)
    for path in sorted(root.rglob("metrics.json")):
        metrics = json.loads(path.read_text())
        if metrics.get("last_top1") is None:
            continue  # not one finished epoch yet
        config = path.with_name("config.yaml")
        seed = yaml.safe_load(config.read_text()).get("seed") if config.is_file() else None
        key = (metrics["teacher"] or "", metrics["student"], metrics["method"])
        groups[key].append({"seed": seed, "best_top1": metrics["best_top1"], "last_top1": metrics["last_top1"], "run": str(path.parent)})
    if not groups:
        raise TableError(f"no metrics.json with a finished epoch under {root}: pass the root of genkd.train_classifier runs")
    return dict(groups)


def load_published(path: Path = PUBLISHED) -> dict[tuple[str, str, str], list[tuple[float, str]]]:
    """(teacher, student, method) -> [(top-1, source key)]; the student alone (method ce) is keyed without teacher,
    as our own ce runs are."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or "results" not in data or "sources" not in data:
        raise TableError(f"{path} must hold 'sources' and 'results' (see configs/classifier/published.yaml)")
    published = defaultdict(list)
    for row in data["results"]:
        if row["source"] not in data["sources"]:
            raise TableError(f"{path}: result {row} names source {row['source']!r}, not listed under 'sources'")
        for method, value in row.items():
            if method in ("source", "teacher", "student", "teacher_top1"):
                continue
            teacher = "" if method == "ce" else row["teacher"]
            if (value, row["source"]) not in published[(teacher, row["student"], method)]:
                published[(teacher, row["student"], method)].append((value, row["source"]))
    return dict(published)


def table_rows(groups, published) -> list[dict]:
    rows = []
    for (teacher, student, method), runs in sorted(groups.items()):
        best, last = [run["best_top1"] for run in runs], [run["last_top1"] for run in runs]
        paper = published.get((teacher, student, method), [])
        rows.append({
            "teacher": teacher, "student": student, "method": method, "seeds": len(runs),
            "best_top1": format_mean_std(best), "last_top1": format_mean_std(last),
            "published_top1": " / ".join(f"{value:.2f}" for value, _ in paper),
            "published_source": " / ".join(source for _, source in paper),
            "_best": mean_std(best), "_published": [value for value, _ in paper],
        })
    return rows


def write_csv(rows: list[dict], path: Path, columns=COLUMNS) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_markdown(rows: list[dict], path: Path, columns=COLUMNS, notes: str = "") -> None:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[column]) for column in columns) + " |" for row in rows]
    path.write_text("\n".join(lines) + "\n" + (f"\n{notes}\n" if notes else ""))


def write_plot(rows: list[dict], path: Path) -> None:
    """Best top-1 (mean, std as error bar) per (pair, method); published numbers as black diamonds."""
    figure = Figure(figsize=(max(6, 0.6 * len(rows) + 2), 4.5))
    axis = figure.subplots()
    positions = range(len(rows))
    axis.bar(positions, [row["_best"][0] for row in rows], yerr=[row["_best"][1] for row in rows], capsize=3, label="ours (best top-1)")
    for position, row in zip(positions, rows):
        if row["_published"]:
            axis.scatter([position] * len(row["_published"]), row["_published"], marker="D", color="black", zorder=3)
    axis.scatter([], [], marker="D", color="black", label="published")
    labels = [f"{row['teacher'] + ' → ' if row['teacher'] else ''}{row['student']}\n{row['method']}" for row in rows]
    axis.set_xticks(list(positions), labels, rotation=60, ha="right", fontsize=7)
    axis.set(ylabel="top-1 accuracy (%)", title="classifier distillation: mean ± std over seeds")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def write_tables(root: Path, out: Path, published_path: Path = PUBLISHED) -> list[dict]:
    rows = table_rows(collect(root), load_published(published_path))
    out.mkdir(parents=True, exist_ok=True)
    sources = yaml.safe_load(Path(published_path).read_text())["sources"]
    notes = "Published sources: " + "; ".join(f"**{key}**: {text}" for key, text in sources.items())
    write_markdown(rows, out / "table.md", notes=notes)
    write_csv(rows, out / "table.csv")
    write_plot(rows, out / "table.png")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train a grid of pair configs x methods x seeds, then tabulate")
    run.add_argument("--configs", nargs="+", type=Path, required=True)
    run.add_argument("--methods", nargs="+", required=True)
    run.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    run.add_argument("--root", type=Path, default=Path("runs/classifier/table"))
    run.add_argument("--published", type=Path, default=PUBLISHED)
    table = commands.add_parser("table", help="tabulate the runs under a root")
    table.add_argument("root", type=Path)
    table.add_argument("--out", type=Path, default=None, help="default: the root")
    table.add_argument("--published", type=Path, default=PUBLISHED)
    args, extra = parser.parse_known_args(argv)
    if args.command == "run":
        run_grid(args.configs, args.methods, args.seeds, args.root, extra)
        out = args.root
    else:
        out = args.out or args.root
    rows = write_tables(args.root, out, args.published)
    print(f"{len(rows)} rows: {out / 'table.md'}, {out / 'table.csv'}, {out / 'table.png'}")


if __name__ == "__main__":
    try:
        main()
    except TableError as error:
        sys.exit(f"error: {error}")
