"""``medaug federate``: train one generator across sites that cannot pool their images.

``medaug federate --config recipes/federated_cvae_pneumonia.yaml`` deals the recipe's training
split out to ``num_sites`` simulated sites (IID or skewed), runs ``num_rounds`` Flower rounds and
exports the global generator with its record to ``<out>/generator``; running it again on the same
``out`` resumes after the last finished round. ``--engine inprocess`` (the default) runs the sites
one after the other in this process (:class:`~.grid.InProcessGrid`); ``--engine simulation`` runs
them in Flower's simulation engine (Ray actors, ``pip install "flwr[simulation]"``). Real sites
run the same apps on Flower's deployment engine (``docs/federated.md``). ``--secure_aggregation '{}'``
(or ``secure_aggregation: {}`` in the YAML) runs the rounds through SecAgg+ (:mod:`.secure`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from jsonargparse import ArgumentParser

from lightning_medaug.command_parser import command_parser, parse_command
from lightning_medaug.federated.settings import FederationSettings

__all__ = ["ENGINES", "build_parser", "federate", "main", "parse_federation"]

#: Where the sites run: in this process, one after the other, or in Flower's (Ray) simulation engine.
ENGINES = ("inprocess", "simulation")


def build_parser() -> ArgumentParser:
    parser = command_parser("medaug federate", __doc__.splitlines()[0],
                            "federation YAML (keys: out, engine and the FederationSettings fields)")
    parser.add_argument("--out", type=str, required=True, help="folder of the federation (resumed if it exists)")
    parser.add_argument("--engine", type=str, default="inprocess", help=f"one of {', '.join(ENGINES)}")
    parser.add_class_arguments(FederationSettings, nested_key=None, as_positional=False)
    return parser


def parse_federation(argv: Sequence[str]) -> tuple[FederationSettings, dict]:
    """The settings and all options (``out``, ``engine``...) that ``medaug federate argv`` would run."""
    config = parse_command(build_parser(), argv).as_dict()
    fields = {f.name for f in dataclasses.fields(FederationSettings)}
    return FederationSettings(**{k: v for k, v in config.items() if k in fields}), config


def federate(settings: FederationSettings, out: str | Path, engine: str = "inprocess") -> dict:
    """Run (or resume) ``settings`` with its simulated sites; returns the federation's record."""
    from lightning_medaug.federated.client import client_app
    from lightning_medaug.federated.record import read_federation
    from lightning_medaug.federated.server import run_federation, server_app
    from lightning_medaug.generative.privacy import EXPORT_FOLDER

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    out = Path(out)
    if engine == "inprocess":
        from lightning_medaug.federated.grid import InProcessGrid

        nodes = [{"partition-id": i, "num-partitions": settings.num_sites} for i in range(settings.num_sites)]
        return run_federation(InProcessGrid(client_app(), nodes), settings, out)
    try:
        import ray  # noqa: F401 (Flower's simulation engine runs the sites as Ray actors)
    except ImportError:
        raise ValueError('engine "simulation" needs Ray: pip install "flwr[simulation]", or use --engine '
                         "inprocess") from None
    from flwr.simulation import run_simulation

    # Ray starts its workers at nice 15, below the driver; here the workers are the sites, the whole
    # training, and on a busy machine they starved for minutes (a user's own setting wins)
    os.environ.setdefault("RAY_worker_niceness", "0")
    run_simulation(server_app=server_app(settings, out), client_app=client_app(), num_supernodes=settings.num_sites,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    # Flower logs a failing ServerApp instead of raising: the exported record is what proves the run finished
    record = read_federation(out / EXPORT_FOLDER)
    if record is None or len(record["rounds"]) < settings.num_rounds:
        raise RuntimeError(f"Flower's simulation engine ended without exporting {settings.num_rounds} rounds to "
                           f"{out / EXPORT_FOLDER}: see its log above; running again resumes after the last round")
    return record


def main(argv: Sequence[str]) -> int:
    """Run ``medaug federate``; returns the exit code (bad input raises for the CLI's one-line handler)."""
    settings, config = parse_federation(argv)
    record = federate(settings, config["out"], config["engine"])
    summary = record.get("summary", {})
    secure = ", SecAgg+" if settings.secure_aggregation is not None else ""
    privacy = f", epsilon {summary['epsilon']:.3g} at delta {summary['delta']:.3g}" if "epsilon" in summary else ""
    print(f"federated {settings.generator}: {summary.get('rounds', '?')} rounds over {settings.num_sites} sites "
          f"({settings.strategy}, {settings.split}{secure}){privacy}; generator in {Path(config['out']) / 'generator'}")
    return 0
