"""configs/paper/: every row of the grid resolves through genkd.defaults.gan_config at every dataset and fraction with
the reference protocol's values, trains two steps at tiny width, and the table runner trains and evaluates it end to
end; the published values name only rows, cells and metrics of the grid."""
from pathlib import Path

import pytest
import yaml

from genkd import tables, train
from genkd.checkpoint import load_checkpoint
from genkd.defaults import PROTOCOL_STEPS, gan_config
from genkd.metrics import METRIC_KEYS, save_random_inception_weights

PAPER = tables.DEFAULT_GRID.parent
GRID = tables.load_grid(tables.DEFAULT_GRID)
ROWS = {row.name: row for row in GRID.rows}
KD_ROWS = {name for name, row in ROWS.items() if PAPER / "kd-pipeline.yaml" in row.configs}



def row_configs(row: tables.Row) -> list[str]:
    """``--config`` arguments of the row's files, the protocol base first (gan_config rejects any unknown key)."""
    return [item for config in (GRID.base, *row.configs) for item in ("--config", str(config))]


def test_the_grid_uses_every_paper_config_file_and_the_published_values_fit_it():
    used = {GRID.base, *(config for row in GRID.rows for config in row.configs)}
    files = {path for path in PAPER.rglob("*.yaml") if path.name not in ("grid.yaml", "published.yaml")}
    assert files == used
    published, sources = tables.load_published(PAPER / "published.yaml")
    assert set(sources) == {"vkd-poster", "diffaugment-readme"}
    for (row, dataset, fraction, metric), entries in published.items():
        assert row in ROWS and dataset in GRID.datasets and fraction in GRID.fractions and metric in METRIC_KEYS
        assert all(entry.source in sources for entry in entries)
    poster = {(row, dataset) for (row, dataset, fraction, _), entries in published.items()
              for entry in entries if entry.source == "vkd-poster" and fraction == 0.1}  # fmt: skip
    rows = {"da", "fitnets", "pkt", "spkd", "kd-dlgan", "vkd-layernorm", "vkd-whitening"}
    assert poster == {(row, dataset) for row in rows for dataset in ("cifar10", "cifar100")}


@pytest.mark.parametrize("name", ROWS)
def test_every_cell_of_a_row_resolves_to_the_reference_protocol(name, tmp_path):
    row = ROWS[name]
    configs = row_configs(row)
    for cell in GRID.cells(row):
        cfg = gan_config([*configs, "--dataset", cell.dataset, "--data-frac", str(cell.fraction)])
        assert cfg.train.steps == PROTOCOL_STEPS[cell.dataset][cell.fraction]
        assert (cfg.train.batch_size, cfg.train.d_steps, cfg.train.g_lr, cfg.train.d_lr) == (50, 4, 2e-4, 2e-4)
        assert (cfg.train.ema_decay, cfg.train.ema_start, cfg.train.diffaug) == (0.9999, 1000, "translation,cutout")
        assert (cfg.eval.every, cfg.eval.num_samples, cfg.eval.batch_size, cfg.model.shared_dim) == (4000, 10000, 50, 0)
        assert cfg.distill.enabled == (name in KD_ROWS)
        if name in KD_ROWS:
            assert (cfg.distill.teacher, cfg.distill.preprocess, cfg.distill.dtype) == ("ViT-B-32", "kd-dlgan", "fp16")
        if "reg" in cfg:  # the LeCam rows: KD-DLGAN's train.sh runs only the --LC 0.3 scripts
            assert cfg.reg.lecam_weight == (0.3 if name in KD_ROWS or name == "da-lecam" else 0.0)
    assert [cell.fraction for cell in GRID.cells(row)] == ([0.2, 0.1] if name == "da-cr" else [1.0, 0.2, 0.1]) * 2


def tiny(npz: Path) -> list[str]:
    """Overrides that shrink a paper run to seconds on CPU: tiny models, random tiny teacher, no evaluation."""
    return [
        "--data.dataset", "npz", "--data.root", str(npz), "--model.g-width", "4", "--model.d-width", "4",
        "--model.z-dim", "8", "--train.batch-size", "4", "--train.d-steps", "2", "--train.steps", "2",
        "--distill.teacher", "tiny-vit", "--distill.random-teacher", "--distill.dtype", "fp32", "--eval.every", "0",
    ]  # fmt: skip


@pytest.mark.parametrize("name", ROWS)
def test_every_row_trains_two_steps_at_tiny_width(name, cifar10_npz, tmp_path):
    configs = row_configs(ROWS[name])
    run_dir = tmp_path / "run"
    train.main([*configs, "--dataset", "cifar10", "--data-frac", "0.1", "--run-dir", str(run_dir), *tiny(cifar10_npz)])
    state = load_checkpoint(run_dir)
    assert state["step"] == 2 and state["num_classes"] == 10
    assert (state["projector"] is not None) == (name in KD_ROWS)  # a distiller ran (an identity head saves {})


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    return save_random_inception_weights(tmp_path_factory.mktemp("inception") / "random-inception.pth")


def test_table_runner_trains_evaluates_and_tabulates_a_paper_row(cifar10_npz, inception_weights, tmp_path):
    configs = row_configs(ROWS["da"])
    folder = tmp_path / "paper"
    folder.mkdir()
    grid = {"base": configs[1], "datasets": ["cifar10"], "fractions": [0.1],
            "rows": [{"name": "da", "title": "DA", "configs": [configs[3]]}]}  # fmt: skip
    (folder / "grid.yaml").write_text(yaml.safe_dump(grid))
    (folder / "published.yaml").write_text((PAPER / "published.yaml").read_text())
    out = tmp_path / "out"
    evaluation = ["--eval.inception-weights", str(inception_weights), "--num-samples", "10", "--eval.batch-size", "10",
                  "--eval.reference-images", "10", "--eval.cache-dir", str(tmp_path / "cache")]  # fmt: skip
    train_args = " ".join(tiny(cifar10_npz))
    argv = ["--grid", str(folder / "grid.yaml"), "--out", str(out), "--launcher", "inprocess",
            "--train-args", train_args, "--device", "cpu", *evaluation]  # fmt: skip
    (summary,) = tables.main(argv)
    loaded = tables.load_grid(folder / "grid.yaml")
    (run,) = tables.plan_runs(loaded, [0], out)
    assert (summary.row, summary.cell, summary.n, summary.runs) == ("DA", tables.Cell("cifar10", 0.1), 1, [str(run.run_dir)])
    assert load_checkpoint(run.run_dir)["step"] == 2
    stored = tables.up_to_date_record(run.run_dir, evaluation)["metrics"]  # evaluated, and the record kept
    assert summary.mean == {key: stored[key] for key in tables.DIVERSITY_METRICS}
    lines = (out / "table.md").read_text().splitlines()
    at = lines.index(f"| DA | {summary.mean['fid']:.2f} |")
    assert lines[at + 1 : at + 3] == ["| ↳ *vkd-poster* | 23.34 ± 0.09 |", "| ↳ *diffaugment-readme* | 22.40 |"]
    assert tables.train_run(run.train_argv(loaded, train_args), run.run_dir) == "collected"  # done: left as is
