"""genkd sample: exactly N images of the requested classes, reproducible by seed, PNG folders equal to .npz files."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import genkd  # noqa: F401  (before anything that imports torchvision)
from genkd import sample
from genkd.checkpoint import save_checkpoint
from genkd.config import save_config
from genkd.defaults import gan_config
from genkd.models.biggan import build_models
from genkd.sampling import chosen_labels, truncated_latents

TINY = ["--model.g-width", "4", "--model.d-width", "4", "--model.z-dim", "8", "--model.shared-dim", "8"]


def make_run(root: Path) -> Path:
    """A run directory as genkd.train leaves it (config.yaml, checkpoints/last.pt), with a tiny random generator."""
    cfg = gan_config([*TINY, "--run-dir", str(root), "--dataset", "cifar10-sample"])
    torch.manual_seed(0)
    generator, _ = build_models(cfg.model, 10)
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, root / "config.yaml")
    save_checkpoint({"step": 1, "num_classes": 10, "config": cfg.to_dict(), "G_ema": generator.state_dict()},
                    root / "checkpoints" / "last.pt")  # fmt: skip
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run") / "tiny")


def test_npz_holds_exactly_n_images_of_the_requested_classes_reproducibly(run_dir, tmp_path):
    argv = [str(run_dir), "--num", "23", "--classes", "2,5", "--seed", "3", "--device", "cpu"]
    sample.main([*argv, "--out", str(tmp_path / "a.npz")])
    sample.main([*argv, "--out", str(tmp_path / "b.npz")])
    sample.main([*argv[:-4], "--seed", "4", "--device", "cpu", "--out", str(tmp_path / "c.npz")])
    a, b, c = (np.load(tmp_path / f"{name}.npz") for name in "abc")
    assert a["arr_0"].shape == (23, 32, 32, 3) and a["arr_0"].dtype == np.uint8
    assert sorted(np.bincount(a["arr_1"], minlength=10)[[2, 5]]) == [11, 12] and set(a["arr_1"]) == {2, 5}
    assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])
    assert not np.array_equal(a["arr_0"], c["arr_0"])


def test_png_folder_equals_the_npz_and_names_the_labels(run_dir, tmp_path):
    argv = [str(run_dir), "--num", "7", "--device", "cpu", "--truncation", "0.5"]
    sample.main([*argv, "--out", str(tmp_path / "s.npz"), "--grid", str(tmp_path / "grid.png"), "--grid-steps", "5"])
    sample.main([*argv, "--out", str(tmp_path / "pngs")])
    files = sorted((tmp_path / "pngs").glob("*.png"))
    stored = np.load(tmp_path / "s.npz")
    assert len(files) == 7
    assert np.array_equal(np.stack([np.asarray(Image.open(path)) for path in files]), stored["arr_0"])
    assert [int(path.stem.split("_")[1]) for path in files] == stored["arr_1"].tolist()
    assert Image.open(tmp_path / "grid.png").size == (2 + 5 * 34, 2 + 10 * 34)  # 10 class rows x 5 steps


def test_truncation_redraws_instead_of_clamping_and_labels_stay_balanced():
    latents = truncated_latents(4000, 16, truncation=0.5, seed=1)
    assert latents.abs().max() <= 0.5 and (latents.abs() == 0.5).sum() == 0
    assert torch.equal(latents, truncated_latents(4000, 16, truncation=0.5, seed=1))
    assert latents.std() == pytest.approx(0.28, abs=0.01)  # std of N(0, 1) restricted to [-0.5, 0.5]: 0.2836
    assert torch.equal(truncated_latents(5, 3, 0.0, 2), torch.randn(5, 3, generator=torch.Generator().manual_seed(2)))
    labels = chosen_labels(30, 10, [7], seed=0)
    assert labels.tolist() == [7] * 30
    assert torch.bincount(chosen_labels(30, 10, None, seed=0)).tolist() == [3] * 10


def test_bad_options_are_one_line(run_dir, tmp_path):
    with pytest.raises(SystemExit, match=r"^error: --classes '12'"):
        sample.main([str(run_dir), "--num", "4", "--classes", "12", "--device", "cpu", "--out", str(tmp_path / "x.npz")])
    with pytest.raises(SystemExit, match=r"^error: no checkpoint at"):
        sample.main([str(tmp_path / "nothing"), "--num", "4", "--device", "cpu"])
