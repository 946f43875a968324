"""SinDDM: short real trainings on ONE phantom, then samples must be new images with its statistics."""

import itertools
from functools import partial

import pytest
import torch
from generative_testing import quiet_trainer
from lightning.pytorch.callbacks import LambdaCallback
from torch.utils.data import DataLoader

from lightning_medaug.data import make_phantoms
from lightning_medaug.generative import load_generator
from lightning_medaug.generative.sinddm import (
    SINDDM_SAMPLERS,
    SinDDM,
    pyramid_sizes,
    resize,
)
from lightning_medaug.registry import create_generator

tiny_trainer = partial(quiet_trainer, limit_val_batches=0)  # training only, unless a test asks


TINY = {
    2: {"spatial_dims": 2, "image_size": 16, "coarsest_size": 8, "channels": (8, 16), "depthwise_kernel_size": 3,
        "emb_channels": 16, "num_train_timesteps": 40, "num_inference_steps": 40, "lr": 3e-3, "ema_decay": 0.9},
    3: {"spatial_dims": 3, "image_size": 8, "coarsest_size": 5, "channels": (8, 16), "depthwise_kernel_size": 3,
        "emb_channels": 16, "num_train_timesteps": 40, "num_inference_steps": 40, "lr": 3e-3, "ema_decay": 0.9},
}
STEPS = {2: 120, 3: 60}
INDEX = 2  # which image of the (unshuffled) first batch the model must learn


def phantom_loader(spatial_dims: int, n: int = 4) -> tuple[DataLoader, torch.Tensor]:
    # CT-style phantoms: their background is not at the clip boundary -1. With the MR style (background
    # exactly -1) a 150-step model's DDIM samples came out 0.19 too bright (the clipped x0 estimates of
    # an untrained model are biased up); the bias was gone after 1000 steps, too long for a unit test.
    images = make_phantoms(n, spatial_dims, TINY[spatial_dims]["image_size"], seed=1, style="ct")[0]
    return DataLoader([{"image": image} for image in images], batch_size=n), images


@pytest.fixture(scope="module", params=[2, 3], ids=["2d", "3d"])
def trained(request):
    spatial_dims = request.param
    torch.manual_seed(0)
    model = create_generator("sinddm", image_index=INDEX, **TINY[spatial_dims])
    loader, images = phantom_loader(spatial_dims)
    losses = []
    record = LambdaCallback(on_train_batch_end=lambda tr, m, out, b, i: losses.append(float(out["loss"])))
    trainer = tiny_trainer(STEPS[spatial_dims], callbacks=[record])
    trainer.fit(model, train_dataloaders=loader)
    return model.eval(), trainer, losses, images


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_learns_the_chosen_image_and_the_loss_falls(trained):
    model, _, losses, images = trained
    assert isinstance(model, SinDDM)
    assert torch.equal(model.image, images[INDEX]) and bool(model.has_image)
    assert len(losses) == STEPS[model.spatial_dims]
    # zero-initialised output: the loss starts at E[eps^2] = 1 and must fall well below
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10, losses


@pytest.mark.parametrize("sampler", SINDDM_SAMPLERS)
def test_samples_are_new_images_with_the_image_statistics(trained, sampler):
    model, _, _, images = trained
    image = images[INDEX]
    x = model.sample(12, generator=gen(), sampler=sampler)
    assert x.shape == (12,) + model.image_shape and x.dtype == torch.float32
    # the CT-style image lies in [-0.67, 0.02]: the final clamp must barely act (a wrong scale or
    # saturated noise would pile pixels up at -1 and 1)
    assert (x.abs() > 0.98).float().mean() < 0.01
    # the image has std 0.16 (2D) / 0.11 (3D); an untrained denoiser misses its mean by 0.36 / 0.46
    assert abs(x.mean().item() - image.mean().item()) < 0.08
    assert abs(x.std().item() - image.std().item()) < 0.08
    # diverse: no two samples alike, and none a copy of the training image
    flat = x.flatten(1)
    pairwise = [(a - b).abs().mean().item() for a, b in itertools.combinations(flat, 2)]
    assert min(pairwise) > 0.03, min(pairwise)
    to_image = (flat - image.flatten()).abs().mean(1)
    assert to_image.min() > 0.03, to_image


def test_untrained_denoiser_does_not_match_the_image(trained):
    # the statistics check above can fail: a fresh network given the same image is far off
    model, _, _, images = trained
    fresh = SinDDM(**TINY[model.spatial_dims]).fit_image(images[INDEX]).eval()
    x = fresh.sample(12, generator=gen())
    assert abs(x.mean().item() - images[INDEX].mean().item()) > 0.2


def test_sampling_is_seeded_and_batched(trained):
    model = trained[0]
    a = model.sample(4, generator=gen(3), num_inference_steps=10)
    assert torch.equal(a, model.sample(4, generator=gen(3), num_inference_steps=10))
    assert not torch.equal(a, model.sample(4, generator=gen(4), num_inference_steps=10))
    assert model.sample(5, batch_size=2, num_inference_steps=5).shape == (5,) + model.image_shape
    weight = torch.ones(1, requires_grad=True)  # not an inference tensor
    (a * weight).sum().backward()
    assert weight.grad is not None


def test_save_pretrained_and_checkpoint_reproduce_samples(trained, tmp_path):
    model, trainer, _, _ = trained
    expected = model.sample(3, generator=gen(1), num_inference_steps=10)
    loaded = load_generator(model.save_pretrained(tmp_path / "sinddm"))
    assert isinstance(loaded, SinDDM) and torch.equal(loaded.image, model.image)
    assert torch.equal(loaded.sample(3, generator=gen(1), num_inference_steps=10), expected)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    restored = SinDDM.load_from_checkpoint(tmp_path / "model.ckpt", map_location="cpu").eval()
    assert torch.equal(restored.sample(3, generator=gen(1), num_inference_steps=10), expected)


def test_validation_reports_the_loss_on_the_image(trained):
    model, _, _, _ = trained
    loader, _ = phantom_loader(model.spatial_dims)
    metrics = tiny_trainer(1, limit_val_batches=1).validate(model, dataloaders=loader, verbose=False)[0]
    assert 0 < metrics["val/loss"] < 1.0


def test_fit_image_takes_precedence_over_batches():
    loader, images = phantom_loader(2)
    model = SinDDM(**TINY[2]).fit_image(images[1:2])  # (1, C, H, W) is accepted too
    tiny_trainer(2).fit(model, train_dataloaders=loader)
    assert torch.equal(model.image, images[1])
    with pytest.raises(ValueError, match="one image of shape"):
        model.fit_image(images)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        model.fit_image(images[0] * 3)


def test_image_index_beyond_the_first_batch_is_rejected():
    loader, _ = phantom_loader(2, n=2)
    model = SinDDM(image_index=5, **TINY[2])
    with pytest.raises(ValueError, match="image_index=5"):
        tiny_trainer(1).fit(model, train_dataloaders=loader)


def test_pyramid_and_blur_schedule():
    assert pyramid_sizes(28, 12, 1.411) == [12, 18, 28]
    assert pyramid_sizes(16, 16, 1.411) == [16]
    assert resize(torch.zeros(2, 1, 8, 8, 8), 5).shape == (2, 1, 5, 5, 5)
    model = SinDDM(image_size=28, coarsest_size=10, channels=(8, 16), depthwise_kernel_size=5)
    assert model.scale_sizes == [(10, 10), (14, 14), (20, 20), (28, 28)] and model.receptive_field == 1 + 2 * 8
    model.fit_image(make_phantoms(1, 2, 28)[0][0])
    assert [tuple(p.shape[2:]) for p in model.pyramid()] == model.scale_sizes
    t_start, gammas = model.blur_schedule()
    T = model.schedule.num_train_timesteps
    assert t_start[0] == T and all(1 <= t <= T for t in t_start[1:])
    assert gammas.shape == (4, T) and torch.all(gammas[0] == 0)
    assert gammas.min() >= 0 and gammas.max() <= 1 and torch.all(gammas.diff(dim=1) >= 0)  # blurrier with t
    for s in range(1, 4):  # the blurry image is fully hidden where the scale's training stops
        assert t_start[s] == T or gammas[s, t_start[s]] == 1


def test_sample_rejects_bad_calls():
    model = SinDDM(**TINY[2])
    with pytest.raises(ValueError, match="no training image"):
        model.sample(2)
    model.fit_image(torch.zeros(model.image_shape))
    with pytest.raises(ValueError, match="unconditional"):
        model.sample(2, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="not mask-conditional"):
        model.sample(2, masks=torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="sampler"):
        model.sample(2, sampler="dpmsolver++")
    with pytest.raises(ValueError, match="num_inference_steps"):
        model.sample(2, num_inference_steps=41)


@pytest.mark.parametrize("kwargs,match", [
    ({"num_classes": 2}, "label conditioning does not apply"),
    ({"image_index": -1}, "image_index"),
    ({"scale_factor": 1.0}, "scale_factor"),
    ({"coarsest_size": 32}, "coarsest_size"),
    ({"coarsest_size": 3}, "coarsest_size"),
    ({"blur_noise_ratio": 0.0}, "blur_noise_ratio"),
    ({"max_blur_weight": 1.0}, "max_blur_weight"),
    ({"copies_per_scale": 0}, "copies_per_scale"),
    ({"sampler": "dpmsolver++"}, "sampler"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"beta_schedule": "cosine"}, "beta_schedule"),
    ({"channels": ()}, "channels"),
    ({"depthwise_kernel_size": 4}, "depthwise_kernel_size"),
    ({"lr": 0.0}, "lr"),
    ({"ema_decay": 1.0}, "decay"),
])
def test_invalid_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SinDDM(**(dict(TINY[2]) | kwargs))
