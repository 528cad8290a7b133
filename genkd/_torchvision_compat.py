"""Make torchvision importable on CPU-only torch builds, once, in every process.

The only torchvision built for torch 2.13.0 is a CUDA build. On a CPU-only torch its compiled ops library cannot
load, and ``import torchvision`` then fails while registering fake kernels for ``torchvision::nms`` ("operator does
not exist"). genkd needs only torchvision's pure-Python parts (datasets, transforms, models, utils), so when the ops
library cannot load we declare the two op schemas torchvision registers against; detection ops stay unavailable.

This module imports nothing heavy: ``import genkd`` installs a hook that runs the check just before torchvision's
first import. Processes that import torchvision before genkd (the ``accelerate`` command imports timm, which imports
torchvision) need the hook at interpreter start: ``genkd-cpu-torchvision`` writes a one-line ``.pth`` file for that
into site-packages, and does nothing where torchvision's ops load (GPU installs).
"""
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import sysconfig
from pathlib import Path

PTH_FILE = "genkd-cpu-torchvision.pth"


def _ops_library() -> Path | None:
    """torchvision's compiled ops library, found without importing torchvision."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if (folder / f"_C{suffix}").is_file():
            return folder / f"_C{suffix}"
    return None


def ops_library_loads() -> bool:
    import torch

    library = _ops_library()
    if library is None:
        return False
    try:
        torch.ops.load_library(str(library))  # what torchvision does itself; loading twice is harmless
    except OSError:
        return False
    return True


def declare_missing_ops() -> None:
    """Declare ``torchvision::nms`` / ``qnms`` unless torchvision's own ops library provides them."""
    import torch

    if ops_library_loads() or hasattr(declare_missing_ops, "library"):
        return
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    declare_missing_ops.library = library  # keep the registration alive for the life of the process


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs ``declare_missing_ops`` when torchvision is first imported, then gets out of the way."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            declare_missing_ops()
        return None  # the regular finders import the module


def install_import_hook() -> None:
    if "torchvision" not in sys.modules and not any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path):
        sys.meta_path.insert(0, _BeforeTorchvision())


def install_startup_hook(site_packages: str | Path | None = None) -> None:
    """Console command ``genkd-cpu-torchvision``: install the hook at interpreter start, where it is needed."""
    if ops_library_loads():
        print("torchvision's ops load with this torch: nothing to do")
        return
    target = Path(site_packages or sysconfig.get_paths()["purelib"]) / PTH_FILE
    target.write_text("import genkd._torchvision_compat as hook; hook.install_import_hook()\n")
    print(f"wrote {target}: torchvision now imports on this CPU-only torch in every process")
