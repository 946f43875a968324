"""The generator contract of GenerativeModule, exercised through a minimal third-party family."""

import json

import pytest
import torch

from lightning_medaug.generative import GenerativeModule, load_generator
from lightning_medaug.registry import register_generator


@register_generator("test_mean_image")
class MeanImageGenerator(GenerativeModule):
    """The smallest honest family: a learned image plus seeded Gaussian noise, one per class."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, image_size: int = 8, num_classes: int = 0,
                 mask_conditional: bool = False):
        super().__init__(spatial_dims, in_channels, image_size, num_classes)
        self.save_hyperparameters()
        self.requires_masks = mask_conditional
        self.means = torch.nn.Parameter(torch.zeros((max(1, num_classes),) + self.image_shape))

    def sample(self, n, labels=None, masks=None, generator=None):
        labels, masks = self.check_sample_args(n, labels, masks, generator)
        index = labels if labels is not None else torch.zeros(n, dtype=torch.long, device=self.device)
        noise = torch.randn((n,) + self.image_shape, generator=generator).to(self.device)
        out = self.means[index] + 0.1 * noise
        return (out * masks if masks is not None else out).clamp(-1, 1)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_image_shape_follows_spatial_dims(spatial_dims):
    gen = MeanImageGenerator(spatial_dims=spatial_dims, in_channels=2, image_size=8)
    assert gen.image_shape == (2,) + (8,) * spatial_dims
    assert gen.sample(3).shape == (3, 2) + (8,) * spatial_dims


@pytest.mark.parametrize("kwargs, match", [
    ({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
    ({"in_channels": 0}, "in_channels"),
    ({"num_classes": -1}, "num_classes"),
    ({"image_size": 2}, "image_size"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MeanImageGenerator(**kwargs)


def test_sample_argument_checks():
    uncond = MeanImageGenerator()
    with pytest.raises(ValueError, match="unconditional"):
        uncond.sample(2, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="positive integer"):
        uncond.sample(0)
    with pytest.raises(ValueError, match="not mask-conditional"):
        uncond.sample(2, masks=torch.ones(2, 1, 8, 8))
    cond = MeanImageGenerator(num_classes=3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        cond.sample(2, labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="got 1 labels for n=2"):
        cond.sample(2, labels=torch.tensor([0]))
    masked = MeanImageGenerator(mask_conditional=True)
    with pytest.raises(ValueError, match="mask-conditional: pass masks"):
        masked.sample(2)
    with pytest.raises(ValueError, match=r"masks must have shape \(2, 1, 8, 8\)"):
        masked.sample(2, masks=torch.ones(2, 1, 4, 4))


def test_labels_are_drawn_with_the_generator_when_omitted():
    gen = MeanImageGenerator(num_classes=3)
    with torch.no_grad():
        gen.means.copy_(torch.tensor([-0.5, 0.0, 0.5]).view(3, 1, 1, 1).expand_as(gen.means))
    a = gen.sample(16, generator=torch.Generator().manual_seed(1))
    b = gen.sample(16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert len(torch.unique(a.mean(dim=(1, 2, 3)).round(decimals=1))) > 1  # several classes were drawn


def test_save_pretrained_round_trip(tmp_path):
    gen = MeanImageGenerator(spatial_dims=3, num_classes=2, image_size=8)
    with torch.no_grad():
        gen.means.normal_()
    folder = gen.save_pretrained(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert config["generator"] == "test_mean_image"
    assert config["init_args"]["spatial_dims"] == 3
    loaded = load_generator(folder)
    assert isinstance(loaded, MeanImageGenerator)
    labels = torch.tensor([0, 1, 1])
    seed = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    assert torch.equal(gen.sample(3, labels, generator=seed()), loaded.sample(3, labels, generator=seed()))
    assert MeanImageGenerator.from_pretrained(folder).num_classes == 2
    assert not list(folder.glob("*.tmp"))


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        load_generator(tmp_path)
    folder = MeanImageGenerator().save_pretrained(tmp_path / "m")
    (folder / "config.json").write_text(json.dumps({"generator": "no_such_family", "init_args": {}}))
    with pytest.raises(ValueError, match="unknown generator 'no_such_family'"):
        load_generator(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a generator config"):
        load_generator(folder)
    other = MeanImageGenerator(num_classes=4).save_pretrained(tmp_path / "other")
    (other / "config.json").write_text(json.dumps({"generator": "test_mean_image", "init_args": {"num_classes": 2}}))
    with pytest.raises(ValueError, match="does not match a test_mean_image"):
        load_generator(other)
