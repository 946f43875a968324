"""Every registered family at non-square 2D and non-cubic 3D sizes: trained by a real Trainer on
data of that shape, sampled at exactly that shape, saved and loaded with the per-axis size."""

from __future__ import annotations

import pytest
import torch
from generative_testing import quiet_trainer, seeded

from lightning_medaug.data import PhantomDataModule
from lightning_medaug.generative.base import load_generator
from lightning_medaug.generative.shapes import crop_to, pad_to, padded_size, resampling_grid
from lightning_medaug.generative.unpaired_data import PhantomDomainsDataModule
from lightning_medaug.registry import GENERATORS, create_generator, list_generators
from lightning_medaug.sizes import spatial_size

SIZES = {2: (24, 20), 3: (8, 12, 16)}
_AE = {"channels": (8, 16), "norm_num_groups": 4, "latent_channels": 2}
_GAN = {"latent_dim": 8, "generator_channels": 4, "discriminator_channels": 4}
_STYLE = {"latent_dim": 8, "channel_base": 64, "channel_max": 8}
TINY = {
    "vae": _AE, "beta_vae": _AE, "cvae": {**_AE, "num_classes": 2}, "introvae": _AE,
    "vaegan": {**_AE, "discriminator_channels": 4},
    "kl_autoencoder": {**_AE, "discriminator_channels": 4},
    "vqvae": {"channels": (8, 16), "latent_channels": 4, "num_embeddings": 8, "num_res_layers": 0},
    "rhvae": {"channels": (8, 16), "latent_dim": 2, "n_lf": 1},
    "ddpm": {"channels": (8, 16), "norm_num_groups": 8, "num_inference_steps": 2},
    "dcgan": _GAN, "cgan": {**_GAN, "num_classes": 2}, "wgan_gp": {**_GAN, "n_critic": 1},
    "stylegan2": {**_STYLE, "w_dim": 8}, "progan": {**_STYLE, "stage_batches": 1},
    "sinddm": {"channels": (8, 8), "coarsest_size": 6, "num_inference_steps": 2, "copies_per_scale": 2},
    "pix2pix": {"generator_channels": 4, "discriminator_channels": 4, "generator_levels": 3},
    "cyclegan": {"generator_channels": 4, "discriminator_channels": 4, "generator_levels": 3},
    "ldm": {"channels": (8, 16), "norm_num_groups": 8, "num_inference_steps": 2},
    "consistency": {"num_solver_steps": 10, "num_inference_steps": 2},
}


def test_every_registered_family_is_covered():
    builtin = {n for n in list_generators() if GENERATORS.get(n).__module__.startswith("lightning_medaug.")}
    assert builtin <= set(TINY), "add the new family to TINY"


@pytest.mark.parametrize("name, kwargs", [
    ("vae", {"image_size": 30, **_AE, "channels": (8, 16, 16)}),  # 30 is not a multiple of 4
    ("vqvae", {"image_size": 28, "channels": (8, 16, 32), "num_res_layers": 0}),  # nor 28 of 8
    ("rhvae", {"image_size": 30, "channels": (8, 16), "latent_dim": 2}),
    ("introvae", {"image_size": 17, **_AE}),
    ("dcgan", {"image_size": 27, **_GAN}),
    ("stylegan2", {"image_size": 27, **_STYLE, "w_dim": 8}),
    ("progan", {"image_size": 27, **_STYLE}),
])
def test_sizes_the_networks_cannot_halve_are_padded_inside(name, kwargs):
    model = create_generator(name, **kwargs).eval()
    side = kwargs["image_size"]
    assert model.network_size != model.spatial_size  # padded inside ...
    assert tuple(model.sample(2, generator=seeded(0)).shape) == (2, 1, side, side)  # ... and cropped back


def build(name: str, spatial_dims: int, tmp_path) -> torch.nn.Module:
    size = SIZES[spatial_dims]
    if name == "ldm":  # latent diffusion on a (trained-for-nothing) VAE of the same size
        create_generator("vae", spatial_dims=spatial_dims, image_size=size, **_AE).save_pretrained(tmp_path / "ae")
        return create_generator("ldm", autoencoder_path=str(tmp_path / "ae"), **TINY[name])
    if name == "consistency":  # distilled from a (trained-for-nothing) DDPM of the same size
        create_generator("ddpm", spatial_dims=spatial_dims, image_size=size, **TINY["ddpm"]).save_pretrained(
            tmp_path / "teacher")
        return create_generator("consistency", teacher=str(tmp_path / "teacher"), **TINY[name])
    return create_generator(name, spatial_dims=spatial_dims, image_size=list(size), **TINY[name])


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", sorted(TINY))
def test_trains_and_samples_at_any_shape(name, spatial_dims, tmp_path):
    size = SIZES[spatial_dims]
    torch.manual_seed(0)
    model = build(name, spatial_dims, tmp_path)
    assert model.image_shape == (1, *size) and model.spatial_size == size
    if name == "cyclegan":
        data = PhantomDomainsDataModule(spatial_dims=spatial_dims, image_size=size, num_train=2, num_val=2,
                                        batch_size=2)
    else:
        data = PhantomDataModule(spatial_dims=spatial_dims, image_size=size, num_train=4, num_val=2, num_test=2,
                                 batch_size=2)
    trainer = quiet_trainer(2, limit_val_batches=0)
    trainer.fit(model, data)
    assert trainer.global_step >= 1
    model.eval()
    if name == "cyclegan":  # translates rather than samples
        x = torch.rand(2, 1, *size) * 2 - 1
        out = model.translate(x, "a2b")
    else:
        masks = (torch.rand(2, 1, *size) > 0.5).float() if model.requires_masks else None
        out = model.sample(2, masks=masks, generator=seeded(1))
    assert tuple(out.shape) == (2, 1, *size)
    assert torch.isfinite(out).all() and out.min() >= -1 and out.max() <= 1

    model.save_pretrained(tmp_path / "model")
    loaded = load_generator(tmp_path / "model")
    assert loaded.spatial_size == size and tuple(loaded.image_size) == size
    assert list(loaded.generator_config()["init_args"]["image_size"]) == list(size)


def test_int_sizes_keep_their_type_and_networks():
    # an int stays an int in the config (old folders load unchanged) and square grids need no padding
    model = create_generator("vae", image_size=16, **_AE)
    assert model.image_size == 16 and model.spatial_size == (16, 16) and model.network_size == (16, 16)
    gan = create_generator("dcgan", image_size=28, **_GAN)
    assert gan.network_size == (28, 28) and gan.generator.start_size == (7, 7)


def test_shape_helpers():
    assert spatial_size(8, 3) == (8, 8, 8) and spatial_size([16, 24, 32], 3) == (16, 24, 32)
    with pytest.raises(ValueError, match="has 2 sizes but spatial_dims=3"):
        spatial_size((16, 24), 3)
    with pytest.raises(ValueError, match="at least 4 on every axis"):
        spatial_size((16, 3), 2)
    assert padded_size((28, 9), 8) == (32, 16)
    assert resampling_grid((28, 28)) == (2, (28, 28))  # 28 -> 7 after two halvings, no padding
    assert resampling_grid((24, 20)) == (2, (24, 20))
    assert resampling_grid((27, 20)) == (2, (28, 20))  # an odd side is padded
    x = torch.randn(2, 1, 5, 7)
    padded = pad_to(x, (8, 8))
    assert padded.shape[2:] == (8, 8) and torch.equal(crop_to(padded, (5, 7)), x)


def test_a_bank_of_non_cubic_volumes_keeps_their_shape(tmp_path):
    from lightning_medaug.bank.reader import SyntheticBank
    from lightning_medaug.bank.writer import write_bank

    model = create_generator("vae", spatial_dims=3, image_size=(8, 12, 16), **_AE)
    model.save_pretrained(tmp_path / "vae")  # the bank loads it from its folder, as the CLI does
    write_bank(tmp_path / "vae", tmp_path / "bank", num_samples=3, shard_size=2, progress=False)
    bank = SyntheticBank(tmp_path / "bank")
    assert len(bank) == 3 and bank.image_size == (8, 12, 16) and bank.spatial_dims == 3
    assert tuple(bank[0]["image"].shape) == (1, 8, 12, 16)


def test_anisotropic_phantoms_are_round_in_millimetres():
    data = PhantomDataModule(spatial_dims=3, image_size=[16, 24, 32], spacing=[2.5, 0.8, 0.8], num_train=2,
                             num_val=1, num_test=1)
    geometry = data.image_geometry
    assert geometry.shape == (16, 24, 32) and geometry.spacing == (0.8, 0.8, 2.5)  # SimpleITK's (x, y, z)
    data.setup()
    mask = data.datasets["train"][0]["mask"][0]
    assert mask.shape == (16, 24, 32)
    extent_mm = [int(mask.any(dim=tuple(a for a in range(3) if a != axis)).sum()) * s
                 for axis, s in enumerate((2.5, 0.8, 0.8))]
    # the organ spans comparable millimetres on every axis, though 3x fewer voxels along the thick slices
    assert max(extent_mm) / min(extent_mm) < 2.0
    with pytest.raises(ValueError, match="spacing must be 3 positive numbers"):
        PhantomDataModule(spatial_dims=3, image_size=16, spacing=[1.0, 1.0])
