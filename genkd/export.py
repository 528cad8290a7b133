"""``genkd export``: the EMA generator of a run as a Hugging Face model folder (safetensors weights + config.json).

    genkd export runs/cifar10-0.1 --out exported/cifar10-0.1
    genkd export runs/cifar10-0.1 --out exported/cifar10-0.1 --push-to-hub user/genkd-cifar10-0.1

    from genkd.export import GenkdGenerator
    G = GenkdGenerator.from_pretrained("exported/cifar10-0.1")       # or a Hub repo id
    images = G(torch.randn(8, G.z_dim), torch.arange(8))             # [-1, 1]

Saving and loading are huggingface_hub's ``PyTorchModelHubMixin``: ``config.json`` holds the run's ``model`` section
and the class count, so the same ``build_models`` as training rebuilds the network, and ``model.safetensors`` the
weights.
"""
import argparse
import sys
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from genkd.checkpoint import GENERATOR_CHECKPOINTS, CheckpointError, load_generator
from genkd.defaults import DEFAULTS


class ExportError(RuntimeError):
    """The export could not be written or pushed; the message says what to do."""


ERRORS = (ExportError, CheckpointError)


class GenkdGenerator(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="genkd",
    license="mit",
    tags=["gan", "biggan", "class-conditional", "knowledge-distillation", "genkd"],
):
    """A genkd BigGAN generator G(z, y) with ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``.

    ``sample_mode`` / ``sample_batch_size``: how samples are meant to be drawn (the run's ``eval.sample_mode`` and
    ``eval.sample_batch_size``; genkd/sampling.py).
    """

    def __init__(self, model: dict, num_classes: int, sample_mode: str = "train", sample_batch_size: int = 50):
        super().__init__()
        from genkd.models.biggan import build_models

        self.generator = build_models(model, num_classes)[0]
        self.num_classes, self.sample_mode, self.sample_batch_size = num_classes, sample_mode, sample_batch_size

    @property
    def z_dim(self) -> int:
        return self.generator.z_dim

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.generator(z, y)


def from_run(run_dir_or_checkpoint: str | Path, which: str = "auto") -> GenkdGenerator:
    """The EMA generator of a run directory (its checkpoint ``which``: best.pt when it has one, else last.pt) or a
    checkpoint file, in eval mode."""
    loaded = load_generator(run_dir_or_checkpoint, "cpu", which)
    eval_cfg = {**DEFAULTS["eval"], **loaded.config.get("eval", {})}
    model = GenkdGenerator(dict(loaded.config["model"]), loaded.num_classes, eval_cfg["sample_mode"],
                           eval_cfg["sample_batch_size"])  # fmt: skip
    model.generator.load_state_dict(loaded.generator.state_dict())
    return model.eval()


def export(source: str | Path, out: str | Path, push_to_hub: str | None = None, which: str = "auto") -> Path:
    """Write ``out`` (config.json, model.safetensors, README.md); optionally push it to the Hub repo ``push_to_hub``."""
    model = from_run(source, which)
    out = Path(out)
    model.save_pretrained(out)
    if push_to_hub:
        try:
            model.push_to_hub(push_to_hub)
        except Exception as error:  # noqa: BLE001  (connection errors, HTTP errors, missing token: one line each)
            reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
            raise ExportError(
                f"the export in {out} is complete but pushing to {push_to_hub} failed ({reason}): log in with "
                f"`hf auth login` and run again where the Hub is reachable, or upload {out} later"
            ) from None
    return out


def main(argv=None) -> Path | None:
    parser = argparse.ArgumentParser(prog="genkd export", description="Export a run's EMA generator (safetensors).")
    parser.add_argument("source", type=Path, help="run directory or a checkpoint .pt")
    parser.add_argument("--checkpoint", choices=GENERATOR_CHECKPOINTS, default="auto",
                        help="of a run directory: auto = best.pt when the run has one, else last.pt")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="folder to write (config.json, model.safetensors)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload to this Hugging Face Hub repository")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        out = export(args.source, args.out, args.push_to_hub, args.checkpoint)
    except ERRORS as error:
        sys.exit(f"error: {error}")
    print(f"exported {args.source} -> {out}" + (f" and {args.push_to_hub}" if args.push_to_hub else ""))
    return out


if __name__ == "__main__":
    main()
