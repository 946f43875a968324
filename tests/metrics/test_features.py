"""The medical-domain feature extractor: trained on phantoms, cached by data hash, saved as safetensors."""

import json

import pytest
import timm
import torch

from lightning_medaug.data import PhantomDataModule, PhantomDataset
from lightning_medaug.metrics import (
    DomainFeatureExtractor,
    FrechetDistance,
    collect_images,
    dataset_fingerprint,
    extract_features,
    load_feature_extractor,
    train_feature_extractor,
)
from lightning_medaug.registry import FEATURE_EXTRACTORS
from lightning_medaug.tasks import ClassificationTask

TRAINER = {"accelerator": "cpu"}


def _datamodule(seed=0):
    return PhantomDataModule(image_size=16, num_train=32, num_val=16, num_test=16, batch_size=16, seed=seed)


def test_trains_on_phantoms_then_loads_from_cache_and_round_trips_via_safetensors(tmp_path):
    dm = _datamodule()
    extractor = train_feature_extractor(dm, tmp_path, backbone="test_resnet", max_steps=4, trainer_kwargs=TRAINER)
    assert not extractor.from_cache
    weights = extractor.path / "model.safetensors"
    assert weights.is_file() and (extractor.path / "config.json").is_file()
    assert not list(extractor.path.glob("*.pt*")) and not list(extractor.path.glob("*.ckpt"))
    config = json.loads((extractor.path / "config.json").read_text(encoding="utf-8"))
    assert config["data_hash"] == dataset_fingerprint(dm.train_dataset)
    assert extractor.path.parent.name == config["data_hash"][:16]
    assert config["global_step"] == 4 and "val/auc" in config["val_metrics"]
    mtime = weights.stat().st_mtime_ns

    # Same data and settings: loaded, not trained again (the file is untouched).
    again = train_feature_extractor(_datamodule(), tmp_path, backbone="test_resnet", max_steps=4,
                                    trainer_kwargs=TRAINER)
    assert again.from_cache and again.path == extractor.path and weights.stat().st_mtime_ns == mtime
    images = dm.test_dataset.images
    features = extractor(images)
    assert features.shape == (16, extractor.num_features) and features.dtype == torch.float32
    assert torch.allclose(again(images), features, atol=1e-5)
    assert torch.allclose(load_feature_extractor(extractor.path)(images), features, atol=1e-5)

    # Other data: another hash, another folder, a fresh training run.
    other = train_feature_extractor(_datamodule(seed=1), tmp_path, backbone="test_resnet", max_steps=1,
                                    trainer_kwargs=TRAINER)
    assert not other.from_cache and other.path.parent != extractor.path.parent


def test_registered_as_domain_and_load_errors_are_clear(tmp_path):
    assert FEATURE_EXTRACTORS.get("domain") is train_feature_extractor
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        load_feature_extractor(tmp_path)


def test_extractor_drops_the_head_and_checks_inputs():
    task = ClassificationTask(backbone="test_resnet", num_classes=3)
    extractor = DomainFeatureExtractor.from_task(task)
    assert isinstance(task.net.fc, torch.nn.Linear)  # the task's own network keeps its head
    x = torch.rand(5, 1, 16, 16) * 2 - 1
    assert extractor(x).shape == (5, task.net.fc.in_features)
    with pytest.raises(ValueError, match="expected images"):
        extractor(torch.zeros(5, 3, 16, 16))
    extractor.train()
    assert not extractor.training


def test_any_backbone_module_and_pixel_space_work():
    backbone = timm.create_model("test_resnet", pretrained=False, in_chans=1, num_classes=0)
    images = collect_images(PhantomDataset(20, image_size=16), num_samples=12, seed=3)
    assert images.shape == (12, 1, 16, 16)
    fd = FrechetDistance(backbone)  # width from timm's num_features
    fd.update(images, True), fd.update(images, False)
    assert float(fd.compute()) == pytest.approx(0.0, abs=1e-6)
    assert not backbone.training  # the metric keeps its extractor in eval mode
    assert extract_features(None, images).shape == (12, 256)
    backbone.train()
    features = extract_features(backbone, images, batch_size=5)  # runs in eval mode, restores the mode
    assert backbone.training and features.shape == (12, backbone.num_features)
    assert torch.allclose(features, backbone.eval()(images), atol=1e-5)


def test_fingerprint_changes_with_the_data():
    a, b = PhantomDataset(8, image_size=16, seed=0), PhantomDataset(8, image_size=16, seed=0)
    assert dataset_fingerprint(a) == dataset_fingerprint(b)
    b.labels[0] = 1 - b.labels[0]
    assert dataset_fingerprint(a) != dataset_fingerprint(b)
    samples = [a[i] for i in range(len(a))]  # a plain list: read sample by sample
    assert len(dataset_fingerprint(samples)) == 64
