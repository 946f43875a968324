"""Real-data baseline: ResNet-18 at 28x28 on PneumoniaMNIST, several seeds.

Prints one JSON line with test AUC/ACC (mean and std over seeds; checkpoint selected on validation
AUC) and seconds per training epoch, beside the MedMNIST v2 paper's references
(ResNet-18 (28): AUC 0.944, ACC 0.854).

    python benchmarks/classify_baseline.py --seeds 0 1 2 --epochs 20
    python benchmarks/classify_baseline.py --data-root DIR        # or MEDAUG_DATA=DIR
    python benchmarks/classify_baseline.py --seed-log benchmarks/results/classify_baseline_seeds.jsonl
        # resumable: finished seeds are read back, not rerun
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
from _common import data_root, emit, versions

from lightning_medaug.data import MedMNISTDataModule
from lightning_medaug.tasks import ClassificationTask

REFERENCE = {"resnet18_28": {"auc": 0.944, "acc": 0.854}, "resnet50_224": {"auc": 0.962, "acc": 0.884}}


class EpochTimer(L.Callback):
    """Wall time of each training epoch (validation excluded)."""

    def __init__(self):
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_validation_epoch_start(self, trainer, pl_module):
        if hasattr(self, "_start") and not trainer.sanity_checking:
            self.times.append(time.perf_counter() - self._start)
            del self._start


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, float]:
    L.seed_everything(seed, workers=True)
    data = MedMNISTDataModule(name="pneumoniamnist", root=data_root(args.data_root), subset=args.subset,
                              subset_seed=seed, batch_size=args.batch_size)
    model = ClassificationTask(backbone=args.backbone, small_input_stem=args.small_input_stem, lr=args.lr)
    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp, monitor="val/auc", mode="max", save_top_k=1)
        trainer = L.Trainer(max_epochs=args.epochs, accelerator="auto", devices=1, logger=False,
                            callbacks=[ckpt, timer], enable_progress_bar=args.progress, enable_model_summary=False,
                            deterministic=False)
        trainer.fit(model, datamodule=data)
        best_val = float(ckpt.best_model_score)
        result = trainer.test(model, datamodule=data, ckpt_path="best", verbose=False)[0]
    return {"val_auc": best_val, "test_auc": result["test/auc"], "test_acc": result["test/acc"],
            "sec_per_epoch": statistics.median(timer.times)}


def _settings(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "backbone", "small_input_stem", "subset")}


def finished_seed(args: argparse.Namespace, seed: int) -> dict | None:
    """The result of ``seed`` from ``--seed-log`` when it was run with the same settings."""
    if not args.seed_log or not Path(args.seed_log).is_file():
        return None
    for line in Path(args.seed_log).read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry["seed"] == seed and entry["settings"] == _settings(args):
            return entry["result"]
    return None


def record_seed(args: argparse.Namespace, seed: int, result: dict) -> None:
    if args.seed_log and finished_seed(args, seed) is None:
        Path(args.seed_log).parent.mkdir(parents=True, exist_ok=True)
        with open(args.seed_log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"seed": seed, "settings": _settings(args), "result": result}) + "\n")
    print(f"seed {seed}: {result}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--small-input-stem", action="store_true", help="3x3 stride-1 stem, no max-pool")
    parser.add_argument("--subset", type=float, default=None, help="stratified fraction of train")
    parser.add_argument("--data-root", default=None,
                        help="folder with pneumoniamnist.npz (default: $MEDAUG_DATA or shipped copy)")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", default=None, help="also append the JSON line to this file")
    parser.add_argument("--seed-log", default=None,
                        help="JSON-lines file of finished seeds: each seed is appended when done and skipped "
                             "when rerun with the same settings, so a long baseline runs across invocations")
    args = parser.parse_args()

    runs = []
    for seed in args.seeds:
        runs.append(finished_seed(args, seed) or run_seed(seed, args))
        record_seed(args, seed, runs[-1])

    def stats(key: str) -> dict[str, float]:
        values = [r[key] for r in runs]
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}

    emit({
        "benchmark": "classify_baseline", "data": "pneumoniamnist-28", "backbone": args.backbone,
        "small_input_stem": args.small_input_stem, "epochs": args.epochs, "seeds": args.seeds, "subset": args.subset,
        "test_auc": stats("test_auc"), "test_acc": stats("test_acc"), "val_auc": stats("val_auc"),
        "sec_per_epoch": stats("sec_per_epoch"), "per_seed": runs,
        "reference_medmnist_v2": REFERENCE,
        "auc_ratio_vs_resnet18_28": stats("test_auc")["mean"] / REFERENCE["resnet18_28"]["auc"],
        "versions": versions(),
    }, args.out)


if __name__ == "__main__":
    main()
