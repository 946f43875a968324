"""SinDDM: a multi-scale denoising diffusion model trained on ONE image (or one volume).

Kulikov, Yadin, Kleiner & Michaeli 2023, "SinDDM: A Single Image Denoising Diffusion Model"
(ICML). For the rare case with a single example: the image is turned into a pyramid
``x_0, ..., x_{N-1}`` (coarsest first, scale factor ``r``), and one small fully-convolutional
denoiser (:class:`~.sinddm_network.SinDDMDenoiser`, limited receptive field, conditioned on the
timestep and the scale) learns the statistics of its patches at every scale.

Forward process (Sec. 3.1 of the paper, with the blur schedule of the authors' code). At the
coarsest scale it is plain DDPM (Ho et al. 2020). At a finer scale ``n`` the clean signal is a
mix of the sharp image ``x_n`` and the blurry ``x~_n = up(x_{n-1})``::

    x_t = sqrt(abar_t) * (gamma_t * x~_n + (1 - gamma_t) * x_n) + sqrt(1 - abar_t) * eps,
    gamma_t = clip(sigma_t / (ratio * rms(x_n - x~_n)), 0, 1),  sigma_t = sqrt((1 - abar_t) / abar_t)

so the blur is removed together with the noise; only ``t < t_n`` are used at scale ``n``, where
``t_n`` is the first step at which the noise hides the blur residual (``gamma = 1``). Here the
residual is the root-mean-square difference in [-1, 1] units (the authors use an L2 norm divided
by the pixel count); ``ratio`` is :attr:`blur_noise_ratio`. The loss is DDPM's epsilon MSE at
every scale, every step.

Sampling (Sec. 3.3): pure noise at the coarsest scale, denoised over the whole chain; at each
finer scale the previous output is upsampled, noised to ``t_n`` and denoised from there. Each step
first estimates the sharp image from the predicted noise (``x^_n = (mix - gamma_t x~) / (1 -
gamma_t)``, ``gamma`` capped at :attr:`max_blur_weight` as in the authors' code), re-blurs it to
the level of the next timestep, and then takes an ordinary step of a diffusers ``DDPMScheduler``
or ``DDIMScheduler`` (the shift of ``x_t`` that turns the estimated ``x0`` into the re-blurred
one keeps the scheduler's noise direction unchanged).

The image: set it with :meth:`SinDDM.fit_image`, or let training pick it: the first training
batch seen gives ``image[image_index]`` (with a shuffled loader, which one depends on the seed;
under DDP rank 0's choice is broadcast). It is stored in the buffer ``image`` and therefore saved
in checkpoints and by ``save_pretrained``; later batches are only a clock for the steps.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from lightning_medaug.compat import attached_trainer
from lightning_medaug.data.batch import unpack_batch
from lightning_medaug.generative.base import GenerativeModule
from lightning_medaug.generative.ema import EMA
from lightning_medaug.generative.schedulers import (
    NoiseSchedule,
    build_sampler,
    build_training_scheduler,
)
from lightning_medaug.generative.sinddm_network import SinDDMDenoiser
from lightning_medaug.registry import register_generator
from lightning_medaug.sizes import SizeLike, format_size

__all__ = ["SINDDM_SAMPLERS", "SinDDM", "pyramid_sizes", "resize"]

#: Samplers whose single step can follow the re-blurring shift (multistep solvers cannot).
SINDDM_SAMPLERS: tuple[str, ...] = ("ddpm", "ddim")
_LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def pyramid_sizes(image_size: int, coarsest_size: int, scale_factor: float) -> list[int]:
    """Side lengths of the pyramid, coarsest first, ending at ``image_size``.

    The number of scales is ``round(log(image_size / coarsest_size) / log(scale_factor)) + 1``; the
    factor is then adjusted so that the coarsest side is exactly ``coarsest_size`` (as in the
    authors' code).
    """
    if image_size == coarsest_size:
        return [image_size]
    num = max(2, round(math.log(image_size / coarsest_size) / math.log(scale_factor)) + 1)
    factor = (image_size / coarsest_size) ** (1.0 / (num - 1))
    return [round(image_size / factor ** (num - 1 - n)) for n in range(num)]


def scale_grids(size: Sequence[int], coarsest_size: int, scale_factor: float) -> list[tuple[int, ...]]:
    """The pyramid's grid per scale, coarsest first: :func:`pyramid_sizes` of the smallest side,
    the other sides scaled with it, so every scale keeps the image's aspect ratio."""
    smallest = min(size)
    return [tuple(round(s * side / smallest) for s in size)
            for side in pyramid_sizes(smallest, coarsest_size, scale_factor)]


def resize(x: Tensor, size: int | Sequence[int]) -> Tensor:
    """Resize the spatial axes of ``x`` (N, C, *S) to ``size`` (one side or one per axis): box
    filter down, (bi/tri)linear up."""
    spatial = tuple(x.shape[2:])
    size = (size,) * len(spatial) if isinstance(size, int) else tuple(size)
    if spatial == size:
        return x
    if all(s >= t for s, t in zip(spatial, size)):  # "area" averages each output cell: anti-aliased, 2D and 3D
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=_LINEAR_MODES[len(spatial)], align_corners=False)


@register_generator("sinddm")
class SinDDM(GenerativeModule):
    """Single-image multi-scale diffusion (Kulikov et al. 2023); see the module docstring.

    On one PneumoniaMNIST image, 1000 steps of ``recipes/sinddm_pneumonia.yaml`` (77 s on 2 CPU
    cores) gave varied, plausible X-rays within 0.01 of the image's mean and 0.05 of its std, with
    DDPM (100 steps) and DDIM (20-100 steps) alike.

    Args:
        spatial_dims, in_channels, image_size: see :class:`GenerativeModule`.
        num_classes: must be 0: one image has one class, so there is nothing to condition on.
        image_index: which image of the first training batch to learn (ignored after
            :meth:`fit_image`).
        scale_factor: pyramid factor ``r`` between neighbouring scales (the paper's 1.411).
        coarsest_size: side of the coarsest scale; 8-16 px suits 28-64 px images.
        channels: output channels of the denoiser's blocks (its depth and width).
        depthwise_kernel_size: kernel of each block's depthwise convolution; with ``channels``
            it sets the receptive field (:attr:`receptive_field`), which should stay below the
            image side so the model learns patches and makes new arrangements of them.
        emb_channels: size of the timestep and scale embeddings.
        num_train_timesteps: diffusion steps T (100 in the paper).
        beta_schedule: ``"squaredcos_cap_v2"`` (cosine, the paper's) or ``"linear"``.
        blur_noise_ratio: ``ratio`` in the blur schedule; larger values start the finer scales
            from a later timestep (more noise, more freedom, less fidelity to the coarser scale).
        max_blur_weight: cap of ``gamma`` when sharpening at sampling time (0.55 in the
            authors' code), so the division by ``1 - gamma`` never amplifies errors more than 2.2x.
        copies_per_scale: noisy copies of each pyramid level per step (the batch size).
        sampler: ``"ddpm"`` (ancestral) or ``"ddim"`` (eta = 0).
        num_inference_steps: steps over the full chain; finer scales use the part below ``t_n``.
        lr: AdamW learning rate.
        ema_decay: EMA decay of the weights used for sampling; 0 disables the EMA.
    """

    ema_pair = ("net", "ema")

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, image_size: SizeLike = 28, num_classes: int = 0,
                 image_index: int = 0, scale_factor: float = 1.411, coarsest_size: int = 12,
                 channels: Sequence[int] = (32, 64, 64, 32), depthwise_kernel_size: int = 5, emb_channels: int = 32,
                 num_train_timesteps: int = 100, beta_schedule: str = "squaredcos_cap_v2",
                 blur_noise_ratio: float = 1.0, max_blur_weight: float = 0.55, copies_per_scale: int = 8,
                 sampler: str = "ddpm", num_inference_steps: int = 100, lr: float = 1e-3, ema_decay: float = 0.995):
        super().__init__(spatial_dims, in_channels, image_size, num_classes)
        self.save_hyperparameters()
        if num_classes != 0:
            raise ValueError(f"SinDDM learns one image, which has one class: label conditioning does not apply; "
                             f"pass num_classes=0 (got {num_classes})")
        if isinstance(image_index, bool) or not isinstance(image_index, int) or image_index < 0:
            raise ValueError(f"image_index must be a non-negative integer (an index into the first batch), "
                             f"got {image_index!r}")
        if scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be > 1 (the paper uses 1.411), got {scale_factor}")
        if not 4 <= coarsest_size <= min(self.spatial_size):
            raise ValueError(f"coarsest_size must be in [4, {min(self.spatial_size)}] (the smallest side of "
                             f"image_size={format_size(image_size)}), got {coarsest_size}")
        if blur_noise_ratio <= 0:
            raise ValueError(f"blur_noise_ratio must be positive, got {blur_noise_ratio}")
        if not 0.0 <= max_blur_weight < 1.0:
            raise ValueError(f"max_blur_weight must be in [0, 1) (the sharpening divides by 1 - it), "
                             f"got {max_blur_weight}")
        if copies_per_scale < 1:
            raise ValueError(f"copies_per_scale must be at least 1, got {copies_per_scale}")
        _check_sampler(sampler, num_inference_steps, num_train_timesteps)
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        self.schedule = NoiseSchedule(num_train_timesteps, beta_schedule, "epsilon", clip_sample=True)
        self.noise_scheduler = build_training_scheduler(self.schedule)
        self.scale_sizes = scale_grids(self.spatial_size, coarsest_size, scale_factor)
        self.net = SinDDMDenoiser(spatial_dims, in_channels, channels, depthwise_kernel_size, emb_channels)
        self.ema = EMA(self.net, ema_decay) if ema_decay > 0 else None
        # the training image and whether it is set: buffers, so checkpoints and save_pretrained keep them
        self.register_buffer("image", torch.zeros(self.image_shape))
        self.register_buffer("has_image", torch.tensor(False))

    @property
    def num_scales(self) -> int:
        return len(self.scale_sizes)

    @property
    def receptive_field(self) -> int:
        """Side (pixels) of the patch one output pixel of the denoiser sees."""
        return self.net.receptive_field

    # -- the image ----------------------------------------------------------------------------
    @torch.no_grad()
    def fit_image(self, image: Tensor) -> SinDDM:
        """Set the image to learn: (C, *S) or (1, C, *S) in [-1, 1]; training batches then only count steps."""
        image = torch.as_tensor(image)
        if image.ndim == len(self.image_shape) + 1 and image.shape[0] == 1:
            image = image[0]
        if tuple(image.shape) != self.image_shape:
            raise ValueError(f"fit_image expects one image of shape {self.image_shape} (or (1, *that)), "
                             f"got {tuple(image.shape)}")
        if not torch.isfinite(image).all() or image.min() < -1 or image.max() > 1:
            raise ValueError("fit_image expects finite values in [-1, 1], the library's image range "
                             "(see lightning_medaug.data.batch.from_unit_range)")
        self.image.copy_(image.to(self.image))
        self.has_image.fill_(True)
        return self

    def _take_image_from(self, batch: Any) -> None:
        images = unpack_batch(batch).image
        if self.hparams.image_index >= images.shape[0]:
            raise ValueError(f"image_index={self.hparams.image_index} but the first training batch holds only "
                             f"{images.shape[0]} images; pass a smaller image_index or a larger batch_size")
        image = images[self.hparams.image_index].detach().float()
        trainer = attached_trainer(self)
        if trainer is not None:  # every rank must learn the same image
            image = trainer.strategy.broadcast(image, src=0)
        self.fit_image(image)

    @torch.no_grad()
    def pyramid(self) -> list[Tensor]:
        """The image at every scale, coarsest first, each (1, C, *grid)."""
        image = self.image.unsqueeze(0)
        return [resize(image, size) for size in self.scale_sizes]

    @torch.no_grad()
    def blur_schedule(self, pyramid: list[Tensor] | None = None) -> tuple[list[int], Tensor]:
        """``(t_start, gammas)``: per scale the first timestep not trained (T at the coarsest) and the
        blur weights ``gamma[n, t]`` (zero at the coarsest)."""
        pyramid = self.pyramid() if pyramid is None else pyramid
        T = self.schedule.num_train_timesteps
        abar = self.noise_scheduler.alphas_cumprod.to(self.image.device, torch.float32)
        sigma = ((1 - abar) / abar).sqrt()
        t_start, gammas = [T], [torch.zeros_like(sigma)]
        for coarse, fine in itertools.pairwise(pyramid):
            residual = (fine - resize(coarse, fine.shape[2:])).pow(2).mean().sqrt()
            threshold = (self.hparams.blur_noise_ratio * residual).clamp_min(1e-8)
            gammas.append((sigma / threshold).clamp(0.0, 1.0))
            hidden = torch.nonzero(sigma > threshold)
            # train at least t = 0 (where the image is sharp) even when the blur is negligible
            t_start.append(max(1, int(hidden[0]) if len(hidden) else T))
        return t_start, torch.stack(gammas)

    # -- training ---------------------------------------------------------------------------------
    def _loss(self) -> tuple[Tensor, list[Tensor]]:
        """The epsilon loss of Ho et al. 2020 under the blur + noise forward process, at every scale."""
        pyramid = self.pyramid()
        t_start, gammas = self.blur_schedule(pyramid)
        k = self.hparams.copies_per_scale
        losses = []
        for s, sharp in enumerate(pyramid):
            x0 = sharp.expand((k,) + sharp.shape[1:])
            t = torch.randint(0, t_start[s], (k,), device=x0.device)
            if s > 0:
                g = gammas[s, t].reshape((k,) + (1,) * (x0.ndim - 1))
                x0 = g * resize(pyramid[s - 1], sharp.shape[2:]) + (1 - g) * x0
            noise = torch.randn_like(x0)
            x_t = self.noise_scheduler.add_noise(x0, noise, t)
            pred = self.net(x_t, t, torch.full_like(t, s))
            losses.append(F.mse_loss(pred.float(), noise.float()))
        return torch.stack(losses).mean(), losses

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if not self.has_image:
            self._take_image_from(batch)
        loss, per_scale = self._loss()
        k = self.hparams.copies_per_scale
        self.log_terms("train", {"loss": loss} | {f"loss_scale{s}": value for s, value in enumerate(per_scale)}, k)
        return loss

    def _eval_step(self, stage: str) -> Tensor | None:
        if not self.has_image:  # e.g. Lightning's sanity check before the first training batch
            return None
        loss, _ = self._loss()
        self.log(f"{stage}/loss", loss, batch_size=self.hparams.copies_per_scale, sync_dist=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        """The training loss on the learnt image (the batch is ignored: there is no held-out image)."""
        return self._eval_step("val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        return self._eval_step("test")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.net)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.net.parameters(), lr=self.hparams.lr, weight_decay=0.0)

    # -- sampling ---------------------------------------------------------------------------------
    def sample(self, n: int, labels: Tensor | None = None, masks: Tensor | None = None,
               generator: torch.Generator | None = None, sampler: str | None = None,
               num_inference_steps: int | None = None, batch_size: int | None = None) -> Tensor:
        """Draw ``n`` new images with the internal statistics of the learnt one (EMA weights).

        Args:
            sampler, num_inference_steps: override the hyperparameters of the same names.
            batch_size: samples denoised together (default: all ``n``).
        """
        self.check_sample_args(n, labels, masks, generator)
        if not self.has_image:
            raise ValueError("SinDDM has no training image yet: train it (trainer.fit) or call fit_image() first")
        sampler = sampler or self.hparams.sampler
        steps = num_inference_steps or self.hparams.num_inference_steps
        _check_sampler(sampler, steps, self.schedule.num_train_timesteps)
        batch_size = batch_size or n
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        net = self.ema.module if self.ema is not None else self.net
        with torch.inference_mode():
            t_start, gammas = self.blur_schedule()
            out = torch.cat([
                self._sample_batch(net, min(batch_size, n - start), t_start, gammas, generator, sampler, steps)
                for start in range(0, n, batch_size)
            ])
        return out.clone()  # leaves inference mode: usable in autograd graphs downstream

    def _sample_batch(self, net: nn.Module, n: int, t_start: list[int], gammas: Tensor,
                      generator: torch.Generator | None, sampler: str, steps: int) -> Tensor:
        scheduler = build_sampler(sampler, self.schedule)
        scheduler.set_timesteps(steps)  # kept on the CPU, as in diffusers' pipelines
        stride = self.schedule.num_train_timesteps // steps  # how both schedulers find the previous step
        # DDIM: recompute eps from the clipped x0, else at t ~ T (sqrt(abar) = 5e-4 under the cosine
        # schedule) eps and x0 disagree and the deterministic chain drifts out of range (NaN at 100 steps)
        step_kwargs = {"use_clipped_model_output": True} if sampler == "ddim" else {}
        dtype = next(net.parameters()).dtype
        x = blurry = None
        for s, size in enumerate(self.scale_sizes):
            noise = randn_tensor((n, self.in_channels) + size, generator=generator,
                                 device=self.device, dtype=dtype)
            timesteps = scheduler.timesteps
            if s == 0:
                x = noise
            else:
                blurry = resize(x, size).clamp(-1.0, 1.0)
                timesteps = timesteps[timesteps < t_start[s]]  # the part of the chain trained at this scale
                if len(timesteps) == 0:
                    x = blurry
                    continue
                x = self.noise_scheduler.add_noise(blurry, noise, timesteps[:1])
            scale = torch.full((n,), s, device=self.device)
            for t in timesteps:
                eps = net(x, t.to(self.device).expand(n), scale)
                if blurry is not None:
                    x = self._reblur(x, eps, blurry, int(t), int(t) - stride, gammas[s])
                x = scheduler.step(eps, t, x, generator=generator, **step_kwargs).prev_sample
        return x.clamp(-1.0, 1.0)

    def _reblur(self, x: Tensor, eps: Tensor, blurry: Tensor, t: int, prev_t: int, gamma: Tensor) -> Tensor:
        """Shift ``x_t`` so that the scheduler's x0 estimate is the sharp estimate re-blurred to ``prev_t``.

        SinDDM's reverse step: sharpen the predicted mix with the known blurry image, mix again with
        the blur weight of the next timestep, keep the predicted noise direction.
        """
        abar = float(self.noise_scheduler.alphas_cumprod[t])
        cap = self.hparams.max_blur_weight
        g_t = min(float(gamma[t]), cap)
        g_prev = min(float(gamma[prev_t]), cap) if prev_t >= 0 else 0.0
        mix_t = (x - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
        sharp = ((mix_t - g_t * blurry) / (1 - g_t)).clamp(-1.0, 1.0)
        mix_prev = g_prev * blurry + (1 - g_prev) * sharp
        return x + math.sqrt(abar) * (mix_prev - mix_t)


def _check_sampler(sampler: str, steps: int, num_train_timesteps: int) -> None:
    if sampler not in SINDDM_SAMPLERS:
        raise ValueError(f"sampler must be one of {SINDDM_SAMPLERS} (single-step samplers), got {sampler!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must be an integer in [1, {num_train_timesteps}], got {steps!r}")
