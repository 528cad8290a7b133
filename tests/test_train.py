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


def test_sample_grids_follow_the_sampling_mode_and_write_nothing_into_the_generator(tiny_run, tmp_path):
    """Grids in train mode (the reference's sample sheets) use batch statistics, so they differ from eval-mode grids of
    the same generator; drawing them leaves every state of the run unchanged."""
    import numpy as np
    from PIL import Image

    for mode in ("train", "eval"):
        train.main(tiny_run(mode, "--train.steps", "2", "--eval.sample-mode", mode))
    grids = {mode: np.asarray(Image.open(tmp_path / mode / "samples" / "0000002.png")) for mode in ("train", "eval")}
    assert grids["train"].shape == grids["eval"].shape and not np.array_equal(grids["train"], grids["eval"])
    states = {mode: load_checkpoint(tmp_path / mode) for mode in ("train", "eval")}
    for key in ("G", "D", "G_ema"):
        for name, value in states["train"][key].items():
            assert torch.equal(value, states["eval"][key][name]), f"{key}.{name} depends on the grid's mode"


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


DISTILL = ["--distill.enabled", "--distill.teacher", "tiny-vit", "--distill.random-teacher"]


def test_teacher_sees_exactly_the_augmented_discriminator_input(tiny_run, monkeypatch):
    from genkd.models.biggan import Discriminator
    from genkd.teachers import Teacher

    seen_by_discriminator, seen_by_teacher = [], []
    discriminator_forward, teacher_forward = Discriminator.forward, Teacher.forward

    def record_discriminator(self, x, y, return_features=False):
        if return_features:  # the discriminator step (the generator step asks for logits only)
            seen_by_discriminator.append(x.detach().clone())
        return discriminator_forward(self, x, y, return_features)

    def record_teacher(self, images):
        seen_by_teacher.append(images.detach().clone())
        return teacher_forward(self, images)

    monkeypatch.setattr(Discriminator, "forward", record_discriminator)
    monkeypatch.setattr(Teacher, "forward", record_teacher)
    with pytest.warns(UserWarning, match="random"):
        train.main(tiny_run("run", "--train.steps", "2", *DISTILL))
    assert len(seen_by_teacher) == len(seen_by_discriminator) == 2 * 2  # steps x d_steps
    for teacher_input, discriminator_input in zip(seen_by_teacher, seen_by_discriminator):
        assert torch.equal(teacher_input, discriminator_input)  # real and fake, augmented, same tensor values
    assert seen_by_teacher[0].shape[0] == 2 * 6  # batch of real + batch of fake


def test_distillation_run_logs_a_decreasing_distillation_loss(tiny_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with pytest.warns(UserWarning, match="random"):
        train.main(tiny_run("run", "--train.steps", "16", *DISTILL))
    state = load_checkpoint(tmp_path / "run")
    assert state["projector"], "the projector is saved with the run"
    assert not any("teacher" in key for key in state["projector"]), "the frozen teacher is not saved"
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    (tag,) = [tag for tag in events.Tags()["scalars"] if tag.endswith("loss/distill")]
    losses = [event.value for event in events.Scalars(tag)]
    assert len(losses) == 16
    assert sum(losses[-4:]) < 0.5 * sum(losses[:4]), losses


@pytest.mark.parametrize("method", ["kd-dlgan", "label"])
def test_paper_distillation_methods_train_and_resume_exactly(tiny_run, tmp_path, method):
    """KD-DLGAN's aggregated pairing (real/fake split passed by the loop) and label distillation's class head."""
    with pytest.warns(UserWarning, match="random"):
        train.main(tiny_run("straight", "--train.steps", "2", *DISTILL, "--distill.method", method))
        train.main(tiny_run("halves", "--train.steps", "1", *DISTILL, "--distill.method", method))
        train.main(["--resume", str(tmp_path / "halves"), "--train.steps", "2"])
    straight, halves = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "halves")
    assert any(key.endswith("_u") for key in straight["projector"])  # spectral-norm heads
    for key, value in straight["projector"].items():
        assert torch.equal(value, halves["projector"][key]), f"head {key} differs after resume"


def test_ema_averages_weights_and_keeps_power_iteration_vectors_unit_length():
    from genkd.models.biggan import Discriminator

    ema, model = Discriminator(10, width=4), Discriminator(10, width=4)
    before = {name: value.clone() for name, value in ema.state_dict().items()}
    train.update_ema(ema, model, decay=0.25)
    after, current = ema.state_dict(), model.state_dict()
    weight = "linear.parametrizations.weight.original"
    assert torch.allclose(after[weight], 0.25 * before[weight] + 0.75 * current[weight])
    vectors = [value for name, value in after.items() if name.endswith(("._u", "._v"))]
    assert vectors and all(torch.isclose(v.norm(), torch.tensor(1.0), atol=1e-5) for v in vectors)


def test_real_batches_are_a_function_of_the_batch_index(cifar10_arrays):
    images, labels = cifar10_arrays[0][:40], cifar10_arrays[1][:40]
    ranks = [train.RealBatches(images, labels, 8, seed=0, rank=r, world_size=2, device="cpu") for r in range(2)]
    torch.manual_seed(0)
    first, first_labels = ranks[0](3)
    torch.manual_seed(1)  # other flips, same images
    again, again_labels = ranks[0](3)
    assert torch.equal(first_labels, again_labels) and first.min() >= -1 and first.max() <= 1
    assert all(torch.equal(a, b) or torch.equal(a, b.flip(2)) for a, b in zip(first, again))  # up to flips
    originals = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1

    def positions(batch):  # which of the 40 images each item is
        return [next(i for i, o in enumerate(originals) if torch.equal(o, x) or torch.equal(o.flip(2), x)) for x in batch]

    other_rank = positions(ranks[1](3)[0])
    assert not set(positions(first)) & set(other_rank)  # the two processes see different images in a step
    epoch = [p for k in range(5) for r in range(2) for p in positions(ranks[r](k)[0])]  # 80 items = 2 epochs
    assert sorted(epoch[:40]) == list(range(40)) and sorted(epoch[40:]) == list(range(40))


def test_two_processes_with_accelerate_launch(tiny_run, tmp_path):
    """Real DDP (gloo on CPU) through the accelerate CLI, distillation included: both ranks train and checkpoint."""
    import os
    import shutil
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    train_script = Path(train.__file__)
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(port)]
    command += [str(train_script), *tiny_run("ddp", "--train.steps", "2", *DISTILL)]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "ACCELERATE_USE_CPU": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint(tmp_path / "ddp")
    assert state["step"] == 2 and len(state["rng"]) == 2  # one random state per process
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    assert all(not key.startswith("module.") for key in state["projector"])  # saved unwrapped from DDP


def test_evaluation_during_training_logs_metrics_and_keeps_best_checkpoint(tiny_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from genkd.checkpoint import load_generator
    from genkd.metrics import METRIC_KEYS, save_random_inception_weights

    weights = save_random_inception_weights(tmp_path / "random-inception.pth")
    evaluation = ["--eval.every", "2", "--eval.num-samples", "20", "--eval.batch-size", "10"]
    evaluation += ["--eval.inception-weights", str(weights), "--eval.reference-images", "40"]
    evaluation += ["--eval.cache-dir", str(tmp_path / "cache")]
    train.main(tiny_run("run", "--train.steps", "4", *evaluation))
    best, last = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt"), load_checkpoint(tmp_path / "run")
    assert best["step"] in (2, 4) and best["best_fid"] == last["best_fid"] < float("inf")
    assert best.keys() == last.keys()  # a full checkpoint: G_ema to report, everything else to resume from it
    reported = load_generator(tmp_path / "run")  # what eval/evaluate.py reports by default
    assert (reported.path, reported.step) == (tmp_path / "run" / "checkpoints" / "best.pt", best["step"])
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    logged = {tag.split("eval/")[1] for tag in events.Tags()["scalars"] if "eval/" in tag}
    assert logged == set(METRIC_KEYS)
    fids = [event.value for tag in events.Tags()["scalars"] if tag.endswith("eval/fid") for event in events.Scalars(tag)]
    assert len(fids) == 2 and min(fids) == pytest.approx(last["best_fid"], rel=1e-6)  # TensorBoard keeps float32


REGULARIZERS = ["--reg.lecam-weight", "0.3", "--reg.lecam-start", "1", "--reg.cr-weight", "10"]


def test_regularizers_log_their_terms_and_resume_exactly(tiny_run, tmp_path):
    """LeCam's EMA starts decaying at step 1 and its term applies from step 2, so the halves resume mid-average."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train.main(tiny_run("straight", "--train.steps", "4", *REGULARIZERS))
    train.main(tiny_run("halves", "--train.steps", "2", *REGULARIZERS))
    train.main(["--resume", str(tmp_path / "halves"), "--train.steps", "4"])
    straight, halves = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "halves")
    assert torch.equal(straight["regularizers"]["lecam"]["ema"], halves["regularizers"]["lecam"]["ema"])
    assert straight["regularizers"]["lecam"]["ema"].dtype == torch.float64
    for model in ("G", "D", "G_ema"):
        for key, value in straight[model].items():
            assert torch.equal(value, halves[model][key]), f"{model}.{key} differs after resume"
    events = EventAccumulator(str(tmp_path / "straight" / "tensorboard")).Reload()
    logged = {tag.split("loss/")[1]: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    lecam, cr = logged["lecam"], logged["cr"]
    assert lecam[:2] == [0.0, 0.0] and all(value > 0 for value in lecam[2:])  # steps 1-2 log steps 0-1's term: off
    assert len(cr) == 4 and all(value > 0 for value in cr)


def test_consistency_view_shares_the_discriminator_call(tiny_run, monkeypatch):
    """With --reg.cr-augment "" the discriminator scores [real | fake | real] in one call (no DiffAugment here)."""
    from genkd.models.biggan import Discriminator

    inputs, forward = [], Discriminator.forward

    def record(self, x, y, return_features=False):
        if return_features:
            inputs.append((x.detach().clone(), y.clone()))
        return forward(self, x, y, return_features)

    monkeypatch.setattr(Discriminator, "forward", record)
    train.main(tiny_run("run", "--train.steps", "1", "--train.diffaug", "''", "--reg.cr-weight", "10",
                        "--reg.cr-augment", "''"))  # fmt: skip
    assert len(inputs) == 2  # d_steps
    for images, labels in inputs:
        assert images.shape[0] == labels.shape[0] == 3 * 6
        assert torch.equal(images[12:], images[:6]) and torch.equal(labels[12:], labels[:6])
