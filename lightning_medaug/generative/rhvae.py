"""Riemannian Hamiltonian VAE (RHVAE), 2D or 3D, sampled along its learned latent manifold.

* Chadebec, Mantoux & Allassonniere, "Geometry-Aware Hamiltonian Variational Auto-Encoder" (2020):
  a VAE with a flat latent ``z`` whose posterior sample is moved by ``n_lf`` tempered generalized
  leapfrog steps of the Hamiltonian ``H(z, rho) = -log p(x, z) + 1/2 log det G(z)
  + 1/2 rho^T G^-1(z) rho`` under a learned Riemannian metric
  ``G^-1(z) = sum_i L_i L_i^T exp(-||z - c_i||^2 / T^2) + lambda I``; the ELBO of the flow trains
  encoder, decoder and the metric network (which gives ``L_i`` from image ``x_i``) together.
* Chadebec, Thibeau-Sutre, Burgos & Allassonniere, "Data Augmentation in High Dimensional Low
  Sample Size Setting Using a Geometry-Based Variational Autoencoder" (TPAMI 2022): new images are
  decoded from HMC samples of the Riemannian uniform distribution (density ``sqrt(det G^-1(z))``,
  high near the training latents), not from the prior, which keeps them on the data manifold.

The metric and the dynamics live in :mod:`lightning_medaug.generative.rhvae_metric`. During
training the metric is built from the batch's own latents (so gradients reach the metric network);
each epoch's latents (a bounded random subset) become the centroids used for evaluation and
sampling. With ``num_classes > 0`` the encoder and decoder see a label embedding and each class
keeps its own centroids, so ``sample(labels=...)`` explores each class's part of the manifold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import Tensor, nn

from lightning_medaug.generative.rhvae_metric import (
    CentroidBank,
    generalized_leapfrog,
    hmc,
    inverse_metric,
    log_det,
    lower_triangular,
    tempering,
)
from lightning_medaug.generative.vae import AutoencoderModule
from lightning_medaug.registry import register_generator
from lightning_medaug.sizes import SizeLike

__all__ = ["RHVAE", "ConvDecoder", "ConvEncoder"]

_ACT = ("leakyrelu", {"negative_slope": 0.2})


class ConvEncoder(nn.Module):
    """Image (plus optional broadcast label channels) -> vector: strided convolutions and a linear head.

    No normalisation layers: the Hamiltonian flow differentiates per sample, and batch statistics
    would couple the samples of a batch.
    """

    def __init__(self, spatial_dims: int, in_channels: int, image_size: Sequence[int], channels: Sequence[int],
                 out_features: int):
        super().__init__()
        layers, c_in = [], in_channels
        for c_out in channels:
            layers.append(Convolution(spatial_dims, c_in, c_out, strides=2, kernel_size=4, padding=1, act=_ACT,
                                      norm=None))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        grid = math.prod(s // 2 ** len(channels) for s in image_size)
        self.head = nn.Linear(c_in * grid, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


class ConvDecoder(nn.Module):
    """Vector -> image: a linear layer to a coarse grid, transposed convolutions, a linear 3x3 head.

    No ``tanh``: a saturated ``tanh`` stalls training on the mostly black phantoms and X-rays
    (every voxel at -1 is a flat local minimum); the Gaussian likelihood needs no bounded mean and
    :meth:`RHVAE.decode` clamps to [-1, 1].
    """

    def __init__(self, spatial_dims: int, in_features: int, out_channels: int, image_size: Sequence[int],
                 channels: Sequence[int]):
        super().__init__()
        widths = list(channels)[::-1]
        self.start_shape = (widths[0],) + tuple(s // 2 ** len(widths) for s in image_size)
        self.project = nn.Sequential(nn.Linear(in_features, math.prod(self.start_shape)), nn.LeakyReLU(0.2))
        layers = []
        for c_in, c_out in zip(widths, widths[1:] + widths[-1:]):
            layers.append(Convolution(spatial_dims, c_in, c_out, strides=2, kernel_size=4, padding=1,
                                      output_padding=0, is_transposed=True, act=_ACT, norm=None))
        self.blocks = nn.Sequential(*layers)
        self.head = Convolution(spatial_dims, widths[-1], out_channels, kernel_size=3, conv_only=True)

    def forward(self, z: Tensor) -> Tensor:
        return self.head(self.blocks(self.project(z).view(z.shape[0], *self.start_shape)))


@register_generator("rhvae")
class RHVAE(AutoencoderModule):
    """Riemannian Hamiltonian VAE (Chadebec et al. 2020) with manifold sampling (Chadebec et al. 2022).

    The loss is the negative ELBO of the tempered Hamiltonian flow per image element:
    ``-(log p(x|z_K) + log p(z_K) + log N(rho_K; 0, G(z_K)) - log q(z_0|x) - log N(gamma; 0, I))``
    divided by the number of image elements, with a Gaussian decoder of variance 1/2 in [-1, 1]
    space (``log p(x|z) = -||x - x_hat||^2``, as the library's ``"mse"``). Logged parts: ``recon``
    (mean squared error at ``z_K``) and ``latent`` (the rest).

    Args:
        spatial_dims, in_channels, image_size, num_classes: see :class:`GenerativeModule`.
        latent_dim: size of the flat latent vector.
        channels: widths of the strided convolutions of encoder and metric network (mirrored in
            the decoder); other sizes than multiples of ``2 ** len(channels)`` are padded inside.
        cond_channels: size of the label embedding (conditional models only).
        n_lf: leapfrog steps of the training flow.
        eps_lf: leapfrog step size of the training flow.
        beta_zero: initial inverse temperature in (0, 1]; 1 disables tempering.
        temperature: ``T`` of the metric's kernels (in latent units).
        regularization: ``lambda``, the metric's floor.
        max_centroids: most centroids kept (split evenly between classes), bounding memory.
        fixed_point_steps: iterations of the implicit leapfrog updates.
        sample_steps, sample_n_lf, sample_eps_lf: HMC iterations, leapfrog steps per iteration
            and step size used by :meth:`sample`.
        lr: Adam learning rate.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, image_size: SizeLike = 32, num_classes: int = 0,
                 latent_dim: int = 16, channels: Sequence[int] = (32, 64), cond_channels: int = 8, n_lf: int = 3,
                 eps_lf: float = 1e-3, beta_zero: float = 0.3, temperature: float = 1.5, regularization: float = 1e-2,
                 max_centroids: int = 500, fixed_point_steps: int = 3, sample_steps: int = 50,
                 sample_n_lf: int = 10, sample_eps_lf: float = 0.03, lr: float = 1e-3):
        super().__init__(spatial_dims, in_channels, image_size, num_classes)
        self.save_hyperparameters()
        channels = tuple(int(c) for c in channels)
        _check_rhvae_args(channels, latent_dim, cond_channels, n_lf, eps_lf, beta_zero, temperature, regularization,
                          max_centroids, num_classes, fixed_point_steps, sample_steps, sample_n_lf, sample_eps_lf, lr)
        self.set_downsampling(2 ** len(channels))
        cond = cond_channels if num_classes > 0 else 0
        self.label_embedding = nn.Embedding(num_classes, cond_channels) if num_classes > 0 else None
        self.encoder = ConvEncoder(spatial_dims, in_channels + cond, self.network_size, channels, 2 * latent_dim)
        self.decoder = ConvDecoder(spatial_dims, latent_dim + cond, in_channels, self.network_size, channels)
        # L_psi(x): log-diagonal plus strictly lower entries of a lower-triangular d x d factor
        self.metric_network = ConvEncoder(spatial_dims, in_channels, self.network_size, channels,
                                          latent_dim * (latent_dim + 1) // 2)
        self.bank = CentroidBank(latent_dim, max_centroids, num_classes, temperature, regularization)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.hparams.latent_dim,)

    # -- networks ------------------------------------------------------------------------------
    def _embedding(self, labels: Tensor | None) -> Tensor | None:
        if self.label_embedding is None:
            return None
        if labels is None:
            raise ValueError(f"{type(self).__name__} is class-conditional: pass labels (int64, one per image)")
        return self.label_embedding(labels.long())

    def posterior(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of ``q(z | x, y)``, each ``(n, latent_dim)``."""
        x = self.pad_to_network(x)
        emb = self._embedding(labels)
        if emb is not None:  # broadcast the label embedding over space as extra input channels
            emb = emb.to(x.dtype).view(*emb.shape, *([1] * self.spatial_dims)).expand(-1, -1, *x.shape[2:])
            x = torch.cat([x, emb], dim=1)
        mu, log_var = self.encoder(x).float().chunk(2, dim=1)
        return mu, log_var

    def encode(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """The posterior mean (deterministic); conditional models need ``labels``."""
        return self.posterior(x, labels)[0]

    def _decode_unclamped(self, z: Tensor, labels: Tensor | None) -> Tensor:
        emb = self._embedding(labels)
        return self.crop_to_image(self.decoder(z if emb is None else torch.cat([z, emb.to(z.dtype)], dim=1)))

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Images in [-1, 1] from latents ``(n, latent_dim)``; conditional models need ``labels``."""
        return self._decode_unclamped(z, labels).clamp(-1.0, 1.0)

    def metric_factors(self, x: Tensor) -> Tensor:
        """Lower-triangular ``L_psi(x)``, ``(n, latent_dim, latent_dim)``."""
        return lower_triangular(self.metric_network(self.pad_to_network(x)).float(), self.hparams.latent_dim)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Reconstruct ``x`` through the posterior mean."""
        return self.decode(self.encode(x, labels), labels)

    # -- training --------------------------------------------------------------------------------
    def loss_terms(self, image: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        # Validation runs under inference mode, but the flow needs dU/dz: re-enable autograd there.
        with torch.inference_mode(False), torch.enable_grad():
            image = image.clone() if image.is_inference() else image
            labels = labels.clone() if labels is not None and labels.is_inference() else labels
            terms = self._flow_elbo(image, labels)
        return terms if self.training else {k: v.detach() for k, v in terms.items()}

    def _flow_elbo(self, image: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        hp = self.hparams
        groups = labels if labels is not None else torch.zeros(image.shape[0], dtype=torch.long, device=image.device)
        mu, log_var = self.posterior(image, labels)
        eps0 = torch.randn_like(mu)
        z = mu + torch.exp(0.5 * log_var) * eps0  # reparameterisation trick
        if self.training:
            # The batch's own latents are the centroids, so the metric network and encoder get gradients.
            factors = self.metric_factors(image)
            self.bank.add(mu, factors, groups)  # remembered for the metric used after this epoch
            with torch.autocast(device_type=image.device.type, enabled=False):
                matrices = factors @ factors.transpose(-1, -2)
            centroids, c_labels = mu, groups

            def metric(z_: Tensor) -> Tensor:
                return inverse_metric(z_, groups, centroids, matrices, c_labels, hp.temperature, hp.regularization)
        else:
            z = z.detach().requires_grad_(True)

            def metric(z_: Tensor) -> Tensor:
                return self.bank.inverse_metric(z_, groups)

        target = image.float().flatten(1)

        def potential_grad(z_: Tensor) -> tuple[Tensor, Tensor]:
            # U(z) = -log p(x|z) - log p(z), constants dropped; samples are independent, so grad of the sum
            z_ = z_ if z_.requires_grad else z_.detach().requires_grad_(True)
            recon = self._decode_unclamped(z_, labels).float().flatten(1)
            u = (recon - target).pow(2).sum(1) + 0.5 * z_.pow(2).sum(1)
            return torch.autograd.grad(u.sum(), z_, create_graph=self.training)[0], recon

        with torch.autocast(device_type=image.device.type, enabled=False):  # the flow and the loss in float32
            gamma = torch.randn_like(z)
            sqrt_beta = hp.beta_zero**0.5
            rho = gamma / sqrt_beta
            grad_u, recon = potential_grad(z)
            for k in range(1, hp.n_lf + 1):
                z, rho, grad_u, recon = generalized_leapfrog(z, rho, grad_u, potential_grad, metric, hp.eps_lf,
                                                             hp.fixed_point_steps, self.training)
                next_sqrt_beta = tempering(k, hp.n_lf, hp.beta_zero)
                rho = rho * (sqrt_beta / next_sqrt_beta)
                sqrt_beta = next_sqrt_beta
            ginv = metric(z)
            sq_err = (recon - target).pow(2).sum(1)
            # log N(rho_K; 0, G(z_K)) + log p(z_K) - log q(z_0|x) - log N(gamma; 0, I), 2*pi terms cancel
            log_rho = -0.5 * torch.einsum("ni,nij,nj->n", rho, ginv, rho) + 0.5 * log_det(ginv)
            log_prior = -0.5 * z.pow(2).sum(1)
            log_q = -0.5 * eps0.pow(2).sum(1) - 0.5 * log_var.sum(1) - 0.5 * gamma.pow(2).sum(1)
            latent = -(log_rho + log_prior - log_q)
            per_element = target.shape[1]
            mse, latent_term = sq_err.mean() / per_element, latent.mean() / per_element
        return {"loss": mse + latent_term, "recon": mse, "latent": latent_term}

    def on_validation_epoch_start(self) -> None:
        # Validation, and the checkpoints saved after it, see the centroids of the epoch just trained.
        self._commit_centroids()

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self._commit_centroids()

    def on_train_end(self) -> None:
        self._commit_centroids()  # a run stopped mid-epoch (max_steps) still leaves usable centroids

    def _commit_centroids(self) -> None:
        if not self.bank.commit():
            return
        if self.trainer.world_size > 1:  # every rank samples from rank 0's centroids, as saved in checkpoints
            for buffer in (self.bank.centroids, self.bank.matrices, self.bank.labels):
                buffer.copy_(self.trainer.strategy.broadcast(buffer, src=0))

    # -- sampling --------------------------------------------------------------------------------
    def sample(self, n: int, labels: Tensor | None = None, masks: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Decoded :meth:`sample_latents`: images in [-1, 1], float32 even under autocast."""
        labels, _ = self.check_sample_args(n, labels, masks, generator)
        z = self.sample_latents(n, labels, generator)
        with torch.no_grad():
            return self.decode(z.to(self.dtype), labels).float()

    def sample_latents(self, n: int, labels: Tensor | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
        """HMC samples ``(n, latent_dim)`` of the Riemannian uniform distribution of each label's class.

        Chains start at random centroids of their class (``N(0, I)`` before the first training
        epoch has ended) and run ``sample_steps`` HMC iterations of ``sample_n_lf`` leapfrog steps
        targeting ``sqrt(det G^-1(z))`` (Chadebec et al., TPAMI 2022).
        """
        labels, _ = self.check_sample_args(n, labels, None, generator)
        hp, noise_device = self.hparams, self.noise_device(generator)
        # all the chain's randomness in two draws (row 0 picks the starting points): one host-to-device
        # copy each when the generator lives elsewhere, instead of two per HMC iteration
        normal = torch.randn((hp.sample_steps + 1, n, hp.latent_dim), generator=generator, device=noise_device)
        uniform = torch.rand((hp.sample_steps + 1, n), generator=generator, device=noise_device)
        normal, uniform = normal.to(self.device), uniform.to(self.device)
        # float32 even under autocast: the metric's Cholesky factorisations need it
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            groups = torch.zeros(n, dtype=torch.long, device=self.device) if labels is None else labels
            start = self.bank.starting_points(groups, normal[0], uniform[0])
            return hmc(start, self.bank.log_volume_and_grad_fn(groups), hp.sample_n_lf, hp.sample_eps_lf,
                       normal[1:], uniform[1:])


def _check_rhvae_args(channels: tuple[int, ...], latent_dim: int, cond_channels: int, n_lf: int, eps_lf: float,
                      beta_zero: float, temperature: float, regularization: float, max_centroids: int,
                      num_classes: int, fixed_point_steps: int, sample_steps: int, sample_n_lf: int,
                      sample_eps_lf: float, lr: float) -> None:
    if not channels or min(channels) < 1:
        raise ValueError(f"channels must be a non-empty list of positive ints, got {list(channels)}")
    for name, value in (("latent_dim", latent_dim), ("cond_channels", cond_channels), ("n_lf", n_lf),
                        ("fixed_point_steps", fixed_point_steps), ("sample_steps", sample_steps),
                        ("sample_n_lf", sample_n_lf)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    for name, value in (("eps_lf", eps_lf), ("sample_eps_lf", sample_eps_lf), ("temperature", temperature),
                        ("regularization", regularization), ("lr", lr)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if not 0.0 < beta_zero <= 1.0:
        raise ValueError(f"beta_zero must be in (0, 1] (1 disables tempering), got {beta_zero}")
    if max_centroids < max(num_classes, 1):
        raise ValueError(f"max_centroids={max_centroids} leaves no centroid for some of the {num_classes} classes: "
                         f"use at least one per class (hundreds in practice)")
