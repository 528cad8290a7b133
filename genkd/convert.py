"""Reference checkpoints -> genkd: BigGAN-PyTorch / DiffAugment-biggan-cifar (and KD_DLGAN) state dicts of G, G_ema
and D into genkd's Generator and Discriminator, with the same outputs.

    python -m genkd.convert weights/DiffAugment-biggan-cifar10-0.1 --out runs/ref-c10-0.1 [--suffix best]
    python -m genkd.convert DiffAugment-biggan-cifar10-0.1.pth --out runs/ref-c10-0.1   # a published file
    python eval/evaluate.py runs/ref-c10-0.1

What the reference saves (DiffAugment-biggan-cifar utils.py ``save_weights``, same in BigGAN-PyTorch):
``weights/<experiment>/{G,G_ema,D,G_optim,D_optim,state_dict}.pth`` every ``--save_every`` steps, and with
``--which_best FID`` the same names with ``_best`` (``G_ema_best.pth`` ...) whenever the FID improves; each model
file is a plain ``state_dict()``. The published models (data-efficient-gans DiffAugment-biggan-cifar/README.md, e.g.
``mit-han-lab:DiffAugment-biggan-cifar10-0.1.pth``, which its dnnlib ``get_path_or_url`` turns into
https://data-efficient-gans.mit.edu/models/DiffAugment-biggan-cifar10-0.1.pth) are one generator state dict each
("typically ... a file named G_ema_best.pth"), the 24 rows {,DiffAugment-}{,cr-}biggan-cifar{10,100}{,-0.2,-0.1};
eval.py loads them into G and samples in train mode (no --G_eval_mode) in batches of 50.

Reference layout (layers.py, BigGAN.py; G_shared off, no attention, as every CIFAR script):
G: ``linear``; ``blocks.<i>.0.{conv1,conv2,conv_sc}``; ``blocks.<i>.0.{bn1,bn2}`` (ccbn: ``gain.weight`` and
``bias.weight`` class embeddings, or SN linears with G_shared, buffers ``stored_mean``, ``stored_var``); ``shared``
(with G_shared); ``output_layer.0`` (layers.bn: ``gain``, ``bias``, ``stored_mean``, ``stored_var``) and
``output_layer.2`` (conv). D: ``blocks.<i>.0.{conv1,conv2,conv_sc}``, ``linear``, ``embed``; KD_DLGAN's D adds its
distillation head ``linear_cls_1`` (256 -> 1024) and ``linear_cls_2`` (1024 -> 512), which is not part of genkd's
discriminator (the head is the distiller's) and is skipped with a note. Every SN layer (SNConv2d, SNLinear,
SNEmbedding) stores ``weight`` (and ``bias``) plus the buffers ``u0`` (1, rows of the weight matrix: out channels,
out features, or the number of classes of an embedding) and ``sv0`` (1,).

Spectral norm: the reference's ``layers.SN.W_`` runs one power-iteration step on every forward, in eval mode too
(without storing it): ``v = normalize(u W)``, ``u' = normalize(v W^T)``, ``sigma = v W^T u'^T = |W v|``, and divides
by that fresh sigma; ``sv0`` is only the value of the last training step, for logging, and ``u0`` of G_ema is an EMA
of G's u (BigGAN's ``utils.ema`` averages buffers too), so it need not have unit norm. torch's parametrization keeps
``_u`` (rows) and ``_v`` (columns) and in eval mode divides by ``_u^T W _v``. Setting ``_v = normalize(W^T u)`` and
``_u = normalize(W _v)`` makes that exactly the reference's eval-mode sigma, so eval-mode outputs agree for any
stored u. In training mode torch first moves ``_u`` then ``_v`` and uses ``_u^T W _v`` after both, half a step
beyond the reference; the two agree once the vectors have converged (any trained checkpoint). genkd's sampling in
train mode (genkd/sampling.py) keeps the stored vectors, like the reference's first train-mode batch.
"""
import argparse
import re
import sys
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F

from genkd.checkpoint import save_checkpoint
from genkd.config import save_config
from genkd.defaults import gan_config
from genkd.models.biggan import SN_EPS, Discriminator, Generator


class ConversionError(ValueError):
    """A state dict that is not a reference BigGAN-CIFAR one (or does not fit genkd's); the message says what to do."""


# Reference module path -> genkd module path (first match wins).
MODULE_MAP = [
    (r"blocks\.(\d+)\.0\.conv_sc", r"blocks.\1.shortcut"),
    (r"blocks\.(\d+)\.0\.(conv1|conv2)", r"blocks.\1.\2"),
    (r"blocks\.(\d+)\.0\.(bn1|bn2)\.(gain|bias)", r"blocks.\1.\2.\3"),  # class embeddings (or SN linears)
    (r"blocks\.(\d+)\.0\.(bn1|bn2)", r"blocks.\1.\2.norm"),  # ccbn's running statistics
    (r"output_layer\.(0|2)", r"output.\1"),
    (r"(linear|embed|shared)", r"\1"),
]
# Reference tensor name -> genkd tensor name within a module (u0 / sv0 become _u / _v, see the module docstring).
LEAF_MAP = {
    "weight": "weight",
    "bias": "bias",
    "gain": "weight",  # layers.bn's learnable gain is BatchNorm2d's weight
    "stored_mean": "running_mean",
    "stored_var": "running_var",
}
SN_BUFFERS = ("u0", "sv0")
SKIPPED = re.compile(r"linear_cls_\d+\.")  # KD_DLGAN's distillation head on D


def genkd_module(reference_module: str) -> str:
    for pattern, replacement in MODULE_MAP:
        if re.fullmatch(pattern, reference_module):
            return re.sub(pattern, replacement, reference_module)
    raise ConversionError(f"reference key prefix {reference_module!r} has no genkd counterpart (attention layers?)")


def power_vectors(weight: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """genkd's (_u, _v) from the reference's u: eval-mode sigma ``_u^T W _v`` equals the reference's ``|W v|``."""
    matrix = weight.detach().flatten(1).double()
    v = F.normalize(matrix.t() @ u.detach().double().reshape(-1), dim=0, eps=SN_EPS)
    return F.normalize(matrix @ v, dim=0, eps=SN_EPS).to(weight.dtype), v.to(weight.dtype)


def reference_to_genkd(reference: Mapping[str, torch.Tensor], model: torch.nn.Module) -> tuple[dict, list[str]]:
    """A state dict for ``model`` (genkd) from a reference-layout one; (state dict, skipped reference keys)."""
    target = model.state_dict()
    modules: dict[str, dict[str, torch.Tensor]] = {}
    skipped = []
    for key, value in reference.items():
        if SKIPPED.match(key):
            skipped.append(key)
            continue
        module, _, leaf = key.rpartition(".")
        modules.setdefault(module, {})[leaf] = value
    converted = {}
    for module, tensors in modules.items():
        path = genkd_module(module)
        spectral = f"{path}.parametrizations.weight.original" in target
        if spectral != ("u0" in tensors):
            raise ConversionError(
                f"reference {module} is {'' if 'u0' in tensors else 'not '}spectrally normalised but genkd's {path} "
                f"is{'' if spectral else ' not'}: was the reference trained with other G_param / D_param / G_shared?"
            )
        for leaf, value in tensors.items():
            if leaf in SN_BUFFERS:
                continue
            if leaf not in LEAF_MAP:
                raise ConversionError(f"reference key {module}.{leaf} is not one genkd knows how to convert")
            name = f"{path}.{LEAF_MAP[leaf]}"
            converted[f"{path}.parametrizations.weight.original" if spectral and leaf == "weight" else name] = value
        if spectral:
            u, v = power_vectors(tensors["weight"], tensors["u0"])
            converted[f"{path}.parametrizations.weight.0._u"] = u
            converted[f"{path}.parametrizations.weight.0._v"] = v
    for key, value in target.items():
        if key.endswith("num_batches_tracked"):  # the reference's batch norms do not count batches
            converted.setdefault(key, value)
    missing, unexpected = sorted(set(target) - set(converted)), sorted(set(converted) - set(target))
    if missing or unexpected:
        raise ConversionError(
            f"the reference state dict does not fit genkd's {type(model).__name__}: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}; is it a 32x32 BigGAN-CIFAR without attention?"
        )
    shapes = [key for key in target if converted[key].shape != target[key].shape]
    if shapes:
        raise ConversionError(f"shapes differ from genkd's for {shapes[:4]}: the inferred widths do not fit")
    return {key: converted[key].to(target[key].dtype) for key in target}, skipped


def generator_settings(reference: Mapping[str, torch.Tensor]) -> dict:
    """Model settings (config keys) and the number of classes of a reference generator state dict."""
    if "blocks.0.0.conv1.weight" not in reference or "linear.weight" not in reference:
        raise ConversionError("not a BigGAN generator state dict: no blocks.0.0.conv1.weight / linear.weight")
    shared = "shared.weight" in reference
    classes = reference["shared.weight" if shared else "blocks.0.0.bn1.gain.weight"].shape[0]
    return {
        "g_width": reference["blocks.0.0.conv1.weight"].shape[0] // 4,
        "z_dim": reference["linear.weight"].shape[1],
        "shared_dim": reference["shared.weight"].shape[1] if shared else 0,
        "g_blocks": _block_count(reference),
        "num_classes": classes,
    }


def discriminator_settings(reference: Mapping[str, torch.Tensor]) -> dict:
    if "embed.weight" not in reference or "blocks.0.0.conv1.weight" not in reference:
        raise ConversionError("not a BigGAN discriminator state dict: no embed.weight / blocks.0.0.conv1.weight")
    return {
        "d_width": reference["blocks.0.0.conv1.weight"].shape[0] // 4,
        "d_blocks": _block_count(reference),
        "num_classes": reference["embed.weight"].shape[0],
    }


def _block_count(reference: Mapping) -> int:
    return 1 + max(int(match.group(1)) for key in reference if (match := re.match(r"blocks\.(\d+)\.", key)))


def convert_generator(reference: Mapping[str, torch.Tensor]) -> tuple[Generator, dict]:
    """A genkd Generator holding a reference generator state dict (G.pth or G_ema.pth); (generator, settings)."""
    settings = generator_settings(reference)
    generator = Generator(
        settings["num_classes"], settings["g_width"], settings["z_dim"], settings["shared_dim"], settings["g_blocks"]
    )
    generator.load_state_dict(reference_to_genkd(reference, generator)[0])
    return generator, settings


def convert_discriminator(reference: Mapping[str, torch.Tensor]) -> tuple[Discriminator, dict, list[str]]:
    """A genkd Discriminator holding a reference D.pth; (discriminator, settings, skipped keys)."""
    settings = discriminator_settings(reference)
    discriminator = Discriminator(settings["num_classes"], settings["d_width"], settings["d_blocks"])
    state, skipped = reference_to_genkd(reference, discriminator)
    discriminator.load_state_dict(state)
    return discriminator, settings, skipped


def load_reference(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (torch raises many kinds for a bad file)
        raise ConversionError(f"cannot read {path} as a state dict ({str(error).splitlines()[0]})") from None
    if not isinstance(state, Mapping) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ConversionError(f"{path} is not a plain state dict (a dict of tensors), as the reference's G.pth")
    return dict(state)


def reference_files(source: Path, suffix: str) -> dict[str, Path]:
    """{genkd checkpoint key: reference file} of a weights folder, or of one generator file."""
    if source.is_file():
        return {"G_ema": source}
    if not source.is_dir():
        raise ConversionError(f"{source} not found: pass a reference weights folder (G_ema.pth ...) or a .pth file")
    tail = f"_{suffix}" if suffix else ""
    files = {key: source / f"{key}{tail}.pth" for key in ("G_ema", "G", "D")}
    files = {key: path for key, path in files.items() if path.is_file()}
    if "G_ema" not in files and "G" not in files:
        raise ConversionError(f"{source} holds neither G_ema{tail}.pth nor G{tail}.pth")
    return files


def reference_step(source: Path, suffix: str) -> int:
    """The generator iteration the reference saved with its weights (BigGAN-PyTorch's state_dict[_suffix].pth
    ``itr``, train.py), 0 when unknown (a single published generator file)."""
    path = source / f"state_dict{'_' + suffix if suffix else ''}.pth"
    if not path.is_file():
        return 0
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True).get("itr", 0))
    except Exception as error:  # noqa: BLE001  (torch raises many kinds for a bad file)
        raise ConversionError(f"cannot read the iteration in {path} ({str(error).splitlines()[0]})") from None


def convert_run(source: str | Path, run_dir: str | Path, suffix: str = "", overrides=()) -> Path:
    """Write ``run_dir``/config.yaml and a genkd checkpoint of the reference weights; returns the checkpoint path.

    The checkpoint holds ``G_ema`` (from G_ema.pth, else G.pth: the reference evaluates G_ema when it has one),
    ``G`` and ``D`` when present, the config (the inferred model sizes; dataset cifar10 / cifar100 from the class
    count unless ``overrides`` say otherwise) and ``num_classes``: what genkd.checkpoint.load_generator reads. It is
    written as checkpoints/best.pt for ``suffix`` best, else checkpoints/last.pt.
    """
    files = reference_files(Path(source), suffix)
    converted, settings, notes = {}, {}, []
    for key in ("G_ema", "G"):
        if key in files:
            generator, settings = convert_generator(load_reference(files[key]))
            converted[key] = generator.state_dict()
    converted.setdefault("G_ema", converted.get("G"))
    if "D" in files:
        discriminator, d_settings, skipped = convert_discriminator(load_reference(files["D"]))
        if d_settings["num_classes"] != settings["num_classes"]:
            raise ConversionError(
                f"{files['D']} has {d_settings['num_classes']} classes, the generator {settings['num_classes']}"
            )
        converted["D"], settings = discriminator.state_dict(), {**settings, **d_settings}
        if skipped:
            notes.append(f"skipped {len(skipped)} keys of D that genkd's D lacks (KD_DLGAN's head): {skipped[0]} ...")
    num_classes = settings.pop("num_classes")
    dataset = {10: "cifar10", 100: "cifar100"}.get(num_classes, "npz")
    argv = ["--data.dataset", dataset, "--run_dir", str(run_dir)]
    argv += [item for key, value in settings.items() for item in (f"--model.{key}", str(value))]
    cfg = gan_config([*argv, *overrides])
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    path = run_dir / "checkpoints" / f"{'best' if suffix == 'best' else 'last'}.pt"
    origin = {key: str(file) for key, file in files.items()}
    step = reference_step(Path(source), suffix) if Path(source).is_dir() else 0
    state = {**converted, "step": step, "config": cfg.to_dict(), "num_classes": num_classes, "converted_from": origin}
    save_checkpoint(state, path, step=step)
    for note in notes:
        print(f"note: {note}")
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m genkd.convert",
        description="Convert BigGAN-PyTorch / DiffAugment-biggan-cifar weights into a genkd run directory.",
    )
    parser.add_argument("source", help="reference weights folder (G_ema.pth, G.pth, D.pth) or one generator .pth file")
    parser.add_argument("--out", required=True, help="genkd run directory to write (config.yaml, checkpoints/)")
    parser.add_argument("--suffix", default="", help="reference file suffix, e.g. best for G_ema_best.pth")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        path = convert_run(args.source, args.out, args.suffix, overrides)
    except ConversionError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"wrote {path}: evaluate with python eval/evaluate.py {path}")


if __name__ == "__main__":
    main()
