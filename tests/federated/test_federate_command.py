"""``medaug federate``: the recipes parse into settings; one tiny federation under DP runs end to end, resumes,
and its export feeds ``medaug generate`` and ``medaug card``, which name the federation; mistakes are one line."""

import contextlib
import dataclasses
import io
import json
from pathlib import Path

import pytest
import yaml

from lightning_medaug.cli import main
from lightning_medaug.command_parser import parse_command
from lightning_medaug.federated.command import build_parser
from lightning_medaug.federated.record import FEDERATION_RECORD
from lightning_medaug.federated.settings import FederationSettings
from lightning_medaug.generative import load_generator

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("federated_*_pneumonia.yaml"))
FIELDS = {f.name for f in dataclasses.fields(FederationSettings)}
TARGET_EPSILON = 5.0


def test_there_are_federated_recipes_for_three_families():
    assert {r.stem for r in RECIPES} >= {"federated_cvae_pneumonia", "federated_ddpm_pneumonia",
                                         "federated_cgan_pneumonia"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses_into_settings(recipe):
    config = parse_command(build_parser(), ["--config", str(recipe)]).as_dict()
    settings = FederationSettings(**{k: v for k, v in config.items() if k in FIELDS})
    assert settings.build_generator().image_shape == (1, 28, 28)
    assert config["out"].startswith("runs/")


@pytest.fixture(scope="module")
def federated(tmp_path_factory):
    """One ``medaug federate`` run: a tiny DDPM, 2 sites, 2 rounds, each site's DP noise calibrated to all rounds."""
    root = tmp_path_factory.mktemp("federate")
    config = root / "federation.yaml"
    config.write_text(yaml.safe_dump({
        "generator": "ddpm", "num_sites": 2, "num_rounds": 2, "split": "iid",
        "generator_args": {"image_size": 16, "num_classes": 2, "channels": [8, 16], "norm_num_groups": 4,
                           "num_inference_steps": 2},
        "data": {"class_path": "lightning_medaug.data.PhantomDataModule",
                 "init_args": {"image_size": 16, "num_train": 24, "num_val": 4, "num_test": 4, "batch_size": 8}},
        "privacy": {"target_epsilon": TARGET_EPSILON}}), encoding="utf-8")
    out, printed = root / "fed", io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["federate", "--config", str(config), "--out", str(out)])
    return {"code": code, "config": config, "out": out, "printed": printed.getvalue()}


def test_federate_command_runs_under_dp_and_resumes(federated, capsys):
    assert federated["code"] == 0
    printed, out = federated["printed"], federated["out"]
    assert "2 rounds over 2 sites (fedavg, iid), epsilon" in printed
    assert load_generator(out / "generator").num_classes == 2
    # the accountant composes over rounds, and the last round stays within the target the noise was calibrated to
    record = json.loads((out / "generator" / FEDERATION_RECORD).read_text(encoding="utf-8"))
    for site in ("site-0", "site-1"):
        first, last = (r["sites"][site]["epsilon"] for r in record["rounds"])
        assert 0 < first < last <= TARGET_EPSILON
    privacy = json.loads((out / "generator" / "privacy.json").read_text(encoding="utf-8"))
    assert privacy["epsilon"] == record["summary"]["epsilon"] == max(record["summary"]["epsilon_per_site"].values())
    assert main(["federate", "--config", str(federated["config"]), "--out", str(out)]) == 0
    assert "round " not in capsys.readouterr().out  # resumed after round 2: nothing left to train


def test_a_bank_of_the_export_names_its_federation(federated, tmp_path):
    generator = federated["out"] / "generator"
    assert main(["generate", "--model", str(generator), "--out", str(tmp_path / "bank"), "--num-samples", "4",
                 "--no-progress"]) == 0
    settings = json.loads((tmp_path / "bank" / "bank.json").read_text(encoding="utf-8"))["settings"]
    summary = json.loads((generator / FEDERATION_RECORD).read_text(encoding="utf-8"))["summary"]
    assert settings["federation"] == summary
    assert summary["rounds"] == 2 and summary["site_sizes"] == {"site-0": 12, "site-1": 12}
    assert summary["strategy"] == "fedavg" and summary["epsilon"] <= TARGET_EPSILON


def test_the_model_card_of_the_export_has_a_federated_training_section(federated):
    generator = federated["out"] / "generator"
    assert main(["card", str(generator), "--data-name", "phantoms"]) == 0
    card = (generator / "MODEL_CARD.md").read_text(encoding="utf-8")
    section = card.split("## Federated training")[1].split("## Evaluation")[0]
    summary = json.loads((generator / FEDERATION_RECORD).read_text(encoding="utf-8"))["summary"]
    eps, delta = summary["epsilon_per_site"]["site-0"], summary["delta_per_site"]["site-0"]
    assert "| rounds | 2 |" in section and "| sites | 2 |" in section and "FedAvg" in section
    assert "| averaged by the server | ema, unet |" in section
    assert f"| site-0 | 12 | {eps:.3g} | {delta:.3g} |" in section and "least private site" in section
    assert "| size | 24 |" in card  # the sites' images together, from the record
    assert "differentially private" in card.split("## Privacy")[1]


def test_bad_settings_are_one_line_with_exit_code_2(tmp_path, capsys):
    code = main(["federate", "--out", str(tmp_path), "--generator", "cvae", "--strategy", "fedsgd",
                 "--data", '{"class_path": "lightning_medaug.data.PhantomDataModule"}'])
    err = capsys.readouterr().err
    assert code == 2 and "strategy" in err and "fedsgd" in err and len(err.strip().splitlines()) == 1
