"""Sample grids and a diversity figure for trained PneumoniaMNIST generators.

For each ``save_pretrained`` folder given, writes ``<out>/<name>.png`` (one row pair per class:
16 seeded samples per class) and ``<out>/real.png`` (real training images, same layout), and
prints one JSON line with, per generator, the mean pairwise pixel distance of its samples within
each class divided by the same figure for real images of that class (``diversity_ratio``: about
1 is as varied as the data; far below 1 means mode collapse), plus the sampling time.

    python benchmarks/sample_grids.py --generators runs/cgan_pneumonia/version_0/generator \\
        runs/ddpm_pneumonia/version_0/generator --out benchmarks/results/grids
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _common import data_root, emit, versions

PER_CLASS = 16


def mean_pairwise_distance(images: torch.Tensor) -> float:
    """Mean L2 distance between distinct pairs of images, per pixel (RMS units in [-1, 1])."""
    flat = images.flatten(1).double()
    d = torch.cdist(flat, flat) / flat.shape[1] ** 0.5
    n = len(flat)
    return float(d.sum() / (n * (n - 1)))


def main() -> None:
    from lightning_medaug.data import MedMNISTDataModule
    from lightning_medaug.generative import load_generator
    from lightning_medaug.registry import GENERATORS
    from lightning_medaug.rendering import save_image_grid

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generators", nargs="+", required=True, help="save_pretrained folders")
    parser.add_argument("--out", required=True, help="folder for the PNG grids")
    parser.add_argument("--data-root", default=None,
                        help="folder with pneumoniamnist.npz (default: $MEDAUG_DATA or shipped)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--names", nargs="+", default=None,
                        help="names of the grids, one per generator (default: each one's registry name)")
    parser.add_argument("--result", default=None, help="also append the JSON line to this file")
    args = parser.parse_args()
    if args.names is not None and len(args.names) != len(args.generators):
        parser.error(f"--names needs one name per generator: {len(args.generators)} generators, "
                     f"{len(args.names)} names")

    out = Path(args.out)
    data = MedMNISTDataModule(name="pneumoniamnist", root=data_root(args.data_root))
    train = data.train_dataset
    labels = train.labels.flatten()
    classes = sorted(set(labels.tolist()))
    g = torch.Generator().manual_seed(args.seed)
    real = {c: train.images[torch.nonzero(labels == c).flatten()[torch.randperm(int((labels == c).sum()), generator=g)[
        :PER_CLASS]]].float() / 127.5 - 1 for c in classes}
    real = {c: x.unsqueeze(1) if x.ndim == 3 else x for c, x in real.items()}
    save_image_grid(torch.cat([real[c] for c in classes]), out / "real.png", nrow=8, scale=3,
                    title="real PneumoniaMNIST train (rows 1-2: normal, 3-4: pneumonia)")
    real_div = {c: mean_pairwise_distance(real[c]) for c in classes}

    record = {"benchmark": "sample_grids", "per_class": PER_CLASS, "real_diversity": real_div, "generators": {},
              "versions": versions()}
    for i, folder in enumerate(args.generators):
        model = load_generator(folder).eval()
        name = args.names[i] if args.names else GENERATORS.name_of(model) or type(model).__name__
        start = time.perf_counter()
        samples = {}
        for c in classes:
            wanted = torch.full((PER_CLASS,), c, dtype=torch.long) if model.num_classes else None
            samples[c] = model.sample(PER_CLASS, labels=wanted,
                                      generator=torch.Generator().manual_seed(args.seed + c)).float().cpu()
        seconds = time.perf_counter() - start
        title = f"{name}: rows 1-2 normal, 3-4 pneumonia" if model.num_classes else f"{name} (unconditional)"
        save_image_grid(torch.cat([samples[c] for c in classes]), out / f"{name}.png", nrow=8, scale=3, title=title)
        record["generators"][name] = {
            "folder": Path(folder).as_posix(), "conditional": bool(model.num_classes),
            "diversity_ratio": {c: mean_pairwise_distance(samples[c]) / real_div[c] for c in classes},
            "mean": float(torch.cat(list(samples.values())).mean()),
            "std": float(torch.cat(list(samples.values())).std()),
            "sample_seconds": seconds,
        }
    emit(record, args.result)


if __name__ == "__main__":
    main()
