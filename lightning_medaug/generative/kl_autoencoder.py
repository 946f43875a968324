"""The first stage of latent diffusion: a KL-regularised autoencoder trained with a patch
adversarial loss (and optionally a perceptual loss), as in Rombach et al. 2022 ("High-Resolution
Image Synthesis with Latent Diffusion Models", after Esser et al. 2021, "Taming Transformers")
and MONAI's generative tutorials.

The networks are MONAI's: ``AutoencoderKL`` (through :class:`~.vae.VAE`, so ``encode``,
``decode``, ``latent_shape`` and label conditioning are the VAE's), ``PatchDiscriminator`` and
``PatchAdversarialLoss``; the perceptual loss is MONAI's ``PerceptualLoss``, built only when
``perceptual_weight > 0``, in :meth:`KLAutoencoder.setup` (never at import or construction), because
its networks need pretrained weights from the internet.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator
from torch import Tensor, nn

from lightning_medaug.data.batch import unpack_batch
from lightning_medaug.downloads import DownloadError
from lightning_medaug.generative.adversarial_vae import kl_per_sample
from lightning_medaug.generative.gan import manual_step
from lightning_medaug.generative.shapes import random_patches
from lightning_medaug.generative.vae import VAE, reconstruction_loss
from lightning_medaug.registry import register_generator
from lightning_medaug.sizes import SizeLike, spatial_size
from lightning_medaug.validation import check_at_least, check_choice, check_non_negative, check_positive

__all__ = ["PERCEPTUAL_NETWORKS", "KLAutoencoder", "patch_discriminator_layers"]

#: MONAI ``PerceptualLoss`` networks: the 2D ones also serve 3D as "2.5D" slices (``is_fake_3d``).
PERCEPTUAL_NETWORKS = ("alex", "vgg", "squeeze", "radimagenet_resnet50", "medicalnet_resnet10_23datasets",
                       "medicalnet_resnet50_23datasets")
_MAX_DISCRIMINATOR_LAYERS = 3  # MONAI's default depth; 70x70 receptive field in 2D


def patch_discriminator_layers(size: tuple[int, ...], requested: int | None) -> int:
    """Strided layers of a MONAI ``PatchDiscriminator`` (kernel 4, padding 1) for images of ``size``.

    Its initial conv and ``layers - 1`` more halve every side and its last two convs take one
    off each, so the smallest side must be at least ``3 * 2 ** layers`` for a 1-voxel output.
    ``None`` picks the most layers up to 3 that fit.
    """
    if requested is not None:
        check_at_least(1, discriminator_layers=requested)
    fits = [n for n in range(1, max(_MAX_DISCRIMINATOR_LAYERS, requested or 0) + 1) if min(size) // 2 ** n >= 3]
    if not fits:
        raise ValueError(f"a training size of {size} is too small for a patch discriminator: every side must be "
                         "at least 6 (raise patch_size or image_size)")
    if requested is None:
        return min(fits[-1], _MAX_DISCRIMINATOR_LAYERS)
    if requested not in fits:
        raise ValueError(f"discriminator_layers={requested} needs every side trained on to be at least "
                         f"{3 * 2 ** requested}, got {size}: use at most {fits[-1]} or None")
    return requested


@register_generator("kl_autoencoder")
class KLAutoencoder(VAE):
    """KL-regularised autoencoder with a patch GAN loss: the first stage of ``"ldm"`` above ~64 px.

    Per batch (manual optimisation, MONAI's tutorial recipe):

    1. autoencoder: ``recon + beta * kl + perceptual_weight * perceptual + adversarial_weight * adv``,
       with ``recon`` the L1 (default) error, ``kl`` the VAE's KL per image element (small
       ``beta``: it only keeps the latents at a tame scale, so ``sample()`` decoding ``N(0, I)``
       is a rough prior sample; train ``"ldm"`` on :meth:`encode` for real samples) and ``adv``
       the least-squares patch GAN loss asking the discriminator to call reconstructions real;
    2. discriminator (once ``adversarial_start_step`` is reached): real images vs reconstructions.

    With ``patch_size`` the training step cuts one random patch from each image (the networks are
    convolutional, so the model still encodes and decodes whole images): activations, and so
    memory and time per step, shrink with the patch, for images or volumes too large to train
    whole; validation runs on whole images. Batches already of ``patch_size`` (e.g. from a TorchIO
    queue, :class:`~lightning_medaug.data.patch_queue.PatchQueueDataModule`) are used as they are.

    The adversarial terms start after ``adversarial_start_step`` steps (Lightning's
    ``global_step``, which counts both optimisers' steps once both run): a discriminator facing
    a blurry early autoencoder wins at once and its gradients only add noise. Logs
    ``train/recon``, ``train/kl``, ``train/loss_g`` (= ``train/loss``), ``train/adv_g``,
    ``train/loss_d`` and ``train/perceptual`` when used. Validation and test run the VAE's step
    (``recon + beta * kl``), a fair checkpoint criterion. Under DDP use
    ``strategy="ddp_find_unused_parameters_true"`` (each backward reaches one network).

    Args:
        beta: KL weight, per image element (see :class:`~.vae.VAE`). Rombach et al.'s 1e-6 on a
            KL summed over the latent is ``1e-6 * pixels`` here: 0.004 at 64x64, 0.07 at 256x256.
        recon_loss: ``"l1"`` (default, as in the paper) or ``"mse"``.
        adversarial_weight: weight of the generator's patch GAN loss; 0 disables the discriminator.
        adversarial_start_step: ``global_step`` from which the adversarial terms are on.
        discriminator_channels: width of the discriminator's first layer (doubled per layer).
        discriminator_layers: strided layers; ``None`` picks up to 3 from the size trained on
            (``patch_size``, else ``image_size``).
        perceptual_weight: weight of MONAI's perceptual loss (LPIPS-like); 0 (the default) leaves it
            out. Its network's pretrained weights are downloaded at ``setup``: keep it 0 offline.
        perceptual_network: MONAI's ``network_type`` (one of :data:`PERCEPTUAL_NETWORKS`).
        lr_d: Adam learning rate of the discriminator (``lr`` is the autoencoder's).
        patch_size: train on random patches of this size (one int or one per axis, at most the
            image's); ``None`` trains on whole images.
        gradient_clip_val: clip each network's gradient norm to this value; ``None`` disables it
            (``Trainer(gradient_clip_val=...)`` does not apply under manual optimisation).
        **kwargs: the :class:`~.vae.VAE`'s arguments (``gradient_checkpointing`` among them).
    """

    training_only_modules = ("discriminator", "perceptual")

    def __init__(self, beta: float = 1e-3, recon_loss: str = "l1", adversarial_weight: float = 0.01,
                 adversarial_start_step: int = 0, discriminator_channels: int = 32,
                 discriminator_layers: int | None = None, perceptual_weight: float = 0.0,
                 perceptual_network: str = "radimagenet_resnet50", lr: float = 1e-4, lr_d: float = 5e-4,
                 patch_size: SizeLike | None = None, gradient_clip_val: float | None = None, **kwargs: Any):
        super().__init__(beta=beta, recon_loss=recon_loss, lr=lr, **kwargs)
        check_non_negative(adversarial_weight=adversarial_weight, adversarial_start_step=adversarial_start_step,
                           perceptual_weight=perceptual_weight)
        check_positive(lr_d=lr_d)
        if gradient_clip_val is not None:
            check_positive(gradient_clip_val=gradient_clip_val)
        check_at_least(1, discriminator_channels=discriminator_channels)
        check_choice("perceptual_network", perceptual_network, PERCEPTUAL_NETWORKS)
        self.automatic_optimization = False
        #: the size the training step sees: a patch, or the whole image
        self.training_size = self.spatial_size if patch_size is None else spatial_size(patch_size, self.spatial_dims)
        if any(p > s for p, s in zip(self.training_size, self.spatial_size)):
            raise ValueError(f"patch_size {self.training_size} must not exceed image_size {self.spatial_size}")
        layers = patch_discriminator_layers(self.training_size, discriminator_layers)
        self.discriminator = (
            PatchDiscriminator(self.spatial_dims, discriminator_channels, self.in_channels, num_layers_d=layers)
            if adversarial_weight > 0 else None
        )
        self.adversarial_loss = PatchAdversarialLoss(criterion="least_squares")
        self.perceptual: nn.Module | None = None  # built in setup(): it needs downloaded weights

    # -- perceptual loss -------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.perceptual_weight > 0 and self.perceptual is None:
            self.perceptual = build_perceptual_loss(self.spatial_dims, self.hparams.perceptual_network)

    # -- training ----------------------------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        ae = [p for name, p in self.named_parameters() if not name.startswith(("discriminator.", "perceptual."))]
        optimizers = [torch.optim.Adam(ae, lr=self.hparams.lr)]
        if self.discriminator is not None:
            optimizers.append(torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.lr_d))
        return optimizers

    def _patch_logits(self, images: Tensor) -> Tensor:
        return self.discriminator(images.contiguous())[-1].float()  # MONAI returns every layer's output

    def _training_images(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        """A training batch's images at ``training_size``: whole images are cut here, patches
        (from :class:`~lightning_medaug.data.patch_queue.PatchQueueDataModule`) pass as they are."""
        image, label, _ = unpack_batch(batch)
        if self.training_size != self.spatial_size and tuple(image.shape[2:]) == self.training_size:
            return image, self._labels_for(label)
        image, labels = self.read_batch(batch)
        if self.training_size != self.spatial_size:
            image = random_patches(image, self.training_size)
        return image, labels

    def training_step(self, batch: Any, batch_idx: int) -> None:
        image, labels = self._training_images(batch)
        hp = self.hparams
        optimizers = self.optimizers()
        opt_g = optimizers[0] if isinstance(optimizers, list) else optimizers
        adversarial = self.discriminator is not None and self.global_step >= hp.adversarial_start_step
        terms: dict[str, Tensor] = {}
        with self.toggled_optimizer(opt_g):
            mu, sigma = self.posterior(image, labels)
            recon_image = self._decode_unclamped(mu + sigma * torch.randn_like(sigma), labels, self.training_size)
            terms["recon"] = reconstruction_loss(recon_image, image, hp.recon_loss)
            terms["kl"] = kl_per_sample(mu, sigma, image[0].numel()).mean()
            loss = terms["recon"] + hp.beta * terms["kl"]
            if self.perceptual is not None:
                terms["perceptual"] = self.perceptual(recon_image.float(), image.float())
                loss = loss + hp.perceptual_weight * terms["perceptual"]
            if adversarial:
                terms["adv_g"] = self.adversarial_loss(self._patch_logits(recon_image), target_is_real=True,
                                                       for_discriminator=False)
                loss = loss + hp.adversarial_weight * terms["adv_g"]
            manual_step(self, opt_g, loss, hp.gradient_clip_val)
        terms["loss_g"] = loss
        if adversarial:
            opt_d = optimizers[1]
            with self.toggled_optimizer(opt_d):
                fake = self.adversarial_loss(self._patch_logits(recon_image.detach()), target_is_real=False,
                                             for_discriminator=True)
                real = self.adversarial_loss(self._patch_logits(image), target_is_real=True, for_discriminator=True)
                terms["loss_d"] = 0.5 * (fake + real)
                manual_step(self, opt_d, terms["loss_d"], hp.gradient_clip_val)
        # ``train/loss`` is the autoencoder's loss, as for the GANs: what FiniteLossGuard watches.
        self.log_terms("train", {k: v.detach() for k, v in terms.items()} | {"loss": loss.detach()}, image.shape[0])


def build_perceptual_loss(spatial_dims: int, network: str) -> nn.Module:
    """MONAI's frozen ``PerceptualLoss``; a :class:`DownloadError` naming the fix when its weights cannot be had."""
    from monai.losses import PerceptualLoss

    three_d_native = network.startswith("medicalnet")
    if three_d_native and spatial_dims != 3:
        raise ValueError(f"perceptual_network={network!r} is a 3D network: use it with spatial_dims=3, "
                         "or a 2D one such as 'radimagenet_resnet50'")
    try:
        loss = PerceptualLoss(spatial_dims, network_type=network, is_fake_3d=spatial_dims == 3 and not three_d_native)
    except Exception as err:  # noqa: BLE001 - hub, lpips and urllib raise many types; all mean "no weights"
        raise DownloadError(f"the perceptual loss {network!r} needs pretrained weights that could not be loaded "
                            f"({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}); set "
                            "perceptual_weight=0, or fetch the weights once where the internet is reachable "
                            "(torch hub cache)") from None
    return loss.eval().requires_grad_(False)
