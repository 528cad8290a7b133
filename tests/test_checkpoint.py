"""Checkpoints: atomic writes, records, rotation and fall-back, failed writes, random and GradScaler states, foreign
teacher files (RepDistiller, mdistiller)."""
import argparse
import os
import random

import numpy as np
import pytest
import torch

import genkd  # noqa: F401  (before torchvision)
from genkd import checkpoint
from genkd.checkpoint import (
    CheckpointError,
    CheckpointFallbackWarning,
    accelerator_state,
    load_checkpoint,
    load_resume_checkpoint,
    random_state,
    read_record,
    restore_accelerator_state,
    save_checkpoint,
    set_random_state,
)


def test_round_trip(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint({"step": 3, "weights": torch.arange(4.0)}, path, step=3)
    state = load_checkpoint(tmp_path)  # a run directory resolves to checkpoints/last.pt
    assert state["step"] == 3 and torch.equal(state["weights"], torch.arange(4.0))
    record = read_record(path)
    assert record["size"] == path.stat().st_size and record["step"] == 3 and len(record["sha256"]) == 64


def test_crash_during_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)

    def crash_half_way(state, file):
        file.write(b"partial bytes of a checkpoint")
        raise KeyboardInterrupt  # e.g. the job is killed mid-write

    monkeypatch.setattr(checkpoint.torch, "save", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2}, path, keep=2)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.json"]  # no temp file left behind


def test_corrupt_checkpoint_gives_one_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "weights": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])  # truncated, as after a full disk
    with pytest.raises(CheckpointError, match=r"checkpoint .*last.pt is corrupt or incomplete \(500 bytes, \d+ written\)"):
        load_checkpoint(path)
    record = read_record(path)
    path.write_bytes(b"x" * record["size"])  # right size, other bytes: the checksum tells
    with pytest.raises(CheckpointError, match=r"corrupt or incomplete \(its SHA-256 differs"):
        load_checkpoint(path)
    os.remove(path.with_name("last.pt.json"))  # no record (an older or foreign file): torch itself tells
    with pytest.raises(CheckpointError, match=r"corrupt or incomplete \("):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*checkpoints/last.pt"):
        load_checkpoint(tmp_path)


def test_rotation_keeps_the_requested_number_of_good_checkpoints(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    for step in range(1, 5):
        save_checkpoint({"step": step}, path, keep=3, step=step)
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["last.1.pt", "last.1.pt.json", "last.2.pt", "last.2.pt.json", "last.pt", "last.pt.json"]
    assert [load_checkpoint(path.with_name(n))["step"] for n in ("last.pt", "last.1.pt", "last.2.pt")] == [4, 3, 2]
    assert [read_record(path.with_name(n))["step"] for n in ("last.pt", "last.1.pt", "last.2.pt")] == [4, 3, 2]
    save_checkpoint({"step": 5}, path, keep=1, step=5)  # a lower count drops the extra ones
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt", "last.pt.json"]


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint({"step": 20}, path, keep=2, step=20)
    save_checkpoint({"step": 30, "weights": torch.zeros(1000)}, path, keep=2, step=30)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.warns(CheckpointFallbackWarning, match=r"last.pt is corrupt .*resuming from the older last.1.pt \(step 20\): 10 steps lost"):
        assert load_resume_checkpoint(tmp_path)["step"] == 20
    path.with_name("last.1.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"last.pt is corrupt.*; .*last.1.pt is corrupt"):
        load_resume_checkpoint(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_write_into_a_read_only_folder_keeps_every_old_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path, keep=2, step=1)
    save_checkpoint({"step": 2}, path, keep=2, step=2)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match=r"could not write checkpoint .*last.pt \(Permission denied\); older checkpoints are intact"):
            save_checkpoint({"step": 3}, path, keep=2, step=3)
    finally:
        tmp_path.chmod(0o700)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("failing", ["open", "fsync", "link"])
def test_failed_write_keeps_every_old_checkpoint(tmp_path, monkeypatch, failing):
    """EACCES on opening the temp file (as in a read-only folder, which root can still write), ENOSPC while the new
    file is written (fsync) or while the previous one is copied (a file system without hard links): nothing existing
    changes, the temp files go, one clear error."""
    path = tmp_path / "last.pt"
    for step in (1, 2, 3):
        save_checkpoint({"step": step}, path, keep=3, step=step)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def no_space(*args):
        raise OSError(28, "No space left on device")

    def no_permission(*args):
        raise PermissionError(13, "Permission denied")

    if failing == "open":
        monkeypatch.setattr(checkpoint, "open", no_permission, raising=False)
    elif failing == "fsync":
        monkeypatch.setattr(checkpoint.os, "fsync", no_space)
    else:
        monkeypatch.setattr(checkpoint.os, "link", no_space)
        monkeypatch.setattr(checkpoint.shutil, "copyfile", no_space)
    reason = "Permission denied" if failing == "open" else "No space left on device"
    with pytest.raises(CheckpointError, match=rf"could not write .*\({reason}\); older checkpoints are intact: free disk"):
        save_checkpoint({"step": 4}, path, keep=3, step=4)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_random_states_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # a cached Gaussian in numpy's state
    save_checkpoint({"rng": random_state()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.standard_normal(3), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_random_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    again = (random.random(), np.random.standard_normal(3), torch.rand(3))
    assert again[0] == expected[0] and np.array_equal(again[1], expected[1]) and torch.equal(again[2], expected[2])


class OneProcess:
    """The parts of an Accelerator that accelerator_state uses: one process, and an fp16 GradScaler."""

    num_processes, process_index = 1, 0

    def __init__(self):
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)

    def print(self, *args):
        print(*args)


def scaled_steps(accelerator, weight, gradients):
    optimizer = torch.optim.SGD([weight], lr=0.1)
    for gradient in gradients:  # inf gradients halve the scale and skip the step; 3 good ones double it
        optimizer.zero_grad()
        accelerator.scaler.scale((weight * gradient).sum()).backward()
        accelerator.scaler.step(optimizer)
        accelerator.scaler.update()


def test_fp16_grad_scaler_state_round_trips(tmp_path):
    saved = OneProcess()
    weight = torch.ones(2, requires_grad=True)
    scaled_steps(saved, weight, [torch.tensor([1.0, float("inf")]), torch.ones(2), torch.ones(2)])
    assert saved.scaler.get_scale() == 2.0**9 and saved.scaler.state_dict()["_growth_tracker"] == 2
    save_checkpoint(accelerator_state(saved), tmp_path / "last.pt")

    resumed = OneProcess()  # a fresh run: scale 2^10, tracker 0
    restore_accelerator_state(load_checkpoint(tmp_path / "last.pt"), resumed)
    assert resumed.scaler.state_dict() == saved.scaler.state_dict()
    scaled_steps(saved, weight.detach().clone().requires_grad_(), [torch.ones(2)])
    scaled_steps(resumed, weight.detach().clone().requires_grad_(), [torch.ones(2)])
    assert resumed.scaler.get_scale() == saved.scaler.get_scale() == 2.0**10  # the third good step doubled both


def test_repdistiller_last_checkpoint_with_a_namespace_loads(tmp_path):
    """RepDistiller's train_teacher.py saves {'opt': argparse.Namespace, 'model', 'optimizer'} as *_last.pth."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    opt = argparse.Namespace(model="resnet32x4", learning_rate=0.05, lr_decay_epochs=[150, 180, 210], dataset="cifar100")
    path = tmp_path / "resnet32x4_last.pth"
    torch.save({"opt": opt, "model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    state = load_checkpoint(path)
    assert state["opt"] == opt and torch.equal(state["model"]["weight"], model.weight)
    torch.save({"epoch": 240, "model": model.state_dict(), "accuracy": torch.tensor(79.4), "optimizer": optimizer.state_dict()}, path)
    assert load_checkpoint(path)["accuracy"] == pytest.approx(79.4)  # its ckpt_epoch_240.pth (mdistiller's teachers)


class Opaque:
    pass


def test_a_checkpoint_pickling_other_objects_is_refused_by_name(tmp_path):
    path = tmp_path / "foreign.pth"
    torch.save({"model": {}, "extra": Opaque()}, path)
    with pytest.raises(CheckpointError, match=r"pickles test_checkpoint.Opaque, which genkd does not load"):
        load_checkpoint(path)


def test_mdistiller_and_repdistiller_teacher_files_load_and_mismatches_name_the_keys(tmp_path):
    from genkd.classifier.models import ModelError, build_model, load_weights

    torch.manual_seed(0)
    trained = build_model("resnet20", 10)
    images = torch.randn(2, 3, 32, 32)
    expected = trained.eval()(images).logits
    # mdistiller's engine/trainer.py saves its DataParallel-wrapped distiller: module.student.*, module.teacher.*
    distiller = {f"module.student.{k}": v for k, v in trained.state_dict().items()}
    distiller.update({f"module.teacher.{k}": v for k, v in build_model("resnet56", 10).state_dict().items()})
    torch.save({"epoch": 240, "model": distiller, "optimizer": {}, "best_acc": torch.tensor(71.2)}, tmp_path / "latest")
    loaded = load_weights(build_model("resnet20", 10), tmp_path / "latest", "resnet20").eval()
    assert torch.equal(loaded(images).logits, expected)
    opt = argparse.Namespace(model="resnet20", dataset="cifar100")  # RepDistiller's *_last.pth
    torch.save({"opt": opt, "model": trained.state_dict(), "optimizer": {}}, tmp_path / "resnet20_last.pth")
    loaded = load_weights(build_model("resnet20", 10), tmp_path / "resnet20_last.pth", "resnet20").eval()
    assert torch.equal(loaded(images).logits, expected)
    with pytest.raises(ModelError, match=r"does not fit wrn_16_1 \(missing .*; unexpected .*layer1.0.bn1.bias"):
        load_weights(build_model("wrn_16_1", 10), tmp_path / "resnet20_last.pth", "wrn_16_1")
    (tmp_path / "broken.pth").write_bytes((tmp_path / "resnet20_last.pth").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"broken.pth is corrupt or incomplete"):
        load_weights(build_model("resnet20", 10), tmp_path / "broken.pth", "resnet20")
