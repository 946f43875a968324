"""DetectionTask, masks_to_boxes and BoxMeanAveragePrecision on tiny phantoms."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_medaug.data import PhantomDataset, make_phantoms
from lightning_medaug.registry import TASKS
from lightning_medaug.tasks import (
    BoxMeanAveragePrecision,
    DetectionTask,
    masks_to_boxes,
)


class LossRecorder(L.Callback):
    """Keeps the training loss of every step."""

    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def _trainer(max_steps, **kwargs):
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, max_steps=max_steps, num_sanity_val_steps=0, **kwargs)


def test_masks_to_boxes_one_box_per_component():
    masks = torch.zeros(3, 1, 16, 16)
    masks[0, 0, 2:5, 3:9] = 1  # rows 2-4, columns 3-8
    masks[0, 0, 10:12, 10] = 1  # a one-pixel-wide component
    masks[2, 0, 0, 0] = 1  # a single pixel
    targets = masks_to_boxes(masks)
    assert torch.equal(targets[0]["boxes"], torch.tensor([[3.0, 2.0, 9.0, 5.0], [10.0, 10.0, 11.0, 12.0]]))
    assert torch.equal(targets[0]["labels"], torch.tensor([1, 1]))
    assert targets[1]["boxes"].shape == (0, 4) and targets[1]["labels"].shape == (0,)
    assert torch.equal(targets[2]["boxes"], torch.tensor([[0.0, 0.0, 1.0, 1.0]]))  # never degenerate

    classes = torch.zeros(1, 8, 8)
    classes[0, 1:3, 1:3], classes[0, 5:7, 4:8] = 1, 2
    (target,) = masks_to_boxes(classes, num_classes=2)
    assert torch.equal(target["labels"], torch.tensor([1, 2]))
    assert torch.equal(target["boxes"], torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 5.0, 8.0, 7.0]]))
    with pytest.raises(ValueError, match="one channel"):
        masks_to_boxes(torch.zeros(1, 2, 8, 8))


def test_box_map_matches_hand_computed_coco_ap():
    truth = [{"boxes": torch.tensor([[3.0, 2, 9, 5], [10, 10, 11, 12]]), "labels": torch.tensor([1, 1])},
             {"boxes": torch.tensor([[0.0, 0, 1, 1]]), "labels": torch.tensor([1])}]
    metric = BoxMeanAveragePrecision()
    metric.update([{**t, "scores": torch.ones(len(t["labels"]))} for t in truth], truth)
    assert {k: float(v) for k, v in metric.compute().items()} == {"map": 1.0, "map_50": 1.0, "map_75": 1.0}

    metric.reset()
    preds = [{"boxes": torch.tensor([[3.0, 2, 9, 5], [0, 0, 4, 4]]), "scores": torch.tensor([0.5, 0.9]),
              "labels": torch.tensor([1, 1])},
             {"boxes": torch.tensor([[0.0, 0, 1, 1]]), "scores": torch.tensor([1.0]), "labels": torch.tensor([1])}]
    metric.update(preds, truth)
    # Ranked: TP (1.0), FP (0.9), TP (0.5) against 3 boxes: precision 1 up to recall 1/3 (34 of
    # COCO's 101 recall points), 2/3 up to recall 2/3 (33 points), 0 beyond: AP = (34 + 22) / 101.
    assert float(metric.compute()["map_50"]) == pytest.approx(56 / 101, abs=1e-4)


@pytest.mark.parametrize("arch,lr", [("fcos", 1e-3), ("retinanet", 3e-3)])
def test_overfits_one_batch_then_validates_tests_and_predicts(arch, lr):
    data = PhantomDataset(4, image_size=32, seed=7)
    loader = DataLoader(data, batch_size=4)  # one fixed batch per epoch
    task = DetectionTask(arch=arch, min_size=32, max_size=32, fpn_channels=32, lr=lr)
    recorder = LossRecorder()
    trainer = _trainer(12, callbacks=[recorder])
    trainer.fit(task, loader)
    first, last = recorder.losses[:3], recorder.losses[-3:]
    assert len(recorder.losses) == 12
    assert sum(last) / 3 < 0.85 * sum(first) / 3, recorder.losses

    metrics = {**trainer.validate(task, loader, verbose=False)[0], **trainer.test(task, loader, verbose=False)[0]}
    for key in ("val/map", "val/map_50", "test/map", "test/map_50"):
        assert key in metrics, sorted(metrics)

    detections = [d for batch in trainer.predict(task, loader) for d in batch]
    assert len(detections) == 4
    for d in detections:
        assert d["boxes"].shape[1:] == (4,) and len(d["boxes"]) == len(d["scores"]) == len(d["labels"])
        assert ((d["scores"] >= 0) & (d["scores"] <= 1)).all()
        assert (d["labels"] == 1).all()  # our labels: 1..num_classes, never background 0
    # validation and test (same loader, same weights) log the mAP of these detections against the
    # boxes of the phantoms' masks
    reference = BoxMeanAveragePrecision()
    reference.update(detections, [t for batch in loader for t in masks_to_boxes(batch["mask"])])
    expected = {k: float(v) for k, v in reference.compute().items()}
    for stage in ("val", "test"):
        for name in ("map", "map_50"):
            assert metrics[f"{stage}/{name}"] == pytest.approx(expected[name], abs=1e-6), (stage, name)


def test_tuple_batches_and_empty_masks():
    images, _, masks = make_phantoms(4, image_size=32, seed=1)
    masks[1] = 0  # an image without any object trains as a pure negative
    loader = DataLoader(TensorDataset(images, masks), batch_size=4)
    recorder = LossRecorder()
    trainer = _trainer(2, callbacks=[recorder])
    trainer.fit(DetectionTask(min_size=32, max_size=32, fpn_channels=32), loader)
    assert len(recorder.losses) == 2 and all(torch.isfinite(torch.tensor(recorder.losses)))


def test_invalid_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="2D only"):
        DetectionTask(spatial_dims=3)
    with pytest.raises(ValueError, match="yolo"):
        DetectionTask(arch="yolo")
    with pytest.raises(ValueError, match="vgg16"):
        DetectionTask(backbone="vgg16")
    with pytest.raises(ValueError, match="min_size"):
        DetectionTask(min_size=300, max_size=200)
    assert TASKS.get("detection") is DetectionTask
