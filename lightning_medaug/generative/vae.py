"""Variational autoencoders: VAE, conditional VAE and beta-VAE on MONAI's ``AutoencoderKL``.

* VAE (Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014): maximise the ELBO with
  the reparameterisation trick; sample by decoding ``z ~ N(0, I)``.
* Conditional VAE (Sohn et al., "Learning Structured Output Representation using Deep Conditional
  Generative Models", NeurIPS 2015): the class label conditions both the encoder and the decoder.
  Every :class:`VAE` with ``num_classes > 0`` is conditional; :class:`ConditionalVAE` is the
  registered name that insists on it.
* beta-VAE (Higgins et al., "beta-VAE: Learning Basic Visual Concepts with a Constrained
  Variational Framework", ICLR 2017): the same model with the KL term weighted by ``beta > 1``.

:class:`AutoencoderModule` is the shared base of the autoencoder families (also the VQ-VAE): one
training/validation/test step, Adam, and the first-stage interface used by latent diffusion:
``encode(x) -> latent`` (deterministic), ``decode(z) -> image`` and ``latent_shape``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets import AutoencoderKL
from torch import Tensor, nn

from lightning_medaug.data.batch import unpack_batch
from lightning_medaug.generative.base import SharedStepModule
from lightning_medaug.generative.shapes import crop_to, pad_to, padded_size
from lightning_medaug.registry import register_generator
from lightning_medaug.sizes import SizeLike
from lightning_medaug.validation import (
    check_at_least,
    check_channels,
    check_choice,
    check_non_negative,
    check_positive,
)

__all__ = ["RECON_LOSSES", "VAE", "AutoencoderModule", "BetaVAE", "ConditionalVAE"]

#: Reconstruction losses, computed in the data's [-1, 1] space: "mse" is a Gaussian decoder with
#: fixed variance 1/2, "l1" a Laplace decoder with scale 1 (Kingma & Welling 2014, appendix C).
RECON_LOSSES = ("mse", "l1")


def reconstruction_loss(recon: Tensor, image: Tensor, kind: str) -> Tensor:
    """Per-element reconstruction error (mean over all elements), in float32 for bf16 safety."""
    recon, image = recon.float(), image.float()
    return F.mse_loss(recon, image) if kind == "mse" else F.l1_loss(recon, image)


class AutoencoderModule(SharedStepModule):
    """Base of generators built on an autoencoder; subclasses implement :meth:`loss_terms`,
    :meth:`encode`, :meth:`decode`, :attr:`latent_shape` and :meth:`sample`.

    Every stage (train/val/test) runs the same step and logs ``{stage}/loss`` plus each loss
    component (``{stage}/recon``, ``{stage}/kl`` or ``{stage}/vq``).
    """

    def _labels_for(self, label: Tensor | None) -> Tensor | None:
        if self.num_classes == 0:
            return None
        if label is None:
            raise ValueError(
                f"{type(self).__name__} has num_classes={self.num_classes} and needs a 'label' in every batch; "
                "use a data module with labels or set num_classes=0"
            )
        return label.to(self.device)

    def loss_terms(self, image: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        """The loss (key ``"loss"``) and its components for one batch."""
        raise NotImplementedError

    def _shared_step(self, batch: Any, stage: str) -> Tensor:
        image, label, _ = unpack_batch(batch)
        terms = self.loss_terms(image, self._labels_for(label))
        self.log_terms(stage, terms, image.shape[0])
        return terms["loss"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.hparams.lr)

    # -- first-stage interface (latent diffusion) -----------------------------------------------
    def set_downsampling(self, factor: int) -> None:
        """The encoder divides every side by ``factor``: images are padded to multiples of it."""
        self.downsample_factor = factor
        self.network_size = padded_size(self.spatial_size, factor)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one latent: (latent_channels, *latent_spatial), the padded grid over the factor."""
        return (self.hparams.latent_channels,) + tuple(s // self.downsample_factor for s in self.network_size)

    def encode(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Deterministic latent of images ``x`` in [-1, 1], shape ``(n, *latent_shape)``."""
        raise NotImplementedError

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Images in [-1, 1] from latents ``z`` of shape ``(n, *latent_shape)``."""
        raise NotImplementedError


@register_generator("vae")
class VAE(AutoencoderModule):
    """Variational autoencoder (Kingma & Welling 2014) on MONAI's ``AutoencoderKL``, 2D or 3D.

    The loss is the negative ELBO per image element: ``recon + beta_t * kl`` where ``recon`` is the
    mean squared (``"mse"``) or absolute (``"l1"``) error in [-1, 1] space and ``kl`` is
    ``KL(q(z|x) || N(0, I))`` summed over latent elements and divided by the number of image
    elements, so both terms share one scale at any resolution. ``beta_t`` ramps linearly from 0 to
    ``beta`` over ``kl_warmup_steps`` optimizer steps (KL warm-up, Bowman et al. 2016).

    With ``num_classes > 0`` the model is a conditional VAE (Sohn et al. 2015): a learned label
    embedding of ``cond_channels`` values is broadcast over space and concatenated to the encoder's
    input image and to the decoder's latent (then mixed back to ``latent_channels`` by a 1x1 conv).

    Args:
        spatial_dims, in_channels, image_size, num_classes: see :class:`GenerativeModule`.
        latent_channels: channels of the spatial latent.
        channels: feature channels per level; the image is downsampled ``len(channels) - 1`` times,
            other sizes padded inside to multiples of ``2 ** (len(channels) - 1)`` and cropped back.
        num_res_blocks: residual blocks per level.
        norm_num_groups: GroupNorm groups; every entry of ``channels`` must be divisible by it.
        cond_channels: size of the label embedding (conditional models only).
        beta: weight of the KL term (1 is the ELBO).
        kl_warmup_steps: steps over which the KL weight ramps from 0 to ``beta``; 0 disables.
        recon_loss: ``"mse"`` or ``"l1"``.
        lr: Adam learning rate.
        gradient_checkpointing: recompute the encoder's and decoder's activations in the backward
            pass (MONAI's ``use_checkpoint``): less memory for large images or volumes, more time.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, image_size: SizeLike = 32, num_classes: int = 0,
                 latent_channels: int = 4, channels: Sequence[int] = (32, 64, 64), num_res_blocks: int = 1,
                 norm_num_groups: int = 16, cond_channels: int = 8, beta: float = 1.0, kl_warmup_steps: int = 0,
                 recon_loss: str = "mse", lr: float = 1e-3, gradient_checkpointing: bool = False):
        super().__init__(spatial_dims, in_channels, image_size, num_classes)
        self.save_hyperparameters()
        channels = tuple(int(c) for c in channels)
        _check_vae_args(channels, latent_channels, num_res_blocks, norm_num_groups, cond_channels, beta,
                        kl_warmup_steps, recon_loss, lr)
        self.set_downsampling(2 ** (len(channels) - 1))
        cond = cond_channels if num_classes > 0 else 0
        self.autoencoder = AutoencoderKL(
            spatial_dims=spatial_dims, in_channels=in_channels + cond, out_channels=in_channels, channels=channels,
            latent_channels=latent_channels, num_res_blocks=num_res_blocks, attention_levels=(False,) * len(channels),
            norm_num_groups=norm_num_groups, with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False,
            use_checkpoint=gradient_checkpointing,
        )
        self.label_embedding = nn.Embedding(num_classes, cond_channels) if num_classes > 0 else None
        self.latent_condition = (
            Convolution(spatial_dims, latent_channels + cond_channels, latent_channels, kernel_size=1, conv_only=True)
            if num_classes > 0 else None
        )

    # -- networks --------------------------------------------------------------------------------
    def _with_condition(self, x: Tensor, labels: Tensor | None) -> Tensor:
        """Concatenate the broadcast label embedding to ``x`` along channels (conditional models)."""
        if self.label_embedding is None:
            return x
        if labels is None:
            raise ValueError(f"{type(self).__name__} is class-conditional: pass labels (int64, one per image)")
        emb = self.label_embedding(labels.to(x.device).long()).to(x.dtype)
        emb = emb.view(*emb.shape, *([1] * self.spatial_dims)).expand(-1, -1, *x.shape[2:])
        return torch.cat([x, emb], dim=1)

    def posterior(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation of ``q(z | x, y)``; ``x`` may also be a patch smaller than the
        images (the networks are convolutional), padded like them to a multiple of the downsampling."""
        x = pad_to(x, padded_size(x.shape[2:], self.downsample_factor))  # the network grid for whole images
        return self.autoencoder.encode(self._with_condition(x, labels))

    def _decode_unclamped(self, z: Tensor, labels: Tensor | None, size: Sequence[int] | None = None) -> Tensor:
        """Decoded ``z`` cut to ``size`` (default: the images' size; a patch's for a patch's latent)."""
        if self.latent_condition is not None:
            z = self.latent_condition(self._with_condition(z, labels))
        return crop_to(self.autoencoder.decode(z), size or self.spatial_size)

    def encode(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """The posterior mean (deterministic); conditional models need ``labels``."""
        return self.posterior(x, labels)[0]

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Decode latents to images clamped to [-1, 1]; conditional models need ``labels``."""
        return self._decode_unclamped(z, labels).clamp(-1.0, 1.0)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Reconstruct ``x`` through the posterior mean."""
        return self.decode(self.encode(x, labels), labels)

    # -- training ---------------------------------------------------------------------------------
    def kl_weight(self) -> float:
        """``beta``, ramped linearly over the first ``kl_warmup_steps`` optimizer steps."""
        warmup = self.hparams.kl_warmup_steps
        if warmup <= 0:
            return float(self.hparams.beta)
        return float(self.hparams.beta) * min(1.0, (self.global_step + 1) / warmup)

    def loss_terms(self, image: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        mu, sigma = self.posterior(image, labels)
        z = mu + sigma * torch.randn_like(sigma)  # reparameterisation trick
        recon = reconstruction_loss(self._decode_unclamped(z, labels, image.shape[2:]), image, self.hparams.recon_loss)
        mu, sigma = mu.float(), sigma.float()
        # KL(N(mu, sigma^2) || N(0, 1)), summed over latent elements, per image element.
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - 2.0 * torch.log(sigma) - 1.0).sum() / image.numel()
        return {"loss": recon + self.kl_weight() * kl, "recon": recon, "kl": kl}

    @torch.inference_mode()
    def sample(self, n: int, labels: Tensor | None = None, masks: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Decode ``z ~ N(0, I)`` of :attr:`latent_shape`; images in [-1, 1]."""
        labels, _ = self.check_sample_args(n, labels, masks, generator)
        z = self.draw_noise((n, *self.latent_shape), generator)
        return self.decode(z.to(self.dtype), labels).float()  # float32 even under autocast


@register_generator("cvae")
class ConditionalVAE(VAE):
    """Class-conditional VAE (Sohn et al. 2015); a :class:`VAE` that requires ``num_classes >= 1``.

    Takes every argument of :class:`VAE`.
    """

    def __init__(self, num_classes: int = 0, **kwargs: Any):
        if num_classes < 1:
            raise ValueError(
                f"ConditionalVAE needs num_classes >= 1 (the number of classes to condition on), got {num_classes}; "
                "use 'vae' for an unconditional model"
            )
        super().__init__(num_classes=num_classes, **kwargs)


@register_generator("beta_vae")
class BetaVAE(VAE):
    """beta-VAE (Higgins et al. 2017): a :class:`VAE` whose KL weight defaults to ``beta=4``,
    trading reconstruction detail for a smoother, more factorised latent space.

    Takes every argument of :class:`VAE`.
    """

    def __init__(self, beta: float = 4.0, **kwargs: Any):
        super().__init__(beta=beta, **kwargs)


def _check_vae_args(channels: tuple[int, ...], latent_channels: int, num_res_blocks: int, norm_num_groups: int,
                    cond_channels: int, beta: float, kl_warmup_steps: int, recon_loss: str, lr: float) -> None:
    check_channels(channels)
    if norm_num_groups < 1 or any(c % norm_num_groups for c in channels):
        raise ValueError(f"every entry of channels={list(channels)} must be divisible by "
                         f"norm_num_groups={norm_num_groups}")
    check_at_least(1, latent_channels=latent_channels, num_res_blocks=num_res_blocks, cond_channels=cond_channels)
    check_non_negative(beta=beta, kl_warmup_steps=kl_warmup_steps)
    check_choice("recon_loss", recon_loss, RECON_LOSSES)
    check_positive(lr=lr)
