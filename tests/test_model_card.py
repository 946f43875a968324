"""MODEL_CARD.md: figures only from the files the library wrote, "not evaluated" when there are none."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml

from lightning_medaug.data import PhantomDataModule
from lightning_medaug.evaluation.evaluate import evaluate_bank
from lightning_medaug.model_card import (
    card_main,
    read_evaluation,
    training_environment,
    write_model_card,
)
from lightning_medaug.registry import create_generator

DATA = {"name": "phantoms", "split": "train", "size": 32, "attribution": "procedural phantoms, no patient data"}
TRAINING = {"epochs": 3, "steps": 120, "wall_time_s": 90.0, "precision": "32-true",
            "hardware": {"cpu": "test CPU", "gpu": "none"}, "versions": {"torch": torch.__version__}}


@pytest.fixture(scope="module")
def generator_folder(tmp_path_factory):
    """A tiny class-conditional GAN in a run-like folder: run/generator."""
    torch.manual_seed(0)
    model = create_generator("cgan", image_size=16, latent_dim=8, generator_channels=8, discriminator_channels=8,
                             num_classes=2)
    folder = model.save_pretrained(tmp_path_factory.mktemp("run") / "generator")
    return model, folder


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    """A real `medaug evaluate` report of a 'bank' made of the training images: every sample is a copy."""
    data = PhantomDataModule(image_size=16, num_train=32, num_val=8, num_test=16, batch_size=16)
    out = tmp_path_factory.mktemp("eval") / "report"
    evaluate_bank(data.train_dataset, data.train_dataset, data.test_dataset, out, None, num_samples=10)
    return out


def test_card_renders_model_data_training_and_evaluation(generator_folder, evaluation):
    model, folder = generator_folder
    path = write_model_card(folder, data=DATA, training=TRAINING, evaluation=evaluation)
    text = path.read_text(encoding="utf-8")
    assert path == folder / "MODEL_CARD.md"
    total = sum(p.numel() for p in model.parameters())
    assert f"{total:,}" in text and "`cgan`" in text and "| `latent_dim` | 8 |" in text
    assert "| name | phantoms |" in text and "| attribution | procedural phantoms, no patient data |" in text
    assert "| wall time | 1.5 min |" in text and "cpu: test CPU" in text and "| precision | 32-true |" in text
    result = json.loads((evaluation / "metrics.json").read_text(encoding="utf-8"))
    fd = result["fidelity"]["synthetic"]["fd"]
    assert re.search(rf"\| Frechet distance \| lower \| {fd:.4g} \| {result['fidelity']['floor']['fd']:.4g} \|", text)
    # The bank is the training set itself, so the card must report a 100% copy rate.
    assert "| pixel | 100.0% | 0 |" in text and "copy rate of 10 synthetic images was 100.0% in pixel space" in text
    assert "Not evaluated" not in text and "Not for diagnosis" in text and "Apache-2.0" in text


def test_card_without_evaluation_invents_nothing(generator_folder):
    _, folder = generator_folder
    card = write_model_card(folder, data={"name": "phantoms"}, training={}, license="CC-BY-4.0")
    text = card.read_text(encoding="utf-8")
    assert "Not evaluated" in text and "copy rate was not measured" in text
    assert "Frechet distance" not in text and "| wall time | not recorded |" in text
    assert "| size | not recorded |" in text and "CC-BY-4.0" in text


def test_loading_example_runs(generator_folder):
    model, folder = generator_folder
    text = write_model_card(folder, data=DATA, training=TRAINING).read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    scope: dict = {}
    exec(code, scope)  # noqa: S102 (the card's own snippet, with the folder as source)
    assert torch.equal(scope["images"], model.sample(16, labels=torch.tensor([0, 1] * 8),
                                                     generator=torch.Generator().manual_seed(0)))


def test_card_main_reads_the_run_folder(generator_folder, evaluation, capsys):
    _, folder = generator_folder
    run = folder.parent
    config = {"seed_everything": 0, "trainer": {"precision": "bf16-mixed", "max_epochs": 5},
              "data": {"class_path": "lightning_medaug.data.MedMNISTDataModule",
                       "init_args": {"name": "pneumoniamnist", "size": 28, "subset": 10}}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.json").write_text(json.dumps({"fit": {"epochs": 5.0, "global_step": 400.0}, "history": []}))
    assert card_main([str(folder), "--metrics", str(evaluation / "metrics.json"), "--record-environment"]) == 0
    assert "model card written to" in capsys.readouterr().out
    text = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "| name | pneumoniamnist |" in text and "| subset | 10 |" in text and "| size | 20 |" in text
    assert "MedMNIST v2" in text and "CC BY 4.0" in text and "| precision | bf16-mixed |" in text
    assert "| epochs | 5 |" in text and "| optimizer steps | 400 |" in text and "| seed | 0 |" in text
    env = training_environment()
    assert env["hardware"]["cpu"] in text and f"torch: {torch.__version__}" in text


def test_card_options_from_a_yaml_and_the_run_config_under_its_old_name(generator_folder, tmp_path, capsys):
    """`--config` holds the options; `--config` naming a run's config.yaml still works, with a FutureWarning."""
    _, folder = generator_folder
    run_config = tmp_path / "elsewhere.yaml"
    run_config.write_text(yaml.safe_dump({"seed_everything": 7, "data": {"class_path": "lightning_medaug.data.X",
                                                                         "init_args": {"name": "phantoms"}}}))
    options = tmp_path / "card.yaml"
    options.write_text(yaml.safe_dump({"folder": str(folder), "run-config": str(run_config), "license": "CC0-1.0",
                                       "data_size": 32}))
    assert card_main(["--config", str(options)]) == 0
    card = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "| seed | 7 |" in card and "| name | phantoms |" in card and "| size | 32 |" in card and "CC0-1.0" in card
    (folder / "MODEL_CARD.md").unlink()
    with pytest.warns(FutureWarning, match="deprecated.*--run-config"):
        assert card_main([str(folder), f"--config={run_config}", "--license", "CC0-1.0", "--data-size", "32"]) == 0
    assert (folder / "MODEL_CARD.md").read_text(encoding="utf-8") == card
    assert f"from {run_config}" in capsys.readouterr().out


def test_bad_inputs_raise_value_error(generator_folder, tmp_path):
    _, folder = generator_folder
    with pytest.raises(ValueError, match="needs a 'name'"):
        write_model_card(folder, data={}, training={})
    run_metrics = tmp_path / "metrics.json"
    run_metrics.write_text(json.dumps({"fit": {"epochs": 1.0}}))
    with pytest.raises(ValueError, match="not a metrics.json written by `medaug evaluate`"):
        read_evaluation(run_metrics)
    with pytest.raises(ValueError, match="cannot read the evaluation"):
        read_evaluation(tmp_path / "absent.json")
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        write_model_card(tmp_path, data=DATA, training=TRAINING)
    with pytest.raises(ValueError, match="--data-name"):
        card_main([str(tmp_path / "lone" / "generator")])


def test_privacy_section_reads_the_dp_record_beside_the_weights(tmp_path):
    torch.manual_seed(0)
    model = create_generator("vae", image_size=16, channels=[8, 8], latent_channels=2, norm_num_groups=4)
    folder = model.save_pretrained(tmp_path / "generator")
    plain = write_model_card(folder, data=DATA, training=TRAINING).read_text(encoding="utf-8")
    assert "## Privacy" in plain and "without differential privacy" in plain
    record = {"epsilon": 7.9925, "delta": 1e-5, "accountant": "rdp", "noise_multiplier": 0.84, "steps": 190,
              "mechanism": "DP-SGD (Abadi et al. 2016)", "unit": "one training example"}
    (folder / "privacy.json").write_text(json.dumps(record), encoding="utf-8")
    text = write_model_card(folder, data=DATA, training=TRAINING).read_text(encoding="utf-8")
    assert "**(7.99, 1e-05)-differentially private** with respect to one training example" in text
    assert "| noise_multiplier | 0.84 |" in text and "| accountant | rdp |" in text
    (folder / "privacy.json").write_text(json.dumps({"delta": 1e-5}), encoding="utf-8")
    with pytest.raises(ValueError, match="'epsilon' and 'delta'"):
        write_model_card(folder, data=DATA, training=TRAINING)
