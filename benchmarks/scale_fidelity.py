"""Fidelity at 256 px: mask-conditional latent diffusion on ISBI 2012 EM against its real-vs-real floor.

Trains ``recipes/autoencoder_isbi_256.yaml`` and then ``recipes/ldm_isbi_256.yaml`` on its latents, on the
recipes' training images (0-19, resized from 512 to 256 px), or reuses them when ``--out`` already holds
them (resumable). The LDM then draws ``--per-mask`` images for each training mask, and the images are
scored as ``medaug evaluate --extractor segmentation`` does: FD, KID, precision/recall on the encoder of
a U-Net trained on the 20 training pairs, each beside the floor (the 10 images the generator never saw,
20-29, against the same training images), and the copy rate. Target (the clinical-resolution plan): FD
within 2x of the floor. Also writes ``samples.png`` (mask, drawn image, the real image of that mask).

    MEDAUG_DATA=../shared/data python benchmarks/scale_fidelity.py --threads 1 --out runs/scale_fidelity
    python benchmarks/scale_fidelity.py --tiny --out /tmp/scale_fidelity     # smoke size: 32 px, 1 epoch

Prints one JSON line. ``--data-root`` (or ``$MEDAUG_DATA``) names a folder holding ``isbi2012-em/``
(``image/`` and ``label/``); the copy shipped with the package is used otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_root, emit, versions  # noqa: E402

PICK = ("fd", "kid_mean", "precision", "recall")
TARGET_FD_RATIO = 2.0


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/scale_fidelity", help="folder of every step (resumable)")
    p.add_argument("--per-mask", type=int, default=5, help="images drawn per training mask")
    p.add_argument("--autoencoder-epochs", type=int, default=None, help="default: the recipe's")
    p.add_argument("--ldm-epochs", type=int, default=None, help="default: the recipe's")
    p.add_argument("--extractor-epochs", type=int, default=20, help="epochs of the segmentation extractor")
    p.add_argument("--data-root", default=None, help="folder with isbi2012-em/ (default: $MEDAUG_DATA, else shipped)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--tiny", action="store_true", help="smoke size: 32 px, narrow networks, 1 epoch each")
    return p.parse_args(argv)


def recipe(name: str, args: argparse.Namespace, epochs: int | None, **init_args: Any) -> dict[str, Any]:
    """The recipe with this run's data root, epochs, logging folder and (``--tiny``) smoke sizes."""
    from lightning_medaug.study.recipe import load_recipe, with_trainer
    from lightning_medaug.study.runner import _set_dotted

    config = load_recipe(name)
    if args.root:
        _set_dotted(config, "data.init_args.root", args.root)
    for key, value in init_args.items():
        _set_dotted(config, f"model.init_args.{key}", value)
    if args.tiny:
        for key, value in {"data.init_args.image_size": 32, "model.init_args.channels": [8, 8],
                           "model.init_args.norm_num_groups": 8}.items():
            _set_dotted(config, key, value)
        if "patch_size" in config["model"]["init_args"]:
            config["model"]["init_args"].update(image_size=32, patch_size=16)
        epochs = 1
    return with_trainer(config, seed=args.seed, **({"max_epochs": epochs} if epochs else {}))


def train(config: dict[str, Any], folder: Path) -> Path:
    """Fit ``config`` into ``folder`` once; returns the exported generator."""
    from lightning_medaug.study.recipe import run_recipe
    from lightning_medaug.weights_folder import WEIGHTS_NAME

    exported = folder / "generator"
    if not (exported / WEIGHTS_NAME).is_file():
        run_recipe(config, folder, test=False)
    return exported


def follows_mask(net: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor) -> float:
    """Dice (torchmetrics, per image, averaged) of a binary segmenter's masks of ``images`` against ``masks``."""
    from torchmetrics.segmentation import DiceScore

    dice = DiceScore(num_classes=1, include_background=True, average="macro", input_format="one-hot")
    with torch.no_grad():
        for start in range(0, len(images), 8):
            logits = net(images[start:start + 8].float())
            dice.update((logits > 0).long(), (masks[start:start + 8].reshape(logits.shape) > 0.5).long())
    return float(dice.compute())


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = data_root(args.data_root)
    args.root = str(Path(root) / "isbi2012-em") if root and (Path(root) / "isbi2012-em").is_dir() else None
    out = Path(args.out)
    from lightning_medaug.bank.writer import write_bank
    from lightning_medaug.data import FolderDataModule
    from lightning_medaug.evaluation.evaluate import evaluate_bank
    from lightning_medaug.generative import load_generator
    from lightning_medaug.metrics import train_segmentation_extractor
    from lightning_medaug.rendering import save_image_grid

    started = time.perf_counter()
    autoencoder = train(recipe("autoencoder_isbi_256.yaml", args, args.autoencoder_epochs), out / "autoencoder")
    ldm_config = recipe("ldm_isbi_256.yaml", args, args.ldm_epochs, autoencoder_path=str(autoencoder))
    ldm = train(ldm_config, out / "ldm")
    train_seconds = time.perf_counter() - started

    # the recipes' training images; the 10 the generator never saw (20-29) are the floor's held-out set
    data = dict(ldm_config["data"]["init_args"], val_indices=[], test_indices=list(range(20, 30)),
                train_transforms=None, batch_size=4)
    real = FolderDataModule(**data)
    real.setup("fit")
    real.setup("test")
    train_set, held_out = real.train_dataset, real.test_dataset
    masks = torch.stack([train_set[i]["mask"] for i in range(len(train_set))]).float()
    masks = masks.repeat_interleave(args.per_mask, dim=0)
    model = load_generator(ldm).eval()
    started = time.perf_counter()
    summary = write_bank(model, out / "bank", len(masks), masks=masks, seed=args.seed, batch_size=8,
                         shard_size=len(masks), progress=not args.tiny)
    sample_seconds = (time.perf_counter() - started) / len(masks) if summary.written else None
    from lightning_medaug.bank import SyntheticBank

    bank = SyntheticBank(out / "bank")
    shown = list(range(0, len(bank), args.per_mask))[:6]
    rows = [bank[i]["mask"] * 2 - 1 for i in shown] + [bank[i]["image"] for i in shown] + \
        [train_set[i // args.per_mask]["image"] for i in shown]
    save_image_grid(torch.stack(rows).float(), out / "samples.png", nrow=len(shown),
                    title="mask / LDM image / real image of that mask", scale=1)
    # the extractor trains on the same 20 pairs and reports its Dice on images 20-24 (it never trains on them)
    judged = FolderDataModule(**dict(data, val_indices=list(range(20, 25)), test_indices=list(range(25, 30))))
    extractor = train_segmentation_extractor(judged, out / "extractors", epochs=args.extractor_epochs, seed=args.seed)
    result = evaluate_bank(out / "bank", train_set, held_out, out / "evaluate", extractor, seed=args.seed,
                           floor_split="images 20-29", overwrite=True)
    # Does an image follow the mask it was drawn for? The extractor's own U-Net, trained on the real pairs,
    # segments it, scored against that mask; the held-out real images against theirs are the reference.
    held_masks = torch.stack([held_out[i]["mask"] for i in range(len(held_out))])
    drawn = bank.read(range(len(bank)))
    mask_dice = {"synthetic": follows_mask(extractor.net, drawn["image"], drawn["mask"]),
                 # chance level: the same images against another training image's mask
                 "synthetic_other_mask": follows_mask(extractor.net, drawn["image"],
                                                      drawn["mask"].roll(args.per_mask, dims=0)),
                 "held_out_real": follows_mask(extractor.net, torch.stack([held_out[i]["image"]
                                                                          for i in range(len(held_out))]), held_masks)}
    synthetic, floor = result["fidelity"]["synthetic"], result["fidelity"]["floor"]
    memo = result["memorization"]
    ratio = synthetic["fd"] / floor["fd"] if floor["fd"] > 0 else None
    emit({"benchmark": "scale_fidelity", "image_size": int(data["image_size"]), "tiny": args.tiny,
          "num_synthetic": len(bank), "num_train": len(train_set), "num_held_out": len(held_out),
          **{k: synthetic[k] for k in PICK}, "floor": {k: floor[k] for k in PICK},
          "fd_ratio": ratio, "target_fd_ratio": TARGET_FD_RATIO,
          "meets_target": None if ratio is None else ratio <= TARGET_FD_RATIO,
          "copy_rate": {s: (memo.get(s) or {}).get("copy_rate") for s in ("pixel", "feature")},
          "mask_dice": mask_dice, "extractor_val": extractor.config.get("val_metrics"),
          "train_seconds": round(train_seconds, 1), "sample_s_per_image": sample_seconds, **versions()},
         str(out / "result.jsonl"))


if __name__ == "__main__":
    main()
