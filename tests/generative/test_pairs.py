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
    assert set(masks.unique().tolist()) <= {0.0, 1.0}


def check_paired(synth: PairedSynthesizer, labels: torch.Tensor, seed: int) -> None:
    """Each image is the image generator's own sample for its mask and label, the mask the mask
    generator's (thresholded), both from one seeded generator."""
    images, masks = synth.sample_pairs(len(labels), labels=labels, generator=torch.Generator().manual_seed(seed))
    check_pairs(images, masks, len(labels))
    rng = torch.Generator().manual_seed(seed)
    mask_labels = labels if synth.mask_generator.num_classes else None
    image_labels = labels if synth.image_generator.num_classes else None
    soft = synth.mask_generator.sample(len(labels), labels=mask_labels, generator=rng)
    assert torch.equal(masks, (soft > synth.threshold).float())
    expected = synth.image_generator.sample(len(labels), labels=image_labels, masks=masks, generator=rng)
    assert torch.equal(images, expected)


def test_pairs_from_two_ddpms(generators):
    synth = PairedSynthesizer(*generators)
    images, masks = synth.sample_pairs(5, generator=torch.Generator().manual_seed(0))
    check_pairs(images, masks, 5)
    again = synth.sample_pairs(5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], images) and torch.equal(again[1], masks)
    check_paired(synth, torch.tensor([0, 1, 1]), seed=1)


def test_pairs_from_pretrained_folders(generators, tmp_path):
    mask_model, image_model = generators
    synth = PairedSynthesizer.from_pretrained(mask_model.save_pretrained(tmp_path / "masks"),
                                              image_model.save_pretrained(tmp_path / "images"))
    images, masks = synth.sample_pairs(2, generator=torch.Generator().manual_seed(2))
    check_pairs(images, masks, 2)
    expected = PairedSynthesizer(*generators).sample_pairs(2, generator=torch.Generator().manual_seed(2))
    assert torch.equal(images, expected[0]) and torch.equal(masks, expected[1])  # the folders sample alike


def test_pairs_with_pix2pix(generators):
    pix2pix = create_generator("pix2pix", image_size=8, generator_channels=8, generator_levels=3,
                               discriminator_channels=8)
    fit(pix2pix, 2, num_classes=1)
    synth = PairedSynthesizer(generators[0], pix2pix)
    check_paired(synth, torch.tensor([0, 1, 0, 1]), seed=3)


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
