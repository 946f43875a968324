"""Federated generators against the central one and each site's own: fidelity, copies, downstream use.

For a federation recipe (``recipes/federated_cvae_pneumonia.yaml`` by default) and each number of sites
(``--sites 3 5``) and split (``--splits iid label_skew``, Dirichlet ``--alpha`` 0.3), trains

* ``central``: the same generator on the whole training split, as many epochs as a federation's
  rounds x local epochs, in one Lightning ``Trainer`` (the pooled-data upper reference);
* ``federated``: the recipe's federation without DP (``medaug federate``, in-process sites);
* ``federated_dp<eps>``: the same with DP-SGD at every site, the noise calibrated to each ``--epsilons``
  over all rounds (the recipe's delta, clipping and accountant);
* ``site<i>``: each site's own generator trained alone on its share for the same number of epochs.

Then scores each generator as ``medaug evaluate`` does (``evaluate_bank`` on the domain extractor: FD,
KID, precision, recall against the training split, beside the held-out-vs-train floor; pixel and
feature copy rates) on ``--num-samples`` images with the training split's class frequencies, draws a
sample grid, and measures the downstream effect at ``--fraction`` (10%) of the training split: a
ResNet-18 (``classify_pneumonia.yaml``, 40 epochs) with classic augmentation and the generator's samples
mixed in at ratio ``--ratio`` (0.5), against classic augmentation alone, per ``--downstream-seeds``
(the question: does a site holding 10% of the images gain from the federation's generator?).

Every step writes its result to ``--out`` and is skipped when run again (resumable; a federation
resumes after its last round). One JSON line per generator goes to ``<out>/generators.jsonl`` as it
finishes; the script prints one JSON line at the end with every row and the targets: federated (no DP) FD within 1.25x
of the central FD, and below every single site's own FD, per number of sites and split.

    MEDAUG_DATA=../shared/data python benchmarks/federated_evidence.py --sites 3 5 --threads 1
    python benchmarks/federated_evidence.py --tiny          # smoke size: 2 sites, 1 round, phantoms
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import data_root, emit, versions
from few_step import draw, training_labels
from unet_efficiency import set_threads

PICK = ("fd", "kid_mean", "precision", "recall")
TARGET = {"federated_fd_over_central_max": 1.25, "federated_fd_below_every_site": True}


def settings_for(args: argparse.Namespace) -> Any:
    """The recipe's federation settings, with ``--rounds`` and the data root applied."""
    from lightning_medaug.federated.command import parse_federation

    if args.tiny:
        from lightning_medaug.federated.settings import FederationSettings

        data = {"class_path": "lightning_medaug.data.PhantomDataModule",
                "init_args": {"image_size": 16, "num_classes": 2, "num_train": 64, "num_val": 16, "num_test": 32,
                              "batch_size": 16}}
        return FederationSettings(generator="cvae", data=data, num_rounds=1, generator_args={
            "spatial_dims": 2, "in_channels": 1, "image_size": 16, "num_classes": 2, "channels": [8, 16],
            "latent_channels": 2, "norm_num_groups": 8}, privacy={"target_epsilon": 8.0, "max_grad_norm": 1.0})
    settings, _ = parse_federation(["--config", args.recipe, "--out", "unused"])
    init = dict(settings.data.get("init_args", {}))
    root = data_root(args.data_root)
    if root and "root" not in init:
        init["root"] = root
    changes: dict[str, Any] = {"data": {**settings.data, "init_args": init}}
    if args.rounds:
        changes["num_rounds"] = args.rounds
    return dataclasses.replace(settings, **changes)


def train_alone(settings: Any, datamodule: Any, folder: Path) -> Path:
    """The generator trained on ``datamodule`` alone for the federation's rounds x local epochs."""
    import lightning as L

    exported = folder / "generator"
    if (exported / "model.safetensors").is_file():
        return exported
    model = settings.build_generator()
    epochs = settings.num_rounds * settings.local_epochs
    trainer = L.Trainer(**{"accelerator": "auto", "devices": 1, **settings.trainer}, max_epochs=epochs,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        default_root_dir=str(folder / "trainer"))
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    model.save_pretrained(exported)
    (folder / "train.json").write_text(json.dumps({"epochs": epochs, "seconds": time.perf_counter() - start,
                                                   "num_images": len(datamodule.train_dataset)}), encoding="utf-8")
    return exported


def train_federated(settings: Any, folder: Path) -> Path:
    """A federation (resumed after its last finished round when run again)."""
    from lightning_medaug.federated.command import federate

    if not (folder / "generator" / "model.safetensors").is_file():
        federate(settings, folder)
    return folder / "generator"


def cost(folder: Path) -> dict[str, Any]:
    """Seconds of training: per round for a federation (its record), in all for a generator alone."""
    from lightning_medaug.federated.record import read_federation

    record = read_federation(folder / "generator")
    if record is None:
        return json.loads((folder / "train.json").read_text(encoding="utf-8"))
    summary = record.get("summary", {})
    seconds = [r["seconds"] for r in record.get("rounds", []) if "seconds" in r]
    return {"rounds": summary.get("rounds"), "seconds_per_round": sum(seconds) / len(seconds) if seconds else None,
            **({"epsilon": summary["epsilon"], "delta": summary["delta"]} if "epsilon" in summary else {})}


def fidelity(exported: Path, folder: Path, real: Any, args: argparse.Namespace) -> dict[str, Any]:
    """FD / KID / precision / recall beside the floor, and the copy rates, as ``medaug evaluate``."""
    from torch.utils.data import TensorDataset

    from lightning_medaug.evaluation.evaluate import evaluate_bank
    from lightning_medaug.generative import load_generator
    from lightning_medaug.rendering import save_image_grid

    path = folder / "fidelity.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    train, held_out, floor_split, extractor = real
    model = load_generator(exported).eval()
    labels = training_labels(train, args.num_samples, args.seed) if model.num_classes else None
    images = draw(model, args.num_samples, labels, 64, args.seed)
    order = torch.argsort(labels, stable=True)[:: max(1, args.num_samples // 32)][:32] if labels is not None else \
        torch.arange(min(32, len(images)))
    save_image_grid(images[order].float(), folder / "samples.png", nrow=8, title=folder.name, scale=3)
    bank = TensorDataset(images, labels) if labels is not None else TensorDataset(images)
    result = evaluate_bank(bank, train, held_out, folder / "evaluate", extractor, num_samples=args.num_samples,
                           seed=args.seed, floor_split=floor_split, num_classes=model.num_classes or None)
    memo = result["memorization"]
    scores = {**{k: result["fidelity"]["synthetic"][k] for k in PICK},
              "floor": {k: result["fidelity"]["floor"][k] for k in PICK},
              "copy_rate": {s: (memo.get(s) or {}).get("copy_rate") for s in ("pixel", "feature")}}
    path.write_text(json.dumps(scores, indent=2), encoding="utf-8")
    return scores


def downstream(exported: Path | None, folder: Path, args: argparse.Namespace, seed: int) -> float:
    """Test AUC at ``--fraction`` with classic augmentation, plus the generator's samples when given."""
    from lightning_medaug.bank import write_bank
    from lightning_medaug.generative import load_generator
    from lightning_medaug.study.recipe import (
        load_recipe,
        run_recipe,
        with_classic_augmentation,
        with_mixing,
        with_subset,
        with_trainer,
    )
    from lightning_medaug.study.synthetic import bank_size, train_labels

    path = folder / f"downstream_s{seed}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))["test_auc"]
    config = load_recipe(args.task)
    root = data_root(args.data_root)
    if root:
        config["data"].setdefault("init_args", {})["root"] = root
    config = with_trainer(with_subset(config, args.fraction, seed), seed=seed, max_epochs=args.epochs)
    config = with_classic_augmentation(config)
    if exported is not None:
        from lightning_medaug.bank.data_config import load_data_module

        real, _ = load_data_module(config)  # the subset's real images, without the training augmentation
        real.prepare_data()
        real.setup("fit")
        labels = train_labels(real)
        counts = {c: labels.count(c) / len(labels) for c in set(labels)}
        bank = folder / f"bank_s{seed}"
        write_bank(load_generator(exported), bank, bank_size(len(labels), [args.ratio], False, 1.0), seed=seed,
                   labels="proportional", proportions=counts, checkpoint_folder=exported, progress=False)
        config = with_mixing(config, bank, args.ratio, mode="add", seed=seed)
    run = run_recipe(config, folder / f"downstream_s{seed}")
    auc = float(run["metrics"]["test"]["test/auc"])
    for checkpoint in (folder / f"downstream_s{seed}").rglob("*.ckpt"):
        checkpoint.unlink()  # the figure is the product; checkpoints per cell add up
    path.write_text(json.dumps({"test_auc": auc}), encoding="utf-8")
    return auc


def plan(args: argparse.Namespace, settings: Any) -> list[tuple[str, dict[str, Any]]]:
    """(folder name, what it is) of every generator, in run order: per configuration the federation,
    the sites alone, then DP."""
    rows: list[tuple[str, dict[str, Any]]] = [("central", {"kind": "central"})]
    for n in args.sites:
        for split in args.splits:
            tag = f"{split}_{n}sites"
            common = {"num_sites": n, "split": split}
            rows.append((f"federated_{tag}", {"kind": "federated", **common}))
            rows += [(f"site{i}_{tag}", {"kind": "site", "site": i, **common}) for i in range(n)]
            rows += [(f"federated_dp{eps:g}_{tag}", {"kind": "federated_dp", "target_epsilon": eps, **common})
                     for eps in args.epsilons]
    return rows


def build(name: str, what: dict[str, Any], settings: Any, folder: Path, args: argparse.Namespace) -> Path:
    from lightning_medaug.federated.settings import build_datamodule
    from lightning_medaug.federated.sites import SiteDataModule, dataset_labels, site_indices

    if what["kind"] == "central":
        full = build_datamodule(settings.data)
        return train_alone(settings, SiteDataModule(full), folder)
    federation = dataclasses.replace(settings, num_sites=what["num_sites"], split=what["split"], alpha=args.alpha,
                                     privacy=None)
    if what["kind"] == "federated":
        return train_federated(federation, folder)
    if what["kind"] == "federated_dp":
        privacy = {**(settings.privacy or {}), "target_epsilon": what["target_epsilon"]}
        privacy.pop("noise_multiplier", None)
        return train_federated(dataclasses.replace(federation, privacy=privacy), folder)
    full = build_datamodule(settings.data)  # a site alone: the federation's own share of the split
    full.prepare_data()
    full.setup("fit")
    keys = dataset_labels(full.train_dataset)
    indices = site_indices(keys, federation.num_sites, federation.split, federation.alpha, federation.seed,
                           federation.min_per_site)[what["site"]]
    return train_alone(settings, SiteDataModule(full, indices), folder)


def targets(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    central = next(r["fd"] for r in rows if r["name"] == "central")
    verdicts = {}
    for n in args.sites:
        for split in args.splits:
            tag = f"{split}_{n}sites"
            fed = next((r["fd"] for r in rows if r["name"] == f"federated_{tag}"), None)
            sites = [r["fd"] for r in rows if r["name"].startswith("site") and r["name"].endswith(f"_{tag}")]
            if fed is None or len(sites) < n:
                continue
            verdicts[tag] = {"fd_over_central": round(fed / central, 3), "best_site_fd": min(sites),
                             "meets": fed / central <= TARGET["federated_fd_over_central_max"] and fed < min(sites)}
    return verdicts


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="recipes/federated_cvae_pneumonia.yaml", help="a medaug federate recipe")
    p.add_argument("--sites", type=int, nargs="+", default=[3, 5])
    p.add_argument("--splits", nargs="+", default=["iid", "label_skew"])
    p.add_argument("--alpha", type=float, default=0.3, help="Dirichlet alpha of the skewed splits")
    p.add_argument("--epsilons", type=float, nargs="*", default=[8.0, 1.5], help="DP targets (none: no DP rows)")
    p.add_argument("--rounds", type=int, default=None, help="federated rounds (default: the recipe's)")
    p.add_argument("--num-samples", type=int, default=624, help="images per generator for fidelity")
    p.add_argument("--task", default="classify_pneumonia.yaml", help="downstream recipe")
    p.add_argument("--fraction", type=float, default=0.1, help="downstream fraction of the training split")
    p.add_argument("--ratio", type=float, default=0.5, help="synthetic share mixed in ('add' mode)")
    p.add_argument("--epochs", type=int, default=40, help="downstream epochs")
    p.add_argument("--downstream-seeds", type=int, nargs="*", default=[0], help="none: skip downstream")
    p.add_argument("--data-root", default=None, help="PneumoniaMNIST folder (default: $MEDAUG_DATA, else shipped)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fidelity samples")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default="runs/federated_evidence", help="folder of every step (resumable)")
    p.add_argument("--tiny", action="store_true", help="smoke size: 2 sites, 1 round of a tiny cVAE on phantoms")
    args = p.parse_args(argv)
    if args.tiny:
        args.sites, args.splits, args.epsilons, args.num_samples = [2], ["iid"], [8.0], 32
        args.downstream_seeds = []
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    set_threads(args.threads)
    from lightning_medaug.evaluation.inputs import real_splits, resolve_extractor
    from lightning_medaug.federated.settings import build_datamodule

    settings = settings_for(args)
    out = Path(args.out)
    datamodule = build_datamodule(settings.data)
    train, held_out, floor_split = real_splits(datamodule)
    extractor, _ = resolve_extractor("none" if args.tiny else "domain", datamodule, seed=args.seed)
    real = (train, held_out, floor_split, extractor)
    rows = []
    baseline = {s: downstream(None, out / "classic", args, s) for s in args.downstream_seeds}
    for name, what in plan(args, settings):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        exported = build(name, what, settings, folder, args)
        row = {"name": name, **what, **cost(folder), **fidelity(exported, folder, real, args)}
        aucs = {s: downstream(exported, folder, args, s) for s in args.downstream_seeds}
        if aucs:
            row["downstream"] = {"test_auc": aucs, "classic_test_auc": baseline,
                                 "difference": sum(aucs[s] - baseline[s] for s in aucs) / len(aucs)}
        rows.append(row)
        if not (folder / "row.json").is_file():  # one line per generator as it finishes, the script's at the end
            with open(out / "generators.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row, sort_keys=True) + "\n")
            (folder / "row.json").write_text(json.dumps(row), encoding="utf-8")
        print(f"{name}: FD {row['fd']:.2f} (floor {row['floor']['fd']:.2f})", file=sys.stderr, flush=True)
    verdicts = targets(rows, args)
    emit({"benchmark": "federated_evidence", "tiny": args.tiny, "recipe": args.recipe, "alpha": args.alpha,
          "rounds": settings.num_rounds, "local_epochs": settings.local_epochs, "fraction": args.fraction,
          "ratio": args.ratio, "rows": rows, "target": TARGET, "per_configuration": verdicts,
          "meets_target": None if args.tiny else bool(verdicts) and all(v["meets"] for v in verdicts.values()),
          "versions": versions()})


if __name__ == "__main__":
    main()
