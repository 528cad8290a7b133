"""The paper table runner on fake runs: mean ± sample std over seeds, best.pt before last.pt, the Markdown / CSV / PNG
outputs with the published values beside ours, and its command-line errors."""
import csv
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from genkd import tables
from genkd.checkpoint import save_checkpoint
from genkd.config import load_config, save_config
from genkd.defaults import DEFAULTS
from genkd.metrics import METRIC_KEYS
from genkd.metrics.inception import file_identity

evaluate = tables.evaluate_tool()


def fake_metrics(base: float) -> dict:
    return {key: base + index / 100 for index, key in enumerate(METRIC_KEYS)}


def test_summarize_takes_the_mean_and_sample_std_over_seeds():
    cell, other = tables.Cell("cifar10", 0.1), tables.Cell("cifar10", 0.2)
    fids = [14.0, 15.5, 13.1]
    records = [{"row": "VkD", "cell": cell, "run": f"r{i}", "metrics": fake_metrics(f)} for i, f in enumerate(fids)]
    records.append({"row": "VkD", "cell": other, "run": "single", "metrics": fake_metrics(20.0)})
    first, second = tables.summarize(records)
    assert (first.row, first.cell, first.n, first.runs) == ("VkD", cell, 3, ["r0", "r1", "r2"])
    assert first.mean["fid"] == pytest.approx(np.mean(fids))
    assert first.std["fid"] == pytest.approx(np.std(fids, ddof=1))  # the sample std, not the population one
    assert first.std["fid"] == pytest.approx(statistics.stdev(fids)) and first.std["fid"] != pytest.approx(np.std(fids))
    assert first.mean["coverage"] == pytest.approx(np.mean(fids) + 0.06)
    assert (second.n, second.std["fid"], second.mean["fid"]) == (1, None, 20.0)  # one seed: no std at all
    assert tables.format_value("fid", second.mean["fid"], second.std["fid"]) == "20.00"
    assert tables.format_value("fid", first.mean["fid"], first.std["fid"]) == "14.20 ± 1.21"  # sqrt((0.04 + 1.69 + 1.21) / 2)
    assert tables.format_value("density", 0.98765, 0.0123) == "0.988 ± 0.012"


@pytest.fixture
def paper_folder(tmp_path):
    """A small grid (two rows, one dataset at two fractions) and its published values, like configs/paper/."""
    folder = tmp_path / "paper"
    (folder / "rows").mkdir(parents=True)
    (folder / "protocol.yaml").write_text("eval:\n  every: 4000\n")
    (folder / "rows" / "da.yaml").write_text("distill:\n  enabled: false\n")
    (folder / "rows" / "vkd.yaml").write_text("distill:\n  enabled: true\n  norm: whitening\n")
    grid = {
        "base": "protocol.yaml",
        "datasets": ["npz"],
        "fractions": [0.2, 0.1],
        "rows": [
            {"name": "da", "title": "DA", "configs": ["rows/da.yaml"]},
            {"name": "vkd", "title": "VkD + whitening", "configs": ["rows/vkd.yaml"], "diversity": True},
        ],
    }
    (folder / "grid.yaml").write_text(yaml.safe_dump(grid))
    published = {
        "sources": {"poster": "a poster", "readme": "a README"},
        "values": [
            {"row": "da", "dataset": "npz", "fraction": 0.1, "metric": "fid", "mean": 23.34, "std": 0.09, "source": "poster"},
            {"row": "da", "dataset": "npz", "fraction": 0.1, "metric": "fid", "mean": 22.40, "source": "readme"},
            {"row": "da", "dataset": "npz", "fraction": 0.2, "metric": "is_mean", "mean": 8.65, "source": "readme"},
            {"row": "vkd", "dataset": "npz", "fraction": 0.1, "metric": "fid", "mean": 13.16, "source": "poster"},
        ],
    }
    (folder / "published.yaml").write_text(yaml.safe_dump(published))
    return folder


def scored_run(run_dir: Path, metrics: dict, weights: Path, name: str = "last") -> None:
    """A run whose checkpoint ``name`` has an up-to-date metrics record (as eval/evaluate.py writes it)."""
    cfg = load_config(DEFAULTS, ["--eval.inception_weights", str(weights), "--run_dir", str(run_dir)])
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    checkpoint = run_dir / "checkpoints" / f"{name}.pt"
    save_checkpoint({"placeholder": name}, checkpoint)
    _, _, record_path = evaluate.locate(checkpoint)
    record = {"metrics": metrics, "source": file_identity(checkpoint), "settings": evaluate.evaluation_settings(cfg, weights)}
    record_path.write_text(json.dumps(record))


def test_runner_collects_runs_and_writes_the_paper_layout_with_published_values(paper_folder, tmp_path):
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"stands in for Inception weights: only its identity enters the settings")
    out = tmp_path / "out"
    grid = tables.load_grid(paper_folder / "grid.yaml")
    planned = tables.plan_runs(grid, [0, 1, 2], out)
    assert len(planned) == 2 * 2 * 3
    fid_of = {}
    for run in planned:
        if (run.row.name, run.cell.fraction, run.seed) == ("vkd", 0.2, 2):
            continue  # never trained: --collect leaves it out, that cell averages two seeds
        fid = {"da": 20.0, "vkd": 10.0}[run.row.name] + run.cell.fraction * 10 + run.seed
        fid_of[run.run_dir] = fid
        scored_run(run.run_dir, fake_metrics(fid), weights)
        if run.row.name == "vkd" and run.cell.fraction == 0.1:  # training kept a best-FID generator: it wins
            scored_run(run.run_dir, fake_metrics(fid - 5), weights, name="best")
            fid_of[run.run_dir] = fid - 5

    summaries = tables.main(["--grid", str(paper_folder / "grid.yaml"), "--out", str(out), "--seeds", "0", "1", "2",
                             "--collect", "--device", "cpu"])  # fmt: skip
    found = {(s.row, s.cell.fraction): s for s in summaries}
    assert found["DA", 0.1].mean["fid"] == pytest.approx(22.0) and found["DA", 0.1].std["fid"] == pytest.approx(1.0)
    assert found["VkD + whitening", 0.1].mean["fid"] == pytest.approx(7.0)  # best.pt's records, not last.pt's
    assert found["VkD + whitening", 0.2].n == 2 and found["VkD + whitening", 0.2].mean["fid"] == pytest.approx(12.5)

    markdown = (out / "table.md").read_text()
    lines = markdown.splitlines()
    assert "| method | npz 20% | npz 10% |" in lines
    at = lines.index("| DA | 23.00 ± 1.00 | 22.00 ± 1.00 |")  # FID section comes first
    assert lines[at + 1] == "| ↳ *poster* |  | 23.34 ± 0.09 |"  # published values right under ours
    assert lines[at + 2] == "| ↳ *readme* |  | 22.40 |"
    assert "| ↳ *readme* | 8.65 |  |" in lines  # the IS section's published value
    assert "| VkD + whitening | 12.50 ± 0.71 | 7.00 ± 1.00 |" in lines
    assert "- *poster*: a poster" in lines
    diversity = lines[lines.index("## Diversity (precision / recall / density / coverage, k = 5)") :]
    assert any(line.startswith("| npz 10% | VkD + whitening | 7.00 ± 1.00 |") for line in diversity)
    assert not any("| DA |" in line for line in diversity)  # only rows marked diversity

    with open(out / "table.csv") as file:
        table = list(csv.DictReader(file))
    da_fid = [r for r in table if (r["row"], r["fraction"], r["metric"]) == ("da", "0.1", "fid")]
    assert [(r["source"], float(r["mean"])) for r in da_fid] == [("ours", 22.0), ("poster", 23.34), ("readme", 22.40)]
    assert float(da_fid[0]["std"]) == pytest.approx(1.0) and da_fid[0]["seeds"] == "3" and da_fid[1]["std"] == "0.09"
    with open(out / "diversity.csv") as file:
        rows = list(csv.DictReader(file))
    assert [(r["dataset"], r["method"]) for r in rows] == [("npz 20%", "VkD + whitening"), ("npz 10%", "VkD + whitening")]
    assert float(rows[1]["coverage"]) == pytest.approx(7.06) and float(rows[1]["coverage std"]) == pytest.approx(1.0)
    with open(out / "runs.csv") as file:
        per_run = list(csv.DictReader(file))
    assert len(per_run) == 11 and {Path(r["run"]): float(r["fid"]) for r in per_run} == pytest.approx(fid_of)
    for name in ("table.png", "diversity.png"):
        assert Image.open(out / name).size[0] > 600


def test_plan_covers_row_times_cell_times_seed_and_each_run_has_its_command(paper_folder, tmp_path):
    grid = tables.load_grid(paper_folder / "grid.yaml")
    runs = tables.plan_runs(grid, [0, 1], tmp_path, rows=["vkd"], fractions=[0.1])
    assert [(run.row.name, run.cell, run.seed) for run in runs] == [("vkd", tables.Cell("npz", 0.1), s) for s in (0, 1)]
    assert runs[1].run_dir == tmp_path / "runs" / "vkd" / "npz-0.1" / "seed1"
    assert runs[1].train_argv(grid, "--data.root data/{dataset}.npz --data.subset-seed {seed}") == [
        "--config", str(paper_folder / "protocol.yaml"), "--config", str(paper_folder / "rows" / "vkd.yaml"),
        "--dataset", "npz", "--data-frac", "0.1", "--seed", "1", "--run-dir", str(runs[1].run_dir),
        "--data.root", "data/npz.npz", "--data.subset-seed", "1",
    ]  # fmt: skip


def test_runner_errors_are_one_line(paper_folder, tmp_path):
    with pytest.raises(SystemExit, match=r"^error: no row 'vkd-x' in the grid; rows: da, vkd$"):
        tables.main(["--grid", str(paper_folder / "grid.yaml"), "--out", str(tmp_path), "--rows", "vkd-x", "--collect"])
    with pytest.raises(SystemExit, match="grid file .*missing.yaml not found"):
        tables.main(["--grid", str(tmp_path / "missing.yaml"), "--out", str(tmp_path)])
    (paper_folder / "rows" / "da.yaml").unlink()
    with pytest.raises(SystemExit, match=r"names rows/da.yaml, which is not a file in"):
        tables.main(["--grid", str(paper_folder / "grid.yaml"), "--out", str(tmp_path), "--collect"])


def test_split_overrides_keeps_list_options_and_sends_the_rest_to_the_evaluation():
    argv = ["--seeds", "0", "1", "--num-samples", "20", "--train-args", "--data.frac 0.1", "--out", "o",
            "--eval.split=train", "--collect"]  # fmt: skip
    own, overrides = tables.split_overrides(argv, tables.build_parser())
    assert overrides == ["--num-samples", "20", "--eval.split=train"]
    args = tables.build_parser().parse_args(own)
    assert (args.seeds, args.train_args, args.collect, args.out) == ([0, 1], "--data.frac 0.1", True, Path("o"))
