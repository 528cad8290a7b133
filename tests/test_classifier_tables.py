"""Classifier result tables: mean +- std over seeds of best / last top-1 beside the published numbers."""
import csv
import json
import statistics

import pytest
import yaml

from genkd.classifier.tables import TableError, collect, load_published, main, mean_std, write_tables


def fake_run(root, name, teacher, student, method, seed, best, last):
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "train": {"epochs": 2}}))
    metrics = {"teacher": teacher, "student": student, "method": method, "best_top1": best, "last_top1": last,
               "epochs": [{"epoch": 1, "top1": best}, {"epoch": 2, "top1": last}]}
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_mean_std_is_the_sample_statistic():
    assert mean_std([1.0, 2.0, 4.0]) == (pytest.approx(7 / 3), pytest.approx(statistics.stdev([1.0, 2.0, 4.0])))
    assert mean_std([5.0]) == (5.0, 0.0)


def test_published_file_is_keyed_by_pair_and_method():
    published = load_published()
    assert sorted(published[("resnet32x4", "resnet8x4", "kd")]) == [(73.33, "crd"), (73.33, "dkd")]
    assert published[("resnet32x4", "resnet8x4", "dkd")] == [(76.32, "dkd")]
    assert published[("vit_small_patch16_224", "resnet18", "mldr")] == [(80.51, "mldr")]
    assert (72.50, "crd") in published[("", "resnet8x4", "ce")]  # the student alone has no teacher


def test_table_aggregates_seeds_and_joins_published_numbers(tmp_path):
    root = tmp_path / "runs"
    for seed, (best, last) in enumerate([(75.0, 74.0), (76.0, 75.5), (77.0, 75.0)]):
        fake_run(root, f"r-dkd-s{seed}", "resnet32x4", "resnet8x4", "dkd", seed, best, last)
    fake_run(root, "r-ce-s0", "", "resnet8x4", "ce", 0, 72.0, 71.0)
    (root / "unfinished").mkdir()
    (root / "unfinished" / "metrics.json").write_text(json.dumps({"last_top1": None}))
    groups = collect(root)
    assert sorted(run["seed"] for run in groups[("resnet32x4", "resnet8x4", "dkd")]) == [0, 1, 2]
    rows = write_tables(root, tmp_path / "out")
    dkd = next(row for row in rows if row["method"] == "dkd")
    assert dkd["seeds"] == 3 and dkd["best_top1"] == f"76.00 ± {statistics.stdev([75.0, 76.0, 77.0]):.2f}"
    assert dkd["last_top1"] == f"{statistics.fmean([74.0, 75.5, 75.0]):.2f} ± {statistics.stdev([74.0, 75.5, 75.0]):.2f}"
    assert dkd["published_top1"] == "76.32" and dkd["published_source"] == "dkd"
    with open(tmp_path / "out" / "table.csv") as handle:
        assert [row["method"] for row in csv.DictReader(handle)] == ["ce", "dkd"]
    markdown = (tmp_path / "out" / "table.md").read_text()
    assert "| resnet32x4 | resnet8x4 | dkd | 3 | 76.00 ±" in markdown and "Published sources" in markdown
    assert (tmp_path / "out" / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_runs_is_one_clear_error(tmp_path):
    with pytest.raises(TableError, match="no metrics.json with a finished epoch under .*: pass the root"):
        collect(tmp_path)


def test_run_grid_trains_each_run_once_and_tabulates(tmp_path, cifar10_npz):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"dataset": "npz", "root": str(cifar10_npz), "frac": 0.02, "num_workers": 0},
        "model": {"student": "resnet20"}, "train": {"epochs": 1, "batch_size": 16}, "eval": {"split": "train"},
    }))
    root = tmp_path / "grid"
    main(["run", "--configs", str(config), "--methods", "ce", "--seeds", "3", "--root", str(root)])
    runs = sorted(path.name for path in root.iterdir() if path.is_dir())
    assert runs == ["tiny-ce-s3"] and yaml.safe_load((root / "tiny-ce-s3" / "config.yaml").read_text())["seed"] == 3
    stamp = (root / "tiny-ce-s3" / "metrics.json").stat().st_mtime_ns
    main(["run", "--configs", str(config), "--methods", "ce", "--seeds", "3", "--root", str(root)])  # finished: skipped
    assert (root / "tiny-ce-s3" / "metrics.json").stat().st_mtime_ns == stamp
    assert "|  | resnet20 | ce | 1 |" in (root / "table.md").read_text()
    assert "| 69.06 | crd |" in (root / "table.md").read_text()  # CRD's resnet20 alone, listed once
