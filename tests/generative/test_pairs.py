"""Joint (image, mask) synthesis: a mask DDPM, then a mask-conditional DDPM or a pix2pix."""

import lightning as L
import pytest
import torch

from lightning_medaug.data import PhantomDataModule
from lightning_medaug.generative.diffusion import DDPM
from lightning_medaug.generative.pairs import PairedSynthesizer
from lightning_medaug.registry import create_generator

TINY = {"image_size": 8, "channels": (16, 32), "norm_num_groups": 8, "lr": 3e-3, "num_inference_steps": 5}


def fit(model: L.LightningModule, steps: int, num_classes: int = 2) -> L.LightningModule:
    data = PhantomDataModule(image_size=8, num_classes=num_classes, num_train=16, batch_size=8)
    L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, max_steps=steps, limit_val_batches=0).fit(model, data)
    return model


@pytest.fixture(scope="module")
def generators():
    mask_model = fit(DDPM(data_key="mask", num_classes=2, **TINY), 3)
    image_model = fit(DDPM(mask_conditional=True, num_classes=2, **TINY), 3)
    return mask_model, image_model


def check_pairs(images: torch.Tensor, masks: torch.Tensor, n: int) -> None:
    assert images.shape == (n, 1, 8, 8) and masks.shape == (n, 1, 8, 8)
    assert images.min() >= -1 and images.max() <= 1
    assert set(masks.unique().tolist()) <= {0.0, 1.0}


def test_pairs_from_two_ddpms(generators):
    synth = PairedSynthesizer(*generators)
    images, masks = synth.sample_pairs(5, generator=torch.Generator().manual_seed(0))
    check_pairs(images, masks, 5)
    again = synth.sample_pairs(5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], images) and torch.equal(again[1], masks)
    images, masks = synth.sample_pairs(3, labels=torch.tensor([0, 1, 1]))
    check_pairs(images, masks, 3)


def test_pairs_from_pretrained_folders(generators, tmp_path):
    mask_model, image_model = generators
    synth = PairedSynthesizer.from_pretrained(mask_model.save_pretrained(tmp_path / "masks"),
                                              image_model.save_pretrained(tmp_path / "images"))
    check_pairs(*synth.sample_pairs(2), 2)


def test_pairs_with_pix2pix(generators):
    pix2pix = create_generator("pix2pix", image_size=8, generator_channels=8, generator_levels=3,
                               discriminator_channels=8)
    fit(pix2pix, 2, num_classes=1)
    synth = PairedSynthesizer(generators[0], pix2pix)
    check_pairs(*synth.sample_pairs(4, labels=torch.tensor([0, 1, 0, 1])), 4)


def test_mismatched_generators_are_rejected(generators):
    mask_model, image_model = generators
    with pytest.raises(ValueError, match="not mask-conditional"):
        PairedSynthesizer(mask_model, mask_model)
    with pytest.raises(ValueError, match="itself mask-conditional"):
        PairedSynthesizer(image_model, image_model)
    with pytest.raises(ValueError, match="image_size"):
        PairedSynthesizer(mask_model, DDPM(mask_conditional=True, num_classes=2, **(TINY | {"image_size": 16})))
    with pytest.raises(ValueError, match="class counts"):
        PairedSynthesizer(mask_model, DDPM(mask_conditional=True, num_classes=3, **TINY))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        PairedSynthesizer(mask_model, image_model).sample_pairs(0)
