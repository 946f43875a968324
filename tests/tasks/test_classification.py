"""ClassificationTask: real Trainer runs on tiny phantoms, 2D (timm) and 3D (MONAI)."""

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.classification import binary_accuracy, binary_auroc, multiclass_auroc

from lightning_medaug.data import PhantomDataModule, PhantomDataset, make_phantoms
from lightning_medaug.registry import TASKS
from lightning_medaug.tasks import ClassificationTask


class LossRecorder(L.Callback):
    """Keeps the training loss of every step."""

    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def _trainer(max_steps, **kwargs):
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, max_steps=max_steps, num_sanity_val_steps=0, **kwargs)


@pytest.mark.parametrize("spatial_dims,size,steps", [(2, 16, 15), (3, 8, 8)])
def test_overfits_one_batch_then_validates_tests_and_predicts(spatial_dims, size, steps):
    data = PhantomDataset(8, spatial_dims=spatial_dims, image_size=size, seed=3)
    assert 0 < int(data.labels.sum()) < 8  # both classes, so AUROC is defined
    loader = DataLoader(data, batch_size=8)  # one fixed batch per epoch
    # Small backbones keep the test fast: timm's tiny "test_resnet" in 2D, MONAI's resnet10 in 3D.
    task = ClassificationTask(backbone="test_resnet" if spatial_dims == 2 else "resnet10", spatial_dims=spatial_dims,
                              lr=3e-3)
    recorder = LossRecorder()
    trainer = _trainer(steps, callbacks=[recorder])
    trainer.fit(task, loader)
    first, last = recorder.losses[:3], recorder.losses[-3:]
    assert len(recorder.losses) == steps
    assert sum(last) / 3 < 0.7 * sum(first) / 3, recorder.losses

    metrics = {**trainer.validate(task, loader, verbose=False)[0], **trainer.test(task, loader, verbose=False)[0]}
    for key in ("val/loss", "val/auc", "val/acc", "test/loss", "test/auc", "test/acc"):
        assert key in metrics, sorted(metrics)

    probs = torch.cat(trainer.predict(task, loader))
    assert probs.shape == (8, 2)
    assert torch.allclose(probs.sum(1), torch.ones(8), atol=1e-5)
    assert ((probs >= 0) & (probs <= 1)).all()
    # The logged metrics (validation and test: the same loader and weights) are those of the
    # predicted probability of class 1.
    expected = {"auc": float(binary_auroc(probs[:, 1], data.labels)),
                "acc": float(binary_accuracy(probs[:, 1], data.labels))}
    for stage in ("val", "test"):
        for name, value in expected.items():
            assert float(metrics[f"{stage}/{name}"]) == pytest.approx(value, abs=1e-5), (stage, name)


def test_multiclass_and_multilabel_with_tuple_batches():
    images, labels, _ = make_phantoms(12, image_size=16, num_classes=3, seed=1)
    tuple_loader = DataLoader(TensorDataset(images, labels), batch_size=6)
    task = ClassificationTask(backbone="test_resnet", num_classes=3)
    trainer = _trainer(2)
    trainer.fit(task, tuple_loader, tuple_loader)
    val_auc = float(trainer.callback_metrics["val/auc"])
    probs = torch.cat(trainer.predict(task, tuple_loader))
    assert probs.shape == (12, 3)
    assert torch.allclose(probs.sum(1), torch.ones(12), atol=1e-5)
    # validation ran after the last step: its AUROC is the macro one-vs-rest AUROC of these probabilities
    assert val_auc == pytest.approx(float(multiclass_auroc(probs, labels, num_classes=3)), abs=1e-6)

    multi_hot = torch.stack([labels > 0, labels > 1], dim=1).float()  # "any lesion", "two lesions"
    multi_loader = DataLoader(TensorDataset(images, multi_hot), batch_size=6)
    task = ClassificationTask(backbone="test_resnet", num_classes=2, multilabel=True)
    trainer = _trainer(2)
    trainer.fit(task, multi_loader)
    test_acc = float(trainer.test(task, multi_loader, verbose=False)[0]["test/acc"])
    probs = torch.cat(trainer.predict(task, multi_loader))
    assert probs.shape == (12, 2) and ((probs >= 0) & (probs <= 1)).all()
    # multi-label accuracy: the share of (image, label) decisions right at the 0.5 threshold
    assert test_acc == pytest.approx(((probs > 0.5).float() == multi_hot).float().mean().item(), abs=1e-6)


def test_bf16_mixed_gives_finite_loss():
    dm = PhantomDataModule(image_size=16, num_train=8, num_val=4, num_test=4, batch_size=4)
    recorder = LossRecorder()
    trainer = L.Trainer(precision="bf16-mixed", accelerator="cpu", max_steps=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[recorder])
    trainer.fit(ClassificationTask(backbone="test_resnet"), dm)
    assert len(recorder.losses) == 2
    assert all(torch.isfinite(torch.tensor(recorder.losses)))


def test_small_input_stem_keeps_28px_resolution_into_layer1():
    default, small = ClassificationTask(), ClassificationTask(small_input_stem=True)
    assert small.net.conv1.kernel_size == (3, 3) and small.net.conv1.stride == (1, 1)
    assert isinstance(small.net.maxpool, nn.Identity)
    x = torch.randn(2, 1, 28, 28)
    seen = {}
    for name, task in (("default", default), ("small", small)):
        task.net.layer1.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.shape[-1]))
        assert task(x).shape == (2, 2)
    assert seen == {"default": 7, "small": 28}
    # The 3D MONAI ResNet gets the same stem through its own arguments.
    net3d = ClassificationTask(spatial_dims=3, small_input_stem=True).net
    assert net3d.conv1.kernel_size == (3, 3, 3) and net3d.conv1.stride == (1, 1, 1) and net3d.no_max_pool


def test_invalid_arguments_raise_value_errors_naming_the_problem():
    with pytest.raises(ValueError, match="resnet1800.*resnet18"):
        ClassificationTask(backbone="resnet1800")
    with pytest.raises(ValueError, match="vit_tiny.*3D backbones"):
        ClassificationTask(backbone="vit_tiny", spatial_dims=3)
    for backbone in ("efficientnet_b0", "test_resnet"):  # no ResNet; a ResNet with a deep stem
        with pytest.raises(ValueError, match="small_input_stem"):
            ClassificationTask(backbone=backbone, small_input_stem=True)
    with pytest.raises(ValueError, match="small_input_stem"):
        ClassificationTask(backbone="densenet121", spatial_dims=3, small_input_stem=True)
    with pytest.raises(ValueError, match="num_classes"):
        ClassificationTask(num_classes=1)
    with pytest.raises(ValueError, match="spatial_dims"):
        ClassificationTask(spatial_dims=1)


def test_registered_and_rebuildable_from_hparams():
    assert TASKS.get("classification") is ClassificationTask
    task = TASKS.create("classification", backbone="resnet18", num_classes=3, lr=0.01)
    clone = ClassificationTask(**task.hparams)
    assert clone.hparams == task.hparams
    assert clone.hparams.lr == 0.01 and clone.num_classes == 3
