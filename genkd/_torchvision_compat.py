"""Make torchvision importable on CPU-only torch builds.

The only torchvision built for torch 2.13.0 is a CUDA build. On a CPU-only torch its compiled ops library cannot load,
and ``import torchvision`` then fails while registering fake kernels for ``torchvision::nms`` ("operator does not
exist"). genkd uses only torchvision's pure-Python parts (datasets, transforms, models), so when, and only when, that
happens we declare the two op schemas it registers against and import again. Detection ops stay unavailable.
"""
import sys

import torch


def _declare_missing_ops() -> None:
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    _declare_missing_ops.library = library  # keep the registration alive for the life of the process


try:
    import torchvision  # noqa: F401
except RuntimeError as error:
    if "torchvision::nms" not in str(error):
        raise
    for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
        del sys.modules[name]
    _declare_missing_ops()
    import torchvision  # noqa: F401
