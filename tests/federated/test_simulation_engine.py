"""``medaug federate --engine simulation``: Flower's simulation engine (each site a Ray actor, in its own
process) trains the same federation as the in-process grid, weight for weight, and exports its record."""

import pytest
import torch
from safetensors.torch import load_file

from lightning_medaug.federated.command import federate
from lightning_medaug.federated.settings import FederationSettings

pytest.importorskip("ray", reason='the simulation engine needs Ray: pip install "flwr[simulation]"')

PHANTOMS = {"class_path": "lightning_medaug.data.PhantomDataModule",
            "init_args": {"image_size": 16, "num_train": 16, "num_val": 4, "num_test": 4, "batch_size": 8}}


def test_the_simulation_engine_trains_what_the_in_process_grid_trains(tmp_path):
    settings = FederationSettings(generator="cvae", data=PHANTOMS, num_rounds=2, generator_args={
        "image_size": 16, "num_classes": 2, "channels": [8, 16], "norm_num_groups": 4, "latent_channels": 2})
    simulated = federate(settings, tmp_path / "simulation", engine="simulation")
    in_process = federate(settings, tmp_path / "inprocess", engine="inprocess")
    assert simulated["summary"]["rounds"] == 2 and simulated["summary"]["sites"] == ["site-0", "site-1"]
    for got, want in zip(simulated["rounds"], in_process["rounds"], strict=True):
        assert got["sites"].keys() == want["sites"].keys()
        for site, metrics in want["sites"].items():
            assert got["sites"][site]["train-loss"] == pytest.approx(metrics["train-loss"], rel=1e-5)
    weights = [load_file(str(next((tmp_path / run / "generator").glob("*.safetensors"))))
               for run in ("simulation", "inprocess")]
    assert weights[0].keys() == weights[1].keys()
    for name, tensor in weights[1].items():
        torch.testing.assert_close(weights[0][name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_an_unknown_engine_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="engine must be one of inprocess, simulation"):
        federate(FederationSettings(generator="cvae", data=PHANTOMS), tmp_path, engine="ray")
