"""RHVAE: Riemannian metric and dynamics, training with a real Trainer, manifold sampling, saving."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from generative_testing import assert_distinct_samples, quiet_trainer, seeded
from lightning.pytorch.callbacks import LambdaCallback

from lightning_medaug.data import PhantomDataModule, make_phantoms
from lightning_medaug.generative import load_generator
from lightning_medaug.generative.rhvae import RHVAE
from lightning_medaug.generative.rhvae_metric import (
    CentroidBank,
    generalized_leapfrog,
    hmc,
    inverse_metric,
    log_det,
    lower_triangular,
    tempering,
    value_and_grad,
)
from lightning_medaug.registry import create_generator, list_generators

tiny_trainer = partial(quiet_trainer, limit_val_batches=0)  # training only, unless a test asks


SIZE = {2: 16, 3: 8}
STEPS = {2: 25, 3: 20}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_kwargs(spatial_dims: int = 2, **overrides) -> dict:
    kwargs = {"spatial_dims": spatial_dims, "image_size": SIZE[spatial_dims], "channels": (8, 16), "latent_dim": 4,
              "num_classes": 2, "cond_channels": 2, "max_centroids": 8, "sample_steps": 10, "sample_n_lf": 5,
              "n_lf": 2, "fixed_point_steps": 2, "lr": 3e-3}
    kwargs.update(overrides)
    return kwargs


def phantoms(spatial_dims: int) -> PhantomDataModule:
    """One fixed batch of 16 phantoms per epoch (the same images as ``make_phantoms(16, ...)``)."""
    return PhantomDataModule(spatial_dims=spatial_dims, image_size=SIZE[spatial_dims], num_train=16, num_val=8,
                             num_test=8, batch_size=16)


@pytest.fixture(scope="module", params=[2, 3], ids=lambda d: f"{d}d")
def trained(request):
    spatial_dims = request.param
    torch.manual_seed(0)
    model = create_generator("rhvae", **tiny_kwargs(spatial_dims))
    before = model.sample(16, generator=seeded(7))
    losses = []
    record = LambdaCallback(on_train_batch_end=lambda tr, m, out, b, i: losses.append(float(out["loss"])))
    trainer = tiny_trainer(STEPS[spatial_dims], callbacks=[record])
    data = phantoms(spatial_dims)
    trainer.fit(model, datamodule=data)
    return model.eval(), trainer, data, losses, before


def test_training_lowers_the_loss_and_fills_the_bank(trained):
    model, _, _, losses, _ = trained
    assert isinstance(model, RHVAE) and "rhvae" in list_generators()
    assert sum(losses[-3:]) < 0.6 * sum(losses[:3]), losses
    # 16 training latents, 8 centroid slots split per class: every slot filled by its own class
    _, labels, _ = make_phantoms(16, model.spatial_dims, model.image_size)
    assert len(model.bank) == 8 and model.bank.labels.tolist() == [0] * 4 + [1] * 4
    assert torch.isfinite(model.bank.centroids).all() and model.bank.centroids.abs().sum() > 0
    assert {0, 1} <= set(labels.tolist())


def test_samples_move_toward_the_data_and_reproduce(trained, tmp_path):
    model, trainer, data, _, before = trained
    images = make_phantoms(16, model.spatial_dims, model.image_size)[0]
    after = model.sample(16, generator=seeded(7))
    assert after.shape == (16,) + model.image_shape and after.dtype == torch.float32
    assert_distinct_samples(after)
    gap_before, gap_after = abs(before.mean() - images.mean()), abs(after.mean() - images.mean())
    assert gap_after < 0.3 and gap_after < 0.5 * gap_before, (gap_before, gap_after)
    assert abs(after.std() - images.std()) < abs(before.std() - images.std()) and after.std() > 0.1
    assert torch.equal(model.sample(16, generator=seeded(7)), after)
    assert not torch.equal(model.sample(16, generator=seeded(8)), after)

    reloaded = load_generator(model.save_pretrained(tmp_path / "pretrained"))
    assert type(reloaded) is RHVAE and torch.equal(reloaded.bank.centroids, model.bank.centroids)
    assert torch.equal(reloaded.sample(16, generator=seeded(7)), after)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    restored = RHVAE.load_from_checkpoint(tmp_path / "model.ckpt", map_location="cpu").eval()
    assert torch.equal(restored.sample(16, generator=seeded(7)), after)

    # validation runs under inference mode, yet the flow needs dU/dz
    metrics = tiny_trainer(1, limit_val_batches=1).validate(model, datamodule=data, verbose=False)[0]
    assert {"val/loss", "val/recon", "val/latent"} <= set(metrics) and torch.isfinite(torch.tensor(metrics["val/loss"]))


def test_each_class_is_sampled_from_its_own_centroids(trained):
    model, _, _, _, _ = trained
    labels = torch.tensor([0, 1] * 8)
    with torch.inference_mode():  # as the bank writer calls it
        z = model.sample_latents(16, labels, generator=seeded(3))
    # the chains stay where their class's metric has volume: closer to own-class centroids than a prior draw
    own = torch.cdist(z, model.bank.centroids).masked_fill(model.bank.labels != labels[:, None], float("inf"))
    prior = torch.cdist(torch.randn(16, 4, generator=seeded(3)), model.bank.centroids).min(1).values
    assert own.min(1).values.mean() < prior.mean()
    # with separated class regions (class 0 around +3, class 1 around -3) every chain stays in its own
    trained_bank = {k: v.clone() for k, v in model.bank.state_dict().items()}
    try:
        model.bank.centroids.copy_(3.0 * (1 - 2 * model.bank.labels[:, None].float()) + 0.3 * torch.randn(8, 4))
        z = model.sample_latents(16, labels, generator=seeded(3))
        assert torch.equal((z.mean(1) < 0).long(), labels), z
    finally:
        model.bank.load_state_dict(trained_bank)
    zeros = model.sample(4, labels=torch.zeros(4, dtype=torch.long), generator=seeded(0))
    ones = model.sample(4, labels=torch.ones(4, dtype=torch.long), generator=seeded(0))
    assert not torch.equal(zeros, ones)
    with pytest.raises(ValueError, match="labels must lie"):
        model.sample(2, labels=torch.tensor([0, 2]))


def test_unconditional_model_and_bf16():
    model = RHVAE(**tiny_kwargs(num_classes=0))
    data = PhantomDataModule(image_size=16, num_train=8, num_val=4, num_test=4, batch_size=8)
    run = tiny_trainer(2, precision="bf16-mixed")
    run.fit(model, datamodule=data)
    assert torch.isfinite(run.callback_metrics["train/loss"]) and len(model.bank) == 8
    assert set(model.bank.labels.tolist()) == {0}
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = model.sample(3, generator=seeded(0))
    assert images.dtype == torch.float32 and images.shape == (3, 1, 16, 16)
    assert torch.allclose(images, model.sample(3, generator=seeded(0)), atol=0.05)  # float32's, to bfloat16 precision
    with pytest.raises(ValueError, match="unconditional"):
        model.sample(2, labels=torch.tensor([0, 1]))


def test_inverse_metric_and_factors():
    raw = torch.randn(5, 3 + 3)
    factors = lower_triangular(raw, 3)
    assert torch.equal(factors, factors.tril()) and (factors.diagonal(dim1=1, dim2=2) > 0).all()
    centroids, labels = torch.randn(5, 3), torch.tensor([0, 0, 1, 1, -1])
    matrices = factors @ factors.transpose(1, 2)
    z = centroids[:1].clone()
    ginv = inverse_metric(z, torch.tensor([0]), centroids, matrices, labels, temperature=1e-3, regularization=0.1)
    # a tiny temperature isolates the centroid under z: G^-1 = L L^T + lambda I there
    assert torch.allclose(ginv[0], matrices[0] + 0.1 * torch.eye(3), atol=1e-5)
    far = inverse_metric(z + 100, torch.tensor([0]), centroids, matrices, labels, 1.0, 0.1)
    assert torch.allclose(far[0], 0.1 * torch.eye(3))
    assert tempering(0, 3, 0.3) == pytest.approx(0.3**0.5) and tempering(3, 3, 0.3) == pytest.approx(1.0)


def test_generalized_leapfrog_is_reversible_and_conserves_energy():
    torch.manual_seed(0)
    centroids, factors = torch.randn(6, 2), lower_triangular(0.3 * torch.randn(6, 3), 2)
    matrices, labels = factors @ factors.transpose(1, 2), torch.zeros(6, dtype=torch.long)
    groups = torch.zeros(4, dtype=torch.long)

    def metric(z):
        return inverse_metric(z, groups, centroids, matrices, labels, 1.0, 0.5)

    def potential_grad(z):
        return z, None  # U = |z|^2 / 2

    def energy(z, rho):
        ginv = metric(z)
        return 0.5 * z.pow(2).sum(1) - 0.5 * torch.logdet(ginv) + 0.5 * torch.einsum("ni,nij,nj->n", rho, ginv, rho)

    def run(z, rho, steps=20):
        grad_u = z
        for _ in range(steps):
            z, rho, grad_u, _ = generalized_leapfrog(z, rho, grad_u, potential_grad, metric, 0.05, 8, False)
        return z.detach(), rho.detach()

    z0, rho0 = torch.randn(4, 2), torch.randn(4, 2)
    z1, rho1 = run(z0, rho0)
    assert (z1 - z0).abs().max() > 0.1  # it moved
    assert (energy(z1, rho1) - energy(z0, rho0)).abs().max() < 1e-2
    z2, rho2 = run(z1, -rho1)  # time reversal: flip the momentum and come back
    assert torch.allclose(z2, z0, atol=1e-4) and torch.allclose(-rho2, rho0, atol=1e-4)


def test_hmc_samples_a_known_density():
    gen = seeded(0)
    target = torch.tensor([1.0, -2.0])
    log_density = value_and_grad(lambda z: -0.5 * (z - target).pow(2).sum(1) / 0.25)
    z = hmc(torch.zeros(400, 2), log_density, num_leapfrog=5, eps=0.2, momenta=torch.randn(30, 400, 2, generator=gen),
            uniforms=torch.rand(30, 400, generator=gen))
    assert torch.allclose(z.mean(0), target, atol=0.1) and torch.allclose(z.std(0), torch.full((2,), 0.5), atol=0.1)


def test_hmc_rejects_diverged_proposals():
    # a density that is NaN away from the start: every proposal is rejected and the chains stay put
    def log_density_and_grad(z):
        nan = torch.full_like(z[:, 0], float("nan"))
        return torch.where(z.abs().sum(1) < 1e-6, torch.zeros_like(nan), nan), -z
    z = hmc(torch.zeros(5, 3), log_density_and_grad, num_leapfrog=3, eps=0.5, momenta=torch.ones(4, 5, 3),
            uniforms=torch.full((4, 5), 0.5))
    assert torch.equal(z, torch.zeros(5, 3))


def test_closed_form_log_volume_gradient_matches_autograd():
    torch.manual_seed(0)
    bank = CentroidBank(latent_dim=6, max_centroids=20, num_classes=2, temperature=1.5, regularization=0.01)
    factors = torch.randn(30, 6, 6).tril() * 0.3 + torch.eye(6)
    bank.add(torch.randn(30, 6), factors, torch.randint(0, 2, (30,)))
    assert bank.commit()
    labels, z = torch.randint(0, 2, (12,)), torch.randn(12, 6)
    value, grad = bank.log_volume_and_grad_fn(labels)(z)
    ref_value, ref_grad = value_and_grad(lambda z_: 0.5 * log_det(
        inverse_metric(z_, labels, bank.centroids, bank.matrices, bank.labels, 1.5, 0.01)))(z)
    assert ref_grad.abs().max() > 0.1  # the check is not vacuous: the density has slope here
    assert torch.allclose(value, ref_value, atol=1e-5) and torch.allclose(grad, ref_grad, atol=1e-4)


def test_centroid_bank_keeps_a_bounded_random_subset_per_class():
    bank = CentroidBank(latent_dim=2, max_centroids=6, num_classes=2, temperature=1.0, regularization=0.1)
    assert not bank.commit() and len(bank) == 0  # nothing added yet
    for start in range(0, 100, 20):
        z = torch.arange(start, start + 20, dtype=torch.float32).unsqueeze(1).repeat(1, 2)
        labels = (torch.arange(start, start + 20) % 2 == 1).long()  # odd latents are class 1
        bank.add(z, torch.eye(2).expand(20, 2, 2), labels)
    assert bank.commit() and len(bank) == 6 and bank.centroids.shape == (6, 2)
    kept = bank.centroids[:, 0].long()
    assert torch.equal(kept % 2, bank.labels) and bank.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert kept.unique().numel() == 6 and kept.max() > 40  # a spread over the epoch, not its first batch
    # the Riemannian uniform density is high on the class's centroids, flat far away
    log_volume, _ = bank.log_volume_and_grad_fn(torch.tensor([0, 0]))(
        torch.stack([bank.centroids[0], bank.centroids[0] + 50]))
    assert log_volume[0] > log_volume[1] + 0.5
    # a class without centroids starts from the Gaussian draw
    start = bank.starting_points(torch.tensor([0, 1, 5]), torch.full((3, 2), -7.0), torch.tensor([0.0, 0.99, 0.5]))
    assert start[0, 0] == bank.centroids[0, 0] and start[1, 0] == bank.centroids[5, 0] and (start[2] == -7).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
    ({"image_size": (30, 30, 30)}, "has 3 sizes but spatial_dims=2"),
    ({"channels": ()}, "channels must be a non-empty"),
    ({"latent_dim": 0}, "latent_dim must be at least 1"),
    ({"n_lf": 0}, "n_lf must be at least 1"),
    ({"eps_lf": 0.0}, "eps_lf must be positive"),
    ({"beta_zero": 1.5}, r"beta_zero must be in \(0, 1\]"),
    ({"temperature": -1.0}, "temperature must be positive"),
    ({"regularization": 0.0}, "regularization must be positive"),
    ({"max_centroids": 1, "num_classes": 2}, "max_centroids=1 leaves no centroid"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RHVAE(**{"image_size": 16, **kwargs})


def test_conditional_model_needs_labels():
    model = RHVAE(**tiny_kwargs())
    with pytest.raises(ValueError, match="needs a 'label' in every batch"):
        model.training_step({"image": make_phantoms(2, 2, 16)[0]}, 0)
    with pytest.raises(ValueError, match="class-conditional: pass labels"):
        model.encode(make_phantoms(2, 2, 16)[0])
