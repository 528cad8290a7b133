"""Preemption: a real signal makes the trainers finish the step, checkpoint and exit 75; the resumed run equals an
uninterrupted one (GAN and classifier, one and two processes); a second signal ends the process at once."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import genkd  # noqa: F401  (before torchvision)
from genkd import train, train_classifier
from genkd.checkpoint import load_checkpoint, read_record
from genkd.preemption import EXIT_PREEMPTED, GracefulStop, Preempted

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def gan_args(cifar10_npz, run_dir, *extra):
    return [
        "--run-dir", str(run_dir),
        "--data.dataset", "npz", "--data.root", str(cifar10_npz), "--data.frac", "0.02",
        "--model.g-width", "4", "--model.d-width", "4", "--model.z-dim", "8", "--model.shared-dim", "8",
        "--train.batch-size", "6", "--train.d-steps", "1", "--train.ema-start", "2",
        "--train.log-every", "1", "--train.sample-every", "1", "--train.ckpt-every", "1000",
        *extra,
    ]  # fmt: skip


def assert_same_gan_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for model in ("G", "D", "G_ema"):
        for key, value in a[model].items():
            assert torch.equal(value, b[model][key]), f"{model}.{key} differs"
    for name in ("opt_G", "opt_D"):
        for index, slot in a[name]["state"].items():
            for key, value in slot.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(b[name]["state"][index][key]))


def wait_for(predicate, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_second_signal_ends_the_process_at_once():
    script = (
        "import os, signal, time\n"
        "from genkd.preemption import GracefulStop\n"
        "with GracefulStop() as stop:\n"
        "    os.kill(os.getpid(), signal.SIGUSR1)\n"
        "    time.sleep(0.1)\n"
        "    print(stop.signal_name, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(5)\n"
        "    print('still running')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=60)
    assert result.stdout == "SIGUSR1\n" and result.returncode == -signal.SIGTERM


def test_handlers_are_restored_and_immediate_mode_raises():
    before = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(Preempted) as stopped:
        with GracefulStop(immediate=True):
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(1)  # the handler raises at the next bytecode
    assert stopped.value.code == EXIT_PREEMPTED and str(stopped.value) == "stopped by SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before


def test_sigterm_to_a_training_subprocess_checkpoints_its_step_and_the_resumed_run_is_exact(cifar10_npz, tmp_path):
    run_dir = tmp_path / "stopped"
    command = [sys.executable, "-m", "genkd.train", *gan_args(cifar10_npz, run_dir, "--train.steps", "100000")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    wait_for(lambda: (run_dir / "samples" / "0000002.png").exists(), process)  # in the middle of step 3 or later
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == EXIT_PREEMPTED, err[-3000:]
    (line,) = [line for line in out.splitlines() if line.startswith("stopped")]
    step = int(re.search(r"after generator step (\d+);", line).group(1))
    assert f"resume: python -m genkd.train --resume {run_dir}" in line and "(exit status 75)" in line
    state = load_checkpoint(run_dir)
    assert state["step"] == step == read_record(run_dir / "checkpoints" / "last.pt")["step"]
    assert max(int(p.stem) for p in (run_dir / "samples").iterdir()) == step  # no step started after the signal

    # The stopped run used one thread (ENV); oneDNN's channels_last convolutions may sum in another order on more.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.main(["--resume", str(run_dir), "--train.steps", str(step + 2)])
        train.main(gan_args(cifar10_npz, tmp_path / "straight", "--train.steps", str(step + 2)))
    finally:
        torch.set_num_threads(threads)
    assert_same_gan_state(load_checkpoint(tmp_path / "straight"), load_checkpoint(run_dir))


# ---------------------------------------------------------------- classifier


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory, cifar10_arrays):
    """48 real training images of two classes (3 batches of 16) and 20 test images."""
    x_train, y_train, x_test, y_test = cifar10_arrays

    def pick(images, labels, count):
        index = np.concatenate([np.flatnonzero(labels == c)[:count] for c in (0, 6)])
        return images[index], (labels[index] == 6).astype(np.int64)

    path = tmp_path_factory.mktemp("data") / "two_classes.npz"
    (a, b), (c, d) = pick(x_train, y_train, 24), pick(x_test, y_test, 10)
    np.savez(path, x_train=a, y_train=b, x_test=c, y_test=d)
    return path


def classifier_args(npz, run_dir, *extra):
    return ["--data.dataset", "npz", "--data.root", str(npz), "--data.num_workers", "0", "--train.batch_size", "16",
            "--model.student", "resnet20", "--run-dir", str(run_dir), *extra]  # fmt: skip


def assert_same_classifier_state(a: dict, b: dict) -> None:
    assert (a["epoch"], a["batch"]) == (b["epoch"], b["batch"])
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), f"model.{key} differs"
    for index, slot in a["optimizer"]["state"].items():
        assert torch.equal(slot["momentum_buffer"], b["optimizer"]["state"][index]["momentum_buffer"])


@pytest.fixture(scope="module")
def straight_classifier(small_npz, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "straight"
    metrics = train_classifier.main(classifier_args(small_npz, run_dir, "--train.epochs", "2"))
    return load_checkpoint(run_dir), metrics


def test_classifier_resume_is_exact(small_npz, straight_classifier, tmp_path):
    """2 epochs = 1 epoch + resume + 1 epoch: parameters, momentum and the logged history are equal."""
    train_classifier.main(classifier_args(small_npz, tmp_path / "halves", "--train.epochs", "1"))
    metrics = train_classifier.main(["--resume", str(tmp_path / "halves"), "--train.epochs", "2"])
    assert_same_classifier_state(straight_classifier[0], load_checkpoint(tmp_path / "halves"))
    assert metrics["epochs"] == straight_classifier[1]["epochs"]


def test_classifier_stops_mid_epoch_on_a_signal_and_resumes_exactly(small_npz, straight_classifier, tmp_path, monkeypatch):
    """A real SIGTERM during the 2nd batch of epoch 2: the trainer finishes that batch, saves epoch 1 + 2 batches and
    exits 75; resuming replays the loader to batch 2 and ends where the uninterrupted run ends."""
    steps, sgd_step = [], torch.optim.SGD.step

    def signal_at_batch_five(self, *args, **kwargs):
        steps.append(1)
        if len(steps) == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return sgd_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", signal_at_batch_five)
    run_dir = tmp_path / "stopped"
    with pytest.raises(Preempted, match=r"stopped by SIGTERM in epoch 2 after batch 2; .* --resume "):
        train_classifier.main(classifier_args(small_npz, run_dir, "--train.epochs", "2"))
    monkeypatch.undo()
    stopped = load_checkpoint(run_dir)
    assert (stopped["epoch"], stopped["batch"]) == (1, 2) and read_record(run_dir / "checkpoints" / "last.pt")["step"] == 5
    assert (run_dir / "checkpoints" / "last.1.pt").is_file()  # the epoch-1 checkpoint, kept to fall back on
    metrics = train_classifier.main(["--resume", str(run_dir)])
    assert_same_classifier_state(straight_classifier[0], load_checkpoint(run_dir))
    assert metrics["epochs"][0] == straight_classifier[1]["epochs"][0]
    last, expected = metrics["epochs"][1], straight_classifier[1]["epochs"][1]  # sums carried over the stop
    assert last == pytest.approx(expected, rel=1e-6)


def test_two_processes_stop_together_when_one_rank_is_sigtermed(cifar10_npz, tmp_path):
    """Real DDP (gloo on CPU) through accelerate launch; only rank 1 gets SIGTERM (as when a node is drained). The
    stop flag is all-reduced, so both ranks finish the same step, one checkpoint is written and both exit 75 (the
    launcher itself then exits 1, naming exit code 75; the rank that exits second may be reported as SIGTERMed by the
    launcher, after the checkpoint is complete)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    run_dir = tmp_path / "ddp"
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(port)]
    command += [str(Path(train.__file__)), *gan_args(cifar10_npz, run_dir, "--train.steps", "100000")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**ENV, "ACCELERATE_USE_CPU": "1"})  # fmt: skip
    wait_for(lambda: (run_dir / "samples" / "0000002.png").exists(), process, timeout=300)
    ranks = {}  # rank -> pid of the workers of this launch (their environment names its port)
    for proc in Path("/proc").iterdir():
        try:
            environment = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"MASTER_PORT={port}".encode() in environment:
            ranks.update({int(e[5:]): int(proc.name) for e in environment if e.startswith(b"RANK=")})
    assert sorted(ranks) == [0, 1]
    os.kill(ranks[1], signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    # the first rank to exit 75 makes the launcher SIGTERM the other, which may be past its own exit code by then
    codes = set(re.findall(r"exitcode\s*: (-?\d+)", err))
    assert "75" in codes and codes <= {"75", "-15"}, err[-3000:]
    (line,) = [line for line in out.splitlines() if line.startswith("stopped")]  # printed once, by rank 0
    step = int(re.search(r"after generator step (\d+);", line).group(1))
    assert "stopped by a signal to another process" in line and "accelerate launch --num_processes 2" in line
    state = load_checkpoint(run_dir)
    assert state["step"] == step and len(state["rng"]) == 2
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.pt", "last.pt.json"]
