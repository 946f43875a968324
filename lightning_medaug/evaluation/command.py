"""``medaug evaluate``: fidelity (with its real-vs-real floor), memorization, paired quality and
privacy of a synthetic bank, as ``metrics.json`` and a self-contained HTML (and Markdown) report.

::

    medaug evaluate --bank banks/cvae/ --data recipes/cvae_pneumonia.yaml --out reports/cvae/
    medaug evaluate --bank banks/p2p/ --data recipes/pix2pix_isbi.yaml --extractor none --out reports/p2p/
    medaug evaluate --bank banks/dp/ --data recipes/dp_vae_pneumonia.yaml --privacy runs/dp/version_0/generator \\
        --num-samples 1000 --out reports/dp/

``--data`` is a recipe (its ``data:`` section is used) or a data module config with
``class_path`` / ``init_args``, as a file or inline. The default ``--extractor domain`` trains a
classifier on the real training split once and caches it by data hash.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from lightning_medaug.command_parser import command_parser, parse_command

__all__ = ["build_parser", "main", "stage_progress"]

STAGES = ("reading the bank and the data", "feature extractor", "reading samples", "fidelity", "memorization",
          "paired metrics", "report")


def build_parser() -> ArgumentParser:
    p = command_parser("medaug evaluate", __doc__.splitlines()[0])
    p.add_argument("--bank", type=str, required=True, help="bank folder written by `medaug generate`")
    p.add_argument("--data", type=str, required=True,
                   help="recipe YAML (its data: section) or data module config (class_path/init_args), file or inline")
    p.add_argument("--out", type=str, required=True,
                   help="report folder (new, empty, or an earlier report, which is replaced)")
    p.add_argument("--extractor", type=str, default="domain",
                   help="domain (trained on the real training split, cached), none (pixel space), or a folder "
                        "written by save_feature_extractor")
    p.add_argument("--extractor-cache", type=str | None, default=None,
                   help="cache of trained extractors (default $MEDAUG_CACHE/extractors or "
                        "~/.cache/lightning_medaug/extractors)")
    p.add_argument("--extractor-backbone", type=str, default="resnet18",
                   help="classifier of the domain extractor: a timm name (2D) or resnet10/18/34/50, densenet121 (3D)")
    p.add_argument("--extractor-epochs", type=int, default=5, help="training epochs of the domain extractor")
    p.add_argument("--extractor-max-steps", type=int, default=-1,
                   help="training steps of the domain extractor (-1: --extractor-epochs decides)")
    p.add_argument("--num-samples", type=int | None, default=None,
                   help="synthetic and held-out samples used (seeded subsets; default all)")
    p.add_argument("--seed", type=int, default=0, help="seeds the subsets, KID and the extractor's training")
    p.add_argument("--k", type=int, default=5, help="neighbours of precision/recall/density/coverage")
    p.add_argument("--percentile", type=float, default=1.0,
                   help="copy threshold: this percentile of held-out nearest-training distances")
    p.add_argument("--num-pairs", type=int, default=16, help="closest synthetic/training pairs listed and drawn")
    p.add_argument("--privacy", type=str | None, default=None,
                   help="privacy.json of a generator trained with DifferentialPrivacy, or its folder")
    p.add_argument("--device", type=str, default="auto", help="auto (a GPU if any), cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out that is not an earlier report (its other files stay)")
    p.add_argument("--absolute-paths", action="store_true", help="record absolute paths (default: file names only)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress display")
    return p


@contextmanager
def stage_progress(enabled: bool, stages: Sequence[str] = STAGES) -> Iterator[Callable[[str], None]]:
    """A rich display of the stages (on stderr); yields ``start(stage_name)``."""
    if not enabled:
        yield lambda name: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (SpinnerColumn(), TextColumn("evaluate: {task.description:<30}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(stages[0], total=len(stages))
        seen: list[str] = []

        def start(name: str) -> None:
            if seen:
                bar.advance(task)
            seen.append(name)
            bar.update(task, description=name)

        yield start
        bar.update(task, completed=len(stages), description="done")


def _trainer_kwargs(device: str) -> dict[str, Any]:
    """The extractor's Trainer placement for ``--device``."""
    if device == "auto":
        return {"accelerator": "auto"}
    if device == "cpu":
        return {"accelerator": "cpu"}
    if device.startswith("cuda"):
        index = device.partition(":")[2]
        return {"accelerator": "gpu", "devices": [int(index)] if index.isdigit() else 1}
    raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")


def main(argv: Sequence[str]) -> int:
    """Run ``medaug evaluate``; returns the exit code (bad input raises for the CLI's one-line handler)."""
    from lightning_medaug.bank import SyntheticBank
    from lightning_medaug.evaluation.evaluate import (
        check_compatible,
        check_options,
        evaluate_bank,
    )
    from lightning_medaug.evaluation.inputs import (
        build_datamodule,
        describe_extractor,
        load_data_config,
        read_privacy,
        real_splits,
        resolve_extractor,
        scrub_paths,
    )
    from lightning_medaug.evaluation.output import check_output_folder

    args = parse_command(build_parser(), argv)
    trainer_kwargs = _trainer_kwargs(args.device)
    check_options(args.num_samples, args.k, args.percentile, args.num_pairs)
    check_output_folder(args.out, args.overwrite)  # before any work
    with stage_progress(not args.no_progress) as start:
        start(STAGES[0])
        bank = SyntheticBank(args.bank)
        config = load_data_config(args.data)
        datamodule = build_datamodule(config)
        train, held_out, floor_split = real_splits(datamodule)
        privacy = None
        if args.privacy is not None:
            privacy = read_privacy(args.privacy, bank.info["settings"].get("checkpoint_sha256"))
            privacy["source"] = str(Path(args.privacy).resolve()) if args.absolute_paths else Path(args.privacy).name
        num_classes = getattr(datamodule, "num_classes", None)
        check_compatible(bank, train, num_classes)  # before an extractor is trained for nothing
        start(STAGES[1])
        extractor, kind = resolve_extractor(
            args.extractor, datamodule, args.extractor_cache, backbone=args.extractor_backbone,
            epochs=args.extractor_epochs, max_steps=args.extractor_max_steps, seed=args.seed,
            trainer_kwargs=trainer_kwargs)
        data = {"class_path": config["class_path"], "init_args": config["init_args"],
                "splits": {"train": len(train), floor_split: len(held_out)}}
        evaluate_bank(bank, train, held_out, args.out, extractor, num_samples=args.num_samples, seed=args.seed,
                      k=args.k, percentile=args.percentile, num_pairs=args.num_pairs, floor_split=floor_split,
                      num_classes=num_classes,
                      data=data if args.absolute_paths else scrub_paths(data),
                      extractor_info=describe_extractor(kind, extractor, args.absolute_paths), privacy=privacy,
                      device=args.device, overwrite=args.overwrite, absolute_paths=args.absolute_paths,
                      progress=start)
    print(f"report: {Path(args.out) / 'report.html'} (metrics.json, report.md, figures)")
    return 0
