"""SecAgg+ (Flower's SecAggPlusWorkflow and secaggplus_mod) over three sites of a tiny cVAE on the in-process grid:
the server receives no site's weights, yet ends where plain FedAvg does up to the quantization; drop-outs,
FedAdam's resume and the clipping range; bad options are one line."""

import json

import pytest
import yaml
from safetensors.torch import load_file

from lightning_medaug.cli import main
from lightning_medaug.federated.client import client_app
from lightning_medaug.federated.grid import InProcessGrid
from lightning_medaug.federated.secure import quantization_bound
from lightning_medaug.federated.server import run_federation
from lightning_medaug.federated.settings import SECURE_AGGREGATION, FederationSettings

PHANTOMS = {"class_path": "lightning_medaug.data.PhantomDataModule",
            "init_args": {"image_size": 16, "num_train": 30, "num_val": 4, "num_test": 4, "batch_size": 8}}
TINY = {"image_size": 16, "num_classes": 2, "channels": [8, 16], "norm_num_groups": 4, "latent_channels": 2}
#: float32 rounding of weights of a few units, beside the quantization's bound
FLOAT32 = 1e-6


def settings(**kwargs):
    return FederationSettings(generator="cvae", generator_args=TINY, data=PHANTOMS, num_sites=3,
                              **{"num_rounds": 1, **kwargs})


class RecordingGrid(InProcessGrid):
    """The in-process grid, keeping every reply the server pulled."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.replies = []

    def pull_messages(self, message_ids):
        replies = list(super().pull_messages(message_ids))
        self.replies.extend(replies)
        return replies


def federate(out, config, mods=()):
    grid = RecordingGrid(client_app(mods), [{"partition-id": i, "num-partitions": 3} for i in range(3)])
    record = run_federation(grid, config, out, log=lambda line: None)
    return record, grid.replies, load_file(str(out / "generator" / "model.safetensors"))


def fails_in_training(sites, rounds):
    """A Flower client mod: the sites (partition ids) raise when asked to train in ``rounds``."""
    def mod(message, context, call_next):
        if (message.metadata.message_type == "train" and context.node_config["partition-id"] in sites
                and int(message.content["config"]["server-round"]) in rounds):
            raise ConnectionError("site went offline")
        return call_next(message, context)
    return mod


def largest_difference(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def weights_seen(replies):
    return sum(len(record) for r in replies if r.metadata.message_type == "train" and not r.has_error()
               for record in r.content.array_records.values())


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return federate(tmp_path_factory.mktemp("plain") / "out", settings())


def test_the_server_sees_no_weights_and_gets_the_plain_mean_up_to_quantization(tmp_path, plain):
    record, replies, weights = federate(tmp_path / "out", settings(secure_aggregation={}))
    summary = record["summary"]["secure_aggregation"]
    assert summary["protocol"] == "SecAgg+" and summary["max_weight"] == 10
    assert summary["in_the_clear"] == ["global-step", "num-examples", "train-loss"]
    assert {k: summary[k] for k in SECURE_AGGREGATION} == SECURE_AGGREGATION
    # three equal sites, Flower's ranges: one quantization step, 2 * 8 / 2**22
    assert summary["max_error"] == pytest.approx(2 * 8.0 / 2**22)
    assert weights_seen(plain[1]) > 0 and weights_seen(replies) == 0  # four protocol stages, never a weight
    assert len([r for r in replies if r.metadata.message_type == "train"]) == 3 * 4
    assert 0 < largest_difference(weights, plain[2]) <= summary["max_error"] + FLOAT32
    assert record["rounds"][0]["sites"] == plain[0]["rounds"][0]["sites"]  # the same training at every site
    saved = json.loads((tmp_path / "out" / "generator" / "federation.json").read_text(encoding="utf-8"))
    assert saved["settings"]["secure_aggregation"] == SECURE_AGGREGATION and saved["summary"] == record["summary"]


def test_a_site_dropping_out_mid_round_is_left_out_of_the_sum(tmp_path):
    drop = [fails_in_training({2}, {1})]
    record, _, weights = federate(tmp_path / "secure", settings(secure_aggregation={}), drop)
    plain, _, plain_weights = federate(tmp_path / "plain", settings(), drop)
    entry = record["rounds"][0]
    assert sorted(entry["sites"]) == ["site-0", "site-1"] and "site went offline" in entry["dropped"]["site-2"]
    # the dropped site had shared its keys: its masks were rebuilt from the others' shares and removed
    bound = quantization_bound(SECURE_AGGREGATION, [10, 10], 10)
    assert largest_difference(weights, plain_weights) <= bound + FLOAT32
    assert entry["sites"] == plain["rounds"][0]["sites"]


def test_a_killed_secure_fedadam_federation_resumes_where_it_would_have_been(tmp_path):
    config = settings(num_rounds=2, strategy="fedadam", secure_aggregation={})
    _, _, uninterrupted = federate(tmp_path / "once", config)
    with pytest.raises(RuntimeError, match="round 2: secure aggregation stopped.*site went offline"):
        federate(tmp_path / "twice", config, [fails_in_training({0, 1, 2}, {2})])
    record, _, resumed = federate(tmp_path / "twice", config)
    assert [r["round"] for r in record["rounds"]] == [1, 2]
    assert (tmp_path / "twice" / "checkpoint" / "round-0002.strategy.safetensors").is_file()
    assert largest_difference(resumed, uninterrupted) == 0  # the masks cancel exactly; moments and rounding reseeded


def test_an_update_beyond_the_clipping_range_is_refused_not_clipped(tmp_path):
    with pytest.raises(RuntimeError, match="secure aggregation stopped.*beyond secure_aggregation's clipping_range"):
        federate(tmp_path / "out", settings(secure_aggregation={"clipping_range": 1e-5}))
    assert not (tmp_path / "out" / "generator").exists()


@pytest.mark.parametrize(("options", "extra", "message"), [
    ({"shares": 3}, {}, r"unknown keys \['shares'\]"),
    ({"num_shares": 2}, {}, "num_shares as an integer must be greater than 2"),
    ({"reconstruction_threshold": 4}, {}, "reconstruction_threshold 4 exceeds num_sites=3"),
    ({"clipping_range": -1}, {}, "clipping_range must be positive"),
    ({"clipping_range": "8"}, {}, "clipping_range must be a number"),
    ({"quantization_range": 2**33}, {}, "modulus_range must be an integer and greater than quantization_range"),
    ({}, {"min_sites": 1}, "secure_aggregation needs min_sites >= 2"),
    ([], {}, "secure_aggregation must be a mapping"),
])
def test_bad_secure_aggregation_options_are_refused(options, extra, message):
    with pytest.raises(ValueError, match=message):
        settings(secure_aggregation=options, **extra)


def test_the_command_runs_secure_aggregation_over_dp_sites_and_says_what_was_wrong_in_one_line(tmp_path, capsys):
    config = tmp_path / "federation.yaml"
    config.write_text(yaml.safe_dump({"generator": "cvae", "generator_args": TINY, "data": PHANTOMS, "num_sites": 3,
                                      "num_rounds": 1, "privacy": {"noise_multiplier": 1.0}}), encoding="utf-8")
    assert main(["federate", "--config", str(config), "--out", str(tmp_path / "out"),
                 "--secure_aggregation", '{"clipping_range": 4}']) == 0
    assert "1 rounds over 3 sites (fedavg, iid, SecAgg+), epsilon" in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "generator" / "federation.json").read_text(encoding="utf-8"))["summary"]
    assert summary["secure_aggregation"]["clipping_range"] == 4.0 and summary["epsilon"] > 0
    assert {"epsilon", "delta"} <= set(summary["secure_aggregation"]["in_the_clear"])  # DP-SGD at each site composes
    assert main(["card", str(tmp_path / "out" / "generator"), "--data-name", "phantoms"]) == 0
    card = (tmp_path / "out" / "generator" / "MODEL_CARD.md").read_text(encoding="utf-8")
    section = card.split("## Federated training")[1].split("## Evaluation")[0]
    assert "masked by secure aggregation" in section and "sent back only its weights" not in section
    row = next(line for line in section.splitlines() if line.startswith("| secure aggregation |"))
    assert "SecAgg+" in row and "epsilon" in row and f"{summary['secure_aggregation']['max_error']:.2g}" in row
    code = main(["federate", "--config", str(config), "--out", str(tmp_path / "bad"),
                 "--secure_aggregation", '{"num_shares": 2}'])
    err = capsys.readouterr().err
    assert code == 2 and "num_shares" in err and len(err.strip().splitlines()) == 1
