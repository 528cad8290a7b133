"""The fast training step, in one place, applied once at set-up: the loop in genkd/train.py is the same code in
every setting.

``speed.*`` keys (genkd/defaults.py) are ``auto``, ``on`` or ``off``; ``auto`` takes this device's entry of ``AUTO``,
the fastest setting measured by bench/bench_step.py that keeps the tests' numerical identities (tests/test_speed.py):

* ``compile``: ``torch.compile`` of the generator's and the discriminator's forward (and so their backward). Done in
  place on the module's ``forward``, so state dicts, checkpoints and ``accelerator.unwrap_model`` are untouched. If
  compilation fails (no C compiler, an unsupported op, a backend error), a warning names the cause and the module
  runs eagerly from then on: a run never dies of an optimisation. On CPU inductor needs a C compiler (``cc``).
* ``channels_last``: 4-d weights in NHWC; oneDNN and cuDNN then pick their NHWC convolution kernels (inputs follow
  the weights).
* ``fused_adam``: one fused Adam kernel over all parameters (``torch.optim.Adam(fused=True)``, CPU and CUDA) instead
  of a Python loop of small ops; its update equals the loop's to float rounding.
* ``compile_mode``: torch.compile's mode; ``reduce-overhead`` records CUDA graphs (static shapes: the training batch
  never changes), GPU only.

bf16 autocast on GPUs is accelerate's ``train.mixed_precision bf16``: it changes the numbers on purpose, so it is a
choice, not a default.
"""
import functools
import shutil
import warnings
from typing import Iterable, Mapping

import torch
from torch import nn

SWITCHES = ("compile", "channels_last", "fused_adam")
# Measured with bench/bench_step.py (bench/RESULTS.md): what pays, per device type.
AUTO = {
    # CPU: channels_last + fused_adam 0.81x of eager fp32 at paper width (0.77x the reference); inductor's C++ builds
    # take minutes on small machines, so compile stays opt-in there
    "cpu": {"compile": False, "channels_last": True, "fused_adam": True},
    "cuda": {"compile": True, "channels_last": True, "fused_adam": True},
}


class SpeedError(ValueError):
    """A speed setting this machine cannot honour; the message says which key to change."""


def c_compiler() -> str | None:
    """The C compiler inductor would use on CPU, or None."""
    return next((path for name in ("cc", "gcc", "clang", "g++") if (path := shutil.which(name))), None)


def resolve(speed_cfg: Mapping, device: torch.device | str) -> dict:
    """The concrete switches (bools) and compile mode for ``device`` from the ``speed`` section."""
    device_type = torch.device(device).type
    auto = AUTO.get(device_type, AUTO["cpu"])
    settings = {}
    for name in SWITCHES:
        value = speed_cfg[name]
        settings[name] = auto[name] if value == "auto" else value == "on"
    if settings["compile"] and device_type == "cpu" and c_compiler() is None:
        if speed_cfg["compile"] == "on":
            warnings.warn("speed.compile on: no C compiler (cc) found, inductor cannot build CPU kernels; running eagerly")
        settings["compile"] = False
    if speed_cfg["compile_mode"] == "reduce-overhead" and device_type != "cuda":
        raise SpeedError("speed.compile_mode reduce-overhead records CUDA graphs: GPU only; use default on this device")
    settings["compile_mode"] = speed_cfg["compile_mode"]
    return settings


def compile_in_place(module: nn.Module, mode: str = "default", backend: str | object = "inductor") -> nn.Module:
    """``module.forward`` compiled, falling back to eager for good at the first failure (with a warning).

    The compiled function is tried once per call; an error raised while compiling (or by the compiled code) is caught,
    the eager forward is restored and re-run, so a genuine error of the model itself surfaces from eager code as usual.
    """
    eager = module.forward
    compiled = torch.compile(eager, mode=mode, backend=backend)

    @functools.wraps(eager)
    def forward(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001  (any compile failure: fall back, the eager run re-raises real ones)
            cause = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            warnings.warn(
                f"torch.compile of {type(module).__name__} failed, running it eagerly "
                f"(speed.compile off silences this): {type(error).__name__}: {cause}"
            )
            module.forward = eager
            return eager(*args, **kwargs)

    module.forward = forward
    return module


def prepare_module(module: nn.Module, settings: Mapping) -> nn.Module:
    """The module in its speed settings (in place): channels_last weights, compiled forward."""
    if settings["channels_last"]:
        module.to(memory_format=torch.channels_last)
    if settings["compile"]:
        compile_in_place(module, settings["compile_mode"])
    return module


def adam(parameters: Iterable[torch.Tensor], lr: float, betas, settings: Mapping) -> torch.optim.Adam:
    """Adam as the reference configures it (eps 1e-8, no weight decay), fused when ``settings['fused_adam']``."""
    return torch.optim.Adam(parameters, lr=lr, betas=tuple(betas), fused=True if settings["fused_adam"] else None)
