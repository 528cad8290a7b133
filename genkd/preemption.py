"""Stop cleanly when the cluster says so: SIGTERM (preemption; SLURM and Kubernetes send it, then SIGKILL after a
grace period), SIGUSR1 (SLURM's ``--signal`` warning) and SIGINT (Ctrl-C).

Trainers use ``GracefulStop``: the first signal only sets a flag; at the next step boundary every process learns
whether *any* process was signalled (``should_stop``, one max-all-reduce of a 1-element tensor), so all ranks stop
after the same step, write one checkpoint and exit with ``EXIT_PREEMPTED``. A second signal ends the process at once
with the signal's default action (exit status 128 + signal number), for a user who does not want to wait; the atomic
checkpoint writes make that safe too. Evaluation runs use ``GracefulStop(immediate=True)``: the first signal raises
``Preempted`` where the program is, and nothing is written.

Exit status 75 is sysexits.h's EX_TEMPFAIL, "a temporary failure; the user is invited to retry": what a preempted run
is. It is distinct from 0 (done), 1 (an error), 128 + 15 = 143 (killed by SIGTERM without a checkpoint, what a shell or
SLURM reports for a hard kill) and 137 (SIGKILL), so a job script can requeue on 75 alone.
"""
import os
import signal
import threading

import torch

EXIT_PREEMPTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Preempted(SystemExit):
    """The run stopped on a signal: a SystemExit with status EXIT_PREEMPTED (``python -m ...`` exits 75 quietly)."""

    def __init__(self, message: str):
        super().__init__(EXIT_PREEMPTED)
        self.message = message

    def __str__(self) -> str:
        return self.message


class GracefulStop:
    """Context manager that turns the first stop signal into a flag (or, ``immediate``, into ``Preempted``).

    Handlers are installed only in the main thread (Python allows no other) and the previous ones are restored on exit.
    """

    def __init__(self, immediate: bool = False):
        self.immediate = immediate
        self.signal_name: str | None = None  # the first signal received by this process
        self._previous: dict = {}
        self._group = None  # the process group of the stop flag (see should_stop)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, number: int, frame) -> None:
        if self.signal_name is not None:  # the second signal: go now
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)
            return
        self.signal_name = signal.Signals(number).name
        if self.immediate:
            raise Preempted(f"stopped by {self.signal_name}")

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def should_stop(self, accelerator) -> bool:
        """Whether any process was signalled (a collective on several processes: call it on all at the same step).

        The flag is reduced on the CPU through a gloo group (the default group when it is gloo, else one made on first
        use, by every process at the same step): a GPU tensor would need ``.item()``, which waits for every queued
        kernel and so drains the GPU queue once per step. On the CPU it costs one small all-reduce, tens of
        microseconds (bench/RESULTS.md, soak_resume)."""
        if accelerator.num_processes == 1:
            return self.requested
        import torch.distributed as dist

        if self._group is None:
            self._group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        flag = torch.tensor([float(self.requested)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return flag.item() > 0


def stop_message(signal_name: str | None, where: str, checkpoint, run_dir, module: str, num_processes: int) -> str:
    """The one line a stopped trainer prints: what stopped it, where the checkpoint is, the command that resumes."""
    launcher = f"python -m {module}" if num_processes == 1 else (
        f"accelerate launch --num_processes {num_processes} {module.replace('.', '/')}.py"
    )
    return (
        f"stopped by {signal_name or 'a signal to another process'} {where}; checkpoint {checkpoint} (exit status "
        f"{EXIT_PREEMPTED}); resume: {launcher} --resume {run_dir}"
    )
