"""Mask -> image translation with pix2pix (Isola et al. 2017), 2D and 3D.

A U-Net generator maps a segmentation mask (plus an optional noise channel) to an image; a
PatchGAN discriminator judges (mask, image) pairs patch by patch; the generator minimises the
adversarial loss plus ``l1_weight`` x the L1 distance to the paired real image. Sampling is
``sample(n, masks=m)``: one image aligned with each mask, so a synthetic bank gets masks for
free (the masks come from the real data or from a mask generator).

pix2pix is nearly deterministic given the mask: Isola et al. found the generator learns to
ignore input noise, so the diversity of a bank comes from the diversity of its masks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_medaug.data.batch import unpack_batch
from lightning_medaug.generative.base import GenerativeModule
from lightning_medaug.generative.gan import manual_step
from lightning_medaug.generative.gan_networks import PatchGAN, unet_generator
from lightning_medaug.registry import register_generator
from lightning_medaug.sizes import SizeLike
from lightning_medaug.validation import check_adam_betas, check_at_least, check_non_negative, check_positive

__all__ = ["Pix2Pix"]


@register_generator("pix2pix")
class Pix2Pix(GenerativeModule):
    """pix2pix: U-Net generator + PatchGAN discriminator + L1 (Isola et al. 2017).

    Trained on batches with ``"image"`` and ``"mask"`` entries (any layout :func:`unpack_batch`
    reads). Logs ``train/loss_d``, ``train/loss_g`` (adversarial + weighted L1), ``train/loss``
    (= ``train/loss_g``), ``train/l1`` and, when validating, ``val/l1``. ``global_step`` counts
    the D and the G step; under DDP use ``strategy="ddp_find_unused_parameters_true"``.

    Args:
        spatial_dims, in_channels, image_size: see :class:`GenerativeModule`.
        num_classes: must be 0; pix2pix is conditioned on masks, not labels.
        generator_channels: width of the U-Net's first level; level ``i`` has ``channels * 2**i``.
        generator_levels: U-Net depth; sizes are padded inside to multiples of ``2**(levels - 1)``,
            which must leave at least 2 on every axis.
        num_res_units: residual units per U-Net level; >= 1 adds 3x3 convolutions after each
            transposed convolution, which smooths its checkerboard artefacts.
        discriminator_channels: width of the PatchGAN's first layer.
        discriminator_layers: strided PatchGAN layers; ``None`` chooses up to 3 (70x70 patches).
        dropout: U-Net dropout during training (Isola: 0.5 in the decoder).
        noise_channel: feed a Gaussian noise channel next to the mask; drawn from ``sample``'s
            ``generator``.
        l1_weight: weight of the L1 term (Isola: 100).
        lr, beta1, beta2: Adam settings shared by both networks (Isola: 2e-4, (0.5, 0.999)).
        gradient_clip_val: clip each network's gradient norm; ``None`` disables it.
    """

    training_only_modules = ("discriminator",)

    requires_masks = True

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, image_size: SizeLike = 256, num_classes: int = 0,
                 generator_channels: int = 32, generator_levels: int = 4, num_res_units: int = 1,
                 discriminator_channels: int = 64, discriminator_layers: int | None = None, dropout: float = 0.0,
                 noise_channel: bool = False, l1_weight: float = 100.0, lr: float = 2e-4, beta1: float = 0.5,
                 beta2: float = 0.999, gradient_clip_val: float | None = None):
        super().__init__(spatial_dims, in_channels, image_size, num_classes)
        self.save_hyperparameters()
        if num_classes != 0:
            raise ValueError(f"Pix2Pix is conditioned on masks, not labels: set num_classes=0, got {num_classes}")
        check_at_least(1, generator_channels=generator_channels, discriminator_channels=discriminator_channels)
        check_non_negative(l1_weight=l1_weight)
        check_positive(lr=lr, **({} if gradient_clip_val is None else {"gradient_clip_val": gradient_clip_val}))
        check_adam_betas(beta1, beta2)
        self.automatic_optimization = False
        self.generator = unet_generator(spatial_dims, 1 + int(noise_channel), in_channels, self.spatial_size,
                                        generator_channels, generator_levels, dropout, num_res_units)
        # The discriminator sees the mask and the image stacked as channels (a conditional GAN).
        self.discriminator = PatchGAN(spatial_dims, 1 + in_channels, self.spatial_size, discriminator_channels,
                                      discriminator_layers)

    def translate(self, masks: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Run the generator on ``masks`` (N, 1, *spatial), with the noise channel when enabled."""
        inputs = masks
        if self.hparams.noise_channel:
            device = generator.device if generator is not None else masks.device
            noise = torch.randn(masks.shape, generator=generator, device=device).to(masks.device, masks.dtype)
            inputs = torch.cat([masks, noise], dim=1)
        return self.generator(inputs)

    # -- training ---------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        betas = (hp.beta1, hp.beta2)
        return [torch.optim.Adam(self.generator.parameters(), lr=hp.lr, betas=betas),
                torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr, betas=betas)]

    def _read_batch(self, batch: Any) -> tuple[Tensor, Tensor]:
        images, _, masks = unpack_batch(batch)
        if masks is None:
            raise ValueError("Pix2Pix trains on (image, mask) pairs: the batches need a 'mask' entry")
        if tuple(images.shape[1:]) != self.image_shape or tuple(masks.shape[1:]) != self.mask_shape:
            raise ValueError(
                f"Pix2Pix expects images {self.image_shape} and masks {self.mask_shape} per sample, got "
                f"{tuple(images.shape[1:])} and {tuple(masks.shape[1:])}: set spatial_dims, in_channels and image_size"
            )
        return images, masks.to(images.dtype)

    def _adversarial(self, logits: Tensor, real: bool) -> Tensor:
        target = torch.ones_like(logits) if real else torch.zeros_like(logits)
        return F.binary_cross_entropy_with_logits(logits, target)

    def _step(self, optimizer: Any, loss: Tensor) -> None:
        manual_step(self, optimizer, loss, self.hparams.gradient_clip_val)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        images, masks = self._read_batch(batch)
        opt_g, opt_d = self.optimizers()
        fake = self.translate(masks)
        # D step on detached fakes; halved as in Isola 2017, to slow D relative to G.
        self.toggle_optimizer(opt_d)
        d_real = self.discriminator(torch.cat([masks, images], dim=1))
        d_fake = self.discriminator(torch.cat([masks, fake.detach()], dim=1))
        loss_d = 0.5 * (self._adversarial(d_real, True) + self._adversarial(d_fake, False))
        self._step(opt_d, loss_d)
        self.untoggle_optimizer(opt_d)
        # G step: fool the updated D, and stay close to the paired image.
        self.toggle_optimizer(opt_g)
        l1 = F.l1_loss(fake.float(), images.float())
        loss_g = self._adversarial(self.discriminator(torch.cat([masks, fake], dim=1)), True)
        loss_g = loss_g + self.hparams.l1_weight * l1
        self._step(opt_g, loss_g)
        self.untoggle_optimizer(opt_g)
        self.log_terms("train", {"loss_d": loss_d, "loss_g": loss_g, "l1": l1, "loss": loss_g}, masks.shape[0],
                       prog_bar=("loss_d", "loss_g", "l1"))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, masks = self._read_batch(batch)
        self.log("val/l1", F.l1_loss(self.translate(masks).float(), images.float()), prog_bar=True)

    # -- the generator contract --------------------------------------------------------------------
    @torch.inference_mode()
    def sample(self, n: int, labels: Tensor | None = None, masks: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """One image in [-1, 1] per mask: ``masks`` float (n, 1, *spatial) in {0, 1} is required."""
        _, masks = self.check_sample_args(n, labels, masks, generator)
        was_training = self.generator.training
        self.generator.eval()  # no dropout: the same mask and seed give the same image
        try:
            images = self.translate(masks, generator)
        finally:
            self.generator.train(was_training)
        return images.float()
