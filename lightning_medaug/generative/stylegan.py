"""StyleGAN2 with adaptive discriminator augmentation, registered as ``"stylegan2"``.

Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN" (StyleGAN2): mapping
network, modulated/demodulated convolutions, skip generator and residual discriminator
(:mod:`lightning_medaug.generative.stylegan_networks`), trained with the non-saturating logistic
loss, lazy R1 regularisation of D, path-length regularisation of G and style mixing; samples
come from an EMA of the generator, optionally with the truncation trick. Karras et al. 2020,
"Training Generative Adversarial Networks with Limited Data" (ADA,
:mod:`lightning_medaug.generative.ada`) adapts the augmentation probability to how much D
overfits, which matters on medical data sets of a few thousand images.

2D images and 3D volumes share one code path (``spatial_dims``); class-conditional when
``num_classes > 0`` (label embedding concatenated to z, projection discriminator).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_medaug.generative.ada import AdaptiveAugment
from lightning_medaug.generative.base import GenerativeModule
from lightning_medaug.generative.ema import EMA, EMASampling
from lightning_medaug.generative.gan import input_gradients, manual_step
from lightning_medaug.generative.shapes import resampling_grid
from lightning_medaug.generative.stylegan_networks import (
    StyleGAN2Discriminator,
    StyleGAN2Generator,
)
from lightning_medaug.registry import register_generator
from lightning_medaug.sizes import SizeLike
from lightning_medaug.validation import check_adam_betas, check_at_least, check_positive

__all__ = ["StyleGAN2"]


@register_generator("stylegan2")
class StyleGAN2(EMASampling, GenerativeModule):
    """StyleGAN2 + ADA as a LightningModule with manual optimisation.

    Per batch: one D step (logistic loss, plus ``r1_gamma/2 * |grad D(real)|^2`` every
    ``r1_interval`` steps, scaled by the interval: lazy regularisation) and one G step (plus the
    path-length penalty every ``pl_interval`` steps). Adam's learning rate and betas are corrected
    for the lazy intervals as in the paper (Appendix B). Logs ``train/loss_d``, ``train/loss_g``,
    ``train/loss`` (= the G loss), ``train/r1``, ``train/pl``, ``train/ada_p`` and ``train/ada_rt``.
    Lightning's ``global_step`` counts both optimiser steps: ``max_steps`` = 2 x batches.

    Non-power-of-two sizes: the networks start from ``image_size / 2**k`` (largest ``k`` leaving a
    start grid >= 4), e.g. 28 = 7 x 2 x 2, rather than generating at 32 and resizing.

    Args:
        spatial_dims, in_channels, image_size, num_classes: see :class:`GenerativeModule`.
        latent_dim, w_dim, mapping_layers: z size, w size and depth of the mapping network.
        embed_dim: size of the label embedding concatenated to z (conditional models).
        channel_base, channel_max: channels at resolution r are ``min(channel_max, channel_base // r)``;
            the small defaults train on a CPU.
        num_upsamples: x2 stages of both networks; ``None`` picks them from ``image_size``.
        lr_g, lr_d, beta1, beta2: Adam settings (paper: 0.0025, betas (0, 0.99)).
        r1_gamma, r1_interval: R1 weight and its lazy interval (0 disables R1); StyleGAN2-ADA's
            heuristic is ``0.0002 * image_size**2 / batch_size`` (0.01 for 32 px at batch 64).
        pl_weight, pl_interval, pl_batch_shrink, pl_decay: path-length penalty weight (0 disables
            it), its lazy interval, batch fraction used for it, and the decay of its running mean.
        style_mixing_prob: probability of mixing two w's at a random layer in training.
        mbstd_group_size: minibatch-stddev group size of D (1 disables it).
        ada_policy: DiffAugment transforms driven by ADA; ``""`` disables augmentation.
        ada_target, ada_interval, ada_speed_kimg, ada_initial_p, ada_max_p: see :class:`AdaptiveAugment`.
        use_ema, ema_decay: keep an EMA of the generator and sample from it.
        gradient_clip_val: clip each network's gradient norm; ``None`` disables it.
    """

    training_only_modules = ("discriminator",)

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, image_size: SizeLike = 32, num_classes: int = 0,
                 latent_dim: int = 64, w_dim: int = 64, mapping_layers: int = 4, embed_dim: int = 32,
                 channel_base: int = 1024, channel_max: int = 128, num_upsamples: int | None = None,
                 lr_g: float = 2.5e-3, lr_d: float = 2.5e-3, beta1: float = 0.0, beta2: float = 0.99,
                 r1_gamma: float = 0.01, r1_interval: int = 16, pl_weight: float = 2.0, pl_interval: int = 4,
                 pl_batch_shrink: int = 2, pl_decay: float = 0.01, style_mixing_prob: float = 0.9,
                 mbstd_group_size: int = 4, ada_policy: str = "color,translation,cutout", ada_target: float = 0.6,
                 ada_interval: int = 4, ada_speed_kimg: float = 100.0, ada_initial_p: float = 0.0,
                 ada_max_p: float = 1.0, use_ema: bool = True, ema_decay: float = 0.999,
                 gradient_clip_val: float | None = None):
        super().__init__(spatial_dims, in_channels, image_size, num_classes)
        self.save_hyperparameters()
        check_at_least(1, latent_dim=latent_dim, w_dim=w_dim, mapping_layers=mapping_layers, embed_dim=embed_dim,
                       channel_base=channel_base, channel_max=channel_max, r1_interval=r1_interval,
                       pl_interval=pl_interval, pl_batch_shrink=pl_batch_shrink, mbstd_group_size=mbstd_group_size)
        check_positive(lr_g=lr_g, lr_d=lr_d)
        check_adam_betas(beta1, beta2)
        for name, value in (("r1_gamma", r1_gamma), ("pl_weight", pl_weight)):
            if value < 0:
                raise ValueError(f"{name} must be 0 (off) or positive, got {value}")
        if not 0.0 < pl_decay <= 1.0:
            raise ValueError(f"pl_decay must be in (0, 1], got {pl_decay}")
        if not 0.0 <= style_mixing_prob <= 1.0:
            raise ValueError(f"style_mixing_prob must be in [0, 1], got {style_mixing_prob}")
        if gradient_clip_val is not None and gradient_clip_val <= 0:
            raise ValueError(f"gradient_clip_val must be positive or None, got {gradient_clip_val}")
        self.automatic_optimization = False
        # both networks run on a grid they can halve; reals are padded to it, samples cropped
        ups, self.network_size = resampling_grid(self.spatial_size, num_upsamples)
        self.generator = StyleGAN2Generator(spatial_dims, latent_dim, w_dim, in_channels, self.network_size,
                                            channel_base, channel_max, ups, mapping_layers, num_classes, embed_dim)
        self.discriminator = StyleGAN2Discriminator(spatial_dims, in_channels, self.network_size, channel_base,
                                                    channel_max, ups, num_classes, mbstd_group_size)
        self.augment = AdaptiveAugment(ada_policy, ada_target, ada_interval, ada_speed_kimg, ada_initial_p, ada_max_p)
        self.ema = EMA(self.generator, ema_decay) if use_ema else None
        # Running mean of path lengths (Karras 2020, Eq. 4's constant a); a buffer so it is checkpointed.
        self.register_buffer("pl_mean", torch.zeros(()))

    # -- optimisers ------------------------------------------------------------------------------
    def _adam(self, params: Any, lr: float, interval: int) -> torch.optim.Adam:
        # Lazy regularisation (Karras 2020, App. B): fewer, larger steps -> rescale lr and betas.
        c = interval / (interval + 1)
        betas = (self.hparams.beta1**c, self.hparams.beta2**c)
        return torch.optim.Adam(params, lr=lr * c, betas=betas)

    def configure_optimizers(self):
        hp = self.hparams
        g_interval = hp.pl_interval if hp.pl_weight > 0 else 0
        d_interval = hp.r1_interval if hp.r1_gamma > 0 else 0
        return [self._adam(self.generator.parameters(), hp.lr_g, g_interval),
                self._adam(self.discriminator.parameters(), hp.lr_d, d_interval)]

    # -- pieces of a step --------------------------------------------------------------------------
    def mixed_styles(self, n: int, labels: Tensor | None) -> Tensor:
        """ws for ``n`` fresh latents; with ``style_mixing_prob`` the layers from a random cutoff on
        take the w of a second latent (Karras et al. 2019, mixing regularisation)."""
        net = self.generator
        ws = net.map(torch.randn(n, self.hparams.latent_dim, device=self.device), labels)
        if self.hparams.style_mixing_prob > 0 and torch.rand(()) < self.hparams.style_mixing_prob:
            cutoff = int(torch.randint(1, net.num_ws, ()))
            other = net.map(torch.randn(n, self.hparams.latent_dim, device=self.device), labels)
            ws = torch.cat([ws[:, :cutoff], other[:, cutoff:]], dim=1)
        return ws

    def path_length_penalty(self, n: int, labels: Tensor | None) -> Tensor:
        """Karras 2020, Eq. 4: ``(|J_w^T y| - a)^2`` with y ~ N(0, I)/sqrt(pixels) and ``a`` the running
        mean of the lengths; in float32 because it needs a double backward."""
        n = max(1, n // self.hparams.pl_batch_shrink)  # a smaller batch: the penalty is a running estimate
        labels = labels[:n] if labels is not None else None
        with torch.autocast(device_type=self.device.type, enabled=False):
            ws = self.mixed_styles(n, labels)
            images = self.generator.synthesis(ws)
            pixels = images[0, 0].numel()
            noise = torch.randn_like(images) / math.sqrt(pixels)
            (grad,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
            lengths = grad.square().sum(2).mean(1).sqrt()
            self.pl_mean.copy_(self.pl_mean.lerp(lengths.mean().detach(), self.hparams.pl_decay))
            return (lengths - self.pl_mean).square().mean()

    def discriminator_step(self, images: Tensor, labels: Tensor | None, batch_number: int) -> dict[str, Tensor]:
        """One D update: logistic loss, lazy R1 (on every ``r1_interval``-th batch) and an ADA
        observation; returns detached logs."""
        opt_d = self.optimizers()[1]
        with torch.no_grad():
            fake = self.generator.synthesis(self.mixed_styles(images.shape[0], labels))
        self.toggle_optimizer(opt_d)
        real_in, fake_in = self.augment(images), self.augment(fake)
        real_logits = self.discriminator(real_in, labels).float()
        fake_logits = self.discriminator(fake_in, labels).float()
        # Non-saturating logistic loss: softplus(D(fake)) + softplus(-D(real)).
        loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
        logs = {"loss_d": loss.detach()}
        hp = self.hparams
        if hp.r1_gamma > 0 and batch_number % hp.r1_interval == 0:
            grad = input_gradients(self.discriminator, real_in, labels)
            r1 = grad.flatten(1).square().sum(1).mean()
            loss = loss + 0.5 * hp.r1_gamma * r1 * hp.r1_interval
            logs["r1"] = r1.detach()
        manual_step(self, opt_d, loss, hp.gradient_clip_val)
        self.untoggle_optimizer(opt_d)
        # Karras 2020 (ADA) sums sign(D(real)) over all GPUs: every rank then moves p alike.
        self.augment.observe(self.all_gather(real_logits.detach()).flatten())
        return logs

    def generator_step(self, n: int, labels: Tensor | None, batch_number: int) -> dict[str, Tensor]:
        """One G update (logistic loss, path-length penalty on every ``pl_interval``-th batch), then
        an EMA update."""
        opt_g = self.optimizers()[0]
        self.toggle_optimizer(opt_g)
        fake = self.generator.synthesis(self.mixed_styles(n, labels))
        loss = F.softplus(-self.discriminator(self.augment(fake), labels).float()).mean()
        logs = {"loss_g": loss.detach()}
        hp = self.hparams
        total = loss
        if hp.pl_weight > 0 and batch_number % hp.pl_interval == 0:
            penalty = self.path_length_penalty(n, labels)
            total = loss + hp.pl_weight * hp.pl_interval * penalty
            logs["pl"] = penalty.detach()
        manual_step(self, opt_g, total, hp.gradient_clip_val)
        self.untoggle_optimizer(opt_g)
        self.update_ema()
        return logs

    def training_step(self, batch: Any, batch_idx: int) -> None:
        images, labels = self.read_batch(batch)
        # global_step counts two optimiser steps per batch and is checkpointed, so the lazy
        # regularisers keep their rhythm across a resumed run.
        batch_number = self.global_step // 2 + 1
        logs = self.discriminator_step(self.pad_to_network(images), labels, batch_number)
        logs.update(self.generator_step(images.shape[0], labels, batch_number))
        logs["ada_p"] = self.augment.p.detach().float()
        if not torch.isnan(self.augment.last_rt):
            logs["ada_rt"] = self.augment.last_rt.detach().float()
        self.log_terms("train", logs | {"loss": logs["loss_g"]}, images.shape[0])

    # -- the generator contract --------------------------------------------------------------------
    @torch.inference_mode()
    def sample(self, n: int, labels: Tensor | None = None, masks: Tensor | None = None,
               generator: torch.Generator | None = None, truncation_psi: float = 1.0) -> Tensor:
        """Draw ``n`` images in [-1, 1]; ``labels`` for conditional models (uniform when ``None``).

        ``truncation_psi < 1`` pulls each w towards the (per-class) mean w: less variety, fewer
        artefacts (Karras et al. 2019). ``generator`` draws z and the noise inputs.
        """
        if not 0.0 <= truncation_psi <= 1.0:
            raise ValueError(f"truncation_psi must be in [0, 1] (1 = no truncation), got {truncation_psi}")
        labels, _ = self.check_sample_args(n, labels, masks, generator)
        z = self.draw_noise((n, self.hparams.latent_dim), generator)
        net = self.sampling_network
        was_training = net.training
        net.eval()  # no w_avg update while sampling
        try:
            images = net(z, labels, truncation_psi, generator)
        finally:
            net.train(was_training)
        # StyleGAN's output layer is linear: clamp into the library's image range.
        return self.crop_to_image(images).float().clamp(-1.0, 1.0)
