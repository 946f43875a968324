"""Federated training of generators: sites that cannot pool their images train one generator with Flower.

:mod:`.sites` deals a data set out to sites and checks what each holds; importing this package does
not import Flower.
"""

from lightning_medaug.federated.sites import SPLITS, SiteDataModule, check_sites, site_indices, site_summary

__all__ = ["SPLITS", "SiteDataModule", "check_sites", "site_indices", "site_summary"]
