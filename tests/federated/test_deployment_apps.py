"""The module-level apps Flower's deployment engine loads: the server reads its federation from the run config.

The same apps on a real SuperLink and SuperNodes (separate processes, minutes on 2 cores) are run by
``benchmarks/federated_deployment.py``; here they run on the in-process grid."""

import json

import pytest
import yaml
from flwr.app import Context, RecordDict

from lightning_medaug.federated import deployment
from lightning_medaug.federated.grid import InProcessGrid
from lightning_medaug.federated.record import FEDERATION_RECORD


def context(run_config):
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config)


def test_the_server_app_runs_the_federation_its_run_config_names(tmp_path):
    config = tmp_path / "federation.yaml"
    config.write_text(yaml.safe_dump({
        "out": str(tmp_path / "ignored"), "generator": "cvae", "num_sites": 2, "num_rounds": 1,
        "generator_args": {"image_size": 16, "num_classes": 2, "channels": [8, 16], "norm_num_groups": 4,
                           "latent_channels": 2},
        "data": {"class_path": "lightning_medaug.data.PhantomDataModule",
                 "init_args": {"image_size": 16, "num_train": 16, "num_val": 4, "num_test": 4, "batch_size": 8}}}),
        encoding="utf-8")
    grid = InProcessGrid(deployment.client, [{"partition-id": i, "num-partitions": 2} for i in range(2)])
    with pytest.raises(ValueError, match='run config needs config="<federation YAML>"'):
        deployment.server(grid, context({}))
    deployment.server(grid, context({"config": str(config), "out": str(tmp_path / "out")}))  # out overrides the YAML's
    record = json.loads((tmp_path / "out" / "generator" / FEDERATION_RECORD).read_text(encoding="utf-8"))
    assert record["summary"]["rounds"] == 1 and record["summary"]["sites"] == ["site-0", "site-1"]
    assert not (tmp_path / "ignored").exists()
