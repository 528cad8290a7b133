"""KID against torch-fidelity; evaluation of .npz sample files; mu / sigma exports read by pytorch-fid; --repeat;
metric names with their sample count; the run history (metrics.jsonl and its plot)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import genkd  # noqa: F401  (before torch_fidelity, which imports torchvision)
from torch_fidelity.metric_kid import kid_features_to_metric  # noqa: E402  isort: skip

from genkd import evaluate
from genkd.config import load_config
from genkd.defaults import ALIASES, CHECKS, CHOICES, DEFAULTS
from genkd.evaluation import (
    EvaluationError,
    Evaluator,
    append_history,
    count_label,
    counted,
    load_fd_extractor,
    parse_fd_extractors,
    plot_history,
    read_history,
    reference_images,
)
from genkd.metrics import METRIC_KEYS, compute_kid, extract_features, load_inception, save_random_inception_weights

COUNT = 12  # images per evaluated set: IS needs >= 10, PRDC > k = 5; KID subsets of 10


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    return save_random_inception_weights(tmp_path_factory.mktemp("weights") / "random-inception.pth")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One reference-statistics cache for the module: the 12 reference images go through Inception once."""
    return tmp_path_factory.mktemp("cache")


def eval_config(weights, cache_dir, *extra):
    argv = ["--dataset", "cifar10-sample", "--eval.inception-weights", str(weights), "--eval.cache-dir", str(cache_dir),
            "--eval.reference-images", "12", "--eval.kid-subsets", "7", "--eval.kid-subset-size", "10", *extra]  # fmt: skip
    return load_config(DEFAULTS, argv, ALIASES, CHOICES, CHECKS)


def test_kid_equals_torch_fidelity_on_the_same_features():
    generator = torch.Generator().manual_seed(0)
    fake = torch.randn(300, 64, generator=generator, dtype=torch.float64)
    real = torch.randn(260, 64, generator=generator, dtype=torch.float64) * 1.1 + 0.05
    expected = kid_features_to_metric(fake, real, kid_subsets=20, kid_subset_size=200, verbose=False)
    mean, std = compute_kid(fake, real, subsets=20, subset_size=200)
    assert mean == pytest.approx(expected["kernel_inception_distance_mean"], rel=1e-10)
    assert std == pytest.approx(expected["kernel_inception_distance_std"], rel=1e-10)
    # Inception features are float32: torch-fidelity then sums in float32, we in float64.
    expected32 = kid_features_to_metric(fake.float(), real.float(), kid_subsets=20, kid_subset_size=200, verbose=False)
    assert compute_kid(fake.float(), real.float(), 20, 200)[0] == pytest.approx(
        expected32["kernel_inception_distance_mean"], rel=1e-4
    )
    assert compute_kid(fake, real + 1.0, 20, 200)[0] > 10 * mean  # further apart, larger


def test_evaluator_kid_is_torch_fidelitys_on_its_inception_features(inception_weights, cache_dir):
    cfg = eval_config(inception_weights, cache_dir)
    evaluator = Evaluator(cfg, progress=False)
    fake = reference_images(cfg.data, "train", COUNT)
    metrics = evaluator.evaluate_images(fake)
    features = extract_features(evaluator.inception, fake, progress=False).pool
    expected = kid_features_to_metric(features, evaluator.reference().features, kid_subsets=7, kid_subset_size=10,
                                      verbose=False)  # fmt: skip
    assert metrics["kid_mean"] == pytest.approx(expected["kernel_inception_distance_mean"], rel=1e-4, abs=1e-7)
    assert set(metrics) == set(METRIC_KEYS)


def test_exported_statistics_are_what_pytorch_fid_loads(inception_weights, cache_dir, tmp_path):
    from pytorch_fid.fid_score import compute_statistics_of_path

    evaluator = Evaluator(eval_config(inception_weights, cache_dir), progress=False)
    path = evaluator.export_reference(tmp_path / "stats.npz")
    mu, sigma = compute_statistics_of_path(str(path), None, 1, 2048, "cpu")  # pytorch-fid reads .npz without a model
    assert mu.dtype == sigma.dtype == np.float64 and mu.shape == (2048,) and sigma.shape == (2048, 2048)
    assert np.array_equal(mu, evaluator.reference().mean.numpy())
    assert np.array_equal(sigma, evaluator.reference().cov.numpy())
    with np.load(path) as stats:  # clean-fid's custom statistics: np.load(path)["mu"], ["sigma"]
        assert sorted(stats.files) == ["mu", "sigma"]


def test_npz_samples_score_as_the_same_images_in_a_folder(inception_weights, cache_dir, tmp_path):
    cfg_args = eval_config(inception_weights, cache_dir)
    images = reference_images(cfg_args.data, "train", COUNT)
    np.savez(tmp_path / "samples.npz", arr_0=images)
    (tmp_path / "folder").mkdir()
    for index, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "folder" / f"{index:04d}.png")
    overrides = ["--dataset", "cifar10-sample", "--eval.inception-weights", str(inception_weights),
                 "--eval.cache-dir", str(cache_dir), "--eval.reference-images", "12",
                 "--eval.kid-subsets", "7", "--eval.kid-subset-size", "10", "--num-samples", str(COUNT)]  # fmt: skip
    from_npz = evaluate.evaluate_source(tmp_path / "samples.npz", overrides, device="cpu")
    from_folder = evaluate.evaluate_source(tmp_path / "folder", overrides, device="cpu")
    assert from_npz["metrics"] == from_folder["metrics"]
    assert json.loads((tmp_path / "metrics_samples.json").read_text())["counted"]["fid12"] == from_npz["metrics"]["fid"]
    np.savez(tmp_path / "bad.npz", pictures=images)
    with pytest.raises(EvaluationError, match="has no images under x, images, arr_0"):
        evaluate.evaluate_source(tmp_path / "bad.npz", overrides, device="cpu")


def test_repeat_reports_mean_and_std_over_sample_seeds(inception_weights, cache_dir, tmp_path, capsys):
    from test_sample import make_run

    run = make_run(tmp_path / "run")
    overrides = ["--eval.inception-weights", str(inception_weights), "--eval.cache-dir", str(cache_dir),
                 "--eval.reference-images", "12", "--eval.kid-subsets", "7", "--eval.kid-subset-size", "10",
                 "--num-samples", str(COUNT)]  # fmt: skip
    evaluate.main([str(run), "--device", "cpu", "--repeat", "2", *overrides])
    record = json.loads((run / "metrics.json").read_text())
    assert record["repeat"] == 2 and len(record["runs"]) == 2 and record["runs"][0] != record["runs"][1]
    fids = [one["fid"] for one in record["runs"]]
    assert record["metrics"]["fid"] == pytest.approx(np.mean(fids))
    assert record["std"]["fid"] == pytest.approx(np.std(fids, ddof=1))
    assert "fid12" in capsys.readouterr().out
    (tmp_path / "images").mkdir()
    with pytest.raises(SystemExit, match="--repeat 2: repeats need a generator"):
        evaluate.main([str(tmp_path / "images"), "--device", "cpu", "--repeat", "2"])


def test_counted_names_and_history(tmp_path):
    assert [count_label(n) for n in (10_000, 50_000, 2_500, 500)] == ["10k", "50k", "2.5k", "500"]
    named = counted({"fid": 1.0, "kid_mean": 2.0, "kid_std": 3.0, "is_mean": 4.0, "is_std": 5.0, "recall": 6.0}, 10_000)
    assert named == {"fid10k": 1.0, "kid10k": 2.0, "kid10k_std": 3.0, "is10k": 4.0, "is10k_std": 5.0, "recall10k": 6.0}
    append_history(tmp_path, 2, {"fid": 30.0, "is_mean": 2.0})
    append_history(tmp_path, 4, {"fid": 20.0, "is_mean": 3.0})
    append_history(tmp_path, 4, {"fid": 10.0, "is_mean": 4.0})  # evaluated again after a resume: the last counts
    assert [(r["step"], r["fid"]) for r in read_history(tmp_path)] == [(2, 30.0), (4, 10.0)]
    assert Image.open(plot_history(tmp_path)).size[0] >= 500
    with pytest.raises(EvaluationError, match="metrics.jsonl not found"):
        read_history(tmp_path / "elsewhere")


def test_other_feature_extractors_are_named_and_checked():
    assert parse_fd_extractors("clip-vit-b-32, dinov2-vit-b-14", "clip-vit-b-32=/w/clip.pt") == {
        "clip-vit-b-32": "/w/clip.pt", "dinov2-vit-b-14": None}  # fmt: skip
    with pytest.raises(EvaluationError, match="unknown eval.fd_extractors entry 'clip-vit-x'"):
        parse_fd_extractors("clip-vit-x", "")
    with pytest.raises(EvaluationError, match="must be extractor=path"):
        parse_fd_extractors("clip-vit-b-32", "/w/clip.pt")
    with pytest.raises(EvaluationError, match=r"clip-vit-b-32 weights file /missing.pt not found: pass --eval.fd-weights"):
        load_fd_extractor("clip-vit-b-32", "/missing.pt", "cpu")


def test_random_inception_helper_writes_loadable_weights(tmp_path, capsys):
    evaluate.main(["--make-random-inception", str(tmp_path / "r.pth")])
    assert "--eval.inception-weights" in capsys.readouterr().out
    assert load_inception(tmp_path / "r.pth") is not None
