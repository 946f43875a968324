"""The one ``config.json`` + ``model.safetensors`` writer, used by generators and feature extractors."""

import json

import torch
from safetensors import safe_open

from lightning_medaug.registry import create_generator
from lightning_medaug.weights_folder import CONFIG_NAME, WEIGHTS_NAME, write_weights_folder


def test_writes_both_files_atomically_and_replaces_an_old_folder(tmp_path):
    write_weights_folder(tmp_path, {"a": 1}, {"w": torch.ones(2)}, metadata={"generator": "x"})
    write_weights_folder(tmp_path, {"a": 2}, {"w": torch.zeros(3).t()}, metadata={"generator": "y"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])  # no .tmp left
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["a"] == 2
    with safe_open(str(tmp_path / WEIGHTS_NAME), "pt") as f:
        assert f.metadata() == {"generator": "y"} and torch.equal(f.get_tensor("w"), torch.zeros(3))


def test_generators_save_through_it(tmp_path):
    model = create_generator("vae", image_size=8, channels=[4, 8], norm_num_groups=4, latent_channels=2)
    folder = model.save_pretrained(tmp_path / "vae")
    with safe_open(str(folder / WEIGHTS_NAME), "pt") as f:
        assert f.metadata() == {"generator": "vae"} and set(f.keys()) == set(model.state_dict())
