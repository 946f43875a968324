"""Two sites, two rounds of real Flower (its strategies, ServerApp and ClientApp) on an in-process grid,
each site training the family's own LightningModule under a Lightning Trainer."""

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
        "ddpm": {"image_size": 16, "num_classes": 2, "channels": [8, 16], "norm_num_groups": 4,
                 "num_inference_steps": 2},
        "cgan": {"image_size": 16, "num_classes": 2}}


def settings(generator="cvae", **kwargs):
    return FederationSettings(generator=generator, generator_args=TINY[generator], data=PHANTOMS,
                              num_rounds=2, **kwargs)


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


def test_cvae_fedavg_exports_a_global_generator(tmp_path):
    initial = settings().build_generator().state_dict()
    record = federate(tmp_path, settings())
    summary = record["summary"]
    assert summary["rounds"] == 2 and summary["sites"] == ["site-0", "site-1"] and summary["strategy"] == "fedavg"
    assert all(r["sites"]["site-0"]["num-examples"] == 16 for r in record["rounds"])
    model = load_generator(tmp_path / "out" / "generator")
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, initial[k])]
    assert changed  # the average of the sites' training, not the initial weights
    samples = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4, 1, 16, 16) and torch.isfinite(samples).all()
    saved = json.loads((tmp_path / "out" / "generator" / FEDERATION_RECORD).read_text(encoding="utf-8"))
    assert saved["summary"] == summary and "epsilon" not in summary


def test_cgan_fedprox_keeps_each_discriminator_at_its_site(tmp_path):
    federate(tmp_path, settings("cgan", strategy="fedprox", proximal_mu=0.1))
    kept = [load_file(str(tmp_path / "out" / "sites" / f"site-{i}" / LOCAL_STATE)) for i in range(2)]
    disc = [k for k in kept[0] if k.startswith("discriminator.") and kept[0][k].is_floating_point()]
    assert disc and any(not torch.equal(kept[0][k], kept[1][k]) for k in disc)  # two critics, never averaged
    exported = load_file(str(tmp_path / "out" / "generator" / "model.safetensors"))
    assert not any(k.startswith("discriminator.") for k in exported)


def test_ddpm_with_dp_reports_epsilon_per_site_every_round(tmp_path):
    record = federate(tmp_path, settings("ddpm", privacy={"noise_multiplier": 1.0, "target_delta": 1e-3}))
    eps = [[r["sites"][s]["epsilon"] for s in ("site-0", "site-1")] for r in record["rounds"]]
    assert 0 < eps[0][0] < eps[1][0] and 0 < eps[0][1] < eps[1][1]  # the accountant composes over rounds
    privacy = json.loads((tmp_path / "out" / "generator" / "privacy.json").read_text(encoding="utf-8"))
    assert privacy["epsilon"] == pytest.approx(max(eps[1])) and privacy["delta"] == 1e-3
    assert set(privacy["epsilon_per_site"]) == {"site-0", "site-1"}


def test_a_site_dropping_out_does_not_stop_the_federation(tmp_path):
    record = federate(tmp_path, settings(min_sites=1), mods=[site_fails(1, {2})])
    assert list(record["rounds"][1]["sites"]) == ["site-0"]
    assert "site went offline" in record["rounds"][1]["dropped"]["site-1"]
    assert record["summary"]["dropped"] == {"2": ["site-1"]}


def test_a_killed_server_resumes_after_its_last_round(tmp_path):
    calls = []
    with pytest.raises(RuntimeError, match="round 2: 0 of 2 sites returned weights"):
        federate(tmp_path, settings(), mods=[site_fails(0, {2}, calls), site_fails(1, {2})])
    first = json.loads((tmp_path / "out" / "checkpoint" / "state.json").read_text(encoding="utf-8"))
    assert [r["round"] for r in first["rounds"]] == [1]
    calls.clear()
    record = federate(tmp_path, settings(), mods=[site_fails(-1, set(), calls)])
    assert sorted(calls) == [(0, 2), (1, 2)]  # round 1 is not trained again
    assert [r["round"] for r in record["rounds"]] == [1, 2] and record["rounds"][0] == first["rounds"][0]
    with pytest.raises(ValueError, match="other settings"):
        federate(tmp_path, settings(local_epochs=2))


def test_a_site_whose_images_do_not_fit_is_refused_before_round_1(tmp_path):
    other = tmp_path / "hospital_b.yaml"
    other.write_text(yaml.safe_dump({"data": {**PHANTOMS, "init_args": {**PHANTOMS["init_args"], "image_size": 32}}}),
                     encoding="utf-8")
    nodes = [{"partition-id": 0, "num-partitions": 2},
             {"site-name": "hospital-b", "data-config": str(other), "site-dir": str(tmp_path / "b")}]
    with pytest.raises(ValueError, match=r"site hospital-b has images of shape \(1, 32, 32\)"):
        federate(tmp_path, settings(), node_configs=nodes)
    assert not (tmp_path / "out" / "checkpoint").exists()
