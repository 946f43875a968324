"""Generative families; importing this package registers every built-in family."""

from lightning_medaug.generative.base import GenerativeModule, load_generator

__all__ = ["GenerativeModule", "load_generator"]
