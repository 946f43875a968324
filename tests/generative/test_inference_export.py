"""save_pretrained is an inference export: only what sample() needs, and old full folders still load."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from lightning_medaug.finetune import transfer_weights
from lightning_medaug.generative.base import WEIGHTS_NAME, load_generator
from lightning_medaug.registry import create_generator


def _cgan():
    torch.manual_seed(0)
    model = create_generator("cgan", image_size=16, latent_dim=16, generator_channels=8, discriminator_channels=8,
                             num_classes=2)
    with torch.no_grad():  # the live generator and its average differ, as after training
        for param in model.generator.parameters():
            param.add_(0.1)
    return model


def _draw(model, seed=0):
    labels = torch.tensor([0, 1, 1, 0]) if model.num_classes else None
    return model.eval().sample(4, labels=labels, generator=torch.Generator().manual_seed(seed))


def test_gan_export_holds_the_ema_generator_only_and_samples_the_same(tmp_path):
    model = _cgan()
    lean = model.save_pretrained(tmp_path / "lean")
    full = model.save_pretrained(tmp_path / "full", training_parts=True)
    keys = set(load_file(str(lean / WEIGHTS_NAME)))
    assert keys and all(k.startswith("ema.") for k in keys)  # no discriminator, no live generator
    assert {k.split(".")[0] for k in load_file(str(full / WEIGHTS_NAME))} == {"generator", "discriminator", "ema"}
    assert (lean / WEIGHTS_NAME).stat().st_size < 0.5 * (full / WEIGHTS_NAME).stat().st_size

    loaded = load_generator(lean)
    assert torch.equal(_draw(loaded), _draw(model))
    # the discriminator has no saved weights; the live generator starts from the average it sampled with
    assert loaded.untrained_parts == {k for k in model.state_dict() if k.startswith("discriminator.")}
    for name, value in loaded.generator.state_dict().items():
        assert torch.equal(value, loaded.ema.module.state_dict()[name]), name

    old = load_generator(full)  # a folder written before exports were lean
    assert old.untrained_parts == frozenset() and torch.equal(_draw(old), _draw(model))
    assert torch.equal(old.discriminator.features[0].weight, model.discriminator.features[0].weight)


def test_missing_sampling_weights_are_refused(tmp_path):
    folder = _cgan().save_pretrained(tmp_path / "lean")
    state = load_file(str(folder / WEIGHTS_NAME))
    dropped = next(k for k in state if k.startswith("ema.averaged.module.") and k.endswith(".weight"))
    del state[dropped]
    save_file(state, str(folder / WEIGHTS_NAME))
    with pytest.raises(ValueError, match=f"missing \\['{dropped}'\\]"):
        load_generator(folder)


def test_ddpm_export_leaves_out_the_live_unet(tmp_path):
    torch.manual_seed(0)
    model = create_generator("ddpm", image_size=8, num_classes=2, channels=(8, 16), norm_num_groups=4,
                             num_train_timesteps=20, num_inference_steps=3)
    folder = model.save_pretrained(tmp_path / "ddpm")
    assert not any(k.startswith("unet.") for k in load_file(str(folder / WEIGHTS_NAME)))
    loaded = load_generator(folder)
    assert loaded.untrained_parts == frozenset()  # the live UNet is restored from the EMA
    assert torch.equal(_draw(loaded), _draw(model))


def test_fine_tuning_from_a_lean_export_keeps_the_fresh_discriminator(tmp_path):
    source = load_generator(_cgan().save_pretrained(tmp_path / "lean"))
    torch.manual_seed(1)
    target = create_generator("cgan", image_size=16, latent_dim=16, generator_channels=8, discriminator_channels=8,
                              num_classes=2)
    fresh = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("discriminator.")}
    skipped = transfer_weights(source, target)
    assert set(skipped) == source.untrained_parts == set(fresh)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in fresh.items())  # as initialised here
    assert torch.equal(next(iter(target.generator.parameters())), next(iter(source.generator.parameters())))
