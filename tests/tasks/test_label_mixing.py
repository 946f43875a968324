"""MixUp / CutMix as a batch-level option of ClassificationTask, trained with a real Trainer."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import binary_auroc

from lightning_medaug.data import PhantomDataset
from lightning_medaug.tasks import ClassificationTask
from lightning_medaug.tasks.label_mixing import LabelMixing


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_a_few_mixed_training_steps(kind):
    data = PhantomDataset(16, image_size=16, with_masks=False, seed=3)
    task = ClassificationTask(backbone="test_resnet", batch_augmentation=kind, lr=3e-3)
    seen, mixing = [], task.label_mixing

    def recording(images, labels):  # the real mixing, keeping the soft targets the loss receives
        images, soft = mixing(images, labels)
        seen.append(soft)
        return images, soft

    task.label_mixing = recording
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, max_steps=4, num_sanity_val_steps=0)
    loader = DataLoader(data, batch_size=8)
    trainer.fit(task, loader, loader)
    assert trainer.global_step == 4 and torch.isfinite(trainer.callback_metrics["train/loss"])
    # validation (after the last step) scores the hard labels with the unmixed images' probabilities
    val_auc = float(trainer.callback_metrics["val/auc"])
    probs = torch.cat(trainer.predict(task, loader))
    assert val_auc == pytest.approx(float(binary_auroc(probs[:, 1], data.labels)), abs=1e-6)
    soft = torch.cat(seen)
    assert soft.shape == (32, 2) and torch.allclose(soft.sum(1), torch.ones(32))
    assert ((soft > 0) & (soft < 1)).any()  # really mixed, not one-hot


def test_mixup_blends_volumes_and_cutmix_refuses_them():
    images, labels = torch.rand(4, 1, 4, 6, 6), torch.tensor([0, 1, 0, 1])
    mixed, soft = LabelMixing("mixup", 2, spatial_dims=3)(images, labels)
    assert mixed.shape == images.shape and soft.shape == (4, 2)
    lam = soft[0, 0]  # image 0 (class 0) is blended with image 3 (class 1), the batch rolled by one
    assert torch.allclose(mixed[0], lam * images[0] + (1 - lam) * images[3], atol=1e-6)
    with pytest.raises(ValueError, match="2D boxes"):
        ClassificationTask(backbone="resnet10", spatial_dims=3, batch_augmentation="cutmix")
    with pytest.raises(ValueError, match="multilabel"):
        ClassificationTask(backbone="test_resnet", multilabel=True, num_classes=3, batch_augmentation="mixup")
    with pytest.raises(ValueError, match="must be one of"):
        ClassificationTask(backbone="test_resnet", batch_augmentation="mosaic")
