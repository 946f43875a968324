"""Consistency distillation of a DDPM: 1/2/4-step sampling, training under a real Trainer with the teacher
frozen, lean exports that sample the same, teachers from folders and `medaug fit` checkpoints."""

from __future__ import annotations

import pytest
import torch
import yaml
from diffusers import DDIMScheduler
from generative_testing import assert_exports_round_trip, quiet_trainer, seeded
from safetensors.torch import load_file

from lightning_medaug.data import PhantomDataModule
from lightning_medaug.generative.base import WEIGHTS_NAME, load_generator
from lightning_medaug.generative.consistency import ConsistencyDistillation
from lightning_medaug.generative.diffusion import DDPM
from lightning_medaug.registry import create_generator

SIZE_2D = (8, 12)
TEACHER = {"channels": (8, 16), "norm_num_groups": 8, "num_train_timesteps": 100}


def _teacher(folder, **kwargs):
    torch.manual_seed(0)
    model = create_generator("ddpm", **(TEACHER | kwargs))
    with torch.no_grad():  # a fresh UNet's zero-initialised layers would ignore the timestep and the label
        for param in model.unet.parameters():
            if not param.any():
                param.normal_(0, 0.05)
        model.ema.module.load_state_dict(model.unet.state_dict())
    return model.save_pretrained(folder)


@pytest.fixture(scope="module")
def teacher_2d(tmp_path_factory):
    """A class-conditional 2D DDPM at a non-square size, guided at 2 (untrained: shapes, not quality)."""
    return _teacher(tmp_path_factory.mktemp("teacher") / "ddpm", image_size=list(SIZE_2D), num_classes=2,
                    guidance_scale=2.0)


@pytest.fixture
def distilled(teacher_2d):
    torch.manual_seed(0)
    return ConsistencyDistillation(teacher=str(teacher_2d), num_solver_steps=10, num_inference_steps=2)


def _phantoms(spatial_dims, size, num_classes=2):
    return PhantomDataModule(spatial_dims=spatial_dims, image_size=list(size), num_classes=num_classes, num_train=8,
                             num_val=2, num_test=2, batch_size=4)


def test_reads_its_shape_and_classes_from_the_teacher(distilled):
    assert distilled.hparams.spatial_dims == 2 and tuple(distilled.hparams.image_size) == SIZE_2D
    assert distilled.num_classes == 2 and distilled.image_shape == (1, *SIZE_2D)
    assert distilled.guidance == 2.0  # the teacher's own scale, folded into its steps
    # LCM's grid: 10 solver steps, 10 training timesteps apart, from 9 to T - 1
    assert distilled.solver_timesteps.tolist() == list(range(9, 100, 10))
    for name, value in distilled.student.state_dict().items():  # the student starts as the teacher's EMA
        assert torch.equal(value, distilled.teacher.ema.module.state_dict()[name]), name


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_samples_in_few_steps(distilled, steps):
    model = distilled.eval()
    labels = torch.tensor([0, 1, 1])
    a = model.sample(3, labels=labels, generator=seeded(0), num_inference_steps=steps)
    b = model.sample(3, labels=labels, generator=seeded(0), num_inference_steps=steps)
    c = model.sample(3, labels=labels, generator=seeded(1), num_inference_steps=steps)
    assert a.shape == (3, 1, *SIZE_2D) and torch.isfinite(a).all() and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    other = model.sample(3, labels=torch.tensor([1, 0, 0]), generator=seeded(0), num_inference_steps=steps)
    assert not torch.equal(a, other)  # the labels condition the samples
    assert model.sample(5, batch_size=2, num_inference_steps=steps).shape == (5, 1, *SIZE_2D)


def test_one_network_call_per_step_without_a_doubled_batch(distilled):
    calls = []
    handle = distilled.target.module.register_forward_hook(lambda mod, args, out: calls.append(out.shape[0]))
    try:
        distilled.eval().sample(3, labels=torch.tensor([0, 1, 1]), num_inference_steps=4)
    finally:
        handle.remove()
    assert calls == [3] * 4  # guidance is distilled in: no unconditional half


def test_teacher_step_is_ddim_between_adjacent_grid_points(distilled):
    ddim = DDIMScheduler(**distilled.teacher.schedule.diffusers_config(), timestep_spacing="trailing",
                         clip_sample=False, set_alpha_to_one=True)
    ddim.set_timesteps(10)
    assert ddim.timesteps.flip(0).tolist() == distilled.solver_timesteps.tolist()
    distilled.guidance = 1.0  # unguided: the teacher's plain output
    x = torch.randn(3, 1, *SIZE_2D)
    t = torch.tensor([99, 49, 9])
    labels = torch.tensor([0, 1, 0])
    got = distilled.teacher_step(x, t, t - 10, labels, None)
    for i in range(3):
        out = distilled.teacher.denoise(distilled.teacher_net, x[i:i + 1], t[i:i + 1], labels[i:i + 1], None)
        expected = ddim.step(out, int(t[i]), x[i:i + 1]).prev_sample
        assert torch.allclose(got[i:i + 1], expected, atol=1e-5), int(t[i])


def test_training_moves_the_student_and_its_target_never_the_teacher(distilled):
    teacher_before = {k: v.clone() for k, v in distilled.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in distilled.student.state_dict().items()}
    trainer = quiet_trainer(3, limit_val_batches=1)
    trainer.fit(distilled, _phantoms(2, SIZE_2D))
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["val/loss"])
    assert all(not p.requires_grad for p in distilled.teacher.parameters())
    for name, value in distilled.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[name]), name
    moved = [k for k, v in distilled.student.state_dict().items() if not torch.equal(v, student_before[k])]
    assert moved and int(distilled.target.averaged.n_averaged) == 3
    target = distilled.target.module.state_dict()
    assert any(not torch.equal(target[k], student_before[k]) for k in moved)
    assert all(p.requires_grad for p in distilled.student.parameters())


def test_export_keeps_the_target_network_only_and_samples_the_same(distilled, tmp_path):
    quiet_trainer(2, limit_val_batches=0).fit(distilled, _phantoms(2, SIZE_2D))
    distilled.eval()
    loaded = assert_exports_round_trip(distilled, tmp_path)
    keys = load_file(str(tmp_path / "inference" / WEIGHTS_NAME))
    assert keys and all(k.startswith("target.") for k in keys)  # neither the teacher nor the live student
    assert isinstance(loaded, ConsistencyDistillation) and loaded.guidance == distilled.guidance
    for steps in (1, 2, 4):
        kwargs = {"labels": torch.tensor([0, 1]), "num_inference_steps": steps}
        assert torch.equal(loaded.sample(2, generator=seeded(3), **kwargs),
                           distilled.sample(2, generator=seeded(3), **kwargs))
    with pytest.raises(ValueError, match="inference export, which has no teacher weights"):
        quiet_trainer(1, limit_val_batches=0).fit(loaded, _phantoms(2, SIZE_2D))


def test_mask_conditional_3d_at_a_non_cubic_shape(tmp_path):
    size = (8, 12, 10)
    folder = _teacher(tmp_path / "ddpm3d", spatial_dims=3, image_size=list(size), mask_conditional=True)
    model = ConsistencyDistillation(teacher=str(folder), num_solver_steps=5, loss_type="l2")
    assert model.requires_masks and model.image_shape == (1, *size)
    trainer = quiet_trainer(2, limit_val_batches=0)
    trainer.fit(model, _phantoms(3, size, num_classes=1))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    masks = (torch.rand(2, 1, *size) > 0.5).float()
    model.eval()
    for steps in (1, 2, 4):
        x = model.sample(2, masks=masks, generator=seeded(0), num_inference_steps=steps)
        assert x.shape == (2, 1, *size) and x.min() >= -1 and x.max() <= 1
    assert not torch.equal(model.sample(2, masks=masks, generator=seeded(0)),
                           model.sample(2, masks=1 - masks, generator=seeded(0)))
    with pytest.raises(ValueError, match="mask-conditional"):
        model.sample(2)


def test_distils_from_a_checkpoint_of_medaug_fit(tmp_path, monkeypatch):
    from lightning_medaug.cli import main

    monkeypatch.chdir(tmp_path)

    def fit(name, model):
        recipe = {"seed_everything": 0, "model": model,
                  "data": {"class_path": "lightning_medaug.data.PhantomDataModule",
                           "init_args": {"image_size": 8, "num_classes": 2, "num_train": 4, "num_val": 2,
                                         "num_test": 2, "batch_size": 2}},
                  "trainer": {"max_steps": 2, "accelerator": "cpu", "enable_progress_bar": False,
                              "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                         "init_args": {"save_dir": "runs", "name": name}}}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
        assert main(["fit", "--config", f"{name}.yaml"]) == 0
        return tmp_path / "runs" / name / "version_0"

    teacher = fit("ddpm", {"class_path": "lightning_medaug.generative.diffusion.DDPM",
                           "init_args": {"image_size": 8, "num_classes": 2, **TEACHER, "channels": [8, 16]}})
    ckpt = next((teacher / "checkpoints").glob("*.ckpt"))
    run = fit("cd", {"class_path": "lightning_medaug.generative.consistency.ConsistencyDistillation",
                     "init_args": {"teacher": str(ckpt), "num_solver_steps": 10}})
    student = load_generator(run / "generator")  # the run's export, without its teacher
    assert isinstance(student, ConsistencyDistillation)
    assert student.hparams.teacher_config["generator"] == "ddpm" and student.num_classes == 2
    assert student.sample(2, generator=seeded(0), num_inference_steps=1).shape == (2, 1, 8, 8)


def test_teachers_that_cannot_be_distilled_are_refused(tmp_path):
    vae = create_generator("vae", image_size=8, channels=(8, 16), latent_channels=2, norm_num_groups=8)
    with pytest.raises(ValueError, match="'vae' generator, not a diffusion model"):
        ConsistencyDistillation(teacher=str(vae.save_pretrained(tmp_path / "vae")))
    with pytest.raises(ValueError, match="needs a teacher"):
        ConsistencyDistillation()
    with pytest.raises(FileNotFoundError, match="not found"):
        ConsistencyDistillation(teacher=str(tmp_path / "missing"))
    # a checkpoint of a plain Trainer does not say which family it holds
    ddpm = create_generator("ddpm", image_size=8, **TEACHER)
    trainer = quiet_trainer(1, limit_val_batches=0)
    trainer.fit(ddpm, _phantoms(2, (8, 8), num_classes=1))
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="does not say which registered generator"):
        ConsistencyDistillation(teacher=str(tmp_path / "plain.ckpt"))


@pytest.mark.parametrize("kwargs, match", [
    ({"num_solver_steps": 30}, "must divide"),
    ({"num_inference_steps": 11, "num_solver_steps": 10}, "num_inference_steps"),
    ({"loss_type": "l1"}, "loss_type"),
    ({"target_decay": 1.0}, "target_decay"),
    ({"image_size": 16}, "the teacher has image_size"),
    ({"num_classes": 3}, "the teacher has num_classes"),
])
def test_invalid_arguments_are_rejected(teacher_2d, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConsistencyDistillation(teacher=str(teacher_2d), **kwargs)


@pytest.mark.slow  # a teacher trained for 100 steps, then 250 distillation steps on 8 px phantoms
def test_distilled_samples_match_the_data_and_approach_the_teachers_ode(tmp_path):
    torch.manual_seed(0)
    teacher = DDPM(image_size=8, num_classes=2, channels=(16, 32), norm_num_groups=8, lr=3e-3,
                   beta_schedule="squaredcos_cap_v2")
    quiet_trainer(100, limit_val_batches=0).fit(teacher, PhantomDataModule(image_size=8, num_train=64, batch_size=32))
    teacher.eval()
    ode = teacher.sample(128, generator=seeded(0), sampler="ddim", num_inference_steps=50)
    model = ConsistencyDistillation(teacher=str(teacher.save_pretrained(tmp_path / "ddpm")))
    before = model.eval().sample(128, generator=seeded(0), num_inference_steps=1)  # same labels and noise
    data = PhantomDataModule(image_size=8, num_train=512, batch_size=32)
    quiet_trainer(250, limit_val_batches=0).fit(model, data)
    model.eval()
    after = model.sample(128, generator=seeded(0), num_inference_steps=1)
    # one step lands closer to where the teacher's 50-step ODE solve from the same noise ends
    assert (after - ode).square().mean() < 0.7 * (before - ode).square().mean()
    images = data.datasets["train"].images
    for steps in (1, 2, 4):
        x = model.sample(128, generator=seeded(1), num_inference_steps=steps)
        assert abs(x.mean().item() - images.mean().item()) < 0.1, steps
        assert abs(x.std().item() - images.std().item()) < 0.1, steps


def test_sample_refuses_steps_beyond_the_grid(distilled):
    with pytest.raises(ValueError, match="num_inference_steps must be an integer in \\[1, num_solver_steps=10\\]"):
        distilled.sample(1, num_inference_steps=20)
