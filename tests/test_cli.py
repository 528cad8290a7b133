"""The genkd command: verbs, --help generated from the defaults tables, trackers, global batch, embedded data, and the
run history written during training."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import genkd  # noqa: F401  (before anything that imports torchvision)
from genkd import cli, train, train_classifier
from genkd.config import ConfigError, source_comments
from genkd.data import DataError, draw_subset, load_arrays, packaged_dataset_path
from genkd.defaults import DEFAULTS, gan_config, per_process_batch
from genkd.trackers import build_trackers, hyperparameters, tracker_names

ROOT = Path(__file__).resolve().parents[1]


def leaf_keys(tree, prefix=""):
    for key, value in tree.items():
        yield from leaf_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [prefix + key]


@pytest.mark.parametrize("verb, table", [("train", DEFAULTS), ("train-classifier", train_classifier.DEFAULTS)])
def test_help_lists_every_key_of_the_defaults_table_with_its_comment(verb, table, capsys):
    cli.main([verb, "--help"])
    page = capsys.readouterr().out
    for key in leaf_keys(table):
        assert f"--{key.replace('_', '-')} " in page, key
    assert "generator channel multiplier" in page or verb == "train-classifier"
    assert "fraction of the training set, in (0, 1]" in page  # the data section's comment, in both tracks
    assert "accepted: cifar10, cifar100, cifar10-sample, npz, folder" in page


@pytest.mark.parametrize("verb", list(cli.VERBS))
def test_every_verb_answers_help(verb, capsys):
    try:
        cli.main([verb, "--help"])
    except SystemExit as stop:  # argparse-based verbs exit 0 after printing
        assert stop.code in (0, None), stop.code
    page = capsys.readouterr().out
    assert page.startswith("usage:") and len(page.splitlines()) > 5


def test_comments_come_from_the_defaults_source():
    comments = source_comments("genkd.defaults")
    assert comments["train.batch_size"] == "per process"
    assert comments["eval.kid_subsets"].startswith("KID: random subsets averaged")
    assert comments["reg"].startswith("discriminator regularisers")  # a section's comment heads its --help block
    assert "seed" not in comments and set(comments) <= {*leaf_keys(DEFAULTS), *DEFAULTS}


def test_python_m_genkd_train_help_runs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "genkd.train", "--help"], capture_output=True, text=True,
                            cwd=ROOT, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": ""}, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--train.global-batch-size INT" in result.stdout and "unknown config key" not in result.stderr


def test_verbs_missing_or_unknown_say_so_in_one_line(monkeypatch, capsys):
    monkeypatch.setitem(cli.VERBS, "later", ("genkd.not_written_yet", "a verb of another branch"))
    with pytest.raises(SystemExit, match=r"^error: genkd later is not available in this installation \(genkd.not_written_yet"):
        cli.main(["later"])
    with pytest.raises(SystemExit, match=r"^error: unknown verb 'trian'; accepted: train, sample, evaluate"):
        cli.main(["trian"])
    cli.main([])
    page = capsys.readouterr().out
    assert all(f"  {verb} " in page for verb in cli.VERBS)
    with pytest.raises(SystemExit, match=r"^error: unknown config key 'train.stepz'"):
        cli.main(["train", "--train.stepz", "3"])


def test_global_batch_is_split_over_processes():
    cfg = gan_config(["--train.global-batch-size", "50"])
    assert [per_process_batch(cfg.train, n) for n in (1, 2, 5)] == [50, 25, 10]
    with pytest.raises(ConfigError, match="train.global_batch_size 50 does not split over 4 processes"):
        per_process_batch(cfg.train, 4)
    assert per_process_batch(gan_config(["--train.batch-size", "7"]).train, 3) == 7  # 0: per-process batch


def test_trackers_are_checked_and_the_config_is_flattened(tmp_path):
    assert tracker_names("tensorboard, ") == ["tensorboard"] and tracker_names("") == []
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord'"):
        tracker_names("tensorbord")
    [tensorboard] = build_trackers("tensorboard", tmp_path / "my-run")
    assert (tensorboard.run_name, Path(tensorboard.logging_dir_param)) == ("tensorboard", tmp_path / "my-run")
    flat = hyperparameters(gan_config([]))
    assert flat["train.betas"] == "[0.0, 0.999]" and flat["eval.inception_weights"] == "None" and flat["seed"] == 0


def test_the_embedded_cifar10_sample_is_real_small_and_complete():
    path = packaged_dataset_path("cifar10-sample")
    assert path.stat().st_size < 6_000_000
    images, labels, num_classes = load_arrays({"dataset": "cifar10-sample", "root": "ignored"}, "train")
    test_images, _, _ = load_arrays({"dataset": "cifar10-sample", "root": "ignored"}, "test")
    assert images.shape == (2000, 32, 32, 3) and test_images.shape == (500, 32, 32, 3) and num_classes == 10
    assert np.bincount(labels).tolist() == [200] * 10
    with np.load(path) as data:
        assert (data["y_train_full"][data["train_index"]] == data["y_train"]).all() and len(data["y_train_full"]) == 50_000
        train_index = data["train_index"]
    # the reference subset is drawn over the 50,000 official indices and keeps the sample's share of it
    with pytest.warns(UserWarning, match=r"holds \d+ of the 5000 images of the reference subset"):
        held, official = draw_subset(gan_config(["--dataset", "cifar10-sample", "--data-frac", "0.1"]).data, labels)
    reference = np.random.RandomState(0).choice(50_000, 5000, replace=False)
    assert np.array_equal(official, train_index[held]) and set(official) == set(reference) & set(train_index)
    assert gan_config(["--config", str(ROOT / "configs" / "quickstart.yaml")]).data.dataset == "cifar10-sample"
    with pytest.raises(DataError, match="unknown data.dataset 'cifar10-smaple'"):
        load_arrays({"dataset": "cifar10-smaple", "root": ""}, "train")


def test_training_appends_evaluations_to_metrics_jsonl_and_plots_them(tmp_path):
    from genkd.metrics import METRIC_KEYS, save_random_inception_weights

    weights = save_random_inception_weights(tmp_path / "random-inception.pth")
    run = tmp_path / "run"
    train.main([
        "--run-dir", str(run), "--dataset", "cifar10-sample", "--data-frac", "0.01", "--data.subset", "permutation",
        "--model.g-width", "4", "--model.d-width", "4", "--model.z-dim", "8", "--model.shared-dim", "8",
        "--train.global-batch-size", "6", "--train.d-steps", "1", "--train.steps", "2", "--train.ema-start", "1",
        "--train.log-every", "1", "--train.sample-every", "2", "--train.ckpt-every", "2",
        "--eval.every", "1", "--eval.num-samples", "10", "--eval.batch-size", "10", "--eval.reference-images", "10",
        "--eval.kid-subset-size", "10", "--eval.kid-subsets", "3",
        "--eval.inception-weights", str(weights), "--eval.cache-dir", str(tmp_path / "cache"),
    ])  # fmt: skip
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in history] == [1, 2] and set(history[0]) == {"step", *METRIC_KEYS}
    assert (run / "metrics.png").is_file()
    assert list((run / "tensorboard").glob("*/hparams.yml")), "the resolved config was not logged"
