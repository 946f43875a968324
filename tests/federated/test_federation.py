"""Two sites, two rounds of real Flower (its strategies, ServerApp and ClientApp) on an in-process grid,
each site training the family's own LightningModule under a Lightning Trainer (DP: test_federate_command.py)."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lightning_medaug.federated.client import client_app
from lightning_medaug.federated.grid import InProcessGrid
from lightning_medaug.federated.parameters import LOCAL_STATE
from lightning_medaug.federated.record import FEDERATION_RECORD
from lightning_medaug.federated.server import run_federation
from lightning_medaug.federated.settings import FederationSettings
from lightning_medaug.generative import load_generator

PHANTOMS = {"class_path": "lightning_medaug.data.PhantomDataModule",
            "init_args": {"image_size": 16, "num_train": 32, "num_val": 4, "num_test": 4, "batch_size": 8}}
TINY = {"cvae": {"image_size": 16, "num_classes": 2, "channels": [8, 16], "norm_num_groups": 4, "latent_channels": 2},
        "cgan": {"image_size": 16, "num_classes": 2}}


def settings(generator="cvae", num_rounds=2, **kwargs):
    return FederationSettings(generator=generator, generator_args=TINY[generator], data=PHANTOMS,
                              num_rounds=num_rounds, **kwargs)


def federate(tmp_path, config, mods=(), node_configs=None):
    nodes = node_configs or [{"partition-id": i, "num-partitions": config.num_sites} for i in range(config.num_sites)]
    grid = InProcessGrid(client_app(mods), nodes)
    return run_federation(grid, config, tmp_path / "out", log=lambda line: None)


def site_fails(site, rounds, calls=None):
    """A Flower client mod: ``site`` raises in ``rounds`` (a hospital dropping out); counts train calls."""
    def mod(message, context, call_next):
        if message.metadata.message_type == "train":
            server_round = int(message.content["config"]["server-round"])
            if calls is not None:
                calls.append((context.node_config["partition-id"], server_round))
            if context.node_config["partition-id"] == site and server_round in rounds:
                raise ConnectionError("site went offline")
        return call_next(message, context)
    return mod


@pytest.fixture(scope="module")
def fedadam(tmp_path_factory):
    """Two uninterrupted FedAdam rounds of a tiny cVAE: the record and the folder."""
    root = tmp_path_factory.mktemp("fedadam")
    return federate(root, settings(strategy="fedadam")), root / "out"


def test_cvae_fedadam_exports_a_global_generator(fedadam):
    record, out = fedadam
    summary = record["summary"]
    assert summary["rounds"] == 2 and summary["sites"] == ["site-0", "site-1"] and summary["strategy"] == "fedadam"
    assert summary["site_sizes"] == {"site-0": 16, "site-1": 16} and summary["kept_at_sites"] == []
    assert all(r["sites"]["site-0"]["num-examples"] == 16 for r in record["rounds"])
    initial = settings().build_generator().state_dict()
    model = load_generator(out / "generator")
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, initial[k])]
    assert changed  # the server's step on the sites' training, not the initial weights
    samples = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4, 1, 16, 16) and torch.isfinite(samples).all()
    saved = json.loads((out / "generator" / FEDERATION_RECORD).read_text(encoding="utf-8"))
    assert saved["summary"] == summary and "epsilon" not in summary


def test_each_round_continues_the_sites_step_count(fedadam):
    # a VAE's KL warm-up (and any schedule on global_step) runs once over the rounds, not once per round
    record, out = fedadam
    steps = {site: [r["sites"][site]["global-step"] for r in record["rounds"]] for site in record["summary"]["sites"]}
    for site, (first, second) in steps.items():
        assert first > 0 and second == 2 * first, (site, first, second)
        per_round = json.loads((out / "sites" / site / "round_steps.json").read_text(encoding="utf-8"))
        assert per_round == {"steps_per_round": first}
        # Adam's moments carried over too: round 2's optimiser counts both rounds' steps
        adam = {r: torch.load(out / "sites" / site / f"optimizer_state_round{r}.pt", weights_only=True)[0]
                for r in (1, 2)}
        counts = {r: {int(state["step"]) for state in adam[r]["state"].values()} for r in (1, 2)}
        assert counts == {1: {first}, 2: {second}}


def test_cgan_fedprox_keeps_each_discriminator_at_its_site(tmp_path):
    federate(tmp_path, settings("cgan", num_rounds=1, strategy="fedprox", proximal_mu=0.1))
    kept = [load_file(str(tmp_path / "out" / "sites" / f"site-{i}" / LOCAL_STATE)) for i in range(2)]
    disc = [k for k in kept[0] if k.startswith("discriminator.") and kept[0][k].is_floating_point()]
    assert disc and any(not torch.equal(kept[0][k], kept[1][k]) for k in disc)  # two critics, never averaged
    exported = load_file(str(tmp_path / "out" / "generator" / "model.safetensors"))
    assert not any(k.startswith("discriminator.") for k in exported)


def test_a_site_dropping_out_does_not_stop_the_federation(tmp_path):
    record = federate(tmp_path, settings(num_rounds=1, min_sites=1), mods=[site_fails(1, {1})])
    assert list(record["rounds"][0]["sites"]) == ["site-0"]
    assert "site went offline" in record["rounds"][0]["dropped"]["site-1"]
    assert record["summary"]["dropped"] == {"1": ["site-1"]} and record["summary"]["sites"] == ["site-0", "site-1"]


def test_a_killed_server_resumes_after_its_last_round_with_fedadams_moments(tmp_path, fedadam):
    calls = []
    with pytest.raises(RuntimeError, match="round 2: 0 of 2 sites returned weights"):
        federate(tmp_path, settings(strategy="fedadam"), mods=[site_fails(0, {2}, calls), site_fails(1, {2})])
    checkpoint = tmp_path / "out" / "checkpoint"
    first = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
    assert [r["round"] for r in first["rounds"]] == [1]
    assert (checkpoint / "round-0001.strategy.safetensors").is_file()  # the server optimizer's moments
    calls.clear()
    record = federate(tmp_path, settings(strategy="fedadam"), mods=[site_fails(-1, set(), calls)])
    assert sorted(calls) == [(0, 2), (1, 2)]  # round 1 is not trained again
    assert [r["round"] for r in record["rounds"]] == [1, 2] and record["rounds"][0] == first["rounds"][0]
    assert sorted(p.name for p in checkpoint.glob("round-*")) == ["round-0002.safetensors",
                                                                   "round-0002.strategy.safetensors"]
    # the moments came back: the resumed federation ends where the uninterrupted one did, bit for bit
    resumed = load_file(str(tmp_path / "out" / "generator" / "model.safetensors"))
    uninterrupted = load_file(str(fedadam[1] / "generator" / "model.safetensors"))
    assert resumed.keys() == uninterrupted.keys() and all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    with pytest.raises(ValueError, match="other settings"):
        federate(tmp_path, settings(strategy="fedadam", local_epochs=2))


def test_a_site_whose_images_do_not_fit_is_refused_before_round_1(tmp_path):
    other = tmp_path / "hospital_b.yaml"
    other.write_text(yaml.safe_dump({"data": {**PHANTOMS, "init_args": {**PHANTOMS["init_args"], "image_size": 32}}}),
                     encoding="utf-8")
    nodes = [{"partition-id": 0, "num-partitions": 2},
             {"site-name": "hospital-b", "data-config": str(other), "site-dir": str(tmp_path / "b")}]
    with pytest.raises(ValueError, match=r"site hospital-b has images of shape \(1, 32, 32\)"):
        federate(tmp_path, settings(), node_configs=nodes)
    assert not (tmp_path / "out" / "checkpoint").exists()
