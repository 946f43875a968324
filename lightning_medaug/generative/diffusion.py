"""Denoising diffusion generators: the shared machinery and the pixel-space DDPM.

:class:`DiffusionGenerator` holds what every diffusion family shares: a UNet built from MONAI's
diffusion blocks (:class:`~.diffusion_unet.TimestepUNet`, one code path for 2D and 3D), its EMA, the training loss on
diffusers' forward process, classifier-free guidance and batched sampling with diffusers
samplers (:mod:`.schedulers`). Families say only what space they diffuse in: :class:`DDPM`
works on pixels (or on masks), :class:`~.latent_diffusion.LatentDiffusion` on an autoencoder's
latents.

Papers: Ho et al. 2020 (DDPM), Song et al. 2021 (DDIM), Lu et al. 2022 (DPM-Solver++),
Nichol & Dhariwal 2021 (cosine schedule), Salimans & Ho 2022 (v-prediction),
Ho & Salimans 2022 (classifier-free guidance).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from lightning_medaug.data.batch import IMAGE_KEY, MASK_KEY, unpack_batch
from lightning_medaug.generative.base import SharedStepModule
from lightning_medaug.generative.cuda_graphs import GraphedCall, use_cuda_graph
from lightning_medaug.generative.diffusion_unet import TimestepUNet
from lightning_medaug.generative.editing import DiffusionEditing
from lightning_medaug.generative.ema import EMA
from lightning_medaug.generative.schedulers import (
    SAMPLERS,
    NoiseSchedule,
    build_sampler,
    build_training_scheduler,
)
from lightning_medaug.generative.shapes import crop_to, pad_to, padded_size
from lightning_medaug.registry import register_generator
from lightning_medaug.sizes import SizeLike

__all__ = ["DDPM", "DiffusionGenerator"]

DATA_KEYS = (IMAGE_KEY, MASK_KEY)


class DiffusionGenerator(DiffusionEditing, SharedStepModule):
    """Base of the diffusion families; subclasses call :meth:`setup_diffusion` after
    ``save_hyperparameters()`` and implement :meth:`to_diffusion_space` / :meth:`from_diffusion_space`.

    Hyperparameters read from ``self.hparams`` (see :class:`DDPM` for their meaning): ``channels``,
    ``num_res_blocks``, ``norm_num_groups``,
    ``num_train_timesteps``, ``beta_schedule``, ``prediction_type``, ``cond_drop_prob``,
    ``guidance_scale``, ``sampler``, ``num_inference_steps``, ``lr``, ``ema_decay``.
    """

    ema_pair = ("unet", "ema")

    def setup_diffusion(self, data_channels: int, data_size: tuple[int, ...], cond_channels: int,
                        clip_sample: bool) -> None:
        """Build the UNet, its EMA and the training scheduler for data of shape (data_channels, *data_size)."""
        hp = self.hparams
        if not 0.0 <= hp.cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1), got {hp.cond_drop_prob}")
        if hp.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0 (1 = no guidance), got {hp.guidance_scale}")
        _check_sampler(hp.sampler, hp.num_inference_steps, hp.num_train_timesteps)
        if hp.lr <= 0:
            raise ValueError(f"lr must be positive, got {hp.lr}")
        self.schedule = NoiseSchedule(hp.num_train_timesteps, hp.beta_schedule, hp.prediction_type, clip_sample)
        self.noise_scheduler = build_training_scheduler(self.schedule)
        self.data_shape = (data_channels,) + tuple(data_size)
        # The UNet halves every side len(channels) - 1 times; other sizes (28 -> 32) are padded.
        self.unet_size = padded_size(data_size, 2 ** (len(hp.channels) - 1))
        self.unet = TimestepUNet(
            self.spatial_dims, data_channels + cond_channels, data_channels, hp.channels, hp.num_res_blocks,
            hp.norm_num_groups,
            # one extra class index is the "no label" token of classifier-free guidance
            num_class_embeds=self.num_classes + 1 if self.num_classes > 0 else None,
            gradient_checkpointing=hp.get("gradient_checkpointing", False),
        )
        self.ema = EMA(self.unet, hp.ema_decay) if hp.ema_decay > 0 else None

    # -- what subclasses define ------------------------------------------------------------------
    def to_diffusion_space(self, batch: Any) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(x0, labels, cond)`` from a training batch; ``cond`` is concatenated to the UNet input."""
        raise NotImplementedError

    def from_diffusion_space(self, x0: Tensor, labels: Tensor | None) -> Tensor:
        """Samples in the training data's layout and range from denoised ``x0`` (of class ``labels``)."""
        raise NotImplementedError

    def sample_condition(self, masks: Tensor | None) -> Tensor | None:
        """The ``cond`` channels for sampling given ``masks`` (None for unconditional families)."""
        return None

    # -- network call ----------------------------------------------------------------------------
    def denoise(self, net: nn.Module, x: Tensor, t: Tensor, labels: Tensor | None, cond: Tensor | None) -> Tensor:
        """One UNet evaluation on ``x`` (with ``cond`` channels), padded to a size the UNet accepts."""
        if cond is not None:
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        out = net(pad_to(x, self.unet_size), timesteps=t.expand(x.shape[0]), class_labels=labels)
        return crop_to(out, self.data_shape[1:])

    # -- training ---------------------------------------------------------------------------------
    def _shared_step(self, batch: Any, stage: str) -> Tensor:
        x0, labels, cond = self.to_diffusion_space(batch)
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.schedule.num_train_timesteps, (x0.shape[0],), device=x0.device)
        x_t = self.noise_scheduler.add_noise(x0, noise, t)
        if self.schedule.prediction_type == "epsilon":
            target = noise
        else:
            target = self.noise_scheduler.get_velocity(x0, noise, t)
        if labels is not None and stage == "train" and self.hparams.cond_drop_prob > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.hparams.cond_drop_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        pred = self.denoise(self.unet, x_t, t, labels, cond)
        loss = F.mse_loss(pred.float(), target.float())
        self.log_terms(stage, {"loss": loss}, x0.shape[0])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.unet)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.unet.parameters(), lr=self.hparams.lr, weight_decay=0.0)

    def labels_of(self, batch: Any) -> Tensor | None:
        """Class labels of a batch for a class-conditional model (ValueError when it has none)."""
        if self.num_classes == 0:
            return None
        labels = unpack_batch(batch).label
        if labels is None:
            raise ValueError(f"{type(self).__name__} has num_classes={self.num_classes} but the batch has no labels: "
                             "use a data module with labels or set num_classes=0")
        return labels.to(self.device)

    # -- sampling ---------------------------------------------------------------------------------
    def sample(self, n: int, labels: Tensor | None = None, masks: Tensor | None = None,
               generator: torch.Generator | None = None, sampler: str | None = None,
               num_inference_steps: int | None = None, guidance_scale: float | None = None,
               batch_size: int | None = None, cuda_graph: bool | None = None) -> Tensor:
        """Draw ``n`` samples with the EMA network (see :class:`GenerativeModule.sample`).

        Args:
            sampler, num_inference_steps, guidance_scale: override the hyperparameters of the
                same names for this call; ``guidance_scale`` 1 means no guidance.
            batch_size: samples denoised together (default: all ``n``).
            cuda_graph: replay the network as a CUDA graph at every step (see
                :mod:`.cuda_graphs`); default: on CUDA devices.

        Returns a normal tensor (not an inference tensor), safe to feed to a model in training.
        """
        labels, masks = self.check_sample_args(n, labels, masks, generator)
        sampler, steps, scale = self.sampling_settings(sampler, num_inference_steps, guidance_scale)
        batch_size = batch_size or n
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        net = self.sampling_net()
        graphed = use_cuda_graph(cuda_graph, self.device)
        chunks = []
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                part = slice(start, min(n, start + batch_size))
                chunks.append(self._sample_batch(
                    net, part.stop - part.start, None if labels is None else labels[part],
                    self.sample_condition(None if masks is None else masks[part]), generator, sampler, steps, scale,
                    graphed,
                ))
            out = torch.cat(chunks)
        # leaves inference mode (usable in autograd graphs downstream), in the usual NCHW layout
        return out.clone(memory_format=torch.contiguous_format)

    def sampling_settings(self, sampler: str | None, num_inference_steps: int | None,
                          guidance_scale: float | None) -> tuple[str, int, float]:
        """``(sampler, steps, guidance_scale)`` for one call: the arguments given, else the hyperparameters."""
        sampler = sampler or self.hparams.sampler
        steps = num_inference_steps or self.hparams.num_inference_steps
        _check_sampler(sampler, steps, self.schedule.num_train_timesteps)
        scale = self.hparams.guidance_scale if guidance_scale is None else guidance_scale
        return sampler, steps, scale

    def sampling_net(self) -> nn.Module:
        """The network that samples: the EMA's when there is one, prepared for a whole sampling loop."""
        net = self.ema.module if self.ema is not None else self.unet
        # prepared once for the whole loop (channels-last on the CPU), see TimestepUNet.for_sampling
        return net.for_sampling() if isinstance(net, TimestepUNet) else net

    def _sample_batch(self, net: nn.Module, n: int, labels: Tensor | None, cond: Tensor | None,
                      generator: torch.Generator | None, sampler: str, steps: int, scale: float,
                      graphed: bool = False) -> Tensor:
        scheduler = build_sampler(sampler, self.schedule)
        # Timesteps stay on the CPU, as in diffusers' pipelines: the schedulers index their CPU
        # tables with them, so a GPU timestep would cost a device->host sync at every step.
        scheduler.set_timesteps(steps)
        dtype = next(net.parameters()).dtype
        x = randn_tensor((n,) + self.data_shape, generator=generator, device=self.device, dtype=dtype)
        x = self.denoise_loop(net, scheduler, scheduler.timesteps, x, labels, cond, generator, scale, graphed)
        return self.from_diffusion_space(x, labels)

    def denoise_loop(self, net: nn.Module, scheduler: Any, timesteps: Tensor, x: Tensor, labels: Tensor | None,
                     cond: Tensor | None, generator: torch.Generator | None, scale: float,
                     graphed: bool = False) -> Tensor:
        """Step ``scheduler`` over ``timesteps`` from ``x`` (in diffusion space) with classifier-free
        guidance at ``scale``; returns the denoised sample, still in diffusion space. Shared by
        :meth:`sample` (from pure noise) and :meth:`~.editing.DiffusionEditing.edit` (from noised images)."""
        guided = labels is not None and scale != 1.0
        net_labels = labels
        if guided:  # cond and uncond in one batched forward pass
            net_labels = torch.cat([labels, torch.full_like(labels, self.num_classes)])
            cond = None if cond is None else torch.cat([cond, cond])

        def call(x_in: Tensor, t: Tensor) -> Tensor:
            return self.denoise(net, x_in, t, net_labels, cond)

        graph = GraphedCall(call) if graphed else None
        for t in timesteps:
            x_in = scheduler.scale_model_input(x, t)
            x_in = torch.cat([x_in, x_in]) if guided else x_in
            out = graph(x_in, t) if graph is not None else call(x_in, t.to(self.device))
            if guided:
                out_cond, out_uncond = out.chunk(2)
                out = out_uncond + scale * (out_cond - out_uncond)
            x = scheduler.step(out, t, x, generator=generator).prev_sample
        return x


def _check_sampler(sampler: str, steps: int, num_train_timesteps: int) -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if not isinstance(steps, int) or not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must be an integer in [1, {num_train_timesteps}], got {steps!r}")


@register_generator("ddpm")
class DDPM(DiffusionGenerator):
    """Pixel-space denoising diffusion (Ho et al. 2020) on a UNet of MONAI diffusion blocks.

    Optionally class-conditional with classifier-free guidance (Ho & Salimans 2022), and/or
    mask-conditional (mask -> image, the mask concatenated as an input channel), or trained on
    masks themselves (``data_key="mask"``: a mask generator for :mod:`.pairs`).

    Sizes the UNet cannot halve ``len(channels) - 1`` times (28 with the default four levels) are
    padded internally by edge replication to the next multiple (32) and cropped back, so any
    ``image_size`` works, one int or one per axis (e.g. ``(16, 24, 32)``); the loss and the samples
    cover the real image only.

    Args:
        spatial_dims, in_channels, image_size, num_classes: see :class:`GenerativeModule`.
        channels: UNet channels per level (:class:`~.diffusion_unet.TimestepUNet`). The default,
            thin at full resolution and wider below, costs 0.18 GFLOP per 28x28 forward pass
            (0.37 for (32, 64, 64)), about 3 ms per sample on 2 CPU cores.
        num_res_blocks: residual blocks per level.
        norm_num_groups: GroupNorm groups; every entry of ``channels`` must be a multiple.
        num_train_timesteps: diffusion steps T.
        beta_schedule: ``"linear"`` or ``"squaredcos_cap_v2"`` (cosine).
        prediction_type: ``"epsilon"`` (Ho et al. 2020) or ``"v_prediction"`` (the default: on
            8-px phantoms it matched the data's mean and std with every sampler after 100 training
            steps, where epsilon needed 250, and its x0 estimate needs no division by
            sqrt(alpha_bar), which is 5e-5 at t = T - 1 under the cosine schedule).
        cond_drop_prob: probability of replacing a label by the null class while training (CFG).
        guidance_scale: default CFG scale at sampling; 1 = plain conditional sampling.
        mask_conditional: condition on a mask (``sample`` then requires ``masks``).
        data_key: ``"image"`` to generate images, ``"mask"`` to generate binary masks.
        sampler: default sampler, one of ``"ddpm"``, ``"ddim"``, ``"dpmsolver++"`` (the default:
            20 steps match DDIM's 50 in the tests' mean/std checks).
        num_inference_steps: default number of sampling steps.
        lr: AdamW learning rate.
        ema_decay: EMA decay of the UNet weights used for sampling; 0 disables the EMA.
        gradient_checkpointing: recompute the UNet's activations in the backward pass (less
            memory for large images and volumes, more time per step).
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, image_size: SizeLike = 32, num_classes: int = 0,
                 channels: Sequence[int] = (16, 32, 64, 64), num_res_blocks: int = 1, norm_num_groups: int = 16,
                 num_train_timesteps: int = 1000, beta_schedule: str = "linear", prediction_type: str = "v_prediction",
                 cond_drop_prob: float = 0.1, guidance_scale: float = 1.0, mask_conditional: bool = False,
                 data_key: str = IMAGE_KEY, sampler: str = "dpmsolver++", num_inference_steps: int = 20,
                 lr: float = 2e-4, ema_decay: float = 0.999, gradient_checkpointing: bool = False):
        super().__init__(spatial_dims, in_channels, image_size, num_classes)
        self.save_hyperparameters()
        if data_key not in DATA_KEYS:
            raise ValueError(f"data_key must be one of {DATA_KEYS}, got {data_key!r}")
        if data_key == MASK_KEY and (in_channels != 1 or mask_conditional):
            raise ValueError("data_key='mask' generates masks: use in_channels=1 and mask_conditional=False")
        self.requires_masks = mask_conditional
        self.setup_diffusion(in_channels, self.spatial_size, cond_channels=int(mask_conditional), clip_sample=True)

    def to_diffusion_space(self, batch: Any) -> tuple[Tensor, Tensor | None, Tensor | None]:
        images, _, masks = unpack_batch(batch)
        if (self.hparams.data_key == MASK_KEY or self.requires_masks) and masks is None:
            raise ValueError(f"{type(self).__name__} with data_key={self.hparams.data_key!r}, "
                             f"mask_conditional={self.requires_masks} needs batches with a 'mask' entry")
        x0 = masks * 2.0 - 1.0 if self.hparams.data_key == MASK_KEY else images
        cond = masks * 2.0 - 1.0 if self.requires_masks else None
        return x0, self.labels_of(batch), cond

    def sample_condition(self, masks: Tensor | None) -> Tensor | None:
        return None if masks is None else masks * 2.0 - 1.0

    def from_diffusion_space(self, x0: Tensor, labels: Tensor | None) -> Tensor:
        if self.hparams.data_key == MASK_KEY:
            return (x0 > 0).to(x0.dtype)  # masks in {0, 1}, like the training masks
        return x0.clamp(-1.0, 1.0)
