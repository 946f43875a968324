"""The clinical-resolution recipe pairs (a KL autoencoder, then mask-conditional latent diffusion on
it) end to end through the CLI at a fraction of their size: each fit exports its generator, the
latent diffusion finds the autoencoder's export, and samples follow the given masks' shape."""

from pathlib import Path

import pytest
import torch

from lightning_medaug.cli import main
from lightning_medaug.generative import load_generator

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
FEW = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
       "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
PAIRS = {
    "isbi_256": ("32", "16", ["--data.init_args.batch_size", "2"]),
    "phantom3d_96": ("[16, 24, 24]", "[8, 12, 12]", ["--data.init_args.num_train", "4", "--data.init_args.num_val",
                                                     "2", "--data.init_args.num_test", "2"]),
}


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_autoencoder_then_latent_diffusion_recipe(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    size, patch, data = PAIRS[name]
    shrink = ["--data.init_args.image_size", size, *data, *FEW]
    assert main(["fit", "--config", str(RECIPES / f"autoencoder_{name}.yaml"), "--model.init_args.image_size", size,
                 "--model.init_args.patch_size", patch, "--model.init_args.adversarial_start_step", "1",
                 *shrink]) == 0
    autoencoder = tmp_path / "runs" / f"autoencoder_{name}" / "version_0" / "generator"
    assert (autoencoder / "model.safetensors").is_file()
    assert main(["fit", "--config", str(RECIPES / f"ldm_{name}.yaml"), *shrink]) == 0  # finds the export itself
    model = load_generator(tmp_path / "runs" / f"ldm_{name}" / "version_0" / "generator")
    assert model.requires_masks and model.hparams.autoencoder_config["generator"] == "kl_autoencoder"
    masks = torch.zeros(2, *model.mask_shape)
    masks[1, ..., : model.spatial_size[-1] // 2] = 1
    images = model.sample(2, masks=masks, generator=torch.Generator().manual_seed(0), num_inference_steps=2)
    assert images.shape == (2, *model.image_shape) and torch.isfinite(images).all()
