"""``medaug study --config recipes/study_pneumonia.yaml``: run (or continue) a study from a YAML file.

Every :class:`~lightning_medaug.study.Study` argument is a key of the file or a ``--option``
(``--fractions [0.1]``, ``--seeds [0]``); ``--max_cells N`` stops after N new cells and
``--list`` prints the cells and whether each is done. A file with ``arms`` runs the "beyond classic"
study (:class:`~lightning_medaug.study.v2.BeyondClassicStudy`) instead of the grid of ``Study``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from jsonargparse import ArgumentParser

from lightning_medaug.command_parser import command_parser, config_files, parse_command

__all__ = ["build_parser", "main", "study_class"]

_OWN = ("config", "max_cells", "list", "prepare")


def study_class(argv: Sequence[str]) -> type:
    """``BeyondClassicStudy`` when the ``--config`` file has ``arms``, else ``Study``."""
    import yaml

    from lightning_medaug.study.runner import Study
    from lightning_medaug.study.v2 import BeyondClassicStudy

    for _, path in config_files(list(argv)):
        if Path(path).is_file() and "arms" in (yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}):
            return BeyondClassicStudy
    return Study


def build_parser(cls: type | None = None) -> ArgumentParser:
    from lightning_medaug.study.runner import Study

    cls = cls or Study
    parser = command_parser("medaug study", __doc__.splitlines()[0], f"study YAML (keys: the {cls.__name__} arguments)")
    parser.add_class_arguments(cls, nested_key=None, as_positional=False)
    parser.add_argument("--max_cells", type=int | None, default=None, help="run at most this many new cells")
    parser.add_argument("--list", action="store_true", help="list the cells and whether each is done, then exit")
    if hasattr(cls, "prepare"):
        parser.add_argument("--prepare", action="store_true",
                            help="train the generators and write the banks of the (sliced) grid, then exit")
    return parser


def main(argv: Sequence[str]) -> int:
    """Run ``medaug study``; returns the exit code (bad input raises for the CLI's one-line handler)."""
    cls = study_class(argv)
    config = parse_command(build_parser(cls), argv).as_dict()
    study = cls(**{k: v for k, v in config.items() if k not in _OWN})
    if config["list"]:
        for cell in study.cells():
            print(f"{'done' if study.is_done(cell) else 'todo'}  {cell.name}")
        return 0
    if config.get("prepare"):
        for bank in study.prepare():
            print(f"bank: {bank}")
        return 0
    study.run(max_cells=config["max_cells"])
    print(f"results: {study.out / 'report.md'} (results.json, results.csv, plots)")
    return 0
