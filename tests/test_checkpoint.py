import pytest
import torch

from genkd import checkpoint
from genkd.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_round_trip(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint({"step": 3, "weights": torch.arange(4.0)}, path)
    state = load_checkpoint(tmp_path)  # a run directory resolves to checkpoints/last.pt
    assert state["step"] == 3 and torch.equal(state["weights"], torch.arange(4.0))


def test_crash_during_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)

    def crash_half_way(state, file):
        file.write(b"partial bytes of a checkpoint")
        raise KeyboardInterrupt  # e.g. the job is killed mid-write

    monkeypatch.setattr(checkpoint.torch, "save", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_corrupt_checkpoint_gives_one_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "weights": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])  # truncated, as after a full disk
    with pytest.raises(CheckpointError, match=r"checkpoint .*last.pt is corrupt or incomplete .*; resume from another"):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*checkpoints/last.pt"):
        load_checkpoint(tmp_path)
