"""Fault-injection soak of the GAN trainer's checkpoint / resume path.

A tiny run (real CIFAR-10 images, widths 4) is trained once without interruption, then again many times, each time
interrupted at a seeded random point by one fault, then resumed (``--resume``) to the end:

    sigkill   SIGKILL after a random number of steps plus a random delay (a node dies: the steps since the last
              checkpoint are lost, nothing else)
    sigterm   SIGTERM at a random moment (preemption: the run finishes its step, checkpoints it, exits 75; nothing lost)
    write     the k-th checkpoint write fails half-way with ENOSPC (a full disk: the run stops with one error line,
              every older checkpoint intact)
    truncate  SIGKILL, then last.pt cut in half (a damaged file: resume falls back to last.1.pt with a warning)

It prints, per run, the fault, the steps done when it struck, the step resumed from and the steps lost, then how many
runs end bit-identical (G, D, G_ema and both Adam states) to the uninterrupted one.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/soak_resume.py --runs 24 --seed 0
"""
import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import genkd  # noqa: E402,F401  (before torchvision)
import torch  # noqa: E402

FAULTS = ("sigkill", "sigterm", "write", "truncate")


def train_args(npz: Path, run_dir: Path, steps: int, ckpt_every: int) -> list[str]:
    return [
        "--run-dir", str(run_dir), "--data.dataset", "npz", "--data.root", str(npz), "--data.frac", "0.02",
        "--model.g-width", "4", "--model.d-width", "4", "--model.z-dim", "8", "--model.shared-dim", "8",
        "--train.batch-size", "6", "--train.d-steps", "1", "--train.ema-start", "2", "--train.steps", str(steps),
        "--train.log-every", "1000", "--train.sample-every", "1000", "--train.ckpt-every", str(ckpt_every),
    ]  # fmt: skip


def child(progress: str, fail_at_save: int, args: list[str]) -> None:
    """Run the trainer, writing one line per finished generator step to ``progress``; with ``fail_at_save`` > 0 that
    checkpoint write (1-based) fails half-way with ENOSPC, as on a full disk."""
    from genkd import checkpoint, train

    update_ema = train.update_ema
    with open(progress, "a", buffering=1) as log:

        def counting_update_ema(*a, **k):
            update_ema(*a, **k)
            log.write(f"{time.perf_counter()}\n")  # one line per step, with the time it ended

        train.update_ema = counting_update_ema
        if fail_at_save:
            save, calls = checkpoint.torch.save, []

            def failing_save(state, file):
                calls.append(1)
                if len(calls) == fail_at_save:
                    file.write(b"half a checkpoint")
                    raise OSError(28, "No space left on device")
                save(state, file)

            checkpoint.torch.save = failing_save
        try:
            train.main(args)
        except (checkpoint.CheckpointError,) as error:
            sys.exit(f"error: {error}")


@contextlib.contextmanager
def quiet():
    """The in-process trainer's prints and progress bars out of the report."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield


def steps_done(progress: Path) -> int:
    return len(progress.read_text().splitlines()) if progress.exists() else 0


def same_state(a: dict, b: dict) -> bool:
    models = all(torch.equal(v, b[m][k]) for m in ("G", "D", "G_ema") for k, v in a[m].items())
    optimizers = all(
        torch.equal(torch.as_tensor(v), torch.as_tensor(b[name]["state"][i][k]))
        for name in ("opt_G", "opt_D") for i, slot in a[name]["state"].items() for k, v in slot.items()
    )  # fmt: skip
    return a["step"] == b["step"] and models and optimizers


def interrupted_run(fault: str, rng: random.Random, npz: Path, root: Path, index: int, opts) -> dict:
    from genkd import train
    from genkd.checkpoint import CheckpointFallbackWarning, load_resume_checkpoint

    run_dir, progress = root / f"run{index:02d}", root / f"progress{index:02d}.txt"
    args = train_args(npz, run_dir, opts.steps, opts.ckpt_every)
    fail_at = rng.randint(2, opts.steps // opts.ckpt_every) if fault == "write" else 0
    command = [sys.executable, __file__, "--child", str(progress), str(fail_at), "--", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    # a truncated last.pt needs a last.1.pt to fall back on: strike after the second checkpoint
    target = rng.randint(2 * opts.ckpt_every if fault == "truncate" else 1, opts.steps - 1)
    if fault != "write":
        while steps_done(progress) < target and process.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.05))  # a random moment inside a step
        process.send_signal(signal.SIGTERM if fault == "sigterm" else signal.SIGKILL)
    _, err = process.communicate()
    done = steps_done(progress)
    stamps = [float(line) for line in progress.read_text().split()] if progress.exists() else []
    step_times = [b - a for a, b in zip(stamps, stamps[1:])]
    if fault == "truncate" and (run_dir / "checkpoints" / "last.pt").exists():
        last = run_dir / "checkpoints" / "last.pt"
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    expected_code = {"sigkill": -signal.SIGKILL, "truncate": -signal.SIGKILL, "sigterm": 75, "write": 1}[fault]
    problems = [] if process.returncode in (expected_code, 0) else [f"exit {process.returncode}: {err[-300:]}"]
    if process.returncode == 0:  # finished before the fault struck
        return {"fault": fault, "done": done, "resumed": done, "lost": 0, "identical": None, "problems": problems}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            resumed = load_resume_checkpoint(run_dir)["step"]
        except Exception as error:  # killed before the first checkpoint: start again from scratch
            resumed, caught = 0, [str(error)]
            shutil.rmtree(run_dir)
    fell_back = any(isinstance(w, warnings.WarningMessage) and issubclass(w.category, CheckpointFallbackWarning) for w in caught)
    with quiet():
        train.main(["--resume", str(run_dir)] if resumed else args)
    identical = same_state(torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True), opts.reference)
    return {"fault": fault, "done": done, "resumed": resumed, "lost": done - resumed, "identical": identical,
            "fell_back": fell_back, "write_failed_at": fail_at or None, "problems": problems, "step_times": step_times}  # fmt: skip


def _time_stop_checks(rank: int, world: int, port: int, calls: int, results) -> None:
    """One of ``world`` gloo processes: seconds per GracefulStop.should_stop (the per-step stop flag all-reduce)."""
    import torch.distributed as dist

    from genkd.preemption import GracefulStop

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    accelerator = argparse.Namespace(num_processes=world)
    stop = GracefulStop()
    stop.should_stop(accelerator)  # warm-up
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        stop.should_stop(accelerator)
        times.append(time.perf_counter() - start)
    if rank == 0:
        results.put(sorted(times)[len(times) // 2])
    dist.destroy_process_group()


def stop_check_seconds(world: int = 2, calls: int = 2000) -> float:
    """Median seconds of one stop check on ``world`` CPU processes."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.Queue()
    mp.spawn(_time_stop_checks, args=(world, port, calls, results), nprocs=world)
    return results.get()


def main() -> None:
    if "--child" in sys.argv:
        at = sys.argv.index("--child")
        child(sys.argv[at + 1], int(sys.argv[at + 2]), sys.argv[sys.argv.index("--") + 1 :])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--ckpt-every", type=int, default=4)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10.npz"))
    opts = parser.parse_args()
    npz = Path(os.environ["GENKD_SHARED_DATA"]) / "cifar10.npz" if "GENKD_SHARED_DATA" in os.environ else Path(opts.data)
    from genkd import train

    rng = random.Random(opts.seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        with quiet():
            train.main(train_args(npz, root / "straight", opts.steps, opts.ckpt_every))
        opts.reference = torch.load(root / "straight" / "checkpoints" / "last.pt", weights_only=True)
        print(f"{opts.steps} generator steps, checkpoint every {opts.ckpt_every}, {opts.runs} interrupted runs, seed {opts.seed}")
        print(f"{'run':>3} {'fault':<9} {'done':>4} {'resumed':>7} {'lost':>4} {'fallback':>8} identical")
        results = []
        for index in range(opts.runs):
            result = interrupted_run(FAULTS[index % len(FAULTS)], rng, npz, root, index, opts)
            results.append(result)
            print(f"{index:>3} {result['fault']:<9} {result['done']:>4} {result['resumed']:>7} {result['lost']:>4} "
                  f"{str(result.get('fell_back', '-')):>8} {result['identical']} {' '.join(result['problems'])}", flush=True)  # fmt: skip
    interrupted = [r for r in results if r["identical"] is not None]
    identical = sum(r["identical"] for r in interrupted)
    print(f"\n{identical} of {len(interrupted)} interrupted runs end bit-identical to the uninterrupted run "
          f"({len(results) - len(interrupted)} finished before their fault)")  # fmt: skip
    for fault in FAULTS:
        lost = [r["lost"] for r in interrupted if r["fault"] == fault]
        if lost:
            print(f"{fault:<9} runs {len(lost):>2}: steps lost {lost} (max {max(lost)}; checkpoint interval {opts.ckpt_every})")
    print(f"unexpected exits: {sum(bool(r['problems']) for r in results)}; wall time {time.perf_counter() - start:.0f} s")
    step_times = sorted(t for r in results for t in r.get("step_times", []))
    step_seconds = step_times[len(step_times) // 2]
    check = stop_check_seconds()
    print(f"stop check (one gloo all-reduce of the flag, 2 CPU processes): {check * 1e6:.0f} us per step, "
          f"{check / step_seconds:.2%} of the median {step_seconds * 1e3:.1f} ms tiny-width CPU step of these runs")


if __name__ == "__main__":
    main()
