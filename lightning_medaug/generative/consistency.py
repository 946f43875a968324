"""Consistency distillation: a trained diffusion model made to sample in 1 to 4 network calls.

Consistency models (Song et al. 2023, "Consistency Models") learn a function ``f(x_t, t)`` that maps
every point of one probability-flow ODE trajectory to the trajectory's start ``x_0``. Consistency
distillation learns it from a trained diffusion model, the teacher, as latent consistency models do
(Luo et al. 2023, "Latent Consistency Models"; diffusers' ``examples/consistency_distillation``):

1. a real batch is noised to a timestep ``t_{n+k}`` of a grid of ``N`` solver steps
   (``num_solver_steps``; ``k = T // N`` training timesteps apart, LCM's skipping step);
2. the frozen teacher takes one DDIM step (Song et al. 2021; eta = 0) from there to
   ``t_n = t_{n+k} - k``, guided by classifier-free guidance at ``guidance_scale`` (Ho & Salimans
   2022): the guidance is distilled into the student, so sampling needs no doubled batch;
3. the student at ``(x_{t_{n+k}}, t_{n+k})`` is pulled towards the target network, an EMA of the
   student, at ``(x_{t_n}, t_n)``, under a Pseudo-Huber loss (Song & Dhariwal 2023, "Improved
   Techniques for Training Consistency Models") or L2.

Design choices, stated here because the papers leave them open:

* the student is a copy of the teacher's (EMA) network and keeps its prediction type (v or epsilon);
  ``f = c_skip(t) x_t + c_out(t) x0_hat`` with LCM's boundary scalings (``LCMScheduler``'s, with
  ``timestep_scaling``), so ``f(x, 0) = x``;
* the teacher's step is DDIM's without clipping its x0 estimate, though the library's samplers clip
  in pixel space: a clipped x0 beside the unclipped noise estimate leaves the teacher's trajectory.
  On 8 px phantoms (a DDPM trained 100 steps, then 1,500 distillation steps) clipping drew 1-4 step
  samples 0.10-0.16 brighter than the data on average; without it they stayed within 0.02, and one
  step came three times closer (squared error) to the teacher's 50-step DDIM sample from the same
  noise. At the grid's first point the step goes to the clean sample (DDIM's ``set_alpha_to_one``), where the
  target is the teacher's own x0 estimate;
* the target network's EMA (the library's :class:`~.ema.EMA`, with its warm-up) also samples, and is
  all ``save_pretrained`` keeps of the networks: not the teacher's, nor the live student;
* sampling is diffusers' ``LCMScheduler``: denoise to x0, re-noise to the next of
  ``num_inference_steps`` timesteps of the same grid (multistep consistency sampling).

A caveat: the student's x0 estimate at ``t = T - 1`` divides by sqrt(alpha_bar), 5e-5 under the
cosine schedule, for a teacher that predicts the noise (``prediction_type="epsilon"``); teachers
with v-prediction (the library's default) have no such division.

Everything else (the data space, class and mask conditioning, padding, 2D and 3D) is the teacher's:
its ``to_diffusion_space``, ``denoise`` and ``from_diffusion_space`` are used as they are.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from diffusers import LCMScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from lightning_medaug.generative.base import SharedStepModule
from lightning_medaug.generative.cuda_graphs import use_cuda_graph
from lightning_medaug.generative.diffusion_teacher import load_diffusion_teacher
from lightning_medaug.generative.ema import EMA
from lightning_medaug.registry import register_generator
from lightning_medaug.sizes import SizeLike, spatial_size
from lightning_medaug.validation import check_at_least, check_choice, check_positive

__all__ = ["ConsistencyDistillation"]

LOSS_TYPES = ("huber", "l2")


@register_generator("consistency")
class ConsistencyDistillation(SharedStepModule):
    """Consistency distillation (Song et al. 2023) of a trained DDPM of this library into a 1-4 step generator.

    Args:
        teacher: the trained diffusion model: a ``save_pretrained`` folder or a ``.ckpt`` of
            ``medaug fit`` (see :func:`~.diffusion_teacher.load_diffusion_teacher`).
        teacher_config: the teacher's ``config.json`` content; filled in from ``teacher`` and used,
            when present, to rebuild the teacher's architecture without its file (a distilled model
            loaded from its own folder). Pass ``teacher``, not this.
        spatial_dims, in_channels, image_size, num_classes: read from the teacher; when given, they
            must agree with it.
        num_solver_steps: N, the teacher's solver grid; each distillation step spans
            ``num_train_timesteps // N`` training timesteps, which N must divide.
        guidance_scale: classifier-free guidance folded into the teacher's step (1 = none); default
            the teacher's own ``guidance_scale``. Ignored for an unconditional teacher.
        loss_type: ``"huber"`` (Pseudo-Huber over each sample) or ``"l2"``.
        huber_c: the Pseudo-Huber constant; default ``0.00054 * sqrt(d)`` for ``d`` values per sample
            (Song & Dhariwal 2023).
        timestep_scaling: LCM's scale of ``t`` in the boundary scalings ``c_skip``, ``c_out``.
        target_decay: EMA decay of the target network (LCM: 0.95).
        num_inference_steps: default sampling steps, 1 to N.
        lr: AdamW learning rate of the student.
    """

    ema_pair = ("student", "target")
    #: the teacher's denoising networks: training only (its autoencoder, for latent diffusion, samples)
    training_only_modules = ("teacher.unet", "teacher.ema")

    def __init__(self, teacher: str | None = None, teacher_config: dict[str, Any] | None = None,
                 spatial_dims: int | None = None, in_channels: int | None = None, image_size: SizeLike | None = None,
                 num_classes: int | None = None, num_solver_steps: int = 50, guidance_scale: float | None = None,
                 loss_type: str = "huber", huber_c: float | None = None, timestep_scaling: float = 10.0,
                 target_decay: float = 0.95, num_inference_steps: int = 4, lr: float = 1e-4):
        teacher_model, config = load_diffusion_teacher(teacher, teacher_config)
        shared = {"spatial_dims": teacher_model.spatial_dims, "in_channels": teacher_model.in_channels,
                  "image_size": teacher_model.image_size, "num_classes": teacher_model.num_classes}
        _check_agrees({"spatial_dims": spatial_dims, "in_channels": in_channels, "image_size": image_size,
                       "num_classes": num_classes}, shared, teacher_model.spatial_size)
        super().__init__(**shared)
        self.save_hyperparameters()
        self.hparams.update(shared, teacher_config=config)
        schedule = teacher_model.schedule
        check_at_least(1, num_solver_steps=num_solver_steps)
        if schedule.num_train_timesteps % num_solver_steps:
            raise ValueError(f"num_solver_steps={num_solver_steps} must divide the teacher's num_train_timesteps="
                             f"{schedule.num_train_timesteps} (e.g. 50 for 1000)")
        check_choice("loss_type", loss_type, LOSS_TYPES)
        check_positive(timestep_scaling=timestep_scaling, lr=lr)
        if huber_c is not None:
            check_positive(huber_c=huber_c)
        if not 0.0 <= target_decay < 1.0:
            raise ValueError(f"target_decay must be in [0, 1), got {target_decay}")
        _check_steps(num_inference_steps, num_solver_steps)
        self.guidance = teacher_model.hparams.guidance_scale if guidance_scale is None else float(guidance_scale)
        if self.guidance < 0:
            raise ValueError(f"guidance_scale must be >= 0 (1 = no guidance), got {guidance_scale}")
        self.hparams.update(guidance_scale=self.guidance)  # the scale distilled in, recorded in config.json
        self.requires_masks = teacher_model.requires_masks
        self.teacher = teacher_model
        # the student starts as the network the teacher samples with (its EMA when it keeps one)
        self.student = copy.deepcopy(self.teacher_net).requires_grad_(True).train()
        self.target = EMA(self.student, target_decay).eval()
        self.huber_c = huber_c if huber_c is not None else 0.00054 * math.sqrt(math.prod(teacher_model.data_shape))
        self.register_buffer("alphas_cumprod", teacher_model.noise_scheduler.alphas_cumprod.clone(), persistent=False)
        self._scalings = self.lcm_scheduler()  # its boundary scalings c_skip(t), c_out(t)
        # the grid t_1 < ... < t_N the teacher steps on: LCMScheduler's, which sampling then uses
        self._scalings.set_timesteps(num_solver_steps)
        self.register_buffer("solver_timesteps", self._scalings.timesteps.flip(0), persistent=False)

    # -- the frozen teacher --------------------------------------------------------------------------
    @property
    def teacher_net(self) -> nn.Module:
        """The teacher's network: its EMA when it keeps one, as the teacher samples."""
        return self.teacher.ema.module if self.teacher.ema is not None else self.teacher.unet

    def train(self, mode: bool = True) -> ConsistencyDistillation:
        super().train(mode)
        self.teacher.eval()  # frozen: no dropout, and a latent teacher's autoencoder stays as it is
        return self

    def on_fit_start(self) -> None:
        absent = sorted(k for k in self.untrained_parts if k.startswith("teacher."))
        if absent:
            raise ValueError("this model was loaded from an inference export, which has no teacher weights "
                             f"({absent[0]}, ...): distil from teacher=<trained ddpm folder>, or resume from a "
                             "Lightning checkpoint")

    def lcm_scheduler(self) -> LCMScheduler:
        """A fresh ``LCMScheduler`` (it keeps state between steps) on the teacher's noise schedule and
        this model's solver grid; x0 estimates are clipped to [-1, 1] in pixel space."""
        schedule = self.teacher.schedule
        return LCMScheduler(**schedule.diffusers_config(), original_inference_steps=self.hparams.num_solver_steps,
                            clip_sample=schedule.clip_sample, timestep_scaling=self.hparams.timestep_scaling)

    # -- the consistency function ----------------------------------------------------------------------
    def _alpha(self, t: Tensor, ndim: int) -> Tensor:
        """alpha_bar(t) as (N, 1, ...); 1 (the clean sample) where ``t < 0``."""
        alpha = torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], torch.ones_like(self.alphas_cumprod[0]))
        return alpha.reshape(-1, *([1] * (ndim - 1)))

    def _x0_and_noise(self, out: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The network's output at ``(x_t, t)`` as estimates of x0 and of the noise."""
        alpha = self._alpha(t, x_t.ndim)
        a, s = alpha.sqrt(), (1 - alpha).sqrt()
        if self.teacher.schedule.prediction_type == "epsilon":
            return (x_t - s * out) / a, out
        return a * x_t - s * out, a * out + s * x_t  # v-prediction (Salimans & Ho 2022)

    def consistency(self, net: nn.Module, x_t: Tensor, t: Tensor, labels: Tensor | None,
                    cond: Tensor | None) -> Tensor:
        """``f(x_t, t) = c_skip(t) x_t + c_out(t) x0_hat``: ``x_t`` itself at ``t = 0``."""
        out = self.teacher.denoise(net, x_t, t, labels, cond)
        c_skip, c_out = self._scalings.get_scalings_for_boundary_condition_discrete(t.float())
        shape = (-1,) + (1,) * (x_t.ndim - 1)
        return c_skip.reshape(shape) * x_t + c_out.reshape(shape) * self._x0_and_noise(out, x_t, t)[0]

    @torch.no_grad()
    def teacher_step(self, x_t: Tensor, t: Tensor, t_prev: Tensor, labels: Tensor | None,
                     cond: Tensor | None) -> Tensor:
        """One guided DDIM step (eta = 0) of the teacher from ``x_t`` at ``t`` to ``t_prev`` (per sample)."""
        net = self.teacher_net
        if labels is not None and self.guidance != 1.0:  # cond and uncond in one batched pass
            null = torch.full_like(labels, self.num_classes)
            out = self.teacher.denoise(net, torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, null]),
                                       None if cond is None else torch.cat([cond, cond]))
            out_cond, out_uncond = out.chunk(2)
            out = out_uncond + self.guidance * (out_cond - out_uncond)
        else:
            out = self.teacher.denoise(net, x_t, t, labels, cond)
        x0, noise = self._x0_and_noise(out, x_t, t)  # not clipped: see the module docstring
        alpha_prev = self._alpha(t_prev, x_t.ndim)
        return alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * noise

    # -- training ------------------------------------------------------------------------------------
    def _shared_step(self, batch: Any, stage: str) -> Tensor:
        x0, labels, cond = self.teacher.to_diffusion_space(batch)
        n = x0.shape[0]
        skip = self.teacher.schedule.num_train_timesteps // self.hparams.num_solver_steps
        t = self.solver_timesteps[torch.randint(0, len(self.solver_timesteps), (n,), device=x0.device)]
        t_prev = t - skip  # -1 below the grid's first point: the clean sample
        x_t = self.teacher.noise_scheduler.add_noise(x0, torch.randn_like(x0), t)
        x_prev = self.teacher_step(x_t, t, t_prev, labels, cond)
        with torch.no_grad():
            target = self.consistency(self.target.module, x_prev, t_prev.clamp(min=0), labels, cond)
        pred = self.consistency(self.student, x_t, t, labels, cond)
        diff = (pred.float() - target.float()).reshape(n, -1)
        if self.hparams.loss_type == "huber":
            loss = ((diff.square().sum(1) + self.huber_c**2).sqrt() - self.huber_c).mean()
        else:
            loss = diff.square().mean()
        self.log_terms(stage, {"loss": loss}, n)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.target.update(self.student)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.student.parameters(), lr=self.hparams.lr, weight_decay=0.0)

    # -- sampling ------------------------------------------------------------------------------------
    def sampling_net(self) -> nn.Module:
        """The target network, prepared for a whole sampling loop (see ``TimestepUNet.for_sampling``)."""
        net = self.target.module
        return net.for_sampling() if hasattr(net, "for_sampling") else net

    def sample(self, n: int, labels: Tensor | None = None, masks: Tensor | None = None,
               generator: torch.Generator | None = None, num_inference_steps: int | None = None,
               batch_size: int | None = None, cuda_graph: bool | None = None) -> Tensor:
        """Draw ``n`` samples in 1 to ``num_solver_steps`` network calls (see :class:`GenerativeModule.sample`).

        Args:
            num_inference_steps: network calls per sample (default: the hyperparameter); the
                guidance the model was distilled with is built in.
            batch_size: samples denoised together (default: all ``n``).
            cuda_graph: replay the network as a CUDA graph; default: on CUDA devices.
        """
        labels, masks = self.check_sample_args(n, labels, masks, generator)
        steps = self.hparams.num_inference_steps if num_inference_steps is None else num_inference_steps
        _check_steps(steps, self.hparams.num_solver_steps)
        batch_size = batch_size or n
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        net, graphed = self.sampling_net(), use_cuda_graph(cuda_graph, self.device)
        dtype = next(net.parameters()).dtype
        chunks = []
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                part = slice(start, min(n, start + batch_size))
                part_labels = None if labels is None else labels[part]
                scheduler = self.lcm_scheduler()
                scheduler.set_timesteps(steps)  # on the CPU, as in diffusers' pipelines
                x = randn_tensor((part.stop - part.start,) + self.teacher.data_shape, generator=generator,
                                 device=self.device, dtype=dtype)
                cond = self.teacher.sample_condition(None if masks is None else masks[part])
                # guidance is distilled in: one pass per step (scale 1)
                x = self.teacher.denoise_loop(net, scheduler, scheduler.timesteps, x, part_labels, cond, generator,
                                              1.0, graphed)
                chunks.append(self.teacher.from_diffusion_space(x, part_labels))
            out = torch.cat(chunks)
        return out.clone(memory_format=torch.contiguous_format)


def _check_steps(steps: int, num_solver_steps: int) -> None:
    if not isinstance(steps, int) or not 1 <= steps <= num_solver_steps:
        raise ValueError(f"num_inference_steps must be an integer in [1, num_solver_steps={num_solver_steps}], "
                         f"got {steps!r}")


def _check_agrees(given: dict[str, Any], teacher: dict[str, Any], teacher_size: tuple[int, ...]) -> None:
    """Settings read from the teacher may be given too (a saved config repeats them), but as the teacher has them."""
    for name, value in given.items():
        if value is None:
            continue
        same = (spatial_size(value, teacher["spatial_dims"]) == teacher_size if name == "image_size"
                else value == teacher[name])
        if not same:
            raise ValueError(f"{name}={value} but the teacher has {name}={teacher[name]}: leave {name} unset "
                             "(it is read from the teacher)")

