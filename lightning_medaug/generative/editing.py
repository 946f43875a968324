"""Edits of real images by a trained diffusion model: SDEdit, DA-Fusion and Diff-Mix.

SDEdit (Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with Stochastic Differential
Equations") noises a real image part of the way along the forward process and denoises it back with
the model's sampler; the *strength* ``s`` in (0, 1] says how far. DA-Fusion (Trabucco et al. 2023,
"Effective Data Augmentation With Diffusion Models") trains on such edits of the real training
images, guided to their own class. Diff-Mix (Wang et al. 2024, "Enhance Image Classification via
Inter-Class Image Mixup with Diffusion Model", CVPR) guides them to *another* class instead
(counterfactual edits) and trains on the edit with a soft label.

Strength rule, the one of diffusers' image-to-image pipelines: with ``K`` inference steps on the
sampler's time grid ``t_0 > t_1 > ... > t_{K-1}``, an edit at strength ``s`` runs the last
``k = int(K * s)`` steps: it noises the image with ``scheduler.add_noise`` to ``t_{K-k}`` and
denoises from there, guided (classifier-free) to the target class. At ``s = 1`` it starts from
``t_0`` (T - 1 on the pixel samplers' trailing grid), where almost nothing of the image is left, so
an edit is a fresh sample of the target class; with ``k = 0`` (``s < 1 / K``) nothing is noised and
the image comes back as it went in (through the autoencoder, for latent diffusion).

Soft-label rule (Diff-Mix): an edit of an image of class ``a`` towards class ``b`` at strength ``s``
is labelled ``(1 - s**gamma) * onehot(a) + s**gamma * onehot(b)``; ``gamma = 1`` (the default) is
the linear rule, Diff-Mix tunes ``gamma``. An edit to its own class keeps its one-hot label.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from lightning_medaug.data.batch import IMAGE_KEY, LABEL_KEY, MASK_KEY
from lightning_medaug.generative.cuda_graphs import use_cuda_graph
from lightning_medaug.generative.schedulers import build_sampler

__all__ = ["DiffusionEditing", "check_strength", "edit_steps", "soft_labels"]


def check_strength(strength: float) -> float:
    """``strength`` as a float; ValueError unless it lies in (0, 1]."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}") from None
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"strength must be in (0, 1] (the fraction of the noise schedule an edit goes back, "
                         f"1 = from pure noise), got {strength!r}")
    return value


def edit_steps(strength: float, num_inference_steps: int) -> int:
    """How many of ``num_inference_steps`` sampler steps an edit at ``strength`` runs: ``int(K * s)``."""
    # the small epsilon keeps 0.3 * 10 = 2.9999999999999996 at 3 steps
    return min(num_inference_steps, int(num_inference_steps * check_strength(strength) + 1e-9))


def soft_labels(labels: Tensor, target_labels: Tensor, strength: float, num_classes: int,
                gamma: float = 1.0) -> Tensor:
    """Diff-Mix soft labels ``(1 - s**gamma) * onehot(labels) + s**gamma * onehot(target_labels)``, float32 (N, C).

    Rows whose target equals the source stay one-hot.
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    weight = check_strength(strength) ** gamma
    source = F.one_hot(torch.as_tensor(labels).long().reshape(-1), num_classes).float()
    target = F.one_hot(torch.as_tensor(target_labels).long().reshape(-1), num_classes).float()
    return (1.0 - weight) * source + weight * target


class DiffusionEditing:
    """Adds :meth:`edit` to a :class:`~.diffusion.DiffusionGenerator` (pixel or latent space alike:
    the images go through the family's own ``to_diffusion_space`` / ``from_diffusion_space``)."""

    def edit(self, images: Tensor, strength: float, labels: Tensor | None = None,
             target_labels: Tensor | None = None, masks: Tensor | None = None,
             guidance_scale: float | None = None, num_inference_steps: int | None = None,
             sampler: str | None = None, generator: torch.Generator | None = None,
             batch_size: int | None = None, cuda_graph: bool | None = None) -> Tensor:
        """Edits of real ``images`` (N, C, *S) in [-1, 1] at ``strength`` (see the module docstring).

        Args:
            images: the real images, in the layout and range of the training data.
            strength: in (0, 1]: how far along the noise schedule the images are taken back.
            labels: int (N,) classes of ``images``; required by class-conditional models.
            target_labels: int (N,) classes to edit towards (counterfactuals); default ``labels``.
                Their soft labels: :meth:`edit_soft_labels`.
            masks: (N, 1, *S) conditioning masks, for mask-conditional models.
            guidance_scale, num_inference_steps, sampler: as for ``sample``; ``num_inference_steps``
                is the length of the full schedule, of which an edit runs ``int(K * strength)``.
            generator: seeds the added noise (and ancestral sampling); same seed, same edits.
            batch_size: images edited together (default: all).
            cuda_graph: as for ``sample``.

        Returns edits with the shape of ``images``, in [-1, 1], as a normal (not inference) tensor.
        """
        strength = check_strength(strength)
        images = torch.as_tensor(images)
        if images.ndim < 1 or tuple(images.shape[1:]) != tuple(self.image_shape) or images.shape[0] < 1:
            raise ValueError(f"images must have shape (N, {', '.join(map(str, self.image_shape))}) with N >= 1, "
                             f"got {tuple(images.shape)}")
        n = images.shape[0]
        if self.num_classes > 0 and labels is None:
            raise ValueError(f"{type(self).__name__} is class-conditional: pass the images' labels (and "
                             "target_labels for counterfactual edits)")
        if self.num_classes == 0 and target_labels is not None:
            raise ValueError(f"{type(self).__name__} is unconditional (num_classes=0): it cannot edit towards "
                             "target_labels")
        labels, masks = self.check_sample_args(n, labels, masks, generator)
        targets = labels if target_labels is None else self.check_sample_args(n, target_labels, masks, generator)[0]
        sampler, steps, scale = self.sampling_settings(sampler, num_inference_steps, guidance_scale)
        batch_size = batch_size or n
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        net, graphed = self.sampling_net(), use_cuda_graph(cuda_graph, self.device)
        images = images.to(self.device)
        chunks = []
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                part = slice(start, min(n, start + batch_size))
                batch = {IMAGE_KEY: images[part]}
                if labels is not None:
                    batch[LABEL_KEY] = labels[part]
                if masks is not None:
                    batch[MASK_KEY] = masks[part]
                chunks.append(self._edit_batch(net, batch, None if targets is None else targets[part], strength,
                                               generator, sampler, steps, scale, graphed))
            out = torch.cat(chunks)
        return out.clone(memory_format=torch.contiguous_format)

    def edit_soft_labels(self, labels: Tensor, target_labels: Tensor, strength: float,
                         gamma: float = 1.0) -> Tensor:
        """The Diff-Mix soft labels of edits from ``labels`` towards ``target_labels`` (see :func:`soft_labels`)."""
        if self.num_classes == 0:
            raise ValueError(f"{type(self).__name__} is unconditional (num_classes=0): its edits have no class")
        return soft_labels(labels, target_labels, strength, self.num_classes, gamma)

    def _edit_batch(self, net: Any, batch: dict[str, Tensor], targets: Tensor | None, strength: float,
                    generator: torch.Generator | None, sampler: str, steps: int, scale: float,
                    graphed: bool) -> Tensor:
        x0, _, cond = self.to_diffusion_space(batch)
        x0 = x0.to(next(net.parameters()).dtype)
        k = edit_steps(strength, steps)
        if k > 0:
            scheduler = build_sampler(sampler, self.schedule)
            scheduler.set_timesteps(steps)  # timesteps stay on the CPU, as in sample()
            begin = (steps - k) * scheduler.order
            timesteps = scheduler.timesteps[begin:]
            if hasattr(scheduler, "set_begin_index"):  # multistep solvers index their tables from here
                scheduler.set_begin_index(begin)
            noise = randn_tensor(tuple(x0.shape), generator=generator, device=self.device, dtype=x0.dtype)
            x = scheduler.add_noise(x0, noise, timesteps[:1].repeat(x0.shape[0]))
            x0 = self.denoise_loop(net, scheduler, timesteps, x, targets, cond, generator, scale, graphed)
        return self.from_diffusion_space(x0, targets)
