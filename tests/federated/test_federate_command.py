"""``medaug federate``: the recipes parse into settings, a tiny federation runs end to end, mistakes are one line."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from lightning_medaug.cli import main
from lightning_medaug.command_parser import parse_command
from lightning_medaug.federated.command import build_parser
from lightning_medaug.federated.settings import FederationSettings
from lightning_medaug.generative import load_generator

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("federated_*_pneumonia.yaml"))
FIELDS = {f.name for f in dataclasses.fields(FederationSettings)}


def test_there_are_federated_recipes_for_three_families():
    assert {r.stem for r in RECIPES} >= {"federated_cvae_pneumonia", "federated_ddpm_pneumonia",
                                         "federated_cgan_pneumonia"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses_into_settings(recipe):
    config = parse_command(build_parser(), ["--config", str(recipe)]).as_dict()
    settings = FederationSettings(**{k: v for k, v in config.items() if k in FIELDS})
    assert settings.build_generator().image_shape == (1, 28, 28)
    assert config["out"].startswith("runs/")


def test_federate_command_runs_and_resumes(tmp_path, capsys):
    config = tmp_path / "federation.yaml"
    config.write_text(yaml.safe_dump({
        "generator": "cvae", "num_sites": 2, "num_rounds": 1, "split": "iid",
        "generator_args": {"image_size": 16, "num_classes": 2, "channels": [8, 16], "norm_num_groups": 4,
                           "latent_channels": 2},
        "data": {"class_path": "lightning_medaug.data.PhantomDataModule",
                 "init_args": {"image_size": 16, "num_train": 24, "num_val": 4, "num_test": 4, "batch_size": 8}},
        "privacy": {"target_epsilon": 5.0}}), encoding="utf-8")
    out = tmp_path / "fed"
    assert main(["federate", "--config", str(config), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 rounds over 2 sites (fedavg, iid), epsilon" in printed
    assert load_generator(out / "generator").num_classes == 2
    # the epsilon each site spent stays within the target the noise was calibrated to
    assert float(printed.split("epsilon ")[1].split()[0]) <= 5.0
    assert main(["federate", "--config", str(config), "--out", str(out)]) == 0  # resumed: nothing left to train


def test_bad_settings_are_one_line_with_exit_code_2(tmp_path, capsys):
    code = main(["federate", "--out", str(tmp_path), "--generator", "cvae", "--strategy", "fedsgd",
                 "--data", '{"class_path": "lightning_medaug.data.PhantomDataModule"}'])
    err = capsys.readouterr().err
    assert code == 2 and "strategy" in err and "fedsgd" in err and len(err.strip().splitlines()) == 1
