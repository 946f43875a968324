"""Augmentation baselines chosen by name: the recipe each name gives parses and builds with the CLI."""

import pytest
import yaml

from lightning_medaug.cli import MedaugCLI
from lightning_medaug.data import ClassicAugmentation, PolicyAugmentation
from lightning_medaug.study.recipe import AUGMENTATIONS, load_recipe, with_augmentation


@pytest.mark.filterwarnings("ignore:LightningCLI.s args parameter")
@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_each_name_builds_its_augmentation(name, tmp_path):
    config = with_augmentation(load_recipe("classify_pneumonia.yaml"), "classic")  # replaced, not added to
    config = with_augmentation(config, name)
    config["model"]["init_args"]["backbone"] = "test_resnet"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    cli = MedaugCLI(args=["--config", str(path)], run=False)
    transform = cli.datamodule.train_transforms
    expected = {"classic": ClassicAugmentation, "classic_distort": ClassicAugmentation,
                "trivialaugment": PolicyAugmentation, "randaugment": PolicyAugmentation}.get(name)
    assert (transform is None) if expected is None else isinstance(transform, expected)
    if expected is PolicyAugmentation:
        assert transform.policy == name
    if expected is ClassicAugmentation:
        assert transform.distort_prob == (0.5 if name == "classic_distort" else 0.0)
    mixing = cli.model.label_mixing
    assert (mixing is None) if name not in ("mixup", "cutmix") else mixing.kind == name


def test_unknown_names_and_tasks_are_refused():
    with pytest.raises(ValueError, match="choose one of"):
        with_augmentation(load_recipe("classify_pneumonia.yaml"), "autoaugment")
    with pytest.raises(ValueError, match="ClassificationTask"):
        with_augmentation(load_recipe("segment_isbi.yaml"), "mixup")
