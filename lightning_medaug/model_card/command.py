"""``medaug card FOLDER``: write ``MODEL_CARD.md`` into a generator folder from the files the library wrote.

::

    medaug card runs/cgan_pneumonia/version_0/generator --metrics eval/cgan/metrics.json --record-environment

The run's ``config.yaml`` and ``metrics.json`` next to the generator folder are used when present
(``--run-config`` and ``--training-log`` name others); a generator exported by ``medaug federate``
takes its data set and size from its ``federation.json``; ``--config`` is a YAML file holding any of
the options, as for every ``medaug`` command.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from lightning_medaug.command_parser import command_parser, config_files, parse_command
from lightning_medaug.evaluation.output import REPORT_KIND
from lightning_medaug.federated.record import read_federation
from lightning_medaug.model_card.card import DEFAULT_INTENDED_USE, training_environment, write_model_card

__all__ = ["build_parser", "main"]

#: Top-level keys of a run's ``config.yaml`` (LightningCLI's), which no options file of this command has.
_RUN_CONFIG_KEYS = ("trainer", "model", "data", "seed_everything")


def build_parser() -> ArgumentParser:
    p = command_parser("medaug card", "Write MODEL_CARD.md into a save_pretrained folder.",
                       "YAML file holding any of these options (a run's config.yaml here is read as --run-config, "
                       "deprecated)")
    p.add_argument("folder", type=Path, help="generator folder (config.json + model.safetensors)")
    p.add_argument("--data-name", type=str | None, help="training data set (default: data.init_args.name of the "
                   "run config)")
    p.add_argument("--data-split", type=str, default="train", help="split of the data set that was used")
    p.add_argument("--data-size", type=int | None, help="number of training images")
    p.add_argument("--data-subset", type=str | None, help="subset of the split that was used")
    p.add_argument("--attribution", type=str | None, help="data source and its licence (MedMNIST sets are filled in)")
    p.add_argument("--metrics", type=Path | None, help="metrics.json (or folder) of `medaug evaluate`")
    p.add_argument("--training-log", type=Path | None, help="the run's metrics.json (default: FOLDER/../metrics.json)")
    p.add_argument("--run-config", type=Path | None, help="the run's config.yaml (default: FOLDER/../config.yaml)")
    p.add_argument("--wall-time", type=float | None, help="training wall time in seconds")
    p.add_argument("--record-environment", action="store_true",
                   help="record this machine's CPU/GPU and library versions (write the card where it trained)")
    p.add_argument("--intended-use", type=str, default=DEFAULT_INTENDED_USE, help="the intended use paragraph")
    p.add_argument("--license", type=str, default="Apache-2.0", help="the weights' licence")
    p.add_argument("--load-source", type=str | None, help="what the loading example passes to load_pretrained")
    return p


def renamed_run_config(argv: Sequence[str]) -> list[str]:
    """``argv`` with each ``--config`` that names a run's ``config.yaml`` (what ``--config`` meant before it
    became the options file of every command) turned into ``--run-config``, with a ``FutureWarning``."""
    argv = list(argv)
    for i, path in config_files(argv):
        if _is_run_config(Path(path)):
            warnings.warn(f"`medaug card --config {path}` naming the run's config.yaml is deprecated and will "
                          "be removed: write --run-config (--config is now a YAML file of this command's options)",
                          FutureWarning, stacklevel=2)
            argv[i] = argv[i].replace("--config", "--run-config", 1)
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """``medaug card FOLDER ...``: write the card, print its path; returns the exit code."""
    args = parse_command(build_parser(), renamed_run_config(sys.argv[1:] if argv is None else argv))
    run = args.folder.resolve().parent
    config_path = args.run_config or (run / "config.yaml" if (run / "config.yaml").is_file() else None)
    config = _read_yaml(config_path) if config_path else {}
    federation = read_federation(args.folder)
    if federation is not None and "data" not in config:  # no run config beside a federated export: the record has it
        config["data"] = federation["settings"].get("data")
    log_path = args.training_log
    if log_path is None and (run / "metrics.json").is_file():
        candidate = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        log_path = run / "metrics.json" if candidate.get("kind") != REPORT_KIND else None
    log = json.loads(log_path.read_text(encoding="utf-8")) if log_path else {}
    data_args = ((config.get("data") or {}).get("init_args") or {}) if isinstance(config.get("data"), Mapping) else {}
    name = args.data_name or data_args.get("name")
    if not name:
        raise ValueError("pass --data-name: no run config.yaml with data.init_args.name was found next to the folder")
    subset = args.data_subset if args.data_subset is not None else data_args.get("subset")
    size = args.data_size
    if size is None and federation is not None:  # the sites' images together
        size = sum(federation["summary"].get("site_sizes", {}).values()) or None
    data = {"name": name, "split": args.data_split, "size": size, "subset": subset,
            "attribution": args.attribution}
    for key, value in _medmnist_facts(name, args.data_split, data_args.get("subset")).items():
        data[key] = data[key] if data[key] is not None else value
    if data_args.get("size"):
        data["image size"] = data_args["size"]
    fit = log.get("fit") or {}
    trainer = config.get("trainer") or {}
    training: dict[str, Any] = {"epochs": log.get("epochs", fit.get("epochs")),
                                "steps": log.get("steps", fit.get("global_step")),
                                "wall_time_s": args.wall_time or log.get("wall_time_s"),
                                "precision": log.get("precision", trainer.get("precision"))}
    for key in ("hardware", "versions"):
        if key in log:
            training[key] = log[key]
    if args.record_environment:
        training.update(training_environment())
    if config.get("seed_everything") is not None:
        training["seed"] = config["seed_everything"]
    path = write_model_card(args.folder, data=data, training=training, evaluation=args.metrics,
                            intended_use=args.intended_use, license=args.license, load_source=args.load_source)
    used = ", ".join(str(p) for p in (config_path, log_path, args.metrics) if p) or "no run files"
    print(f"model card written to {path} (from {used})")
    return 0


def _is_run_config(path: Path) -> bool:
    try:
        return path.is_file() and any(key in _read_yaml(path) for key in _RUN_CONFIG_KEYS)
    except ValueError:  # unreadable: the parser reports it as the options file it then is
        return False


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read the run config {path} ({err})") from None
    return config if isinstance(config, dict) else {}


def _medmnist_facts(name: str, split: str, subset: Any) -> dict[str, Any]:
    """Attribution and split size of a MedMNIST set, from ``medmnist.info``; empty for other data."""
    from medmnist.info import HOMEPAGE, INFO

    info = INFO.get(str(name).lower())
    if info is None:
        return {}
    facts: dict[str, Any] = {"attribution": f"{info['python_class']} of MedMNIST v2 (Yang et al., Scientific Data "
                                            f"2023, {HOMEPAGE}), licence {info['license']}"}
    if subset is None:
        facts["size"] = info["n_samples"].get(split)
    elif isinstance(subset, int) and not isinstance(subset, bool):
        facts["size"] = subset * len(info["label"])  # an int subset is that many samples per class
    return facts


if __name__ == "__main__":
    sys.exit(main())
