"""The "segmentation" feature extractor: a U-Net trained on the real image and mask pairs (the shipped ISBI
EM set in 2D, phantom volumes in 3D), its encoder's pooled levels as features; cached, reloaded, and used by
``medaug evaluate --extractor segmentation`` on a mask-conditional bank."""

import json

import lightning as L
import pytest
import torch

from lightning_medaug.bank import write_bank
from lightning_medaug.cli import main
from lightning_medaug.data import FolderDataModule, PhantomDataModule
from lightning_medaug.metrics import load_feature_extractor, train_segmentation_extractor
from lightning_medaug.registry import create_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_isbi_features_are_the_encoder_levels_and_are_cached(tmp_path):
    data = FolderDataModule(image_size=64, val_indices=[20, 21], test_indices=[22, 23], batch_size=4)
    data.setup("fit")
    extractor = train_segmentation_extractor(data, tmp_path, max_steps=3)
    assert not extractor.from_cache and extractor.config["val_metrics"]  # validated on images 20-21
    images = torch.stack([data.train_dataset[i]["image"] for i in range(6)])
    features = extractor(images)
    assert features.shape == (6, 64 + 64 + 128 + 256 + 512)  # smp resnet18's five levels, pooled
    again = train_segmentation_extractor(data, tmp_path, max_steps=3)
    assert again.from_cache and again.path == extractor.path
    torch.testing.assert_close(again(images), features)
    torch.testing.assert_close(load_feature_extractor(extractor.path)(images), features)
    noise = torch.rand_like(images) * 2 - 1  # what EM images are not: the features must tell them apart
    gap = (extractor(noise).mean(0) - features.mean(0)).norm()
    assert gap > 3 * (features[:3].mean(0) - features[3:].mean(0)).norm()


def test_volumes_use_the_levels_of_monais_unet(tmp_path):
    data = PhantomDataModule(spatial_dims=3, image_size=16, num_train=8, num_val=4, num_test=4, batch_size=4)
    extractor = train_segmentation_extractor(data, tmp_path, max_steps=1)
    features = extractor(torch.stack([data.train_dataset[i]["image"] for i in range(3)]))
    assert features.shape == (3, 16 + 32 + 64 + 128) and torch.isfinite(features).all()
    with pytest.raises(ValueError, match=r"expected images \(N, 1, \*S\) with 3 spatial axes"):
        extractor(torch.zeros(2, 1, 16, 16))


def test_evaluate_scores_a_mask_bank_with_the_segmentation_extractor(tmp_path, capsys):
    config = {"class_path": "lightning_medaug.data.PhantomDataModule",
              "init_args": {"image_size": 32, "num_train": 16, "num_val": 8, "num_test": 8, "batch_size": 8}}
    data = PhantomDataModule(**config["init_args"])
    data.setup("fit")
    L.seed_everything(0)
    model = create_generator("pix2pix", image_size=32, generator_channels=8, generator_levels=3, num_res_units=0,
                             discriminator_channels=8)
    write_bank(model, tmp_path / "bank", 8, masks=data.test_dataset.masks[:8], shard_size=8, progress=False)
    out = tmp_path / "report"
    assert main(["evaluate", "--bank", str(tmp_path / "bank"), "--data", json.dumps(config), "--extractor",
                 "segmentation", "--extractor-max-steps", "2", "--extractor-cache", str(tmp_path / "cache"),
                 "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    text = json.dumps(metrics)
    assert '"segmentation"' in text and "SegmentationFeatureExtractor" in text
    assert metrics["fidelity"]["synthetic"]["fd"] > metrics["fidelity"]["floor"]["fd"] >= 0


def test_data_without_masks_is_refused_with_the_way_out(tmp_path):
    data = PhantomDataModule(image_size=32, num_train=4, num_val=2, num_test=2, with_masks=False)
    with pytest.raises(ValueError, match="has no mask.*use --extractor domain"):
        train_segmentation_extractor(data, tmp_path, max_steps=1)
