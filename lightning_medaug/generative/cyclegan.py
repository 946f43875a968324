"""Unpaired domain translation with CycleGAN (Zhu et al. 2017), 2D and 3D.

Two generators (A -> B and B -> A) and two PatchGAN discriminators, trained with the
least-squares GAN objective (Mao et al. 2017), cycle consistency ``|G_ba(G_ab(a)) - a|_1``
(weight ``cycle_weight``, Zhu: 10) and an identity term ``|G_ab(b) - b|_1`` (weight
``identity_weight * cycle_weight``, Zhu: 0.5) that keeps intensities where no change is needed.

**Contract.** A CycleGAN *translates* images; it does not draw images from noise. The main API is
:meth:`CycleGAN.translate` (``direction="a2b"`` or ``"b2a"``). :meth:`CycleGAN.sample` raises a
``ValueError`` pointing there, so a synthetic bank never silently holds something else than it
asked for. To augment with it, translate real images of one domain into the other.

Training batches are dicts ``{"image_a": ..., "image_b": ...}`` of unpaired images, e.g. from
:class:`lightning_medaug.generative.unpaired_data.PhantomDomainsDataModule`.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import chain
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_medaug.generative.base import GenerativeModule
from lightning_medaug.generative.gan import manual_step
from lightning_medaug.generative.gan_networks import PatchGAN, unet_generator
from lightning_medaug.generative.unpaired_data import IMAGE_A_KEY, IMAGE_B_KEY
from lightning_medaug.registry import register_generator
from lightning_medaug.sizes import SizeLike
from lightning_medaug.validation import check_adam_betas, check_at_least, check_non_negative, check_positive

__all__ = ["CycleGAN"]

DIRECTIONS = ("a2b", "b2a")


def _lsgan(logits: Tensor, real: bool) -> Tensor:
    """Least-squares GAN loss (Mao et al. 2017): (D(x) - target)^2, target 1 for real, 0 for fake."""
    return (logits.float() - (1.0 if real else 0.0)).pow(2).mean()


def _discriminator_loss(discriminator: torch.nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """LSGAN loss of one discriminator on detached fakes, halved as in Zhu 2017 to slow D down."""
    return 0.5 * (_lsgan(discriminator(real), True) + _lsgan(discriminator(fake.detach()), False))


@register_generator("cyclegan")
class CycleGAN(GenerativeModule):
    """CycleGAN between domains A and B (Zhu et al. 2017); see the module docstring for the contract.

    Logs ``train/loss_d``, ``train/loss_g``, ``train/loss`` (= ``train/loss_g``),
    ``train/loss_cycle``, ``train/loss_identity`` and, when validating, ``val/loss_cycle``.
    ``global_step`` counts the D and the G step; under DDP use
    ``strategy="ddp_find_unused_parameters_true"``.

    Args:
        spatial_dims, in_channels, image_size: see :class:`GenerativeModule` (both domains share them).
        num_classes: must be 0.
        generator_channels, generator_levels, num_res_units: the two U-Net generators (MONAI ``UNet``).
        discriminator_channels, discriminator_layers: the two PatchGAN discriminators.
        cycle_weight: lambda of the cycle-consistency L1 terms (Zhu: 10).
        identity_weight: identity L1 weight relative to ``cycle_weight`` (Zhu: 0.5); 0 disables it.
        lr, beta1, beta2: Adam settings (Zhu: 2e-4, (0.5, 0.999)).
        gradient_clip_val: clip each optimiser's gradient norm; ``None`` disables it.
    """

    training_only_modules = ("discriminator_a", "discriminator_b")

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, image_size: SizeLike = 32, num_classes: int = 0,
                 generator_channels: int = 32, generator_levels: int = 3, num_res_units: int = 1,
                 discriminator_channels: int = 64, discriminator_layers: int | None = None,
                 cycle_weight: float = 10.0, identity_weight: float = 0.5, lr: float = 2e-4, beta1: float = 0.5,
                 beta2: float = 0.999, gradient_clip_val: float | None = None):
        super().__init__(spatial_dims, in_channels, image_size, num_classes)
        self.save_hyperparameters()
        if num_classes != 0:
            raise ValueError(f"CycleGAN translates between two domains and takes no labels: "
                             f"set num_classes=0, got {num_classes}")
        check_at_least(1, generator_channels=generator_channels, discriminator_channels=discriminator_channels)
        check_non_negative(cycle_weight=cycle_weight, identity_weight=identity_weight)
        check_positive(lr=lr, **({} if gradient_clip_val is None else {"gradient_clip_val": gradient_clip_val}))
        check_adam_betas(beta1, beta2)
        self.automatic_optimization = False

        def generator():
            return unet_generator(spatial_dims, in_channels, in_channels, self.spatial_size, generator_channels,
                                  generator_levels, num_res_units=num_res_units)

        def discriminator():
            return PatchGAN(spatial_dims, in_channels, self.spatial_size, discriminator_channels, discriminator_layers)

        self.generator_ab, self.generator_ba = generator(), generator()
        self.discriminator_a, self.discriminator_b = discriminator(), discriminator()

    # -- the translation API -----------------------------------------------------------------------
    @torch.inference_mode()
    def translate(self, images: Tensor, direction: str = "a2b") -> Tensor:
        """Translate images (N, C, *spatial) in [-1, 1] from one domain to the other.

        Args:
            images: source-domain images, shaped like the training data.
            direction: ``"a2b"`` (domain A -> B, with :class:`PhantomDomainsDataModule`'s default
                MR -> CT) or ``"b2a"``.
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        images = torch.as_tensor(images, device=self.device).float()
        if images.ndim != 2 + self.spatial_dims or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"images must have shape (N, {', '.join(map(str, self.image_shape))}), "
                             f"got {tuple(images.shape)}")
        net = self.generator_ab if direction == "a2b" else self.generator_ba
        was_training = net.training
        net.eval()
        try:
            return net(images).float()
        finally:
            net.train(was_training)

    def sample(self, n: int, labels: Tensor | None = None, masks: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Always raises ``ValueError``: a CycleGAN translates, it does not sample from noise."""
        self.check_sample_args(n, labels, masks, generator)
        raise ValueError(
            "CycleGAN translates images between two domains and does not sample from noise: "
            "call model.translate(images, direction='a2b') (or 'b2a') with real source-domain images"
        )

    # -- training -------------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        betas = (hp.beta1, hp.beta2)
        opt_g = torch.optim.Adam(chain(self.generator_ab.parameters(), self.generator_ba.parameters()),
                                 lr=hp.lr, betas=betas)
        opt_d = torch.optim.Adam(chain(self.discriminator_a.parameters(), self.discriminator_b.parameters()),
                                 lr=hp.lr, betas=betas)
        return [opt_g, opt_d]

    def _read_batch(self, batch: Any) -> tuple[Tensor, Tensor]:
        if not isinstance(batch, Mapping) or IMAGE_A_KEY not in batch or IMAGE_B_KEY not in batch:
            raise ValueError(f"CycleGAN trains on dict batches with {IMAGE_A_KEY!r} and {IMAGE_B_KEY!r} entries "
                             "(see PhantomDomainsDataModule / UnpairedDataset)")
        real_a, real_b = batch[IMAGE_A_KEY], batch[IMAGE_B_KEY]
        for name, x in ((IMAGE_A_KEY, real_a), (IMAGE_B_KEY, real_b)):
            if tuple(x.shape[1:]) != self.image_shape:
                raise ValueError(f"{name} must have shape (N, {', '.join(map(str, self.image_shape))}), got "
                                 f"{tuple(x.shape)}: set spatial_dims, in_channels and image_size to match the data")
        return real_a, real_b

    def cycle_loss(self, real_a: Tensor, real_b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(cycle L1, fake_a, fake_b)`` with gradients, for the generator step and for monitoring."""
        fake_b, fake_a = self.generator_ab(real_a), self.generator_ba(real_b)
        cycle = (F.l1_loss(self.generator_ba(fake_b).float(), real_a.float())
                 + F.l1_loss(self.generator_ab(fake_a).float(), real_b.float()))
        return cycle, fake_a, fake_b

    def _step(self, optimizer: Any, loss: Tensor) -> None:
        manual_step(self, optimizer, loss, self.hparams.gradient_clip_val)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        hp = self.hparams
        real_a, real_b = self._read_batch(batch)
        opt_g, opt_d = self.optimizers()

        self.toggle_optimizer(opt_g)
        cycle, fake_a, fake_b = self.cycle_loss(real_a, real_b)
        adversarial = _lsgan(self.discriminator_b(fake_b), True) + _lsgan(self.discriminator_a(fake_a), True)
        identity = real_a.new_zeros((), dtype=torch.float32)
        if hp.identity_weight > 0:
            identity = (F.l1_loss(self.generator_ab(real_b).float(), real_b.float())
                        + F.l1_loss(self.generator_ba(real_a).float(), real_a.float()))
        loss_g = adversarial + hp.cycle_weight * (cycle + hp.identity_weight * identity)
        self._step(opt_g, loss_g)
        self.untoggle_optimizer(opt_g)

        self.toggle_optimizer(opt_d)
        loss_d = (_discriminator_loss(self.discriminator_a, real_a, fake_a)
                  + _discriminator_loss(self.discriminator_b, real_b, fake_b))
        self._step(opt_d, loss_d)
        self.untoggle_optimizer(opt_d)

        self.log_terms("train", {"loss_g": loss_g, "loss_d": loss_d, "loss_cycle": cycle, "loss_identity": identity,
                                 "loss": loss_g}, real_a.shape[0], prog_bar=("loss_g", "loss_d", "loss_cycle"))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        real_a, real_b = self._read_batch(batch)
        self.log("val/loss_cycle", self.cycle_loss(real_a, real_b)[0], prog_bar=True)
