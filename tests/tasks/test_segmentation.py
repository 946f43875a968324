"""SegmentationTask: real Trainer runs on tiny phantoms, 2D (smp) and 3D (MONAI UNet)."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.segmentation import dice_score

from lightning_medaug.data import PhantomDataset, make_phantoms
from lightning_medaug.registry import TASKS
from lightning_medaug.tasks import SegmentationTask


class LossRecorder(L.Callback):
    """Keeps the training loss of every step."""

    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def _trainer(max_steps, **kwargs):
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, max_steps=max_steps, num_sanity_val_steps=0, **kwargs)


@pytest.mark.parametrize("spatial_dims,size,kwargs", [
    (2, 32, {"arch": "Unet", "encoder": "tu-test_resnet", "lr": 3e-3}),  # smp Unet on a tiny timm encoder
    (3, 16, {"channels": [8, 16, 32], "lr": 3e-2}),
])
def test_overfits_one_batch_then_validates_tests_and_predicts(spatial_dims, size, kwargs):
    data = PhantomDataset(4, spatial_dims=spatial_dims, image_size=size, seed=5)
    loader = DataLoader(data, batch_size=4)  # one fixed batch per epoch
    task = SegmentationTask(spatial_dims=spatial_dims, **kwargs)
    recorder = LossRecorder()
    trainer = _trainer(15, callbacks=[recorder])
    trainer.fit(task, loader)
    first, last = recorder.losses[:3], recorder.losses[-3:]
    assert len(recorder.losses) == 15
    assert sum(last) / 3 < 0.85 * sum(first) / 3, recorder.losses

    metrics = {**trainer.validate(task, loader, verbose=False)[0], **trainer.test(task, loader, verbose=False)[0]}
    for key in ("val/loss", "val/dice", "test/loss", "test/dice"):
        assert key in metrics, sorted(metrics)

    probs = torch.cat(trainer.predict(task, loader))
    assert probs.shape == data.masks.shape
    assert ((probs >= 0) & (probs <= 1)).all()
    # val/dice and test/dice (same loader, same weights) are the per-image mean Dice of the
    # thresholded prediction.
    expected = dice_score((probs > 0.5).long(), data.masks.long(), num_classes=1, average="macro",
                          input_format="one-hot").mean()
    assert metrics["val/dice"] == pytest.approx(float(expected), abs=1e-4)
    assert metrics["test/dice"] == pytest.approx(float(expected), abs=1e-4)


def test_multiclass_with_tuple_batches():
    images, _, organ = make_phantoms(4, spatial_dims=3, image_size=8, seed=2)
    # Class 2 where the organ is bright, class 1 elsewhere in it, 0 outside.
    masks = organ * (1 + (images > images[organ.bool()].median()).float())
    loader = DataLoader(TensorDataset(images, masks), batch_size=4)
    task = SegmentationTask(spatial_dims=3, num_classes=3, channels=[8, 16])
    trainer = _trainer(2)
    trainer.fit(task, loader, loader)
    val_dice = float(trainer.callback_metrics["val/dice"])
    probs = torch.cat(trainer.predict(task, loader))
    assert probs.shape == (4, 3, 8, 8, 8)
    assert torch.allclose(probs.sum(1), torch.ones(4, 8, 8, 8), atol=1e-5)
    # validation ran after the last step: the per-image mean Dice of the argmax over classes 1 and 2
    expected = dice_score(probs.argmax(1), masks.squeeze(1).long(), num_classes=3, include_background=False,
                          average="macro", input_format="index").mean()
    assert val_dice == pytest.approx(float(expected), abs=1e-4)


def test_invalid_arguments_and_sizes_raise_value_errors():
    with pytest.raises(ValueError, match="Unett.*unet"):
        SegmentationTask(arch="Unett")
    with pytest.raises(ValueError, match="resnet1800"):
        SegmentationTask(encoder="resnet1800")
    with pytest.raises(ValueError, match="tu-not_a_model"):
        SegmentationTask(encoder="tu-not_a_model")
    with pytest.raises(ValueError, match="3D segmentation.*FPN"):
        SegmentationTask(arch="FPN", spatial_dims=3)
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationTask(num_classes=0)
    # smp's FPN needs multiples of 32; the error names the size to pad to.
    with pytest.raises(ValueError, match=r"\(28, 28\).*32.*\(32, 32\)"):
        SegmentationTask(arch="FPN")(torch.zeros(2, 1, 28, 28))
    # MONAI's UNet with 3 levels needs multiples of 4.
    with pytest.raises(ValueError, match=r"multiple of 4.*\(8, 8, 8\)"):
        SegmentationTask(spatial_dims=3, channels=[4, 8, 16])(torch.zeros(1, 1, 6, 6, 6))


def test_registered_and_rebuildable_from_hparams():
    assert TASKS.get("segmentation") is SegmentationTask
    task = TASKS.create("segmentation", spatial_dims=3, channels=[4, 8])
    assert SegmentationTask(**task.hparams).hparams == task.hparams
