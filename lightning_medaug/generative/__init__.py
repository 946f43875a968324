"""Generative families, one module each; the registry imports every module here on first lookup,
so a new family is one new file with ``@register_generator``."""

from lightning_medaug.generative.base import GenerativeModule, load_generator

__all__ = ["GenerativeModule", "load_generator"]
