"""VAEs trained adversarially: VAE-GAN and IntroVAE, on the :class:`~lightning_medaug.generative.vae.VAE`.

* :class:`VAEGAN` ("vaegan") - Larsen, Sonderby, Larochelle & Winther, "Autoencoding beyond pixels
  using a learned similarity metric", ICML 2016: a VAE whose reconstruction error is measured in a
  discriminator's feature space, plus a GAN loss on reconstructions and prior samples.
* :class:`IntroVAE` ("introvae") - Huang, Li, He, Sun & Tan, "IntroVAE: Introspective Variational
  Autoencoders for Photographic Image Synthesis", NeurIPS 2018: no extra network; the encoder is
  the discriminator, scoring images by the KL of its posterior.

Both keep the VAE's networks, label conditioning (``num_classes > 0``), ``posterior``, ``encode``,
``decode``, ``latent_shape`` and ``sample`` (decode ``z ~ N(0, I)``, with labels when conditional),
so they also serve as latent-diffusion first stages. They differ from the VAE in training only:
manual optimisation with separate encoder and decoder optimisers (:class:`AdversarialVAE`).
Validation and test run the VAE's step unchanged: ``val/loss`` is the negative ELBO with the VAE's
pixel reconstruction loss, comparable with the plain VAE's, and a fair checkpoint criterion.

KL values are per image element (``KL(q(z|x) || N(0, I))`` summed over latent elements, divided by
the elements of one image), the VAE family's scale, so they add to per-element reconstruction errors.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_medaug.generative.diffaugment import DiffAugment
from lightning_medaug.generative.gan import manual_step
from lightning_medaug.generative.gan_networks import DCGANDiscriminator
from lightning_medaug.generative.vae import VAE, reconstruction_loss
from lightning_medaug.registry import register_generator
from lightning_medaug.validation import check_adam_betas

__all__ = ["VAEGAN", "AdversarialVAE", "IntroVAE", "kl_per_sample"]


def kl_per_sample(mu: Tensor, sigma: Tensor, image_elements: int) -> Tensor:
    """``KL(N(mu, sigma^2) || N(0, I))`` of each sample, per image element, in float32: shape (n,)."""
    mu, sigma = mu.float(), sigma.float()
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - 2.0 * torch.log(sigma) - 1.0)
    return kl.flatten(1).sum(1) / image_elements


def _bce(logits: Tensor, target: float) -> Tensor:
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


class AdversarialVAE(VAE):
    """Shared base: a :class:`VAE` trained with manual optimisation by separate encoder and decoder
    Adam optimisers; subclasses implement :meth:`adversarial_step` (and may add optimisers).

    The encoder's parameters are MONAI's encoder and its two ``quant_conv`` heads; everything else
    of the VAE (latent mixing, decoder and the label embedding, which shapes class-specific samples)
    belongs to the decoder. Under DDP use ``strategy="ddp_find_unused_parameters_true"``: each
    backward reaches only part of the model. Lightning's ``global_step`` counts every optimiser
    step (2 or 3 per batch), which also paces ``kl_warmup_steps``.

    Args:
        beta1, beta2: Adam betas of every optimiser.
        gradient_clip_val: clip each network's gradient norm to this value; ``None`` disables it
            (``Trainer(gradient_clip_val=...)`` does not apply under manual optimisation).
        **kwargs: the :class:`VAE`'s arguments; ``beta`` is the weight of the KL of real images,
            ``recon_loss`` the pixel error of ``val/recon``.
    """

    def __init__(self, beta1: float = 0.5, beta2: float = 0.999, gradient_clip_val: float | None = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        check_adam_betas(beta1, beta2)
        if gradient_clip_val is not None and gradient_clip_val <= 0:
            raise ValueError(f"gradient_clip_val must be positive or None, got {gradient_clip_val}")
        self.automatic_optimization = False

    # -- parameter groups ---------------------------------------------------------------------------
    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of ``q(z | x)``: MONAI's encoder and its mean / log-sigma heads."""
        ae = self.autoencoder
        return [p for m in (ae.encoder, ae.quant_conv_mu, ae.quant_conv_log_sigma) for p in m.parameters()]

    def decoder_parameters(self) -> list[nn.Parameter]:
        """Every VAE parameter outside the encoder (the generator of the adversarial game)."""
        encoder = {id(p) for p in self.encoder_parameters()}
        vae_modules = (self.autoencoder, self.label_embedding, self.latent_condition)
        return [p for m in vae_modules if m is not None for p in m.parameters() if id(p) not in encoder]

    def _adam(self, params: list[nn.Parameter], lr: float) -> torch.optim.Adam:
        return torch.optim.Adam(params, lr=lr, betas=(self.hparams.beta1, self.hparams.beta2))

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self._adam(self.encoder_parameters(), self.hparams.lr),
                self._adam(self.decoder_parameters(), self.hparams.lr)]

    # -- training -----------------------------------------------------------------------------------
    def _reparameterise(self, image: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """A posterior sample ``z`` (gradients reach the encoder) and each image's KL, shape (n,)."""
        mu, sigma = self.posterior(image, labels)
        z = mu + sigma * torch.randn_like(sigma)
        return z, kl_per_sample(mu, sigma, self._image_elements)

    def _prior(self, n: int, like: Tensor) -> Tensor:
        return torch.randn((n, *self.latent_shape), device=like.device, dtype=like.dtype)

    @property
    def _image_elements(self) -> int:
        return math.prod(self.image_shape)

    def _step(self, optimizer: Any, loss: Tensor) -> None:
        manual_step(self, optimizer, loss, self.hparams.gradient_clip_val)

    def adversarial_step(self, image: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        """Update the networks on one batch; returns detached figures to log (``loss_g`` included)."""
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> None:
        image, labels = self.read_batch(batch)
        figures = self.adversarial_step(image, labels)
        # ``train/loss`` is the generator's loss, as for the GANs: what FiniteLossGuard watches.
        self.log_terms("train", figures | {"loss": figures["loss_g"]}, image.shape[0])


@register_generator("vaegan")
class VAEGAN(AdversarialVAE):
    """VAE-GAN (Larsen et al. 2016): VAE + discriminator whose features define the similarity.

    Per batch (the paper's Algorithm 1, with non-saturating GAN losses):

    1. encoder: ``beta * KL + L_llike``, where ``L_llike`` is the squared distance between the
       discriminator's features (its first ``feature_layer`` blocks) of ``x`` and of its
       reconstruction ``Dec(z)``, ``z ~ q(z | x)``, relative to the features' scale
       (:meth:`feature_distance`);
    2. decoder: ``gamma * L_llike + L_adv``, ``L_adv`` asking the discriminator to call both
       reconstructions and prior samples ``Dec(z_p)``, ``z_p ~ N(0, I)``, real; ``gamma`` trades
       reconstruction against realism (the paper's weighting);
    3. discriminator: real images vs reconstructions and prior samples (the decoder outputs of 2).

    The discriminator never minimises ``L_llike`` (that would collapse its features, as the paper
    notes). Its GAN inputs go through DiffAugment (Zhao et al. 2020) and it has spectral norm
    (Miyato et al. 2018), like the GANs here; ``L_llike`` compares un-augmented images, so it
    measures the reconstruction, not two random augmentations. The discriminator is
    :class:`DCGANDiscriminator`, with a projection head when ``num_classes > 0``. Logs
    ``train/loss_e``, ``train/loss_g``, ``train/loss_d``, ``train/kl``, ``train/feature_recon``,
    ``train/recon`` (pixel MSE, for monitoring) and ``train/loss`` (= ``loss_g``); 3 optimiser steps
    per batch.

    Args:
        gamma: weight of the feature reconstruction in the decoder's loss (paper: gamma).
        discriminator_channels: width of the discriminator's first block (doubled per block).
        num_downsamples: strided discriminator blocks; ``None`` picks them from ``image_size``.
        feature_layer: blocks whose output is the similarity space, 1 (shallow) up to all
            (``num_downsamples + 1``, the default ``None``: the deepest feature map).
        lr_d: Adam learning rate of the discriminator (``lr`` is the encoder's and decoder's).
        diffaugment: DiffAugment policy; ``""`` disables it.
        spectral_norm: spectral norm on every discriminator weight.
        **kwargs: see :class:`AdversarialVAE` and :class:`VAE`.
    """

    training_only_modules = ("discriminator",)

    def __init__(self, gamma: float = 1.0, discriminator_channels: int = 32, num_downsamples: int | None = None,
                 feature_layer: int | None = None, lr: float = 3e-4, lr_d: float = 3e-4,
                 diffaugment: str = "color,translation,cutout", spectral_norm: bool = True, **kwargs: Any):
        super().__init__(lr=lr, **kwargs)
        if gamma < 0:
            raise ValueError(f"gamma must be 0 or positive, got {gamma}")
        if discriminator_channels < 1:
            raise ValueError(f"discriminator_channels must be at least 1, got {discriminator_channels}")
        if lr_d <= 0:
            raise ValueError(f"lr_d must be positive, got {lr_d}")
        self.discriminator = DCGANDiscriminator(self.spatial_dims, self.in_channels, self.spatial_size,
                                                discriminator_channels, num_downsamples, self.num_classes,
                                                spectral_norm)
        blocks = len(self.discriminator.features) // 2  # (conv, LeakyReLU) pairs
        if feature_layer is not None and not 1 <= feature_layer <= blocks:
            raise ValueError(f"feature_layer must lie in [1, {blocks}] (the discriminator's blocks) or be None, "
                             f"got {feature_layer}")
        self.feature_blocks = feature_layer or blocks
        self.augment = DiffAugment(diffaugment)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [*super().configure_optimizers(), self._adam(list(self.discriminator.parameters()), self.hparams.lr_d)]

    def features(self, images: Tensor) -> Tensor:
        """``Dis_l(x)``: the output of the discriminator's first ``feature_layer`` blocks."""
        # A slice of its Sequential, built per call: as a registered submodule it would save every
        # shared weight twice (and safetensors refuses shared tensors).
        return self.discriminator.features[: 2 * self.feature_blocks](images)

    def feature_distance(self, recon: Tensor, target_features: Tensor) -> Tensor:
        """``L_llike``: squared distance of discriminator features, per element, relative to the real
        features' mean square, in float32.

        The paper's unit-variance Gaussian on ``Dis_l(x)`` presumes unit-scale features (its
        discriminator had batch norm); spectral norm shrinks them instead, which left ``L_llike``
        some 20x below the KL on phantoms and the posterior collapsed. Dividing by the real features' mean square
        restores the unit scale at any depth, width or discriminator state.
        """
        target = target_features.float()
        scale = target.pow(2).mean().clamp_min(1e-8)
        return F.mse_loss(self.features(recon).float(), target) / scale

    def adversarial_step(self, image: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        opt_e, opt_g, opt_d = self.optimizers()
        n = image.shape[0]
        cond = torch.cat([labels, labels]) if labels is not None else None  # for [reconstructions, samples]
        with torch.no_grad():  # the target of L_llike; the discriminator does not change until step 3
            target = self.features(image)
        # 1. encoder: KL + L_llike, through the frozen decoder and discriminator
        with self.toggled_optimizer(opt_e):
            z, kl = self._reparameterise(image, labels)
            kl = kl.mean()
            feature_recon = self.feature_distance(self._decode_unclamped(z, labels), target)
            loss_e = self.kl_weight() * kl + feature_recon
            self._step(opt_e, loss_e)
        # 2. decoder: gamma * L_llike + non-saturating GAN loss on reconstructions and prior samples;
        # z is detached: the encoder had its update in step 1.
        with self.toggled_optimizer(opt_g):
            fakes = self._decode_unclamped(torch.cat([z.detach(), self._prior(n, z)]), cond)
            recon_logits, prior_logits = self.discriminator(self.augment(fakes), cond).chunk(2)
            loss_g = (self.hparams.gamma * self.feature_distance(fakes[:n], target)
                      + _bce(recon_logits, 1.0) + _bce(prior_logits, 1.0))
            self._step(opt_g, loss_g)
        # 3. discriminator: log D(x) + log(1 - D(x~)) + log(1 - D(x_p)), the paper's L_GAN
        fakes = fakes.detach()
        with self.toggled_optimizer(opt_d):
            logits = self.discriminator(self.augment(torch.cat([image, fakes])),
                                        torch.cat([labels, cond]) if labels is not None else None)
            real_logits, recon_logits, prior_logits = logits.split(n)
            loss_d = _bce(real_logits, 1.0) + _bce(recon_logits, 0.0) + _bce(prior_logits, 0.0)
            self._step(opt_d, loss_d)
        return {"loss_e": loss_e.detach(), "loss_g": loss_g.detach(), "loss_d": loss_d.detach(),
                "kl": kl.detach(), "feature_recon": feature_recon.detach(),
                "recon": F.mse_loss(fakes[:n].float(), image.float())}


@register_generator("introvae")
class IntroVAE(AdversarialVAE):
    """IntroVAE (Huang et al. 2018): the encoder is the discriminator, scoring an image by the KL
    ``L_REG`` of its posterior - low for real images, at least ``margin`` for generated ones.

    Per batch, with ``x_r = Dec(z)``, ``z ~ q(z | x)`` and ``x_p = Dec(z_p)``, ``z_p ~ N(0, I)``:

    * encoder: ``beta * L_REG(x) + alpha * ([m - L_REG(x_r)]+ + [m - L_REG(x_p)]+) + recon_weight *
      L_AE``, with ``x_r`` and ``x_p`` detached (the paper's ``ng``);
    * decoder (after the encoder's update, as in the paper's Algorithm 1): ``alpha * (L_REG(x_r) +
      L_REG(x_p)) + recon_weight * L_AE``.

    ``L_AE`` is half the squared error per image element, ``L_REG`` the KL per image element (see
    the module docstring): the paper's sums divided by the image's element count, so ``alpha`` and
    ``recon_weight`` play the paper's alpha and beta (``beta`` is taken: it is the VAE's KL weight on
    real images, 1 in the paper). How they balance depends on latent elements per pixel, which the
    paper's 512-d latents at 256x256 (0.003) and this library's spatial latents (0.25 with the VAE
    defaults) do not share, so the defaults are ours: ``alpha=0.25`` as in the paper,
    ``recon_weight=2`` (``2 * L_AE`` is the MSE of the plain VAE, whose KL-vs-reconstruction balance
    the latents are sized for; the paper's 0.5 would be a beta-VAE with beta 4), and ``margin=0.05``
    (the paper's m = 110 nats for 512 latents is 0.21 nats per latent element, 0.05 per pixel at 0.25
    latents per pixel). Keep ``margin`` above the ``train/kl`` of real images, so the encoder can
    push generated images beyond it. Logs ``train/loss_e``, ``train/loss_g``, ``train/kl``,
    ``train/kl_rec``, ``train/kl_fake``, ``train/recon`` (``L_AE``) and ``train/loss``
    (= ``loss_g``); 2 optimiser steps per batch.

    Args:
        alpha: weight of the adversarial (KL) terms (the paper's alpha; 0 gives a plain VAE).
        recon_weight: weight of ``L_AE`` (the paper's beta).
        margin: the hinge margin ``m``, in nats per image element.
        lr: Adam learning rate of both networks (paper: 2e-4 with betas (0.9, 0.999)).
        **kwargs: see :class:`AdversarialVAE` and :class:`VAE`.
    """

    def __init__(self, alpha: float = 0.25, recon_weight: float = 2.0, margin: float = 0.05, lr: float = 2e-4,
                 beta1: float = 0.9, **kwargs: Any):
        super().__init__(lr=lr, beta1=beta1, **kwargs)
        if alpha < 0:
            raise ValueError(f"alpha must be 0 or positive, got {alpha}")
        if recon_weight <= 0:
            raise ValueError(f"recon_weight must be positive (the reconstruction anchors the VAE), got {recon_weight}")
        if margin <= 0:
            raise ValueError(f"margin must be positive (nats per image element, above the KL of real images), "
                             f"got {margin}")

    def kl_of(self, images: Tensor, labels: Tensor | None) -> Tensor:
        """``L_REG``: the KL of the encoder's posterior of each image, shape (n,)."""
        return kl_per_sample(*self.posterior(images, labels), self._image_elements)

    def adversarial_step(self, image: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        opt_e, opt_g = self.optimizers()
        hp, n = self.hparams, image.shape[0]
        cond = torch.cat([labels, labels]) if labels is not None else None  # for [reconstructions, samples]
        # encoder: real images low, (detached) reconstructions and prior samples above the margin
        with self.toggled_optimizer(opt_e):
            z, kl_real = self._reparameterise(image, labels)
            z_prior = self._prior(n, z)
            recon = self._decode_unclamped(z, labels)  # decoder frozen: L_AE reaches the encoder via z
            l_ae = 0.5 * reconstruction_loss(recon, image, "mse")
            with torch.no_grad():
                prior_images = self._decode_unclamped(z_prior, labels)
            kl_rec, kl_fake = self.kl_of(torch.cat([recon.detach(), prior_images]), cond).chunk(2)
            hinge = F.relu(hp.margin - kl_rec) + F.relu(hp.margin - kl_fake)
            loss_e = self.kl_weight() * kl_real.mean() + hp.alpha * hinge.mean() + hp.recon_weight * l_ae
            self._step(opt_e, loss_e)
        # decoder: have the updated encoder score its outputs as real (low KL), and reconstruct
        with self.toggled_optimizer(opt_g):
            fakes = self._decode_unclamped(torch.cat([z.detach(), z_prior]), cond)
            adversarial = self.kl_of(fakes, cond).view(2, n).sum(0).mean()
            loss_g = hp.alpha * adversarial + hp.recon_weight * 0.5 * reconstruction_loss(fakes[:n], image, "mse")
            self._step(opt_g, loss_g)
        return {"loss_e": loss_e.detach(), "loss_g": loss_g.detach(), "kl": kl_real.mean().detach(),
                "kl_rec": kl_rec.mean().detach(), "kl_fake": kl_fake.mean().detach(), "recon": l_ae.detach()}
