"""genkd: data-limited image generation (and classification) with knowledge distillation."""
from genkd._torchvision_compat import install_import_hook

install_import_hook()  # before anything imports torchvision (see genkd/_torchvision_compat.py)

__version__ = "0.1.0"
