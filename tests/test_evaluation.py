"""Sampling, the Evaluator and its reference-statistics cache, image folders, and the eval/ command-line tools."""
import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import genkd  # noqa: F401  (before anything that imports torchvision)
from genkd.checkpoint import save_checkpoint
from genkd.config import load_config, save_config
from genkd.defaults import CHECKS, CHOICES, DEFAULTS
from genkd.evaluation import EvaluationError, Evaluator, evaluate_folder, load_image_folder, reference_images
from genkd.metrics import METRIC_KEYS, save_random_inception_weights
from genkd.metrics.inception import file_identity
from genkd.models.biggan import build_models
from genkd.sampling import balanced_labels, gather_shares, process_share, quantize, sample_images

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
import compare_norms  # noqa: E402
import evaluate  # noqa: E402

COUNT = 10  # generated and reference images per evaluation: IS needs >= 10 (its splits), PRDC > k = 5


class MemorisingGenerator(nn.Module):
    """G(z, y) that returns real CIFAR images of class y (picked by z), in [-1, 1]; records its training flag."""

    z_dim = 4

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int = 10):
        super().__init__()
        per_class = min(np.bincount(labels, minlength=num_classes))
        bank = np.stack([images[labels == label][:per_class] for label in range(num_classes)])
        self.register_buffer("bank", torch.from_numpy(bank).permute(0, 1, 4, 2, 3).float() / 127.5 - 1)
        self.scale = nn.Parameter(torch.ones(()))  # gives the module a parameter (and so a device)
        self.training_flags = []

    def forward(self, z, y):
        self.training_flags.append(self.training)
        pick = (z[:, 0].abs() * 1000).long() % self.bank.shape[1]
        return self.bank[y, pick] * self.scale


class FakeAccelerator:
    """Process ``rank`` of ``world``; ``gather`` returns what every process would contribute (given up front)."""

    def __init__(self, rank, world, contributions=None):
        self.process_index, self.num_processes = rank, world
        self.is_local_main_process = self.is_main_process = rank == 0
        self.contributions = contributions

    def unwrap_model(self, model):
        return model

    def gather(self, tensor):
        return torch.cat(self.contributions)


@pytest.fixture(scope="session")
def generator(cifar10_arrays):
    x_train, y_train, _, _ = cifar10_arrays
    return MemorisingGenerator(x_train, y_train)


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory):
    return save_random_inception_weights(tmp_path_factory.mktemp("inception") / "random-inception.pth")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def eval_config(npz, weights, cache_dir, *extra):
    argv = [
        "--data.dataset", "npz", "--data.root", str(npz), "--eval.num_samples", str(COUNT),
        "--eval.batch_size", str(COUNT), "--eval.reference_images", str(COUNT), "--eval.inception_weights",
        str(weights), "--eval.cache_dir", str(cache_dir), *extra,
    ]  # fmt: skip
    return load_config(DEFAULTS, argv, choices=CHOICES, checks=CHECKS)


def test_balanced_labels_are_exact_balanced_and_seeded():
    labels = balanced_labels(1003, 10, seed=0)
    counts = torch.bincount(labels, minlength=10)
    assert len(labels) == 1003 and counts.sum() == 1003
    assert set(counts.tolist()) == {100, 101} and (counts == 101).sum() == 3
    assert torch.equal(labels, balanced_labels(1003, 10, seed=0))
    assert not torch.equal(labels, balanced_labels(1003, 10, seed=1))
    fewer_than_classes = torch.bincount(balanced_labels(50, 100, seed=2), minlength=100)
    assert sorted(fewer_than_classes.tolist()) == [0] * 50 + [1] * 50


def test_quantize_rounds_like_a_saved_image():
    values = torch.tensor([-1.5, -1.0, -0.996, 0.0, 0.5, 1.0, 1.2])
    assert quantize(values).tolist() == [0, 0, 1, 128, 191, 255, 255]  # 127.5 and 190.5 round half to even
    pixels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(quantize(pixels.float() / 127.5 - 1), pixels)  # uint8 -> [-1, 1] -> uint8 is lossless


def test_sample_images_gives_exactly_n_balanced_real_images_in_eval_mode(generator):
    generator.train()
    generator.training_flags.clear()
    images, labels = sample_images(generator, 10, 37, batch_size=8, seed=3, progress=False)
    assert images.shape == (37, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(labels, balanced_labels(37, 10, seed=3))
    assert generator.training_flags == [False] * 5 and generator.training  # eval mode inside, mode restored after
    bank = ((generator.bank + 1) * 127.5).round().to(torch.uint8)
    for image, label in zip(images, labels):  # every sample is one of the real images of its class, exactly
        assert (bank[label] == image).flatten(1).all(dim=1).any()
    again, _ = sample_images(generator, 10, 37, batch_size=37, seed=3, progress=False)
    assert torch.equal(images, again)  # the batch size does not change the samples
    assert not torch.equal(images, sample_images(generator, 10, 37, batch_size=37, seed=4, progress=False)[0])


@pytest.mark.parametrize("world", [2, 3, 4])
def test_processes_share_the_samples_without_padding_duplicates(generator, world):
    total = 10
    single, single_labels = sample_images(generator, 10, total, batch_size=4, seed=5, progress=False)
    processes = [FakeAccelerator(rank, world) for rank in range(world)]
    shares = [sample_images(generator, 10, total, 4, 5, process, gather=False, progress=False) for process in processes]
    assert [len(images) for images, _ in shares] == [len(range(total)[process_share(total, p)]) for p in processes]
    assert torch.equal(torch.cat([images for images, _ in shares]), single)
    largest = max(len(images) for images, _ in shares)
    padded = [torch.cat([images, images.new_zeros(largest - len(images), *images.shape[1:])]) for images, _ in shares]
    for rank in range(world):
        gathered = gather_shares(shares[rank][0], total, FakeAccelerator(rank, world, padded))
        assert torch.equal(gathered, single)
    assert torch.equal(torch.cat([labels for _, labels in shares]), single_labels)


def test_evaluator_caches_reference_statistics_keyed_by_the_weights_file(
    cifar10_npz, inception_weights, cache_dir, generator, tmp_path
):
    cfg = eval_config(cifar10_npz, inception_weights, cache_dir)
    first = Evaluator(cfg, progress=False)
    metrics = first(generator, 10)
    assert set(metrics) == set(METRIC_KEYS) and all(np.isfinite(list(metrics.values())))
    assert first.reference_was_cached is False
    assert len(list((cache_dir / "reference").glob("*.pt"))) == 1

    second = Evaluator(cfg, progress=False)
    reference = second.reference()
    assert second.reference_was_cached is True and second._inception is None  # no Inception pass at all
    assert torch.equal(reference.features, first.reference().features)
    assert torch.equal(reference.cov, first.reference().cov)

    other_weights = shutil.copy(inception_weights, tmp_path / "other.pth")  # same bytes, another file: a new key
    third = Evaluator(eval_config(cifar10_npz, other_weights, cache_dir), progress=False)
    third.reference()
    assert third.reference_was_cached is False
    assert len(list((cache_dir / "reference").glob("*.pt"))) == 2


def test_identical_images_score_perfectly_and_folders_match_arrays(cifar10_npz, inception_weights, cache_dir, tmp_path):
    cfg = eval_config(cifar10_npz, inception_weights, cache_dir)
    evaluator = Evaluator(cfg, progress=False)
    images = reference_images(cfg.data, "test", COUNT)
    metrics = evaluator.evaluate_images(images)
    assert abs(metrics["fid"]) < 1e-6 * evaluator.reference().cov.trace().item()
    assert {key: metrics[key] for key in ("precision", "recall", "density", "coverage")} == dict.fromkeys(
        ("precision", "recall", "density", "coverage"), 1.0
    )
    for index, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{index:03d}.png")
    assert evaluate_folder(tmp_path, cfg, progress=False) == metrics


def test_reference_subset_and_folder_errors(cifar10_npz, tmp_path):
    data_cfg = load_config(DEFAULTS, ["--data.dataset", "npz", "--data.root", str(cifar10_npz)]).data
    subset = reference_images(data_cfg, "test", 50)
    assert np.array_equal(subset, reference_images(data_cfg, "test", 50)) and len(subset) == 50
    with pytest.raises(EvaluationError, match="eval.reference_images is 5000 but the test split has 1017"):
        reference_images(data_cfg, "test", 5000)
    with pytest.raises(EvaluationError, match="no images"):
        load_image_folder(tmp_path)
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "b.png")
    with pytest.raises(EvaluationError, match="differ in size"):
        load_image_folder(tmp_path)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, cifar10_npz, inception_weights, cache_dir):
    """A run directory as genkd.train leaves it: config.yaml and checkpoints/last.pt with a small BigGAN."""
    run = tmp_path_factory.mktemp("run")
    cfg = eval_config(cifar10_npz, inception_weights, cache_dir, "--model.g_width", "8", "--model.d_width", "8",
                      "--model.shared_dim", "16", "--model.z_dim", "16", "--run_dir", str(run))  # fmt: skip
    generator, _ = build_models(cfg.model, 10)
    save_config(cfg, run / "config.yaml")
    state = {"step": 1, "num_classes": 10, "config": cfg.to_dict(), "G_ema": generator.state_dict()}
    save_checkpoint(state, run / "checkpoints" / "last.pt")
    return run


def test_evaluate_cli_writes_metrics_json_for_a_run(run_dir, capsys):
    evaluate.main([str(run_dir), "--device", "cpu", "--num-samples", str(COUNT)])
    record = json.loads((run_dir / "metrics.json").read_text())
    assert set(record["metrics"]) == set(METRIC_KEYS)
    assert record["source"] == file_identity(run_dir / "checkpoints" / "last.pt")
    assert record["settings"]["eval"]["num_samples"] == COUNT and record["settings"]["data"]["dataset"] == "npz"
    printed = capsys.readouterr().out
    assert "fid" in printed and "coverage" in printed and str(run_dir / "metrics.json") in printed
    assert f"checkpoint {run_dir / 'checkpoints' / 'last.pt'} (step 1)" in printed  # no best.pt: the last one


def test_evaluate_cli_errors_are_one_line(tmp_path, run_dir):
    with pytest.raises(SystemExit, match=r"^error: .*missing not found: pass a run directory"):
        evaluate.main([str(tmp_path / "missing"), "--device", "cpu"])
    broken = tmp_path / "broken"
    (broken / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "config.yaml", broken / "config.yaml")
    whole = (run_dir / "checkpoints" / "last.pt").read_bytes()
    (broken / "checkpoints" / "last.pt").write_bytes(whole[: len(whole) // 2])  # a copy cut short
    with pytest.raises(SystemExit, match=r"^error: checkpoint .* is corrupt or incomplete") as error:
        evaluate.main([str(broken), "--device", "cpu"])
    assert "\n" not in str(error.value)
    with pytest.raises(SystemExit, match="unknown config key 'eval.num_sample'"):
        evaluate.main([str(run_dir), "--device", "cpu", "--eval.num_sample", "5"])


def make_scored_run(root: Path, norm: str, dataset_frac: float, metrics: dict, cfg) -> Path:
    """A run whose metrics.json is up to date, so compare_norms reads it instead of evaluating."""
    run = root / f"run-{dataset_frac}-{norm}"
    cfg = load_config(cfg, ["--distill.enabled", "true", "--distill.norm", norm, "--data.frac", str(dataset_frac)])
    run.mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    checkpoint = run / "checkpoints" / "last.pt"
    save_checkpoint({"placeholder": True}, checkpoint)
    settings = evaluate.evaluation_settings(cfg, Path(cfg.eval.inception_weights))
    record = {"metrics": metrics, "source": file_identity(checkpoint), "settings": settings}
    (run / "metrics.json").write_text(json.dumps(record))
    return run


def test_compare_norms_reads_up_to_date_metrics_and_writes_table_and_chart(
    tmp_path, cifar10_npz, inception_weights, cache_dir
):
    cfg = eval_config(cifar10_npz, inception_weights, cache_dir)
    runs = []
    for frac in (0.1, 0.2):
        for value, norm in enumerate(("whitening", "none", "layernorm")):
            metrics = {key: float(value + frac) for key in METRIC_KEYS}
            runs.append(make_scored_run(tmp_path / "runs", norm, frac, metrics, cfg))
    out = tmp_path / "out"
    rows = compare_norms.main([*map(str, runs), "--out", str(out), "--device", "cpu", "--num-samples", str(COUNT)])
    assert [(row["dataset"], row["norm"]) for row in rows] == [
        (f"npz {frac:.0%}", norm) for frac in (0.1, 0.2) for norm in ("none", "layernorm", "whitening")
    ]
    with open(out / "norms.csv") as file:
        table = list(csv.DictReader(file))
    assert table[0]["norm"] == "none" and float(table[0]["FID"]) == pytest.approx(1.1)  # 'none' was value 1
    assert "| npz 10% | whitening | 0.10 |" in (out / "norms.md").read_text()
    assert Image.open(out / "norms.png").size[0] > 1000

    # A changed evaluation setting makes the stored metrics stale.
    assert compare_norms.up_to_date_record(runs[0], ["--num-samples", str(COUNT)]) is not None
    assert compare_norms.up_to_date_record(runs[0], ["--num-samples", str(COUNT + 1)]) is None


def test_compare_norms_tells_its_options_from_evaluation_overrides():
    argv = ["--train", "a.yaml", "b.yaml", "--num-samples", "20", "--train-args", "--data.frac 0.1", "--out", "o",
            "--eval.split=train", "runs/x", "--device", "cpu"]  # fmt: skip
    own, overrides = compare_norms.split_overrides(argv, compare_norms.build_parser())
    assert overrides == ["--num-samples", "20", "--eval.split=train"]
    args = compare_norms.build_parser().parse_args(own)
    assert (args.train, args.train_args) == (["a.yaml", "b.yaml"], "--data.frac 0.1")
    assert (args.runs, args.device) == ([Path("runs/x")], "cpu")


@pytest.fixture
def run_with_best(tmp_path, run_dir):
    """A run whose checkpoints/best.pt (step 4) and last.pt (step 6) hold different EMA generators."""
    run = tmp_path / "run_with_best"
    run.mkdir()
    shutil.copy(run_dir / "config.yaml", run / "config.yaml")
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    for name, step, seed in (("best", 4, 1), ("last", 6, 2)):
        torch.manual_seed(seed)
        generator, _ = build_models(state["config"]["model"], 10)
        save_checkpoint({**state, "step": step, "G_ema": generator.state_dict()}, run / "checkpoints" / f"{name}.pt")
    return run


def test_load_generator_chooses_best_then_last(run_with_best, run_dir, tmp_path):
    from genkd.checkpoint import CheckpointError, load_generator

    checkpoints = run_with_best / "checkpoints"
    for which, name, step in (("auto", "best", 4), ("best", "best", 4), ("last", "last", 6)):
        loaded = load_generator(run_with_best, which=which)
        assert (loaded.path, loaded.step) == (checkpoints / f"{name}.pt", step)
        saved = torch.load(checkpoints / f"{name}.pt", weights_only=True)["G_ema"]
        assert all(torch.equal(value, saved[key]) for key, value in loaded.generator.state_dict().items())
    assert load_generator(checkpoints / "last.pt", which="best").step == 6  # a file is taken as it is
    assert load_generator(run_dir).path == run_dir / "checkpoints" / "last.pt"  # no best.pt: last
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*best.pt: it is written by evaluations during"):
        load_generator(run_dir, which="best")
    with pytest.raises(CheckpointError, match="unknown checkpoint choice 'first': use one of auto, best, last"):
        load_generator(run_dir, which="first")


class WeightSumEvaluator:
    """Stands in for the Evaluator where only the choice of checkpoint is under test (no Inception pass): every
    metric is the sum of the generator's weights, so two generators give two results."""

    def __init__(self, cfg, accelerator=None, device=None):
        self.weights = Path(cfg.eval.inception_weights)

    def __call__(self, generator, num_classes):
        total = sum(value.double().sum().item() for value in generator.state_dict().values())
        return dict.fromkeys(METRIC_KEYS, total)


def test_evaluate_cli_defaults_to_best_and_says_which_checkpoint(run_with_best, capsys, monkeypatch):
    monkeypatch.setattr(evaluate, "Evaluator", WeightSumEvaluator)
    checkpoints = run_with_best / "checkpoints"
    evaluate.main([str(run_with_best), "--device", "cpu"])
    assert f"checkpoint {checkpoints / 'best.pt'} (step 4)" in capsys.readouterr().out
    record = json.loads((run_with_best / "metrics.json").read_text())
    assert record["source"] == file_identity(checkpoints / "best.pt") and record["step"] == 4
    best_weights = torch.load(checkpoints / "best.pt", weights_only=True)["G_ema"]
    assert record["metrics"]["fid"] == sum(value.double().sum().item() for value in best_weights.values())

    evaluate.main([str(run_with_best), "--device", "cpu", "--checkpoint", "last"])
    assert f"checkpoint {checkpoints / 'last.pt'} (step 6)" in capsys.readouterr().out
    last = json.loads((run_with_best / "metrics_last.json").read_text())  # metrics.json stays the reported one
    assert last["source"] == file_identity(checkpoints / "last.pt") and last["step"] == 6
    assert last["metrics"] != record["metrics"]  # another generator

    evaluate.main([str(checkpoints / "best.pt"), "--device", "cpu"])  # the run's reported checkpoint, named
    assert sorted(path.name for path in run_with_best.glob("metrics*.json")) == ["metrics.json", "metrics_last.json"]
    with pytest.raises(SystemExit, match="unknown checkpoint choice 'first'"):
        evaluate.main([str(run_with_best), "--device", "cpu", "--checkpoint", "first"])


def test_compare_norms_uses_best_and_says_which_checkpoint(run_with_best, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(evaluate, "Evaluator", WeightSumEvaluator)
    evaluate.main([str(run_with_best), "--device", "cpu"])  # metrics.json of best.pt
    checkpoints = run_with_best / "checkpoints"
    assert compare_norms.up_to_date_record(run_with_best, [])["source"] == file_identity(checkpoints / "best.pt")
    assert compare_norms.up_to_date_record(run_with_best, [], "last") is None  # last.pt was never evaluated
    assert compare_norms.up_to_date_record(run_with_best, ["--num-samples", "11"]) is None  # other settings
    capsys.readouterr()
    compare_norms.main([str(run_with_best), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert f"checkpoint {(checkpoints / 'best.pt').resolve()} (step 4): metrics up to date" in capsys.readouterr().out
    rows = compare_norms.main([str(run_with_best), "--out", str(tmp_path / "out"), "--device", "cpu", "--checkpoint",
                               "last"])  # fmt: skip
    assert f"checkpoint {checkpoints / 'last.pt'} (step 6)" in capsys.readouterr().out  # evaluated now
    assert rows[0]["fid"] == json.loads((run_with_best / "metrics_last.json").read_text())["metrics"]["fid"]


# ---------------------------------------------------------------- bad evaluation input


def test_greyscale_palette_and_opaque_rgba_images_are_converted_with_a_note(tmp_path):
    grey = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    Image.fromarray(grey, "L").save(tmp_path / "a_grey.png")
    rgba = np.dstack([np.full((32, 32, 3), 7, np.uint8), np.full((32, 32), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "b_rgba.png")
    Image.new("RGB", (32, 32), (1, 2, 3)).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "c_palette.png")
    (tmp_path / "metrics.json").write_text("{}")  # e.g. written by an earlier evaluation
    notes = []
    images = load_image_folder(tmp_path, notes.append)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert all(np.array_equal(images[0][..., c], grey) for c in range(3)) and (images[1] == 7).all()
    assert (images[2] == (1, 2, 3)).all()
    assert sorted(notes) == sorted([
        f"note: skipped 1 files under {tmp_path} that are not images",
        f"note: converted 1 greyscale images under {tmp_path} to RGB",
        f"note: converted 1 RGBA (opaque) images under {tmp_path} to RGB",
        f"note: converted 1 palette images under {tmp_path} to RGB",
    ])  # fmt: skip


def bad_folder(root: Path, kind: str) -> Path:
    """An image folder (or .npz file) with one kind of problem, next to 11 good 32x32 RGB images."""
    folder = root / kind
    folder.mkdir()
    for index in range(11):
        Image.new("RGB", (32, 32), (index, 0, 0)).save(folder / f"{index:02d}.png")
    if kind == "mixed_sizes":
        Image.new("RGB", (64, 64)).save(folder / "99.png")
    elif kind == "transparent":
        Image.new("RGBA", (32, 32), (0, 0, 0, 128)).save(folder / "99.png")
    elif kind == "sixteen_bit":
        Image.fromarray(np.zeros((32, 32), np.uint16)).save(folder / "99.png")
    elif kind == "not_an_image":
        (folder / "99.png").write_text("an HTML error page saved as .png")
    elif kind == "truncated":
        whole = (folder / "00.png").read_bytes()
        (folder / "99.png").write_bytes(whole[: len(whole) // 2])
    elif kind == "empty":
        for path in folder.iterdir():
            path.unlink()
        (folder / "notes.txt").write_text("no images here")
    elif kind == "too_few":
        pass  # 11 images, 20 asked for
    else:  # .npz files
        images = np.zeros((12, 32, 32, 3), np.uint8)
        arrays = {
            "npz_float": {"x": images.astype(np.float32) / 255},
            "npz_shape": {"x": images[..., 0]},
            "npz_keys": {"samples": images},
        }[kind]
        folder = root / f"{kind}.npz"
        np.savez(folder, **arrays)
    return folder


BAD_INPUT = {
    "mixed_sizes": r"images under .* differ in size \(00.png: \(32, 32\), 99.png: \(64, 64\)\): resize them",
    "transparent": r"99.png has transparent pixels \(RGBA\): flatten it onto a background",
    "sixteen_bit": r"99.png is a I;16 image, which genkd does not convert: save it as 8-bit RGB",
    "not_an_image": r"99.png is not a readable image \(cannot identify image file .*\): remove or re-save it",
    "truncated": r"99.png is not a readable image \(.*\): remove or re-save it",
    "empty": r"no images \(.*\) found under .*empty",
    "too_few": r"too_few holds 11 images but eval.num_samples is 20: pass --num-samples 11",
    "npz_float": r"npz_float.npz: x is float32, expected uint8 pixels in 0..255: quantise first",
    "npz_shape": r"npz_shape.npz: x has shape \(12, 32, 32\), expected \(N, H, W, 3\) or \(N, 3, H, W\)",
    "npz_keys": r"npz_keys.npz has no images under x, images, arr_0 \(it holds samples\): save them as",
}


@pytest.mark.parametrize("kind", BAD_INPUT)
def test_bad_evaluation_input_gets_one_line_and_no_metrics_file(kind, tmp_path, cifar10_npz, inception_weights, cache_dir):
    source = bad_folder(tmp_path, kind)
    argv = [str(source), "--device", "cpu", "--num-samples", "20", "--data.dataset", "npz", "--data.root", str(cifar10_npz),
            "--inception-weights", str(inception_weights), "--eval.cache_dir", str(cache_dir)]  # fmt: skip
    with pytest.raises(SystemExit, match="^error: (.*/)?" + BAD_INPUT[kind]) as error:
        evaluate.main(argv)
    assert "\n" not in str(error.value)
    assert not list(tmp_path.rglob("*metrics*.json"))


def test_npz_images_in_either_layout_match_the_folder(tmp_path, cifar10_npz, inception_weights, cache_dir, capsys):
    """BigGAN-PyTorch's samples.npz holds x as uint8 (N, 3, H, W); a larger set is cut to a seeded eval.num_samples."""
    images = reference_images(load_config(DEFAULTS, ["--data.dataset", "npz", "--data.root", str(cifar10_npz)]).data, "test", 2 * COUNT)
    np.savez(tmp_path / "samples.npz", x=images.transpose(0, 3, 1, 2), y=np.zeros(len(images)))
    cfg = eval_config(cifar10_npz, inception_weights, cache_dir)
    from genkd.evaluation import load_image_npz, select_images

    assert np.array_equal(load_image_npz(tmp_path / "samples.npz"), images)
    chosen = select_images(images, COUNT, 0, "samples.npz")
    assert f"note: using {COUNT} of the {2 * COUNT} images of samples.npz (a random subset, eval.seed 0)" in capsys.readouterr().out
    assert evaluate_folder(tmp_path / "samples.npz", cfg, progress=False) == Evaluator(cfg, progress=False).evaluate_images(chosen)


def test_a_signal_stops_an_evaluation_without_writing(run_dir, monkeypatch, capsys):
    import os
    import signal

    from genkd.preemption import EXIT_PREEMPTED

    def signalled(self, generator, num_classes):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal should have stopped the evaluation")

    monkeypatch.setattr(evaluate.Evaluator, "__call__", signalled)
    out = run_dir / "metrics_stopped.json"
    with pytest.raises(SystemExit) as stopped:
        evaluate.main([str(run_dir), "--device", "cpu", "--num-samples", str(COUNT), "--out", str(out)])
    assert stopped.value.code == EXIT_PREEMPTED and not out.exists()
    assert "evaluation stopped by SIGTERM: nothing written; run the same command again" in capsys.readouterr().err
