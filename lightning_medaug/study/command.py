"""``medaug study --config recipes/study_pneumonia.yaml``: run (or continue) a study from a YAML file.

Every :class:`~lightning_medaug.study.Study` argument is a key of the file or a ``--option``
(``--fractions [0.1]``, ``--seeds [0]``); ``--max_cells N`` stops after N new cells and
``--list`` prints the cells and whether each is done.
"""

from __future__ import annotations

from collections.abc import Sequence

from jsonargparse import ActionConfigFile, ArgumentParser

__all__ = ["build_parser", "main"]

_OWN = ("config", "max_cells", "list")


def build_parser() -> ArgumentParser:
    from lightning_medaug.study.runner import Study

    parser = ArgumentParser(prog="medaug study", description=__doc__.splitlines()[0], exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="study YAML (keys: the Study arguments)")
    parser.add_class_arguments(Study, nested_key=None, as_positional=False)
    parser.add_argument("--max_cells", type=int | None, default=None, help="run at most this many new cells")
    parser.add_argument("--list", action="store_true", help="list the cells and whether each is done, then exit")
    return parser


def main(argv: Sequence[str]) -> int:
    """Run ``medaug study``; returns the exit code (bad input raises for the CLI's one-line handler)."""
    from lightning_medaug.study.runner import Study

    config = build_parser().parse_args(list(argv)).as_dict()
    study = Study(**{k: v for k, v in config.items() if k not in _OWN})
    if config["list"]:
        for cell in study.cells():
            print(f"{'done' if study.is_done(cell) else 'todo'}  {cell.name}")
        return 0
    study.run(max_cells=config["max_cells"])
    print(f"results: {study.out / 'report.md'} (results.json, results.csv, plots)")
    return 0
