"""DDPM: short real trainings on tiny phantoms, then every sampler must match the data's statistics."""

import lightning as L
import pytest
import torch

from lightning_medaug.data import PhantomDataModule
from lightning_medaug.generative import load_generator
from lightning_medaug.generative.diffusion import DDPM
from lightning_medaug.generative.schedulers import SAMPLERS
from lightning_medaug.registry import create_generator

TINY = {"channels": (16, 32), "norm_num_groups": 8, "lr": 3e-3}
STEPS = {"ddpm": 50, "ddim": 50, "dpmsolver++": 20}


def fit(model: L.LightningModule, datamodule: L.LightningDataModule, steps: int, **trainer_kwargs) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, max_steps=steps, limit_val_batches=0, **trainer_kwargs)
    trainer.fit(model, datamodule)
    return trainer


def phantoms(image_size: int = 8, spatial_dims: int = 2, num_train: int = 64) -> PhantomDataModule:
    return PhantomDataModule(spatial_dims=spatial_dims, image_size=image_size, num_classes=2, num_train=num_train,
                             batch_size=32)


@pytest.fixture(scope="module")
def trained():
    """Two class-conditional 8-px models covering both schedules and both prediction types.

    Step counts are the fewest after which all three samplers matched the data with three seeds
    (v-prediction learns faster; see the DDPM docstring)."""
    models = {}
    for schedule, prediction, steps in (("squaredcos_cap_v2", "v_prediction", 100), ("linear", "epsilon", 250)):
        torch.manual_seed(0)
        model = DDPM(image_size=8, num_classes=2, beta_schedule=schedule, prediction_type=prediction, **TINY)
        fit(model, phantoms(), steps)
        models[schedule] = model
    data = phantoms()
    data.setup()
    return models, data.datasets["train"].images


@pytest.mark.parametrize("schedule", ["squaredcos_cap_v2", "linear"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samples_match_training_data(trained, schedule, sampler):
    models, images = trained
    x = models[schedule].sample(64, generator=torch.Generator().manual_seed(0), sampler=sampler,
                                num_inference_steps=STEPS[sampler])
    assert x.shape == (64, 1, 8, 8)
    assert abs(x.mean().item() - images.mean().item()) < 0.15
    assert abs(x.std().item() - images.std().item()) < 0.1
    # saturated noise (the failure met with the cosine schedule) puts ~40% of pixels at +1; the data has none
    assert (x > 0.98).float().mean() < 0.02


def test_sampling_is_seeded_and_batched(trained):
    model = trained[0]["squaredcos_cap_v2"]
    a = model.sample(6, generator=torch.Generator().manual_seed(3), num_inference_steps=5)
    b = model.sample(6, generator=torch.Generator().manual_seed(3), num_inference_steps=5)
    c = model.sample(6, generator=torch.Generator().manual_seed(4), num_inference_steps=5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    chunked = model.sample(5, batch_size=2, num_inference_steps=3)
    assert chunked.shape == (5, 1, 8, 8)
    # not an inference tensor: usable as input to a model being trained
    weight = torch.ones(1, requires_grad=True)
    (a * weight).sum().backward()
    assert weight.grad is not None


def test_guidance_uses_one_batched_forward_per_step(trained):
    model = trained[0]["squaredcos_cap_v2"]
    batch_sizes = []
    handle = model.ema.module.register_forward_hook(lambda mod, args, out: batch_sizes.append(out.shape[0]))
    try:
        guided = model.sample(3, labels=torch.tensor([0, 1, 1]), guidance_scale=3.0, sampler="ddim",
                              num_inference_steps=4, generator=torch.Generator().manual_seed(0))
        plain = model.sample(3, labels=torch.tensor([0, 1, 1]), guidance_scale=1.0, sampler="ddim",
                             num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert batch_sizes == [6] * 4 + [3] * 4  # cond + uncond concatenated; no extra pass without guidance
    assert not torch.equal(guided, plain)


def test_save_pretrained_round_trip(trained, tmp_path):
    model = trained[0]["squaredcos_cap_v2"]
    model.save_pretrained(tmp_path / "ddpm")
    loaded = load_generator(tmp_path / "ddpm")
    assert isinstance(loaded, DDPM) and loaded.hparams.beta_schedule == "squaredcos_cap_v2"
    kwargs = {"labels": torch.tensor([0, 1]), "sampler": "ddim", "num_inference_steps": 5}
    expected = model.sample(2, generator=torch.Generator().manual_seed(1), **kwargs)
    assert torch.allclose(loaded.sample(2, generator=torch.Generator().manual_seed(1), **kwargs), expected, atol=1e-5)


def test_3d_mask_conditional_with_padding():
    # 9 is not divisible by 2: the UNet input is padded to 10 and the output cropped back
    model = create_generator("ddpm", spatial_dims=3, image_size=9, mask_conditional=True, channels=(8, 16),
                             norm_num_groups=8, ema_decay=0.9)
    assert model.requires_masks
    trainer = fit(model, PhantomDataModule(spatial_dims=3, image_size=9, num_classes=1, num_train=4, batch_size=2), 2)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert int(model.ema.averaged.n_averaged) == 2
    masks = (torch.rand(2, 1, 9, 9, 9) > 0.5).float()
    for sampler in SAMPLERS:
        x, other = (model.sample(2, masks=m, sampler=sampler, num_inference_steps=3,
                                 generator=torch.Generator().manual_seed(0)) for m in (masks, 1 - masks))
        # same noise, other masks: the masks reach the network through every sampler
        assert x.shape == (2, 1, 9, 9, 9) and not torch.equal(x, other)
    with pytest.raises(ValueError, match="mask-conditional"):
        model.sample(2)


def test_mask_generator_returns_binary_masks():
    model = DDPM(image_size=8, data_key="mask", **TINY)
    fit(model, phantoms(num_train=8), 2)
    masks = model.sample(4, num_inference_steps=3)
    assert masks.shape == (4, 1, 8, 8)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}


def test_bf16_mixed_training_step():
    model = DDPM(image_size=8, num_classes=2, **TINY)
    trainer = fit(model, phantoms(num_train=8), 2, precision="bf16-mixed")
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


@pytest.mark.parametrize("kwargs,match", [
    ({"channels": (12, 32)}, "multiples of norm_num_groups"),
    ({"beta_schedule": "cosine"}, "beta_schedule"),
    ({"prediction_type": "x0"}, "prediction_type"),
    ({"sampler": "euler"}, "sampler"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"cond_drop_prob": 1.0}, "cond_drop_prob"),
    ({"data_key": "label"}, "data_key"),
    ({"data_key": "mask", "mask_conditional": True}, "data_key='mask'"),
])
def test_invalid_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DDPM(**(dict(TINY) | kwargs))


def test_sample_rejects_bad_calls(trained):
    model = trained[0]["linear"]
    with pytest.raises(ValueError, match="sampler"):
        model.sample(2, sampler="heun")
    with pytest.raises(ValueError, match="labels must lie"):
        model.sample(2, labels=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="not mask-conditional"):
        model.sample(2, masks=torch.zeros(2, 1, 8, 8))


def test_class_conditional_model_needs_labels():
    model = DDPM(image_size=8, num_classes=2, **TINY)
    unlabeled = torch.utils.data.DataLoader([{"image": torch.zeros(1, 8, 8)}] * 2, batch_size=2)
    with pytest.raises(ValueError, match="no labels"):
        L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, max_steps=1).fit(model, unlabeled)
