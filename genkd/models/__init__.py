"""GAN architectures."""
from genkd.models.biggan import Discriminator, Generator, build_models

__all__ = ["Discriminator", "Generator", "build_models"]
