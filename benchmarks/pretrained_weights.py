"""Train, evaluate, card and package the PneumoniaMNIST generators: one command per shared weight.

For each recipe named on the command line (``recipes/<name>.yaml``), in order and resumable
(a step whose output exists is skipped):

1. ``medaug fit`` the recipe (its run lands in ``OUT/runs/``; the wall time is recorded);
2. ``medaug generate`` a bank from the exported generator, with the training split's class
   shares (``--labels proportional``);
3. ``medaug evaluate`` the bank against the recipe's data (its whole training split): Frechet distance / KID /
   precision / recall on the domain feature extractor beside the real-vs-real floor, and the
   copy rate of the memorization check;
4. ``medaug card`` writes ``MODEL_CARD.md`` into the generator folder from those figures;
5. ``package_pretrained`` zips the folder deterministically into ``OUT/weights/<name>.zip``.

Prints one JSON line per recipe (training seconds, fidelity with floor, copy rate, zip size and
SHA-256), the figures a model card and the pretrained index need.

    python benchmarks/pretrained_weights.py cvae_pneumonia --out runs/pretrained
    python benchmarks/pretrained_weights.py cgan_pneumonia ddpm_pneumonia --num-samples 2000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import data_root, emit, versions

REPO = Path(__file__).resolve().parents[1]


def medaug(*args: str) -> None:
    """Run one ``medaug`` command with this interpreter; raise with its output's tail on failure."""
    cmd = [sys.executable, "-m", "lightning_medaug.cli", *args]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, encoding="utf-8", errors="replace")
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {(done.stderr or done.stdout)[-1500:]}")


def latest_run(root: Path) -> Path | None:
    """The newest ``version_N`` folder under ``root`` whose generator was exported, if any."""
    runs = sorted((p for p in root.glob("version_*") if (p / "generator" / "model.safetensors").is_file()),
                  key=lambda p: int(p.name.split("_")[1]))
    return runs[-1] if runs else None


def class_shares(recipe: Path, root: str | None) -> str | None:
    """``"0:s0,1:s1"``: the training split's class shares of the recipe's MedMNIST data, if it has labels."""
    import numpy as np
    import yaml

    data = (yaml.safe_load(recipe.read_text(encoding="utf-8")).get("data") or {}).get("init_args", {})
    from lightning_medaug.data.medmnist import MedMNISTDataModule

    module = MedMNISTDataModule(**{**data, **({"root": root} if root else {})})
    module.prepare_data()
    module.setup("fit")
    from lightning_medaug.study.synthetic import train_labels

    labels = train_labels(module)
    if not labels:
        return None
    counts = np.bincount(np.asarray(labels))
    return ",".join(f"{k}:{c / counts.sum():.4f}" for k, c in enumerate(counts))


def evaluation_data(recipe: Path) -> str:
    """The recipe's data module on its whole training split (inline YAML): generators trained on a
    subset (few-shot, single-image) are still compared with the whole real distribution, and the
    domain feature extractor, cached by data, is trained once for every recipe."""
    import yaml

    data = dict(yaml.safe_load(recipe.read_text(encoding="utf-8"))["data"])
    init = {k: v for k, v in (data.get("init_args") or {}).items() if k not in ("subset", "subset_seed")}
    init["batch_size"] = max(int(init.get("batch_size", 128)), 128)
    return json.dumps({"class_path": data["class_path"], "init_args": init})


def produce(name: str, args: argparse.Namespace) -> dict[str, Any]:
    recipe = REPO / "recipes" / f"{name}.yaml"
    if not recipe.is_file():
        raise FileNotFoundError(f"{recipe} not found: pass a recipe name from recipes/ without .yaml")
    out = Path(args.out)
    runs = out / "runs"
    timing_file = out / "timings" / f"{name}.json"
    run = latest_run(runs / name)
    if run is None:
        start = time.perf_counter()
        extra = ["--data.init_args.root", args.data_root] if args.data_root else []
        medaug("fit", "--config", str(recipe), "--trainer.logger.init_args.save_dir", str(runs),
               "--trainer.enable_progress_bar", "false", *extra)
        seconds = time.perf_counter() - start
        timing_file.parent.mkdir(parents=True, exist_ok=True)
        timing_file.write_text(json.dumps({"train_seconds": seconds}), encoding="utf-8")
        run = latest_run(runs / name)
        if run is None:
            raise RuntimeError(f"medaug fit of {name} exported no generator under {runs / name}")
    seconds = json.loads(timing_file.read_text(encoding="utf-8"))["train_seconds"] if timing_file.is_file() else None
    generator = run / "generator"
    bank, report = out / "banks" / name, out / "evaluation" / name
    if not (bank / "manifest.csv").is_file():
        config = json.loads((generator / "config.json").read_text(encoding="utf-8"))
        shares = class_shares(recipe, args.data_root) if config["init_args"].get("num_classes", 0) else None
        labels = ["--labels", "proportional", "--proportions", shares] if shares else []
        medaug("generate", "--model", str(generator), "--num-samples", str(args.num_samples), *labels,
               "--out", str(bank), "--no-progress")
    if not (report / "metrics.json").is_file():
        medaug("evaluate", "--bank", str(bank), "--data", evaluation_data(recipe), "--out", str(report),
               "--no-progress")
    card = ["card", str(generator), "--metrics", str(report / "metrics.json"), "--record-environment",
            "--load-source", f"{name}.zip"]
    medaug(*card, *(["--wall-time", f"{seconds:.0f}"] if seconds else []))
    from lightning_medaug.hub import package_pretrained

    zip_path = out / "weights" / f"{name}.zip"
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    sha256 = package_pretrained(generator, zip_path)
    metrics = json.loads((report / "metrics.json").read_text(encoding="utf-8"))
    fidelity, memo = metrics.get("fidelity") or {}, metrics.get("memorization") or {}
    pick = ("fd", "kid_mean", "precision", "recall", "density", "coverage")
    return {
        "recipe": name, "generator": json.loads((generator / "config.json").read_text(encoding="utf-8"))["generator"],
        "train_seconds": None if seconds is None else round(seconds, 1), "num_samples": args.num_samples,
        "fidelity": {k: (fidelity.get("synthetic") or {}).get(k) for k in pick},
        "floor": {k: (fidelity.get("floor") or {}).get(k) for k in pick},
        "copy_rate": {space: memo[space].get("copy_rate") for space in ("pixel", "feature") if space in memo},
        "zip": zip_path.name, "zip_mb": round(zip_path.stat().st_size / 2**20, 2), "sha256": sha256,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="+", help="recipe names in recipes/, e.g. cvae_pneumonia")
    parser.add_argument("--out", default="runs/pretrained", help="runs, banks, evaluations and zips go here")
    parser.add_argument("--num-samples", type=int, default=2000, help="bank size for the evaluation")
    parser.add_argument("--data-root", default=None, help="PneumoniaMNIST folder (default: $MEDAUG_DATA, "
                                                          "else the shipped copy)")
    parser.add_argument("--results", default=None, help="also append every JSON line to this file")
    args = parser.parse_args(argv)
    args.data_root = data_root(args.data_root)
    os.environ.setdefault("PYTHONIOENCODING", "utf-8")
    failed = 0
    for name in args.recipes:
        try:
            record = {"benchmark": "pretrained_weights", **produce(name, args), "versions": versions()}
        except (RuntimeError, FileNotFoundError, ValueError) as err:
            record, failed = {"benchmark": "pretrained_weights", "recipe": name, "error": str(err)}, failed + 1
        emit(record, args.results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
