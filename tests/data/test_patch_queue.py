"""PatchQueueDataModule: random patches of another data module's samples through a TorchIO queue."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_medaug.data import PhantomDataModule
from lightning_medaug.data.patch_queue import PatchQueueDataModule
from lightning_medaug.registry import create_generator

pytest.importorskip("torchio")


def _phantoms(spatial_dims: int, size: tuple[int, ...]) -> PhantomDataModule:
    return PhantomDataModule(spatial_dims=spatial_dims, image_size=list(size), num_train=4, num_val=2, num_test=2,
                             batch_size=2)


@pytest.mark.parametrize("spatial_dims, size, patch", [(3, (8, 12, 16), (8, 8, 8)), (2, (24, 32), (16, 16))])
def test_batches_are_patches_of_the_samples_with_their_masks(spatial_dims, size, patch):
    torch.manual_seed(0)
    data = PatchQueueDataModule(_phantoms(spatial_dims, size), patch_size=list(patch), samples_per_volume=3,
                                max_length=6, batch_size=4)
    data.setup("fit")
    assert data.image_size == [*size] and data.spatial_dims == spatial_dims  # the whole samples', for the CLI
    volumes = torch.stack([data.datamodule.datasets["train"][i]["image"] for i in range(4)])
    batches = list(data.train_dataloader())
    assert sum(len(b["image"]) for b in batches) == 4 * 3  # samples_per_volume patches of every sample
    batch = batches[0]
    assert batch["image"].shape == (4, 1, *patch) and batch["mask"].shape == (4, 1, *patch)
    assert batch["label"].shape == (4,) and set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    for image, start in zip(batch["image"], batch["location"][:, :spatial_dims]):
        block = volumes[(slice(None), slice(None), *(slice(int(s), int(s) + p) for s, p in zip(start, patch)))]
        assert any(torch.equal(image, candidate) for candidate in block)  # cut from one of the samples, unchanged
    whole = next(iter(data.val_dataloader()))
    assert whole["image"].shape[2:] == size


def test_a_kl_autoencoder_trains_on_queue_patches_and_validates_whole():
    size, patch = (8, 12, 16), (8, 8, 8)
    model = create_generator("kl_autoencoder", spatial_dims=3, image_size=list(size), patch_size=list(patch),
                             channels=(8, 16), norm_num_groups=4, latent_channels=2, discriminator_channels=4)
    seen = []
    model.autoencoder.encoder.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    data = PatchQueueDataModule(_phantoms(3, size), patch_size=list(patch), samples_per_volume=2, max_length=4)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data)
    assert seen[0] == (2, 1, *patch) and len([s for s in seen if s[2:] == patch]) == 4  # 8 patches, batches of 2
    assert seen[-1][2:] == size and torch.isfinite(trainer.callback_metrics["train/loss"])


def test_bad_patch_sizes_are_refused():
    data = PatchQueueDataModule(_phantoms(3, (8, 12, 16)), patch_size=[8, 16, 8])
    with pytest.raises(ValueError, match="each at most the samples' size"):
        data.setup("fit")
