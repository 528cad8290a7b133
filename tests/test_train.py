"""The GAN loop end to end on real CIFAR images with tiny models: outputs, exact resume, divergence handling."""
import pytest
import torch

from genkd import train
from genkd.checkpoint import load_checkpoint
from genkd.config import ConfigError


@pytest.fixture
def tiny_run(cifar10_npz, tmp_path):
    """Command-line arguments of a tiny run on 2 % of the real CIFAR-10 sample (103 images)."""

    def argv(name, *extra):
        return [
            "--run-dir", str(tmp_path / name),
            "--data.dataset", "npz", "--data.root", str(cifar10_npz), "--data.frac", "0.02",
            "--model.g-width", "4", "--model.d-width", "4", "--model.z-dim", "8", "--model.shared-dim", "8",
            "--train.batch-size", "6", "--train.d-steps", "2", "--train.ema-start", "2",
            "--train.log-every", "1", "--train.sample-every", "2", "--train.ckpt-every", "2",
            *extra,
        ]  # fmt: skip

    return argv


def test_run_writes_samples_events_checkpoint_config_and_subset(tiny_run, tmp_path):
    train.main(tiny_run("run", "--train.steps", "3"))
    run_dir = tmp_path / "run"
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["0000002.png", "0000003.png"]
    assert list(run_dir.rglob("events.out.tfevents.*")), "no TensorBoard events written"
    state = load_checkpoint(run_dir)
    assert state["step"] == 3 and state["num_classes"] == 10
    assert (run_dir / "config.yaml").is_file() and (run_dir / "subset_indices.json").is_file()


def test_resume_is_exact(tiny_run, tmp_path):
    train.main(tiny_run("straight", "--train.steps", "4"))
    train.main(tiny_run("halves", "--train.steps", "2"))
    train.main(["--resume", str(tmp_path / "halves"), "--train.steps", "4"])
    straight, halves = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "halves")
    assert halves["step"] == straight["step"] == 4
    for model in ("G", "D", "G_ema"):
        for key, value in straight[model].items():
            assert torch.equal(value, halves[model][key]), f"{model}.{key} differs after resume"
    for name in ("opt_G", "opt_D"):
        for index, slot in straight[name]["state"].items():
            for key, value in slot.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(halves[name]["state"][index][key]))


def test_existing_run_is_not_overwritten(tiny_run, tmp_path):
    train.main(tiny_run("run", "--train.steps", "2"))
    with pytest.raises(ConfigError, match=r"already holds a checkpoint: pass --resume"):
        train.main(tiny_run("run", "--train.steps", "2"))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_run, tmp_path):
    train.main(tiny_run("run", "--train.steps", "2"))
    good = load_checkpoint(tmp_path / "run")
    with pytest.raises(train.NonFiniteLossError, match=r"NaN or infinite .* holds the last good state"):
        train.main(["--resume", str(tmp_path / "run"), "--train.steps", "4", "--train.d-lr", "1e38"])
    kept = load_checkpoint(tmp_path / "run")
    assert kept["step"] == 2
    assert all(torch.equal(value, kept["G"][key]) for key, value in good["G"].items())


def test_resume_needs_a_run_directory(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot resume: .*config.yaml not found"):
        train.main(["--resume", str(tmp_path)])
