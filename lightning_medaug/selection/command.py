"""``medaug score``: score every sample of a bank and keep the confident, novel and diverse ones.

::

    medaug score --bank banks/cgan --data recipes/classify_pneumonia.yaml --min-confidence 0.6 \\
        --min-novelty 1.0 --keep-fraction 0.5

Writes ``scores.csv`` and ``selection.json`` into the bank folder (see
:mod:`lightning_medaug.selection.score`); ``SyntheticMixDataModule(bank=..., min_score=1)`` then
mixes the kept samples only. Rerunning with another rule reuses the proxies already trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jsonargparse import ArgumentParser

from lightning_medaug.command_parser import command_parser, parse_command

__all__ = ["build_parser", "main", "trainer_placement"]


def build_parser() -> ArgumentParser:
    p = command_parser("medaug score", __doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("--bank", type=str, required=True, help="bank folder written by `medaug generate`")
    p.add_argument("--data", type=str, required=True,
                   help="recipe YAML (its data: section) or data module config (class_path/init_args), file or "
                        "inline; only its training split is read")
    rule = p.add_argument_group("keep rule")
    rule.add_argument("--min-confidence", type=float, default=0.0,
                      help="keep samples whose mean proxy probability of their own label is at least this")
    rule.add_argument("--min-novelty", type=float, default=0.0,
                      help="keep samples at least this far from their nearest real training image (> 0 drops copies)")
    rule.add_argument("--keep-fraction", type=float, default=1.0,
                      help="of the samples passing both thresholds, keep this fraction per class (farthest-point)")
    rule.add_argument("--min-diversity", type=float, default=0.0,
                      help="drop samples closer than this to an already kept sample of their class")
    rule.add_argument("--no-per-class", action="store_true", help="apply --keep-fraction to the whole bank at once")
    proxies = p.add_argument_group("proxy classifiers")
    proxies.add_argument("--folds", type=int, default=5, help="proxies, each trained with one fold held out")
    proxies.add_argument("--seed", type=int, default=0, help="seeds the folds and the proxies")
    proxies.add_argument("--backbone", type=str, default="resnet18",
                         help="a timm name (2D) or resnet10/18/34/50, densenet121 (3D)")
    proxies.add_argument("--epochs", type=int, default=20, help="training epochs of each proxy")
    proxies.add_argument("--max-steps", type=int, default=-1, help="training steps of each proxy (-1: --epochs)")
    proxies.add_argument("--batch-size", type=int, default=32, help="proxy batch size")
    proxies.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of the proxies")
    proxies.add_argument("--small-input-stem", action="store_true", help="3x3 stride-1 ResNet stem for 28x28 images")
    p.add_argument("--extractor", type=str, default="none",
                   help="novelty space: none (pixels), domain (the classifier features of `medaug evaluate`, "
                        "cached) or a folder written by save_feature_extractor")
    p.add_argument("--device", type=str, default="auto", help="auto (a GPU if any), cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def trainer_placement(device: str) -> dict[str, Any]:
    """``lightning.Trainer`` arguments placing the proxies on ``--device``."""
    from lightning_medaug.bank.device import resolve_device

    resolved = resolve_device(device, torch.device("cpu"))
    if resolved.type == "cuda":
        return {"accelerator": "gpu", "devices": [resolved.index or 0]}
    return {"accelerator": resolved.type}


def main(argv: Sequence[str]) -> int:
    """Run ``medaug score``; returns the exit code (bad input raises for the CLI's one-line handler)."""
    from lightning_medaug.selection.proxies import ProxyConfig
    from lightning_medaug.selection.rule import KeepRule
    from lightning_medaug.selection.score import SELECTION_FILE, score_bank

    args = parse_command(build_parser(), argv)
    rule = KeepRule(min_confidence=args.min_confidence, min_novelty=args.min_novelty,
                    keep_fraction=args.keep_fraction, min_diversity=args.min_diversity, per_class=not args.no_per_class)
    proxy = ProxyConfig(backbone=args.backbone, epochs=args.epochs, max_steps=args.max_steps,
                        batch_size=args.batch_size, lr=args.lr, small_input_stem=args.small_input_stem)
    placement = trainer_placement(args.device)
    record = score_bank(args.bank, args.data, rule, folds=args.folds, proxy=proxy, seed=args.seed,
                        extractor=args.extractor, extractor_options={"trainer_kwargs": placement}
                        if args.extractor == "domain" else None,
                        trainer_kwargs=placement, progress=not args.no_progress)
    print(f"kept {record['kept']} of {record['num_samples']} samples (per class: {record['kept_per_class']}); "
          f"scores.csv and {SELECTION_FILE} are in {args.bank}: mix the kept ones with min_score=1")
    return 0
