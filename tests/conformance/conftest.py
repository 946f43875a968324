"""Shared pieces of the conformance suite: small generators, banks written from them, and a runner.

Each test module is a small user project written the way its community writes it; the suite
checks that ``SyntheticMixDataModule`` trains it for one epoch unchanged, once from a bank and
once from a generator, or refuses it at set-up with one clear line. The generators are untrained:
the suite checks structure, types and counts, not image quality.
"""

from __future__ import annotations

import pytest
import torch

from lightning_medaug.bank import write_bank
from lightning_medaug.data import make_phantoms
from lightning_medaug.registry import create_generator


def _cvae(spatial_dims: int, size: int, classes: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_generator("cvae", spatial_dims=spatial_dims, image_size=size, num_classes=classes,
                            channels=[4, 8], norm_num_groups=4, latent_channels=2, cond_channels=2)


GENERATORS = {
    "2d16": lambda: _cvae(2, 16),
    "2d16x3": lambda: _cvae(2, 16, classes=3),
    "2d28": lambda: _cvae(2, 28),
    "3d28": lambda: _cvae(3, 28),
    "3d8": lambda: _cvae(3, 8),
    "mask16": lambda: create_generator("pix2pix", image_size=16, in_channels=1),
}


@pytest.fixture(scope="session")
def generators():
    """Generators by name, built once per session."""
    cache: dict[str, torch.nn.Module] = {}

    def get(name: str) -> torch.nn.Module:
        if name not in cache:
            cache[name] = GENERATORS[name]()
        return cache[name]

    return get


@pytest.fixture(scope="session")
def banks(generators, tmp_path_factory):
    """Bank folders by generator name, written once per session (64 samples each)."""
    cache: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in cache:
            model = generators(name)
            out = tmp_path_factory.mktemp(f"bank_{name}")
            masks = None
            if getattr(model, "requires_masks", False):
                masks = make_phantoms(16, image_size=16, seed=5)[2]
            labels = "balanced" if getattr(model, "num_classes", 0) else None
            write_bank(model, out, num_samples=64, labels=labels, masks=masks, seed=0, progress=False)
            cache[name] = str(out)
        return cache[name]

    return get
