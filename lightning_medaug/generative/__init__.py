"""Generative families; importing this package registers every built-in family."""

from lightning_medaug.generative.base import GenerativeModule, load_generator
from lightning_medaug.generative import vae, vqvae  # noqa: F401  (registers)
from lightning_medaug.generative import cyclegan, gan, pix2pix  # noqa: F401  (registers)
from lightning_medaug.generative import diffusion, latent_diffusion  # noqa: F401  (registers)

__all__ = ["GenerativeModule", "load_generator"]
