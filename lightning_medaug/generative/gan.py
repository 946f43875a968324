"""Noise -> image GANs: DCGAN, class-conditional GAN and WGAN-GP, on one LightningModule base.

* :class:`DCGAN` ("dcgan") - non-saturating BCE loss (Goodfellow et al. 2014; Radford et al. 2016).
* :class:`ConditionalGAN` ("cgan") - the same with a label embedding in the generator and a
  projection discriminator (Miyato & Koyama 2018).
* :class:`WGANGP` ("wgan_gp") - Wasserstein critic with gradient penalty and ``n_critic`` critic
  steps per generator step (Gulrajani et al. 2017); conditional when ``num_classes > 0``.

The subclasses differ only in their loss methods and defaults. Small-data remedies are options,
on by default because GANs on ~100 images of a class tend to collapse to a few images (they
reduce the risk, they do not remove it: check diversity before using samples): DiffAugment
(Zhao et al. 2020) on real and fake images before every discriminator call, spectral norm in
the discriminator (Miyato et al. 2018) and an EMA of the generator used by :meth:`GAN.sample`
(Karras et al. 2018); R1 penalty (Mescheder et al. 2018) and one-sided label smoothing
(Salimans et al. 2016) are available too.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_medaug.generative.base import GenerativeModule
from lightning_medaug.generative.diffaugment import DiffAugment
from lightning_medaug.generative.ema import EMA, EMASampling
from lightning_medaug.generative.gan_networks import DCGANDiscriminator, DCGANGenerator
from lightning_medaug.generative.shapes import resampling_grid
from lightning_medaug.registry import register_generator
from lightning_medaug.sizes import SizeLike
from lightning_medaug.validation import check_adam_betas, check_at_least, check_positive

__all__ = ["DCGAN", "GAN", "WGANGP", "ConditionalGAN", "discriminator_rt", "input_gradients", "manual_step"]


def input_gradients(critic: nn.Module, x: Tensor, labels: Tensor | None) -> Tensor:
    """d critic(x).sum() / dx with ``create_graph=True``, computed in float32.

    Autocast is switched off here: a double backward through bf16/fp16 activations loses the
    precision a gradient penalty needs, and its squared norms overflow fp16.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.detach().float().requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(x, labels).sum(), x, create_graph=True)
    return grad


def discriminator_rt(real_logits: Tensor) -> Tensor:
    """``E[sign D(real)]``, the discriminator-overfitting heuristic of Karras et al. 2020 (detached)."""
    return real_logits.detach().float().sign().mean()


def manual_step(module: L.LightningModule, optimizer: Any, loss: Tensor, gradient_clip_val: float | None) -> None:
    """zero_grad, ``manual_backward``, optional norm clipping, step: one manual-optimisation update.

    Clipping goes through ``module.clip_gradients`` because ``Trainer(gradient_clip_val=...)`` does
    not apply under manual optimisation.
    """
    optimizer.zero_grad(set_to_none=True)
    module.manual_backward(loss)
    if gradient_clip_val is not None:
        module.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm="norm")
    optimizer.step()


class GAN(EMASampling, GenerativeModule):
    """Base of the noise -> image GANs; subclasses choose the adversarial loss.

    Trained with manual optimisation: per batch one discriminator step and, every ``n_critic``
    batches, one generator step. Logs ``train/loss_d``, ``train/loss_g``, ``train/loss``
    (= the generator loss, for NaN guards) and, for the non-saturating loss, ``train/rt``: the
    overfitting heuristic of Karras et al. 2020, ``E[sign D(real)]`` over the (augmented) training
    reals. Near 0 the discriminator cannot tell reals from fakes; as it memorises the training
    images it climbs towards 1 (ADA aims at 0.6): a reason to add augmentation or stop early.
    Lightning's ``global_step`` counts both optimiser steps, so ``max_steps`` is about
    ``(1 + 1/n_critic)`` x batches. Under DDP use
    ``strategy="ddp_find_unused_parameters_true"``: each backward reaches only one network.

    Args:
        spatial_dims, in_channels, image_size, num_classes: see :class:`GenerativeModule`.
        latent_dim: size of the noise vector ``z``.
        generator_channels, discriminator_channels: width of the finest layer of each network.
        num_upsamples: x2 stages of both networks; ``None`` picks them from ``image_size``. Sizes
            they cannot halve exactly are padded (reals) and cropped (samples), see :mod:`.shapes`.
        embed_dim: size of the generator's label embedding (conditional models).
        lr_g, lr_d, beta1, beta2: Adam settings of the generator and the discriminator. The
            default learning rates follow the two time-scale rule (TTUR, Heusel et al. 2017): a
            faster discriminator; on PneumoniaMNIST it doubled sample diversity early in training
            compared with 2e-4 for both.
        n_critic: discriminator steps per generator step.
        diffaugment: DiffAugment policy, e.g. ``"color,translation,cutout"``; ``""`` disables it.
        spectral_norm: spectral norm on every discriminator weight.
        use_ema, ema_decay: keep an EMA of the generator and sample from it.
        r1_gamma: weight of the R1 penalty ``gamma/2 * |grad D(real)|^2``; 0 disables it.
        label_smoothing: one-sided smoothing of the real target (1 -> 1 - s).
        gradient_clip_val: clip each network's gradient norm to this value; ``None`` disables it
            (``Trainer(gradient_clip_val=...)`` does not apply under manual optimisation).
    """

    training_only_modules = ("discriminator",)

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, image_size: SizeLike = 32, num_classes: int = 0,
                 latent_dim: int = 128, generator_channels: int = 64, discriminator_channels: int = 64,
                 num_upsamples: int | None = None, embed_dim: int = 32, lr_g: float = 1e-4, lr_d: float = 4e-4,
                 beta1: float = 0.5, beta2: float = 0.999, n_critic: int = 1,
                 diffaugment: str = "color,translation,cutout", spectral_norm: bool = True, use_ema: bool = True,
                 ema_decay: float = 0.999, r1_gamma: float = 0.0, label_smoothing: float = 0.0,
                 gradient_clip_val: float | None = None):
        super().__init__(spatial_dims, in_channels, image_size, num_classes)
        self.save_hyperparameters()
        check_at_least(1, latent_dim=latent_dim, generator_channels=generator_channels,
                       discriminator_channels=discriminator_channels, embed_dim=embed_dim, n_critic=n_critic)
        check_positive(lr_g=lr_g, lr_d=lr_d)
        check_adam_betas(beta1, beta2)
        if r1_gamma < 0:
            raise ValueError(f"r1_gamma must be 0 (off) or positive, got {r1_gamma}")
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
        if gradient_clip_val is not None and gradient_clip_val <= 0:
            raise ValueError(f"gradient_clip_val must be positive or None, got {gradient_clip_val}")
        self.automatic_optimization = False
        # both networks run on a grid they can halve; reals are padded to it, samples cropped
        ups, self.network_size = resampling_grid(self.spatial_size, num_upsamples)
        self.generator = DCGANGenerator(spatial_dims, latent_dim, in_channels, self.network_size, generator_channels,
                                        ups, num_classes, embed_dim)
        self.discriminator = DCGANDiscriminator(spatial_dims, in_channels, self.network_size, discriminator_channels,
                                                ups, num_classes, spectral_norm)
        self.augment = DiffAugment(diffaugment)
        self.ema = EMA(self.generator, ema_decay) if use_ema else None
        self._critic_steps = 0  # counts D steps across epochs, so n_critic works with tiny epochs

    # -- losses (overridden by subclasses) -------------------------------------------------------
    def discriminator_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        """Non-saturating GAN loss of D: BCE with real -> 1 - label_smoothing, fake -> 0."""
        real_target = torch.full_like(real_logits, 1.0 - self.hparams.label_smoothing)
        return (F.binary_cross_entropy_with_logits(real_logits, real_target)
                + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))

    def generator_loss(self, fake_logits: Tensor) -> Tensor:
        """Non-saturating generator loss ``-log D(G(z))`` (Goodfellow et al. 2014)."""
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))

    def discriminator_penalty(self, real: Tensor, fake: Tensor, labels: Tensor | None) -> Tensor:
        """Regulariser added to the D loss: R1 on the (augmented) reals when ``r1_gamma > 0``."""
        if self.hparams.r1_gamma == 0:
            return real.new_zeros((), dtype=torch.float32)
        grad = input_gradients(self.discriminator, real, labels)
        return 0.5 * self.hparams.r1_gamma * grad.flatten(1).pow(2).sum(1).mean()

    # -- training ---------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        betas = (hp.beta1, hp.beta2)
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=hp.lr_g, betas=betas)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr_d, betas=betas)
        return [opt_g, opt_d]

    def _latent(self, n: int) -> Tensor:
        return torch.randn(n, self.hparams.latent_dim, device=self.device)

    def _step(self, optimizer: Any, loss: Tensor) -> None:
        manual_step(self, optimizer, loss, self.hparams.gradient_clip_val)

    def discriminator_logs(self, real_logits: Tensor) -> dict[str, Tensor]:
        """What a D step logs besides its loss, from its logits on the (augmented) reals: ``rt``."""
        return {"rt": discriminator_rt(real_logits)}

    def discriminator_step(self, images: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        """One D update on real ``images`` against fresh fakes; returns the detached loss
        (``loss_d``) and :meth:`discriminator_logs`."""
        opt_d = self.optimizers()[1]
        with torch.no_grad():
            fake = self.generator(self._latent(images.shape[0]), labels)
        self.toggle_optimizer(opt_d)
        # Zhao 2020: augment reals and fakes alike, so D never sees un-augmented images.
        real_in, fake_in = self.augment(images), self.augment(fake)
        # reals, then fakes: spectral norm's power iteration advances at every call, so order matters
        real_logits = self.discriminator(real_in, labels)
        loss = self.discriminator_loss(real_logits, self.discriminator(fake_in, labels))
        loss = loss + self.discriminator_penalty(real_in, fake_in, labels)
        self._step(opt_d, loss)
        self.untoggle_optimizer(opt_d)
        return {"loss_d": loss.detach(), **self.discriminator_logs(real_logits)}

    def generator_step(self, n: int, labels: Tensor | None) -> Tensor:
        """One G update (then an EMA update); returns the detached loss."""
        opt_g = self.optimizers()[0]
        self.toggle_optimizer(opt_g)
        fake = self.generator(self._latent(n), labels)
        loss = self.generator_loss(self.discriminator(self.augment(fake), labels))
        self._step(opt_g, loss)
        self.untoggle_optimizer(opt_g)
        self.update_ema()
        return loss.detach()

    def training_step(self, batch: Any, batch_idx: int) -> None:
        images, labels = self.read_batch(batch)
        terms = self.discriminator_step(self.pad_to_network(images), labels)
        self._critic_steps += 1
        if self._critic_steps % self.hparams.n_critic == 0:
            terms["loss_g"] = terms["loss"] = self.generator_step(images.shape[0], labels)
        self.log_terms("train", terms, images.shape[0], prog_bar=("loss_d", "loss_g"))

    # -- the generator contract --------------------------------------------------------------------
    @torch.inference_mode()
    def sample(self, n: int, labels: Tensor | None = None, masks: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` images in [-1, 1]; ``labels`` for conditional models (uniform when ``None``)."""
        labels, _ = self.check_sample_args(n, labels, masks, generator)
        z = self.draw_noise((n, self.hparams.latent_dim), generator)
        net = self.sampling_network
        was_training = net.training
        net.eval()  # batch norm on running statistics: a sample must not depend on its batch
        try:
            images = net(z, labels)
        finally:
            net.train(was_training)
        return self.crop_to_image(images).float()


@register_generator("dcgan")
class DCGAN(GAN):
    """Unconditional DCGAN (Radford et al. 2016); see :class:`GAN` for the arguments."""

    def __init__(self, num_classes: int = 0, **kwargs: Any):
        if num_classes != 0:
            raise ValueError(f"DCGAN is unconditional (num_classes=0), got num_classes={num_classes}: "
                             "use 'cgan' (ConditionalGAN) for class-conditional sampling")
        super().__init__(num_classes=num_classes, **kwargs)


@register_generator("cgan")
class ConditionalGAN(GAN):
    """Class-conditional GAN: label embedding concatenated to ``z`` (Mirza & Osindero 2014) and a
    projection discriminator (Miyato & Koyama 2018); see :class:`GAN` for the arguments."""

    def __init__(self, num_classes: int = 2, **kwargs: Any):
        if num_classes < 1:
            raise ValueError(f"ConditionalGAN needs num_classes >= 1, got {num_classes}: use 'dcgan' without labels")
        super().__init__(num_classes=num_classes, **kwargs)


@register_generator("wgan_gp")
class WGANGP(GAN):
    """WGAN-GP (Gulrajani et al. 2017): Wasserstein critic (no sigmoid) with gradient penalty.

    Defaults follow the paper: ``n_critic=5``, Adam(1e-4, betas (0, 0.9)), ``gp_weight=10``, and
    no spectral norm (the penalty already constrains the critic's Lipschitz constant). The
    penalty is computed in float32, so bf16/fp16 mixed precision is safe. Conditional (projection
    critic) when ``num_classes > 0``. Other arguments: see :class:`GAN`.

    Args:
        gp_weight: lambda of the penalty ``(|grad D(x_hat)| - 1)^2`` on real/fake interpolates.
    """

    def __init__(self, gp_weight: float = 10.0, n_critic: int = 5, lr_g: float = 1e-4, lr_d: float = 1e-4,
                 beta1: float = 0.0, beta2: float = 0.9, spectral_norm: bool = False, label_smoothing: float = 0.0,
                 **kwargs: Any):
        if gp_weight < 0:
            raise ValueError(f"gp_weight must be 0 or positive, got {gp_weight}")
        if label_smoothing != 0:
            raise ValueError("label_smoothing has no meaning for a Wasserstein critic: leave it at 0")
        super().__init__(n_critic=n_critic, lr_g=lr_g, lr_d=lr_d, beta1=beta1, beta2=beta2,
                         spectral_norm=spectral_norm, label_smoothing=label_smoothing, **kwargs)

    def discriminator_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        return fake_logits.float().mean() - real_logits.float().mean()

    def discriminator_logs(self, real_logits: Tensor) -> dict[str, Tensor]:
        """Nothing: a critic's scores have no zero point, so the sign heuristic ``rt`` means nothing."""
        return {}

    def generator_loss(self, fake_logits: Tensor) -> Tensor:
        return -fake_logits.float().mean()

    def discriminator_penalty(self, real: Tensor, fake: Tensor, labels: Tensor | None) -> Tensor:
        """Gradient penalty on random interpolates of (augmented) reals and fakes, plus R1 if set."""
        alpha = torch.rand((real.shape[0],) + (1,) * (real.ndim - 1), device=real.device)
        interpolates = alpha * real.detach().float() + (1 - alpha) * fake.detach().float()
        grad = input_gradients(self.discriminator, interpolates, labels)
        penalty = self.hparams.gp_weight * (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()
        return penalty + super().discriminator_penalty(real, fake, labels)
