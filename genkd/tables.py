"""The paper table runner: train (or collect) every run of a grid of configs and seeds, evaluate each with the protocol,
and write the tables in the layout of VkD's generation tables with the published values beside ours.

    python -m genkd.tables --out results/paper --seeds 0 1 2 --eval.inception-weights W.pth \\
        --train-args "--eval.inception-weights W.pth"
    python -m genkd.tables --out results/paper --rows da vkd-whitening --fractions 0.1 --dry-run   # the commands only
    python -m genkd.tables --out results/paper --collect                                           # no training

The grid (configs/paper/grid.yaml) names the rows (methods), their config files, the datasets and the fractions;
configs/paper/published.yaml holds the published numbers with their sources. Run ``R`` on dataset ``D`` at fraction
``F`` with seed ``S`` lives in OUT/runs/R/D-F/seedS and trains ``genkd.train --config <base> --config <R's files>
--dataset D --data-frac F --seed S`` (then --train-args, where ``{dataset}`` stands for D and ``{seed}`` for S). A
run whose last.pt has reached its steps is collected as it is, a shorter one resumed. Each run is evaluated from
checkpoints/best.pt when training kept one (the reference's ``--which_best FID``), else last.pt, as eval/evaluate.py
does, unless its metrics file is up to date (same checkpoint file, same evaluation settings); the options this tool
does not know (--eval.*, --data.*, evaluate.py's --num-samples ...) go to that evaluation.

Writes OUT/table.md (FID and IS: rows = methods, columns = dataset x fraction, mean +- std over seeds, each method
followed by its published values; then the diversity table: FID, IS, precision, recall, density, coverage of the
rows marked ``diversity``), OUT/table.csv and OUT/diversity.csv (long form, published values as their own lines),
OUT/runs.csv (every run's numbers), OUT/table.png and OUT/diversity.png (grouped bars with error bars, published values
as markers). The standard deviation is the sample one (ddof 1) over seeds; one seed gives none.
"""
import argparse
import csv
import functools
import importlib.util
import math
import shlex
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_GRID = REPO / "configs" / "paper" / "grid.yaml"
DATASET_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
METRIC_TITLES = {
    "fid": "FID ↓",
    "is_mean": "IS ↑",
    "precision": "precision ↑",
    "recall": "recall ↑",
    "density": "density ↑",
    "coverage": "coverage ↑",
}
TABLE_METRICS = ("fid", "is_mean")  # the paper's Tab. 4 / 5 report IS and FID
DIVERSITY_METRICS = ("fid", "is_mean", "precision", "recall", "density", "coverage")
CSV_TITLES = {"fid": "FID", "is_mean": "IS"}  # others: the metric key
DECIMALS = {"fid": 2, "is_mean": 2}  # others: 3
LAUNCHERS = ("python", "accelerate", "inprocess")


class TablesError(ValueError):
    """A bad grid, published-values file or run; the message says what to do."""


@dataclass(frozen=True, order=True)
class Cell:
    """One column of the tables: a dataset at a fraction of its training set."""

    dataset: str
    fraction: float

    @property
    def label(self) -> str:
        return f"{DATASET_TITLES.get(self.dataset, self.dataset)} {self.fraction:.0%}"


@dataclass(frozen=True)
class Row:
    name: str
    title: str
    configs: tuple[Path, ...]
    fractions: tuple[float, ...] | None = None  # None = every fraction of the grid
    diversity: bool = False


@dataclass(frozen=True)
class Grid:
    base: Path
    datasets: tuple[str, ...]
    fractions: tuple[float, ...]
    rows: tuple[Row, ...]

    def cells(self, row: Row | None = None) -> list[Cell]:
        """The columns in table order (dataset, then fraction as listed); those of ``row`` alone when given."""
        fractions = [f for f in self.fractions if row is None or row.fractions is None or f in row.fractions]
        return [Cell(dataset, fraction) for dataset in self.datasets for fraction in fractions]


@dataclass(frozen=True)
class Published:
    mean: float
    std: float | None
    source: str  # a key of the file's ``sources``


@dataclass(frozen=True)
class Run:
    row: Row
    cell: Cell
    seed: int
    run_dir: Path

    def train_argv(self, grid: Grid, extra: str = "") -> list[str]:
        """genkd.train's arguments for this run: the grid's base file, the row's files, cell, seed, run directory."""
        argv = []
        for config in (grid.base, *self.row.configs):
            argv += ["--config", str(config)]
        argv += ["--dataset", self.cell.dataset, "--data-frac", f"{self.cell.fraction:g}", "--seed", str(self.seed)]
        argv += ["--run-dir", str(self.run_dir)]
        return argv + shlex.split(extra.replace("{dataset}", self.cell.dataset).replace("{seed}", str(self.seed)))


@dataclass
class Summary:
    """Mean and sample standard deviation over the seeds of one (row, cell)."""

    row: str  # the row's title
    cell: Cell
    n: int
    mean: dict
    std: dict  # None where n < 2
    runs: list


def _read_yaml(path: Path, what: str):
    if not path.is_file():
        raise TablesError(f"{what} {path} not found (pass an existing file)")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise TablesError(f"{what} {path} is not valid YAML: {error}".splitlines()[0]) from None


def load_grid(path: str | Path = DEFAULT_GRID) -> Grid:
    """The grid file; config paths are resolved against its folder and must exist."""
    path = Path(path)
    tree = _read_yaml(path, "grid file")
    try:
        folder = path.parent

        def existing(name: str) -> Path:
            file = folder / name
            if not file.is_file():
                raise TablesError(f"grid file {path} names {name}, which is not a file in {folder}")
            return file

        rows = tuple(
            Row(
                name=str(row["name"]),
                title=str(row.get("title", row["name"])),
                configs=tuple(existing(name) for name in row["configs"]),
                fractions=tuple(float(f) for f in row["fractions"]) if "fractions" in row else None,
                diversity=bool(row.get("diversity", False)),
            )
            for row in tree["rows"]
        )
        grid = Grid(existing(tree["base"]), tuple(tree["datasets"]), tuple(float(f) for f in tree["fractions"]), rows)
    except (KeyError, TypeError) as error:
        raise TablesError(f"grid file {path} lacks {error} (it needs base, datasets, fractions, rows)") from None
    names = [row.name for row in rows]
    if len(set(names)) != len(names):
        raise TablesError(f"grid file {path} has repeated row names: {', '.join(sorted(names))}")
    return grid


def load_published(path: str | Path) -> tuple[dict[tuple, list[Published]], dict[str, str]]:
    """({(row name, dataset, fraction, metric): [published values]}, {source key: description})."""
    path = Path(path)
    tree = _read_yaml(path, "published-values file")
    sources = {str(key): str(text) for key, text in tree.get("sources", {}).items()}
    values: dict[tuple, list[Published]] = {}
    for entry in tree.get("values", []):
        if entry.get("source") not in sources:
            raise TablesError(f"{path}: value {entry} names no source listed under 'sources'")
        key = (entry["row"], entry["dataset"], float(entry["fraction"]), entry["metric"])
        std = entry.get("std")
        values.setdefault(key, []).append(Published(float(entry["mean"]), None if std is None else float(std), entry["source"]))
    return values, sources


def plan_runs(grid: Grid, seeds: Sequence[int], out: Path, rows=None, datasets=None, fractions=None) -> list[Run]:
    """Every (row, cell, seed) of the grid, optionally restricted to some rows, datasets and fractions."""
    known = {row.name for row in grid.rows}
    for name in rows or ():
        if name not in known:
            raise TablesError(f"no row {name!r} in the grid; rows: {', '.join(row.name for row in grid.rows)}")
    runs = []
    for row in grid.rows:
        if rows and row.name not in rows:
            continue
        for cell in grid.cells(row):
            if (datasets and cell.dataset not in datasets) or (fractions and cell.fraction not in fractions):
                continue
            for seed in seeds:
                run_dir = out / "runs" / row.name / f"{cell.dataset}-{cell.fraction:g}" / f"seed{seed}"
                runs.append(Run(row, cell, seed, run_dir))
    return runs


# ---- training ---------------------------------------------------------------------------------------------------


def launch_command(launcher: str, argv: list[str]) -> list[str]:
    if launcher == "accelerate":
        return [sys.executable, "-m", "accelerate.commands.launch", str(REPO / "genkd" / "train.py"), *argv]
    return [sys.executable, "-m", "genkd.train", *argv]


def train_run(argv: list[str], run_dir: Path, launcher: str = "python", dry_run: bool = False) -> str:
    """Train the run ``argv`` describes, resume it, or leave it: returns "trained", "resumed" or "collected"."""
    from genkd.checkpoint import load_checkpoint
    from genkd.defaults import gan_config

    last = run_dir / "checkpoints" / "last.pt"
    action = "trained"
    if last.is_file():
        if load_checkpoint(last)["step"] >= gan_config(argv).train.steps:
            return "collected"
        argv, action = ["--resume", str(run_dir), *argv], "resumed"
    command = launch_command(launcher, argv)
    print("+", shlex.join(command), flush=True)
    if dry_run:
        return action
    if launcher == "inprocess":
        from genkd import train

        train.main(argv)
    else:
        subprocess.run(command, check=True)
    return action


# ---- evaluation -------------------------------------------------------------------------------------------------


@functools.cache
def evaluate_tool():
    """eval/evaluate.py of this checkout: its record format and staleness rules are the ones every tool shares."""
    path = REPO / "eval" / "evaluate.py"
    if not path.is_file():
        raise TablesError(f"{path} not found: run genkd.tables from a genkd checkout (pip install -e .)")
    spec = importlib.util.spec_from_file_location("genkd_eval_evaluate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluation_errors() -> tuple:
    return evaluate_tool().ERRORS


def up_to_date_record(run_dir: Path, overrides: Sequence[str], which: str = "auto") -> dict | None:
    """The stored record of the run's checkpoint ``which`` (genkd.checkpoint.generator_checkpoint) if it was computed
    from that very file with these settings."""
    from genkd.config import as_config
    from genkd.metrics import resolve_weights
    from genkd.metrics.inception import file_identity

    tool = evaluate_tool()
    _, checkpoint, record_path = tool.locate(run_dir, which)
    if not record_path.is_file() or not checkpoint.is_file():
        return None
    record = yaml.safe_load(record_path.read_text())  # JSON is YAML
    cfg = tool.resolve_config(as_config(yaml.safe_load((run_dir / "config.yaml").read_text())), list(overrides))
    settings = tool.evaluation_settings(cfg, resolve_weights(cfg.eval.inception_weights))
    if record.get("source") != file_identity(checkpoint) or record.get("settings") != settings:
        return None
    return record


def run_metrics(run_dir: Path, overrides: Sequence[str] = (), device: str | None = None, which: str = "auto") -> dict:
    """The metrics of the run's checkpoint ``which`` (best.pt when training kept one, else last.pt): stored ones when
    up to date, else evaluated now (and stored beside the checkpoint); says which checkpoint and step either way."""
    from genkd.checkpoint import generator_checkpoint

    if not (run_dir / "config.yaml").is_file():
        raise TablesError(f"{run_dir} is not a genkd run directory (no config.yaml)")
    if not generator_checkpoint(run_dir, which).is_file():
        raise TablesError(f"{run_dir} has no checkpoints/best.pt or last.pt: train it first")
    record = up_to_date_record(run_dir, overrides, which)
    if record is None:  # evaluate_source prints the checkpoint it evaluates
        import torch

        with torch.no_grad():
            record = evaluate_tool().evaluate_source(run_dir, list(overrides), device=device, which=which)
    else:
        step = record.get("step", "unknown")  # records written before steps were recorded
        print(f"checkpoint {record['source']['path']} (step {step}): metrics up to date", flush=True)
    return record["metrics"]


# ---- aggregation ------------------------------------------------------------------------------------------------


def summarize(records: Iterable[dict], metrics: Sequence[str] = DIVERSITY_METRICS) -> list[Summary]:
    """One Summary per (row, cell) of ``records`` ({"row", "cell", "run", "metrics"}), in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault((record["row"], record["cell"]), []).append(record)
    summaries = []
    for (row, cell), members in groups.items():
        mean, std = {}, {}
        for key in metrics:
            values = [member["metrics"][key] for member in members]
            mean[key] = statistics.fmean(values)
            std[key] = statistics.stdev(values) if len(values) > 1 else None
        summaries.append(Summary(row, cell, len(members), mean, std, [str(member["run"]) for member in members]))
    return summaries


def format_value(metric: str, mean: float | None, std: float | None = None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    decimals = DECIMALS.get(metric, 3)
    return f"{mean:.{decimals}f}" + (f" ± {std:.{decimals}f}" if std is not None else "")


# ---- writing ----------------------------------------------------------------------------------------------------


def paper_table_markdown(
    summaries: list[Summary], grid_rows: Sequence[Row], cells: Sequence[Cell], published, sources, metric: str
) -> str:
    """Rows = methods, columns = cells; under each method, one line per source of published values."""
    found = {(s.row, s.cell): s for s in summaries}
    lines = [f"| method | {' | '.join(cell.label for cell in cells)} |", "|---|" + "---:|" * len(cells)]
    for row in grid_rows:
        ours = [found.get((row.title, cell)) for cell in cells]
        values = [format_value(metric, s.mean[metric], s.std[metric]) if s else "—" for s in ours]
        lines.append(f"| {row.title} | {' | '.join(values)} |")
        for source in sources:
            entries = [
                next((p for p in published.get((row.name, c.dataset, c.fraction, metric), []) if p.source == source), None)
                for c in cells
            ]
            if any(entries):
                values = [format_value(metric, p.mean, p.std) if p else "" for p in entries]
                lines.append(f"| ↳ *{source}* | {' | '.join(values)} |")
    return "\n".join(lines) + "\n"


def long_table_markdown(summaries: list[Summary], metrics: Sequence[str], row_header: str = "method") -> str:
    """One line per (cell, row): the diversity table's layout (and compare_norms')."""
    lines = [f"| dataset | {row_header} | {' | '.join(METRIC_TITLES.get(m, m) for m in metrics)} |"]
    lines.append("|---|---|" + "---:|" * len(metrics))
    for s in summaries:
        values = [format_value(m, s.mean[m], s.std[m]) for m in metrics]
        lines.append(f"| {s.cell.label} | {s.row} | {' | '.join(values)} |")
    return "\n".join(lines) + "\n"


def write_long_csv(summaries: list[Summary], metrics: Sequence[str], path: Path, row_header: str = "method") -> None:
    """dataset, fraction, row, the metrics' means, their standard deviations, seeds, run directories."""
    titles = [CSV_TITLES.get(m, m) for m in metrics]
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["dataset", "fraction", row_header, *titles, *(f"{t} std" for t in titles), "seeds", "runs"])
        for s in summaries:
            stds = ["" if s.std[m] is None else s.std[m] for m in metrics]
            row = [s.cell.label, s.cell.fraction, s.row, *(s.mean[m] for m in metrics), *stds, s.n, ";".join(s.runs)]
            writer.writerow(row)


def write_paper_csv(summaries, grid_rows, cells, published, metrics, path: Path) -> None:
    """Long form: one line per (method, dataset, fraction, metric, source); source "ours" for our runs."""
    found = {(s.row, s.cell): s for s in summaries}
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["method", "row", "dataset", "fraction", "metric", "source", "mean", "std", "seeds"])
        for row in grid_rows:
            for cell in cells:
                for metric in metrics:
                    s = found.get((row.title, cell))
                    if s:
                        std = "" if s.std[metric] is None else s.std[metric]
                        writer.writerow([row.title, row.name, cell.dataset, cell.fraction, metric, "ours", s.mean[metric], std, s.n])
                    for p in published.get((row.name, cell.dataset, cell.fraction, metric), []):
                        std = "" if p.std is None else p.std
                        writer.writerow([row.title, row.name, cell.dataset, cell.fraction, metric, p.source, p.mean, std, ""])


def plot_bars(summaries: list[Summary], metrics: Sequence[str], path: Path, published_points=None, legend_title="method"):
    """One panel per metric: a group of bars per cell, one bar per row (error bars: std over seeds); published
    values (``{(row title, cell, metric): [(value, source)]}``) as markers on their row's bar."""
    published_points = published_points or {}
    cells = list(dict.fromkeys(s.cell for s in summaries))
    rows = list(dict.fromkeys(s.row for s in summaries))
    found = {(s.row, s.cell): s for s in summaries}
    width = 0.8 / len(rows)
    panel_width = max(3.2, 0.16 * len(cells) * len(rows))
    columns = 1 if panel_width > 6 else len(metrics)
    panel_rows = math.ceil(len(metrics) / columns)
    figure, axes = plt.subplots(panel_rows, columns, figsize=(panel_width * columns, 4.0 * panel_rows), squeeze=False)
    markers = {}
    for axis, metric in zip(axes.flat, metrics):
        for position, row in enumerate(rows):
            offset = (position - (len(rows) - 1) / 2) * width
            present = [(index, found[row, cell]) for index, cell in enumerate(cells) if (row, cell) in found]
            xs = [index + offset for index, _ in present]
            errors = [s.std[metric] or 0.0 for _, s in present]
            values = [s.mean[metric] for _, s in present]
            axis.bar(xs, values, width, yerr=errors, capsize=2, label=row, color=f"C{position % 10}")
            for index, cell in enumerate(cells):
                for value, source in published_points.get((row, cell, metric), []):
                    marker = markers.setdefault(source, "ovs^Dp"[len(markers) % 6])
                    axis.plot(index + offset, value, marker, color="black", markersize=5, markerfacecolor="none")
        axis.set_title(METRIC_TITLES.get(metric, metric))
        axis.set_xticks(range(len(cells)), [cell.label for cell in cells], rotation=15)
        if metric in ("precision", "recall", "coverage"):
            axis.set_ylim(0, 1.05)
    for axis in list(axes.flat)[len(metrics):]:
        axis.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for source, marker in markers.items():
        handles.append(plt.Line2D([], [], linestyle="", marker=marker, color="black", markerfacecolor="none"))
        labels.append(f"published: {source}")
    figure.legend(handles, labels, title=legend_title, loc="upper center", ncol=min(len(labels), 6), fontsize="small")
    legend_lines = math.ceil(len(labels) / 6)
    figure.tight_layout(rect=(0, 0, 1, 1 - (0.06 + 0.05 * legend_lines) / panel_rows))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_outputs(records: list[dict], grid: Grid, runs: list[Run], published, sources, out: Path) -> list[Summary]:
    """All files of the paper tables from the per-run records."""
    out.mkdir(parents=True, exist_ok=True)
    summaries = summarize(records)
    planned_rows = [row for row in grid.rows if any(run.row == row for run in runs)]
    cells = sorted(dict.fromkeys(run.cell for run in runs), key=grid.cells().index)
    sections = ["# Generation tables (genkd)", ""]
    sections.append("Mean ± std over seeds (sample std; none for one seed), FID / IS of 10k samples against the test "
                    "split; each method is followed by its published values (*source*). Sources:")
    sections += [f"- *{key}*: {text}" for key, text in sources.items()] + [""]
    for metric in TABLE_METRICS:
        sections += [f"## {METRIC_TITLES[metric]}", "", paper_table_markdown(summaries, planned_rows, cells, published, sources, metric)]
    diversity_titles = [row.title for row in planned_rows if row.diversity]
    diversity = [s for cell in cells for title in diversity_titles for s in summaries if (s.row, s.cell) == (title, cell)]
    sections += ["## Diversity (precision / recall / density / coverage, k = 5)", "",
                 long_table_markdown(diversity, DIVERSITY_METRICS) if diversity else "(no diversity rows were run)\n"]
    (out / "table.md").write_text("\n".join(sections))
    write_paper_csv(summaries, planned_rows, cells, published, TABLE_METRICS, out / "table.csv")
    write_long_csv(diversity, DIVERSITY_METRICS, out / "diversity.csv")
    with open(out / "runs.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["row", "dataset", "fraction", "seed", "run", *DIVERSITY_METRICS])
        for r in records:
            writer.writerow([r["name"], r["cell"].dataset, r["cell"].fraction, r["seed"], r["run"], *(r["metrics"][m] for m in DIVERSITY_METRICS)])
    titles = {row.name: row.title for row in grid.rows}
    points: dict[tuple, list] = {}
    for (name, dataset, fraction, metric), entries in published.items():
        if name in titles and Cell(dataset, fraction) in cells:
            points[(titles[name], Cell(dataset, fraction), metric)] = [(p.mean, p.source) for p in entries]
    ordered = [s for cell in cells for row in planned_rows for s in summaries if (s.row, s.cell) == (row.title, cell)]
    if ordered:
        plot_bars(ordered, TABLE_METRICS, out / "table.png", points)
    if diversity:
        plot_bars(diversity, DIVERSITY_METRICS[2:], out / "diversity.png")
    return summaries


# ---- command line -----------------------------------------------------------------------------------------------


def split_overrides(argv: Sequence[str], parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """(this tool's arguments, the other --key value options): argparse alone would take the value of an option it
    does not know for a positional argument."""
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
        action = options.get(name)
        if action is not None and "=" not in arg and action.nargs is None and action.const is None and args:
            own.append(args.pop(0))  # its value, even one like "--data.frac 0.1" for --train-args
        elif action is not None and action.nargs in ("+", "*"):
            while args and not args[0].startswith("--"):
                own.append(args.pop(0))
    return own, overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genkd.tables",
        description="Train (or collect) and evaluate the runs of a grid of configs and seeds; write the paper's tables.",
        epilog="Options not listed here (--eval.*, --data.*, --num-samples, --inception-weights) go to the evaluation.",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for runs/, table.md/.csv/.png, diversity.*")
    parser.add_argument("--grid", type=Path, default=DEFAULT_GRID, help="grid file (default: configs/paper/grid.yaml)")
    parser.add_argument("--published", type=Path, default=None, help="published values (default: beside the grid)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0)")
    parser.add_argument("--rows", nargs="+", default=None, help="row names of the grid (default: all)")
    parser.add_argument("--datasets", nargs="+", default=None, help="datasets of the grid (default: all)")
    parser.add_argument("--fractions", type=float, nargs="+", default=None, help="fractions (default: all)")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="python", help="python -m genkd.train, accelerate "
                        "launch, or in this process")  # fmt: skip
    parser.add_argument("--train-args", default="", help='more genkd.train options, e.g. "--eval.inception-weights W"')
    parser.add_argument("--collect", action="store_true", help="train nothing: tabulate the runs that have checkpoints")
    parser.add_argument("--dry-run", action="store_true", help="print the training commands, run nothing")
    parser.add_argument("--device", default=None, help="evaluation device (default: cuda when there is one)")
    return parser


def main(argv: Sequence[str] | None = None) -> list[Summary]:
    parser = build_parser()
    own, overrides = split_overrides(sys.argv[1:] if argv is None else argv, parser)
    args = parser.parse_args(own)
    from genkd.checkpoint import CheckpointError, generator_checkpoint
    from genkd.config import ConfigError
    from genkd.teachers import TeacherError
    from genkd.train import NonFiniteLossError  # what an in-process run may raise besides the evaluation's errors

    try:
        errors = (TablesError, ConfigError, CheckpointError, TeacherError, NonFiniteLossError,
                  subprocess.CalledProcessError, *evaluation_errors())  # fmt: skip
    except TablesError as error:
        sys.exit(f"error: {error}")
    try:
        grid = load_grid(args.grid)
        published, sources = load_published(args.published or args.grid.parent / "published.yaml")
        runs = plan_runs(grid, args.seeds, args.out, args.rows, args.datasets, args.fractions)
        if not runs:
            raise TablesError("no run matches --rows / --datasets / --fractions in the grid")
        if args.dry_run:
            for run in runs:
                train_run(run.train_argv(grid, args.train_args), run.run_dir, args.launcher, dry_run=True)
            return []
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        records, missing = [], []
        for run in runs:
            if not args.collect:
                train_run(run.train_argv(grid, args.train_args), run.run_dir, args.launcher)
            elif not generator_checkpoint(run.run_dir).is_file():
                missing.append(run.run_dir)
                continue
            metrics = run_metrics(run.run_dir, overrides, device)
            records.append({"row": run.row.title, "name": run.row.name, "cell": run.cell, "seed": run.seed,
                            "run": run.run_dir, "metrics": metrics})  # fmt: skip
    except errors as error:
        sys.exit(f"error: {error}")
    if missing:
        print(f"left out ({len(missing)} runs without a checkpoint): " + ", ".join(map(str, missing)))
    summaries = write_outputs(records, grid, runs, published, sources, args.out)
    print((args.out / "table.md").read_text())
    print(f"written: {', '.join(str(args.out / n) for n in ('table.md', 'table.csv', 'table.png', 'diversity.csv'))}")
    return summaries


if __name__ == "__main__":
    main()
