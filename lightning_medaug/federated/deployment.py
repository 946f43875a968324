"""The federation's apps as Flower's deployment engine loads them: ``module:attribute`` in a Flower App.

A Flower App (a folder with a ``pyproject.toml``, ``docs/federated.md``) names
``lightning_medaug.federated.deployment:server`` and ``...:client`` as its components; ``flwr run``
sends it to the SuperLink, which runs :data:`server` with the run config, and every SuperNode runs
:data:`client` next to its data (its node config says which, :mod:`.client`). The run config holds
``config``, the path of a federation YAML as ``medaug federate --config`` reads it, and optionally
``out``, where the server writes (else the YAML's ``out``).
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from lightning_medaug.federated.client import client_app
from lightning_medaug.federated.command import parse_federation
from lightning_medaug.federated.server import run_federation

__all__ = ["client", "server"]

#: The sites' app: each SuperNode runs it on the data its node config names.
client = client_app()
#: The coordinator's app, configured by the run config's ``config`` (and ``out``).
server = ServerApp()


@server.main()
def _main(grid: Grid, context: Context) -> None:
    run = dict(context.run_config)
    if not run.get("config"):
        raise ValueError('the run config needs config="<federation YAML>" (in the Flower App\'s '
                         "[tool.flwr.app.config] or flwr run --run-config)")
    settings, options = parse_federation(["--config", str(run["config"])] +
                                         (["--out", str(run["out"])] if run.get("out") else []))
    run_federation(grid, settings, options["out"])
