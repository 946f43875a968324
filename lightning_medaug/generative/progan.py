"""Progressive growing of GANs, registered as ``"progan"``.

Karras et al. 2018, "Progressive Growing of GANs for Improved Quality, Stability, and Variation":
training starts at a coarse grid and adds one x2 level at a time, fading each new level in
linearly, so that the networks learn the large-scale structure first and higher resolutions stay
stable to train. Loss: WGAN-GP with the paper's drift term ``eps_drift * D(real)^2`` (``loss="wgan-gp"``)
or, as StyleGAN2 trains, the non-saturating logistic loss with an R1 penalty (``loss="logistic"``),
which learns faster in short CPU-sized runs; equalised
learning rate, pixelwise feature normalisation and minibatch standard deviation
(:mod:`lightning_medaug.generative.progan_networks`); samples come from an EMA of the generator.
DiffAugment (Zhao et al. 2020) on both D inputs is the small-data remedy, off by default.

The schedule counts training batches (a buffer, so checkpoints and ``save_pretrained`` keep it):
``stage_batches`` at level 0, then for every further level ``stage_batches`` fading in and
``stage_batches`` stable. :meth:`ProGAN.schedule` says where a run is; a model sampled before the
last level is reached draws at its current level and upsamples to ``image_size``.

2D images and 3D volumes share one code path (``spatial_dims``); class-conditional when
``num_classes > 0`` (label embedding concatenated to z, projection discriminator).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_medaug.generative.base import GenerativeModule
from lightning_medaug.generative.diffaugment import DiffAugment
from lightning_medaug.generative.ema import EMA, EMASampling
from lightning_medaug.generative.gan import discriminator_rt, input_gradients, manual_step
from lightning_medaug.generative.progan_networks import (
    ProGANDiscriminator,
    ProGANGenerator,
)
from lightning_medaug.generative.shapes import resampling_grid
from lightning_medaug.registry import register_generator
from lightning_medaug.sizes import SizeLike
from lightning_medaug.validation import (
    check_adam_betas,
    check_at_least,
    check_choice,
    check_non_negative,
    check_positive,
)

__all__ = ["ProGAN"]

_POOL = {2: F.avg_pool2d, 3: F.avg_pool3d}
#: adversarial losses offered.
LOSSES = ("wgan-gp", "logistic")


@register_generator("progan")
class ProGAN(EMASampling, GenerativeModule):
    """Progressive-growing GAN as a LightningModule with manual optimisation.

    Per batch: one critic step (WGAN-GP loss plus drift, or logistic loss plus R1) and, every ``n_critic`` batches, one
    generator step, both at the schedule's current level; real images are average-pooled to that
    level's resolution and, while it fades in, blended with their coarser version as the paper
    does. Logs ``train/loss_d``, ``train/loss_g``, ``train/loss`` (= the G loss), ``train/gp``,
    ``train/level``, ``train/alpha`` and, with the logistic loss, ``train/rt`` (``E[sign D(real)]``,
    the overfitting heuristic of :class:`~lightning_medaug.generative.gan.GAN`).

    Args:
        spatial_dims, in_channels, image_size, num_classes: see :class:`GenerativeModule`.
        latent_dim, embed_dim: z size and label-embedding size (conditional models).
        channel_base, channel_max: channels at resolution r are ``min(channel_max, channel_base // r)``.
        num_upsamples: levels - 1; ``None`` picks them from ``image_size`` (28 -> 7, 14, 28).
        stage_batches: batches of each phase (level 0; then each level's fade-in and stable phase).
        lr, beta1, beta2: Adam settings of both networks (paper: 0.001, betas (0, 0.99)).
        n_critic: critic steps per generator step.
        loss: ``"wgan-gp"`` (the paper's) or ``"logistic"`` (non-saturating, with R1).
        gp_weight, drift_weight: WGAN-GP lambda (paper 10) and drift epsilon (paper 0.001).
        r1_gamma: weight of ``r1_gamma/2 * |grad D(real)|^2`` under the logistic loss (0 disables it).
        mbstd_group_size: minibatch-stddev group size of the critic (1 disables it).
        diffaugment: DiffAugment policy for both critic inputs, e.g. ``"color,translation,cutout"``.
        use_ema, ema_decay: keep an EMA of the generator and sample from it.
    """

    training_only_modules = ("discriminator",)

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, image_size: SizeLike = 32, num_classes: int = 0,
                 latent_dim: int = 64, embed_dim: int = 32, channel_base: int = 1024, channel_max: int = 128,
                 num_upsamples: int | None = None, stage_batches: int = 400, lr: float = 1e-3, beta1: float = 0.0,
                 beta2: float = 0.99, n_critic: int = 1, loss: str = "wgan-gp", gp_weight: float = 10.0,
                 drift_weight: float = 1e-3, r1_gamma: float = 0.01,
                 mbstd_group_size: int = 4, diffaugment: str = "", use_ema: bool = True, ema_decay: float = 0.999):
        super().__init__(spatial_dims, in_channels, image_size, num_classes)
        self.save_hyperparameters()
        check_at_least(1, latent_dim=latent_dim, embed_dim=embed_dim, channel_base=channel_base,
                       channel_max=channel_max, stage_batches=stage_batches, n_critic=n_critic,
                       mbstd_group_size=mbstd_group_size)
        check_positive(lr=lr)
        check_non_negative(gp_weight=gp_weight, drift_weight=drift_weight, r1_gamma=r1_gamma)
        check_choice("loss", loss, LOSSES)
        check_adam_betas(beta1, beta2)
        if not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {ema_decay}")
        self.automatic_optimization = False
        # the levels double a grid up to one they can halve; reals are padded to it, samples cropped
        ups, self.network_size = resampling_grid(self.spatial_size, num_upsamples)
        self.generator = ProGANGenerator(spatial_dims, latent_dim, in_channels, self.network_size, channel_base,
                                         channel_max, ups, num_classes, embed_dim)
        self.discriminator = ProGANDiscriminator(spatial_dims, in_channels, self.network_size, channel_base,
                                                 channel_max, ups, num_classes, mbstd_group_size)
        self.augment = DiffAugment(diffaugment)
        self.ema = EMA(self.generator, ema_decay) if use_ema else None
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))

    # -- the growing schedule ------------------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        return self.generator.num_levels

    def schedule(self, batches: int | None = None) -> tuple[int, float]:
        """``(level, alpha)`` after ``batches`` training batches (default: those seen so far)."""
        batches = int(self.batches_seen) if batches is None else batches
        phase, into = divmod(batches, self.hparams.stage_batches)
        level = (phase + 1) // 2
        if level >= self.num_levels:
            return self.num_levels - 1, 1.0
        fading = phase % 2 == 1
        return level, (into / self.hparams.stage_batches if fading else 1.0)

    @property
    def total_batches(self) -> int:
        """Batches until the last level is fully faded in and has had one stable phase."""
        return (2 * self.num_levels - 1) * self.hparams.stage_batches

    def reals_at(self, images: Tensor, level: int, alpha: float) -> Tensor:
        """``images`` average-pooled to ``level``'s grid; while fading in, blended with the level below."""
        pool = _POOL[self.spatial_dims]
        factor = 2 ** (self.num_levels - 1 - level)
        x = pool(images, factor) if factor > 1 else images
        if level > 0 and alpha < 1.0:
            x = torch.lerp(F.interpolate(pool(x, 2), scale_factor=2.0, mode="nearest"), x, alpha)
        return x

    # -- training -----------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        betas = (hp.beta1, hp.beta2)
        return [torch.optim.Adam(self.generator.parameters(), lr=hp.lr, betas=betas),
                torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr, betas=betas)]

    def _latent(self, n: int) -> Tensor:
        return torch.randn(n, self.hparams.latent_dim, device=self.device)

    def critic_step(self, real: Tensor, labels: Tensor | None, level: int, alpha: float) -> dict[str, Tensor]:
        """One critic update: WGAN loss, gradient penalty on interpolates and the drift term; or the
        logistic loss and R1 on the reals."""
        opt_d = self.optimizers()[1]
        hp = self.hparams

        def critic(x: Tensor, y: Tensor | None) -> Tensor:
            return self.discriminator(x, y, level, alpha)

        with torch.no_grad():
            fake = self.generator(self._latent(real.shape[0]), labels, level, alpha)
        self.toggle_optimizer(opt_d)
        real_in, fake_in = self.augment(real), self.augment(fake)
        real_logits, fake_logits = critic(real_in, labels).float(), critic(fake_in, labels).float()
        if hp.loss == "logistic":
            loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
            logs = {"loss_d": loss.detach(), "rt": discriminator_rt(real_logits)}
            if hp.r1_gamma > 0:
                r1 = input_gradients(critic, real_in, labels).flatten(1).square().sum(1).mean()
                loss = loss + 0.5 * hp.r1_gamma * r1
                logs["r1"] = r1.detach()
            manual_step(self, opt_d, loss, None)
            self.untoggle_optimizer(opt_d)
            return logs
        loss = fake_logits.mean() - real_logits.mean() + hp.drift_weight * real_logits.square().mean()
        logs = {"loss_d": loss.detach()}
        if hp.gp_weight > 0:
            mix = torch.rand((real.shape[0],) + (1,) * (real.ndim - 1), device=real.device)
            grad = input_gradients(critic, torch.lerp(fake_in.detach().float(), real_in.detach().float(), mix), labels)
            gp = (grad.flatten(1).norm(2, dim=1) - 1).square().mean()
            loss = loss + hp.gp_weight * gp
            logs["gp"] = gp.detach()
        manual_step(self, opt_d, loss, None)
        self.untoggle_optimizer(opt_d)
        return logs

    def generator_step(self, n: int, labels: Tensor | None, level: int, alpha: float) -> dict[str, Tensor]:
        """One generator update (``-D(G(z))``), then an EMA update."""
        opt_g = self.optimizers()[0]
        self.toggle_optimizer(opt_g)
        fake = self.generator(self._latent(n), labels, level, alpha)
        logits = self.discriminator(self.augment(fake), labels, level, alpha).float()
        loss = F.softplus(-logits).mean() if self.hparams.loss == "logistic" else -logits.mean()
        manual_step(self, opt_g, loss, None)
        self.untoggle_optimizer(opt_g)
        self.update_ema()
        return {"loss_g": loss.detach()}

    def training_step(self, batch: Any, batch_idx: int) -> None:
        images, labels = self.read_batch(batch)
        level, alpha = self.schedule()
        logs = self.critic_step(self.reals_at(self.pad_to_network(images), level, alpha), labels, level, alpha)
        if int(self.batches_seen) % self.hparams.n_critic == 0:
            logs.update(self.generator_step(images.shape[0], labels, level, alpha))
            logs["loss"] = logs["loss_g"]
        self.batches_seen += 1
        self.log_terms("train", logs | {"level": float(level), "alpha": float(alpha)}, images.shape[0])

    # -- the generator contract ----------------------------------------------------------------------
    @torch.inference_mode()
    def sample(self, n: int, labels: Tensor | None = None, masks: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` images in [-1, 1] at the schedule's current level, upsampled (nearest) to
        ``image_size`` when training stopped before the last level; ``labels`` for conditional
        models (uniform when ``None``)."""
        labels, _ = self.check_sample_args(n, labels, masks, generator)
        z = self.draw_noise((n, self.hparams.latent_dim), generator)
        level, alpha = self.schedule()
        images = self.sampling_network(z, labels, level, alpha)
        if tuple(images.shape[2:]) != self.network_size:
            images = F.interpolate(images, size=self.network_size, mode="nearest")
        # The toRGB layers are linear: clamp into the library's image range.
        return self.crop_to_image(images).float().clamp(-1.0, 1.0)
