"""genkd: data-limited image generation (and classification) with knowledge distillation."""
from genkd import _torchvision_compat  # noqa: F401  (must run before anything imports torchvision)

__version__ = "0.1.0"
