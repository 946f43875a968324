"""Few-shot study cell: a cGAN fine-tuned from another data set against one trained from scratch,
on 20 and 50 PneumoniaMNIST images, with Frechet distance and copy rate.

The path documented in ``docs/few_shot.md``, run end to end and measured:

1. **source**: pretrain the class-conditional GAN of ``recipes/cgan_pneumonia.yaml`` on another
   data set and export it. No other MedMNIST file is available offline, so the default source
   data are the library's procedural phantoms at 28x28 (``PhantomDataModule``, 2 classes);
   ``--source-recipe RECIPE`` pretrains from a recipe of your own (e.g. OrganAMNIST, see the docs)
   and ``--source FOLDER`` skips pretraining and uses a generator folder you already have
   (``save_pretrained``: ``config.json`` + ``model.safetensors``);
2. **cells**: for each n of ``--images`` (total images, n/2 per class: ``subset: n/2``) and each
   arm, train ``recipes/fewshot_cgan_pneumonia.yaml`` (DiffAugment, EMA, spectral norm) with the
   same steps and seed; ``finetune`` keeps the recipe's ``FineTuneFrom`` callback (transfer,
   Wang et al. 2018, with its freeze patterns: FreezeD, Mo et al. 2020) pointing at the source,
   ``scratch`` drops it;
3. ``medaug generate`` a bank per cell (class-balanced, as the subset is);
4. ``medaug evaluate`` it against the **whole** PneumoniaMNIST training split (no subset,
   batch 128; the domain feature extractor, trained once and cached), so fidelity is judged
   against the real distribution and the copy rate against every training image, the n seen
   ones included;
5. print one JSON line: per n and arm the training seconds, fd / kid_mean / precision / recall
   beside the real-vs-real floor, the pixel and feature copy rates, and per n the
   finetune/scratch ratio of fd (below 1: transfer helped).

Resumable: every cell writes ``OUT/n<N>/<arm>/cell.json`` last and is skipped when it exists
(as are the source, a finished training or a finished bank); a training interrupted half-way
is restarted from step 0, so both arms always train the same steps.

    python benchmarks/few_shot.py                                   # 20 and 50 images, both arms
    python benchmarks/few_shot.py --images 20 --steps 2000 --out runs/few_shot_2k
    python benchmarks/few_shot.py --source runs/cgan_organamnist/version_0/generator
    python benchmarks/few_shot.py --tiny                            # smoke size: figures mean nothing

Both arms use the few-shot recipe's settings unchanged (halved learning rates, EMA decay 0.99,
full DiffAugment): the comparison isolates the transfer, not a scratch recipe tuned on its own.

Results: ``benchmarks/results/README.md`` ("Few-shot cell") holds the full run's figures (seed
0, 4000 steps, on 2 shared CPU cores: the phantom source took 393 s, each cell 2-4 minutes).
With the phantom source, fine-tuning gave worse Frechet distances than training from scratch
(1.11x at 20 images, 1.53x at 50): phantoms are too far from chest X-rays to transfer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from _common import data_root, emit, versions

REPO = Path(__file__).resolve().parents[1]
FINETUNE = "lightning_medaug.finetune.FineTuneFrom"
ARMS = ("scratch", "finetune")
PICK = ("fd", "kid_mean", "precision", "recall")
#: The default source: the cGAN recipe's model, trained on 28x28 phantoms (docs/few_shot.md, step 1).
PHANTOM_DATA = {"class_path": "lightning_medaug.data.PhantomDataModule",
                "init_args": {"spatial_dims": 2, "image_size": 28, "num_classes": 2, "num_train": 4000,
                              "batch_size": 64, "num_workers": 0}}


def medaug(*args: str) -> None:
    """Run one ``medaug`` command in this process (the library is imported once); raise on failure."""
    from lightning_medaug.cli import main

    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON line
        code = main(list(args))
    if code != 0:
        raise RuntimeError(f"medaug {args[0]} failed with exit code {code} (its error is printed above)")


def train(config: dict[str, Any], folder: Path) -> tuple[Path, float]:
    """Fit ``config`` into ``folder`` (restarting an unfinished run); the generator folder and seconds."""
    from lightning_medaug.study.recipe import run_recipe

    generator, timing = folder / "generator", folder / "timing.json"
    if (generator / "model.safetensors").is_file() and timing.is_file():
        return generator, json.loads(timing.read_text(encoding="utf-8"))["train_seconds"]
    if folder.exists():  # an interrupted run: start again, so every cell trains exactly --steps
        shutil.rmtree(folder)
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        run_recipe(config, folder, test=False)
    seconds = time.perf_counter() - start
    if not (generator / "model.safetensors").is_file():
        raise RuntimeError(f"training into {folder} exported no generator")
    timing.write_text(json.dumps({"train_seconds": seconds}), encoding="utf-8")
    return generator, seconds


def source_config(args: argparse.Namespace) -> dict[str, Any]:
    """The pretraining recipe: ``--source-recipe`` as it is, else the cGAN recipe on 28x28 phantoms."""
    from lightning_medaug.study.recipe import load_recipe, with_trainer

    if args.source_recipe:
        config = load_recipe(args.source_recipe)
    else:
        config = load_recipe("cgan_pneumonia.yaml")
        config["data"] = json.loads(json.dumps(PHANTOM_DATA))
        config["data"]["init_args"]["seed"] = args.seed
        if args.tiny:
            config["data"]["init_args"].update(num_train=64, num_val=16, num_test=16)
    steps = {"max_steps": args.source_steps, "max_epochs": -1} if args.source_steps else {}
    return with_trainer(config, seed=args.seed, enable_progress_bar=False, **steps)


def cell_config(recipe: dict[str, Any], n: int, arm: str, source: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The few-shot recipe on n images (n/2 per class) with ``--steps`` and ``--seed``; ``scratch``
    drops its ``FineTuneFrom`` callback, ``finetune`` points it at ``source``."""
    from lightning_medaug.study.recipe import real_data, with_trainer

    config = with_trainer(recipe, seed=args.seed, max_steps=args.steps, max_epochs=-1, enable_progress_bar=False)
    data = real_data(config)
    data.update(subset=n // 2, subset_seed=args.seed)
    if args.data_root:
        data["root"] = args.data_root
    callbacks = [c for c in config["trainer"].get("callbacks") or [] if c.get("class_path") != FINETUNE]
    if arm == "finetune":  # the recipe's own settings (freeze patterns, strict_shapes), another source
        callbacks.append({"class_path": FINETUNE, "init_args": {**finetune_args(recipe), "source": str(source)}})
    config["trainer"]["callbacks"] = callbacks
    return config


def finetune_args(recipe: dict[str, Any]) -> dict[str, Any]:
    """``init_args`` of the recipe's ``FineTuneFrom`` callback (empty, i.e. nothing frozen, if it has none)."""
    for callback in recipe.get("trainer", {}).get("callbacks") or []:
        if callback.get("class_path") == FINETUNE:
            return dict(callback.get("init_args") or {})
    return {}


def evaluation_data(recipe: dict[str, Any], root: str | None) -> str:
    """The recipe's data on its whole training split, batch 128, as inline JSON for ``--data``."""
    data = recipe["data"]
    init = {k: v for k, v in (data.get("init_args") or {}).items() if k not in ("subset", "subset_seed")}
    init["batch_size"] = max(int(init.get("batch_size", 128)), 128)
    if root:
        init["root"] = root
    return json.dumps({"class_path": data["class_path"], "init_args": init})


def run_cell(recipe: dict[str, Any], n: int, arm: str, source: Path, args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(args.out) / f"n{n}" / arm
    result = folder / "cell.json"
    if result.is_file():
        return json.loads(result.read_text(encoding="utf-8"))
    generator, seconds = train(cell_config(recipe, n, arm, source, args), folder / "run")
    bank, report = folder / "bank", folder / "evaluation"
    # generate resumes a partial bank by itself and does nothing on a complete one
    medaug("generate", "--model", str(generator), "--num-samples", str(args.num_samples), "--labels", "balanced",
           "--seed", str(args.seed), "--out", str(bank), "--no-progress")
    medaug("evaluate", "--bank", str(bank), "--data", evaluation_data(recipe, args.data_root), "--out", str(report),
           "--extractor", args.extractor, "--seed", str(args.seed), "--no-progress")
    metrics = json.loads((report / "metrics.json").read_text(encoding="utf-8"))
    fidelity, memo = metrics.get("fidelity") or {}, metrics.get("memorization") or {}
    cell = {"train_seconds": round(seconds, 1),
            **{k: (fidelity.get("synthetic") or {}).get(k) for k in PICK},
            "floor": {k: (fidelity.get("floor") or {}).get(k) for k in PICK},
            "copy_rate": {space: (memo.get(space) or {}).get("copy_rate") for space in ("pixel", "feature")}}
    result.write_text(json.dumps(cell, indent=1), encoding="utf-8")
    return cell


def study(args: argparse.Namespace) -> dict[str, Any]:
    from lightning_medaug.study.recipe import load_recipe

    out = Path(args.out)
    if args.source:
        source, source_info = Path(args.source), {"folder": str(args.source), "train_seconds": None}
        if not (source / "config.json").is_file():
            raise FileNotFoundError(f"--source {source} has no config.json: pass a save_pretrained folder, "
                                    "e.g. runs/<name>/version_0/generator")
    else:
        config = source_config(args)
        source, seconds = train(config, out / "source")
        source_info = {"data": config["data"]["class_path"].rsplit(".", 1)[-1], "train_seconds": round(seconds, 1),
                       "recipe": args.source_recipe or "cgan_pneumonia.yaml (data: 28x28 phantoms)"}
    recipe = load_recipe(args.recipe)
    results: dict[str, Any] = {}
    for n in args.images:
        cells = {arm: run_cell(recipe, n, arm, source, args) for arm in ARMS}
        fd = [cells[arm]["fd"] for arm in ARMS]
        cells["fd_ratio"] = round(fd[1] / fd[0], 4) if None not in fd and fd[0] else None
        results[str(n)] = cells
    freeze = list(finetune_args(recipe).get("freeze") or [])
    return {"source": source_info, "recipe": args.recipe, "freeze": freeze, "steps": args.steps, "seed": args.seed,
            "num_samples": args.num_samples, "extractor": args.extractor, "results": results}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, nargs="+", default=[20, 50],
                   help="training images per cell, in total (n/2 per class; even numbers)")
    p.add_argument("--steps", type=int, default=None,
                   help="global steps of every cell (a D and a G step count two; default 4000, tiny 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of training, subsets, banks and evaluation")
    p.add_argument("--recipe", default="fewshot_cgan_pneumonia.yaml", help="the few-shot recipe")
    p.add_argument("--source", default=None, help="pretrained generator folder: skip pretraining")
    p.add_argument("--source-recipe", default=None,
                   help="recipe to pretrain the source with (default: cgan_pneumonia.yaml on 28x28 phantoms)")
    p.add_argument("--source-steps", type=int, default=None,
                   help="global steps of the pretraining (default: the recipe's epochs; tiny 4)")
    p.add_argument("--num-samples", type=int, default=None, help="bank size per cell (default 1000, tiny 32)")
    p.add_argument("--extractor", default=None, help="feature extractor of medaug evaluate (default domain, tiny none)")
    p.add_argument("--out", default="runs/few_shot", help="source, cells, banks and evaluations go here")
    p.add_argument("--data-root", default=None,
                   help="PneumoniaMNIST folder (default: $MEDAUG_DATA, else the shipped copy)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--results", default=None, help="also append the JSON line to this file")
    p.add_argument("--tiny", action="store_true", help="smoke size: 4 steps, 32 samples, pixel space")
    args = p.parse_args(argv)
    defaults = {"steps": 4 if args.tiny else 4000, "num_samples": 32 if args.tiny else 1000,
                "extractor": "none" if args.tiny else "domain", "source_steps": 4 if args.tiny else None}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    bad = [n for n in args.images if n < 2 or n % 2]
    if bad:
        p.error(f"--images takes even counts of at least 2 (n/2 per class), got {bad}")
    if args.source and args.source_recipe:
        p.error("--source and --source-recipe exclude each other: a given source is not pretrained")
    args.data_root = data_root(args.data_root)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        record = {"benchmark": "few_shot", "tiny": args.tiny, **study(args), "versions": versions()}
        code = 0
    except (RuntimeError, FileNotFoundError, ValueError) as err:
        record, code = {"benchmark": "few_shot", "error": str(err)}, 1
    emit(record, args.results)
    return code


if __name__ == "__main__":
    sys.exit(main())
