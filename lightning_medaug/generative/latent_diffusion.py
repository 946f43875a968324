"""Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models"): a DDPM in the latent space of a trained, frozen autoencoder of this library.

The autoencoder (a ``"vae"``, ``"vqvae"`` or any registered generator with ``encode``, ``decode``
and ``latent_shape``) is given as a ``save_pretrained`` folder and kept as a frozen submodule, so
its weights are saved inside the latent diffusion model's own ``model.safetensors``. Its config
is stored in the hyperparameters (``autoencoder_config``), so :func:`load_generator` rebuilds the
whole model from the LDM's folder alone: the autoencoder's original folder may be gone.

Mask-conditional models (``mask_conditional=True``, mask -> image as in Rombach et al.'s
semantic synthesis) take the mask down to the latent grid and concatenate it to the UNet's input:
``"space_to_depth"`` folds each block of mask pixels (e.g. 4x4 or 4x4x4) into channels, losing
nothing (a 1-px membrane keeps its place inside its block); ``"area"`` keeps one channel of the
block's foreground fraction, cheaper for many-voxel blocks. ``sample(n, masks=...)`` takes masks at
the image's full resolution and returns images at that resolution.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_medaug.data.batch import unpack_batch
from lightning_medaug.generative.base import GenerativeModule, load_generator
from lightning_medaug.generative.diffusion import DiffusionGenerator
from lightning_medaug.generative.shapes import pad_to, space_to_depth
from lightning_medaug.registry import GENERATORS, register_generator
from lightning_medaug.sizes import SizeLike, spatial_size
from lightning_medaug.validation import check_choice

__all__ = ["MASK_DOWNSAMPLING", "LatentDiffusion", "mask_to_latent_grid"]

_AUTOENCODER_API = ("encode", "decode", "latent_shape")
#: how a mask reaches the latent grid: every pixel folded into channels, or the foreground fraction
MASK_DOWNSAMPLING = ("space_to_depth", "area")


def mask_to_latent_grid(masks: Tensor, network_size: tuple[int, ...], latent_size: tuple[int, ...],
                        how: str) -> Tensor:
    """Masks (N, 1, *S) in {0, 1} on the latent grid, in [-1, 1]: padded to the autoencoder's
    ``network_size`` as its images are, then folded (``"space_to_depth"``) or averaged (``"area"``)."""
    padded = pad_to(masks.float(), network_size)
    if how == "area":
        coarse = F.interpolate(padded, size=latent_size, mode="area")
    else:
        coarse = space_to_depth(padded, [n // s for n, s in zip(network_size, latent_size)])
    return coarse * 2.0 - 1.0


@register_generator("ldm")
class LatentDiffusion(DiffusionGenerator):
    """Denoising diffusion on the latents of a frozen autoencoder (Rombach et al. 2022).

    Latents are multiplied by a scale factor, ``1 / std`` of the latents of the first training
    batch (averaged over DDP ranks), so the diffusion sees unit-variance data as in the paper; it
    is a buffer, saved with the weights. Samplers do not clip in latent space (latents have no
    known bound); see :mod:`.schedulers`.

    Args:
        autoencoder_path: folder written by the autoencoder's ``save_pretrained``.
        autoencoder_config: the autoencoder's ``config.json`` content; filled in by the module
            itself from ``autoencoder_path`` and used, when present, to rebuild the autoencoder
            without its folder (its weights then come from this model's state dict). Pass
            ``autoencoder_path``, not this.
        num_classes: classes for class conditioning with classifier-free guidance; 0 for none.
            The labels are also passed to the autoencoder's ``encode`` / ``decode`` (a conditional
            VAE needs them and the same number of classes; others ignore them).
        mask_conditional: condition on a mask (training batches need a ``"mask"``, ``sample``
            then requires ``masks``); see the module docstring.
        mask_downsampling: ``"space_to_depth"`` (lossless, ``prod(factors)`` channels) or ``"area"``.
        gradient_checkpointing: recompute the latent UNet's activations in the backward pass.
        spatial_dims, in_channels, image_size: read from the autoencoder; when given, they must
            agree with it.
        channels, num_res_blocks, norm_num_groups, num_train_timesteps, beta_schedule,
        prediction_type, cond_drop_prob, guidance_scale, sampler, num_inference_steps, lr,
        ema_decay: as for :class:`~.diffusion.DDPM`, applied to the latent UNet.
    """

    def __init__(self, autoencoder_path: str | None = None, autoencoder_config: dict[str, Any] | None = None,
                 num_classes: int = 0, spatial_dims: int | None = None, in_channels: int | None = None,
                 image_size: SizeLike | None = None, channels: Sequence[int] = (32, 64), num_res_blocks: int = 1,
                 norm_num_groups: int = 16, num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                 prediction_type: str = "v_prediction", cond_drop_prob: float = 0.1, guidance_scale: float = 1.0,
                 sampler: str = "dpmsolver++", num_inference_steps: int = 20, lr: float = 2e-4,
                 ema_decay: float = 0.999, mask_conditional: bool = False,
                 mask_downsampling: str = "space_to_depth", gradient_checkpointing: bool = False):
        # A fresh context: under LightningCLI a context variable holds the hyperparameters given to
        # *this* module, and the autoencoder's own save_hyperparameters() would otherwise record them.
        autoencoder, config = contextvars.Context().run(_build_autoencoder, autoencoder_path, autoencoder_config)
        given = {"spatial_dims": spatial_dims, "in_channels": in_channels, "image_size": image_size}
        shared = {"spatial_dims": autoencoder.spatial_dims, "in_channels": autoencoder.in_channels,
                  "image_size": autoencoder.image_size}
        for name, value in given.items():
            same = (value == shared[name] if name != "image_size" or value is None
                    else spatial_size(value, shared["spatial_dims"]) == autoencoder.spatial_size)
            if value is not None and not same:
                raise ValueError(f"{name}={value} but the autoencoder has {name}={shared[name]}: "
                                 f"leave {name} unset (it is read from the autoencoder)")
        super().__init__(shared["spatial_dims"], shared["in_channels"], shared["image_size"], num_classes)
        self.save_hyperparameters()
        self.hparams.update(shared, autoencoder_config=config)
        self.autoencoder = autoencoder.requires_grad_(False).eval()
        latent_shape = tuple(int(s) for s in autoencoder.latent_shape)
        if len(latent_shape) != self.spatial_dims + 1:
            raise ValueError(f"latent_shape {latent_shape} must be (channels, *spatial) with spatial_dims sizes")
        check_choice("mask_downsampling", mask_downsampling, MASK_DOWNSAMPLING)
        self.requires_masks = mask_conditional
        self.latent_grid = (tuple(autoencoder.network_size), latent_shape[1:])
        folded = math.prod(n // s for n, s in zip(*self.latent_grid)) if mask_downsampling != "area" else 1
        self.setup_diffusion(latent_shape[0], latent_shape[1:], cond_channels=folded if mask_conditional else 0,
                             clip_sample=False)
        # 0 means "not measured yet"; set from the first training batch.
        self.register_buffer("latent_scale", torch.zeros(()))
        self._scale_known: bool | None = None

    # -- the frozen first stage ---------------------------------------------------------------
    def train(self, mode: bool = True) -> LatentDiffusion:
        super().train(mode)
        self.autoencoder.eval()  # frozen: no dropout, no posterior sampling, no codebook updates
        return self

    def _encode(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        labels = self.labels_of(batch)
        with torch.no_grad():
            z = self.autoencoder.encode(unpack_batch(batch).image, labels)
        return z.float(), labels

    def _scale(self) -> Tensor:
        return torch.where(self.latent_scale > 0, self.latent_scale, torch.ones_like(self.latent_scale))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._scale_known is None:
            self._scale_known = bool(self.latent_scale > 0)  # one host sync per process, not per step
        if not self._scale_known:
            std = self._encode(batch)[0].std()
            std = self.trainer.strategy.reduce(std, reduce_op="mean")  # the same scale on every rank
            self.latent_scale.copy_(1.0 / std.clamp_min(1e-8))
            self._scale_known = True

    # -- diffusion space ------------------------------------------------------------------------
    def to_diffusion_space(self, batch: Any) -> tuple[Tensor, Tensor | None, Tensor | None]:
        z, labels = self._encode(batch)
        cond = None
        if self.requires_masks:
            masks = unpack_batch(batch).mask
            if masks is None:
                raise ValueError(f"{type(self).__name__} with mask_conditional=True needs batches with a 'mask' entry")
            cond = self.sample_condition(masks.to(z.device))
        return z * self._scale(), labels, cond

    def sample_condition(self, masks: Tensor | None) -> Tensor | None:
        if masks is None:
            return None
        return mask_to_latent_grid(masks, *self.latent_grid, self.hparams.mask_downsampling)

    def from_diffusion_space(self, x0: Tensor, labels: Tensor | None) -> Tensor:
        return self.autoencoder.decode(x0 / self._scale(), labels).clamp(-1.0, 1.0)


def _build_autoencoder(path: str | None, config: Mapping[str, Any] | None) -> tuple[nn.Module, dict[str, Any]]:
    """The autoencoder and its config: rebuilt from ``config`` when given, else loaded from ``path``."""
    if config is not None:
        if not isinstance(config, Mapping) or "generator" not in config or "init_args" not in config:
            raise ValueError("autoencoder_config must be the content of an autoencoder's config.json "
                             "({'generator': ..., 'init_args': {...}}); pass autoencoder_path instead")
        model = GENERATORS.get(config["generator"])(**config["init_args"])
        config = dict(config)
    elif path is not None:
        model = load_generator(path)
        config = model.generator_config()
    else:
        raise ValueError("latent diffusion needs an autoencoder: pass autoencoder_path, the folder of a trained "
                         "'vae' or 'vqvae' saved with save_pretrained()")
    lacking = [name for name in _AUTOENCODER_API if not hasattr(model, name)]
    if lacking or not isinstance(model, GenerativeModule):
        what = ", ".join(lacking) if lacking else "the GenerativeModule base"
        raise ValueError(f"{type(model).__name__} cannot be a latent-diffusion autoencoder: it lacks {what}; "
                         "use a 'vae' or 'vqvae'")
    return model, config
