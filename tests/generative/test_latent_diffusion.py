"""Latent diffusion on the library's real VAE and VQ-VAE, trained for a few steps on phantoms."""

import shutil

import lightning as L
import pytest
import torch
from generative_testing import assert_distinct_samples

from lightning_medaug.data import PhantomDataModule
from lightning_medaug.generative import load_generator
from lightning_medaug.generative.latent_diffusion import LatentDiffusion
from lightning_medaug.registry import create_generator

AUTOENCODERS = {
    "vae": {"latent_channels": 2, "channels": (8, 16), "norm_num_groups": 8},
    "vqvae": {"latent_channels": 4, "num_embeddings": 16, "channels": (8, 16)},
}
LDM_TINY = {"channels": (16, 32), "norm_num_groups": 8, "lr": 1e-3, "num_inference_steps": 4}


def fit(model: L.LightningModule, datamodule: L.LightningDataModule, steps: int) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, max_steps=steps, limit_val_batches=0)
    trainer.fit(model, datamodule)
    return trainer


def phantoms(spatial_dims: int = 2, image_size: int = 16) -> PhantomDataModule:
    return PhantomDataModule(spatial_dims=spatial_dims, image_size=image_size, num_classes=2, num_train=16,
                             batch_size=8)


def train_autoencoder(name: str, folder, spatial_dims: int = 2, image_size: int = 16) -> str:
    model = create_generator(name, spatial_dims=spatial_dims, image_size=image_size, **AUTOENCODERS[name])
    fit(model, phantoms(spatial_dims, image_size), 3)
    return str(model.save_pretrained(folder))


@pytest.fixture(scope="module")
def autoencoder_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("autoencoders")
    return {name: train_autoencoder(name, root / name) for name in AUTOENCODERS}


@pytest.mark.parametrize("name", list(AUTOENCODERS))
def test_ldm_trains_samples_and_reloads_without_the_autoencoder_folder(autoencoder_folders, name, tmp_path):
    ae_folder = tmp_path / name
    shutil.copytree(autoencoder_folders[name], ae_folder)
    model = create_generator("ldm", autoencoder_path=str(ae_folder), num_classes=2, **LDM_TINY)
    assert (model.spatial_dims, model.in_channels, model.image_size) == (2, 1, 16)
    assert model.hparams.autoencoder_config["generator"] == name
    ae_before = {k: v.clone() for k, v in model.autoencoder.state_dict().items()}
    trainer = fit(model, phantoms(), 3)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    scale = model.latent_scale.item()
    assert 0 < scale < float("inf")
    # the first stage stays frozen
    assert all(torch.equal(v, model.autoencoder.state_dict()[k]) for k, v in ae_before.items())
    assert not any(p.requires_grad for p in model.autoencoder.parameters())

    images = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert images.shape == (4, 1, 16, 16)
    assert_distinct_samples(images)

    model.save_pretrained(tmp_path / "ldm")
    shutil.rmtree(ae_folder)  # the LDM's own folder must be enough
    loaded = load_generator(tmp_path / "ldm")
    assert isinstance(loaded, LatentDiffusion) and loaded.latent_scale.item() == pytest.approx(scale)
    labels = torch.tensor([0, 1, 0, 1])
    expected = model.sample(4, labels=labels, generator=torch.Generator().manual_seed(1), sampler="ddim")
    again = loaded.sample(4, labels=labels, generator=torch.Generator().manual_seed(1), sampler="ddim")
    assert torch.allclose(again, expected, atol=1e-5)


def test_latent_scale_is_measured_once(autoencoder_folders):
    model = LatentDiffusion(autoencoder_path=autoencoder_folders["vae"], **LDM_TINY)
    fit(model, phantoms(), 1)
    first = model.latent_scale.clone()
    fit(model, phantoms(), 2)  # a second fit (as when resuming) keeps the measured scale
    assert torch.equal(model.latent_scale, first)


def test_ldm_3d(tmp_path):
    folder = train_autoencoder("vae", tmp_path / "vae3d", spatial_dims=3, image_size=8)
    model = LatentDiffusion(autoencoder_path=folder, **LDM_TINY)
    fit(model, phantoms(spatial_dims=3, image_size=8), 2)
    samples = [model.sample(2, sampler=sampler, generator=torch.Generator().manual_seed(0))
               for sampler in ("ddpm", "ddim", "dpmsolver++")]
    assert all(volumes.shape == (2, 1, 8, 8, 8) for volumes in samples)
    for volumes in samples:
        assert_distinct_samples(volumes)
    # one seed, three samplers: three different results (each sampler is the one used)
    assert not any(torch.equal(samples[i], samples[j]) for i, j in ((0, 1), (0, 2), (1, 2)))


def test_invalid_autoencoders_are_rejected(autoencoder_folders, tmp_path):
    with pytest.raises(ValueError, match="autoencoder_path"):
        LatentDiffusion()
    with pytest.raises(FileNotFoundError):
        LatentDiffusion(autoencoder_path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="image_size=32 but the autoencoder has image_size=16"):
        LatentDiffusion(autoencoder_path=autoencoder_folders["vae"], image_size=32)
    with pytest.raises(ValueError, match="config.json"):
        LatentDiffusion(autoencoder_config={"init_args": {}})
    ddpm = create_generator("ddpm", image_size=8, channels=(8,), norm_num_groups=8)
    with pytest.raises(ValueError, match="cannot be a latent-diffusion autoencoder"):
        LatentDiffusion(autoencoder_path=str(ddpm.save_pretrained(tmp_path / "ddpm")))


def test_built_by_lightning_cli_keeps_the_autoencoders_own_hparams(autoencoder_folders):
    # LightningCLI hands this module's arguments to save_hyperparameters() through a context
    # variable; the nested autoencoder must not record them as its own.
    from lightning.pytorch.cli import LightningCLI

    cli = LightningCLI(LatentDiffusion, PhantomDataModule, run=False, args=[
        "--model.autoencoder_path", autoencoder_folders["vae"], "--model.channels", "[16, 32]",
        "--model.norm_num_groups", "8", "--data.image_size", "16",
    ])
    assert cli.model.autoencoder.hparams["latent_channels"] == 2
    assert "autoencoder_path" not in cli.model.autoencoder.hparams
    assert cli.model.hparams.autoencoder_config["generator"] == "vae"


DDP_SCRIPT = '''
import sys
import lightning as L
import torch
from lightning_medaug.data import PhantomDataModule
from lightning_medaug.generative.latent_diffusion import LatentDiffusion


class FirstBatchStd(L.Callback):
    """Std of this rank's first latents (callbacks run before the module's on_train_batch_start)."""

    std = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.std is None:
            self.std = pl_module._encode(batch)[0].std().item()


torch.set_num_threads(1)
folder, out = sys.argv[1], sys.argv[2]
model = LatentDiffusion(autoencoder_path=folder, num_classes=2, channels=(16, 32), norm_num_groups=8)
probe = FirstBatchStd()
trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=2, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    limit_val_batches=0, callbacks=[probe])
trainer.fit(model, PhantomDataModule(image_size=16, num_classes=2, num_train=16, batch_size=4))
weights = sum(p.double().sum().item() for p in model.unet.parameters())
with open(f"{out}/rank{trainer.global_rank}.txt", "w") as fh:
    fh.write(f"{model.latent_scale.item()!r} {weights!r} {probe.std!r}")
'''


def test_ddp_latent_scale_is_averaged_over_ranks(autoencoder_folders, tmp_path):
    import subprocess
    import sys

    script = tmp_path / "ddp_ldm.py"
    script.write_text(DDP_SCRIPT)
    result = subprocess.run([sys.executable, str(script), autoencoder_folders["vae"], str(tmp_path)],
                            check=False, capture_output=True, text=True, encoding="utf-8", errors="replace",
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (scale0, weights0, std0), (scale1, weights1, std1) = (
        map(float, (tmp_path / f"rank{r}.txt").read_text(encoding="utf-8").split()) for r in (0, 1))
    assert std0 != std1  # the ranks saw different images...
    assert scale0 == scale1 and weights0 == weights1  # ...yet hold one model
    assert scale0 == pytest.approx(2.0 / (std0 + std1), rel=1e-4)  # 1 / (std averaged over ranks)
