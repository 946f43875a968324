"""lightning-medaug: generative data augmentation for medical imaging on Lightning."""

__version__ = "0.1.0"
