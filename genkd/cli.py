"""The ``genkd`` command: one verb per task, each the ``main(argv)`` of a genkd module.

    genkd train --config configs/quickstart.yaml
    genkd sample runs/quickstart --num 1000 --out samples.npz
    genkd evaluate runs/quickstart
    genkd VERB --help                   # every option, generated from the defaults table where the verb has one

Each verb is also ``python -m MODULE``, and under accelerate ``accelerate launch -m MODULE`` (multi-GPU): the table
below names the modules. A verb whose module is not in this installation says so in one line.
"""
import importlib
import sys

# verb -> (module with main(argv), what it does)
VERBS = {
    "train": ("genkd.train", "train a class-conditional BigGAN (+ DiffAugment, optional VkD distillation)"),
    "sample": ("genkd.sample", "write N images of a trained generator to a PNG folder or an .npz"),
    "evaluate": ("genkd.evaluate", "FID, KID, IS, precision/recall/density/coverage of a run, folder or .npz"),
    "compare": ("genkd.tables", "train (or collect) and tabulate the paper grid: FID / IS over seeds beside published"),
    "compare-norms": ("genkd.compare_norms", "runs with distill.norm none / layernorm / whitening side by side"),
    "train-classifier": ("genkd.train_classifier", "train or distil a CIFAR classifier (the classifier track)"),
    "compare-classifier": ("genkd.classifier.tables", "run and tabulate the classifier grid: top-1 over seeds"),
    "convert": ("genkd.convert", "convert a reference BigGAN-CIFAR checkpoint (G, G_ema, D) into a genkd run"),
    "export": ("genkd.export", "save a run's EMA generator with save_pretrained (safetensors), optionally push it"),
}


class CliError(RuntimeError):
    """An unknown verb or a verb this installation lacks."""


def usage() -> str:
    width = max(map(len, VERBS))
    lines = ["usage: genkd VERB [options]   (genkd VERB --help for the options of one verb)", "", "verbs:"]
    lines += [f"  {verb:<{width}}  {text}" for verb, (_, text) in VERBS.items()]
    return "\n".join(lines)


def load_verb(verb: str):
    """The module behind ``verb``; a one-line CliError when the verb is unknown or its module is not installed."""
    if verb not in VERBS:
        raise CliError(f"unknown verb {verb!r}; accepted: {', '.join(VERBS)} (genkd --help)")
    module_name = VERBS[verb][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        raise CliError(f"genkd {verb} is not available in this installation ({module_name} is missing)") from None


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    if argv[0] in ("-V", "--version"):
        from genkd import __version__

        print(f"genkd {__version__}")
        return
    try:
        module = load_verb(argv[0])
    except CliError as error:
        sys.exit(f"error: {error}")
    sys.argv = [f"genkd {argv[0]}", *argv[1:]]  # what argparse-based verbs print as their program name
    try:
        module.main(argv[1:])
    except getattr(module, "ERRORS", ()) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
