"""Adaptive discriminator augmentation (ADA, Karras et al. 2020, "Training Generative Adversarial
Networks with Limited Data", NeurIPS).

Every image shown to the discriminator (real or fake, in the D and the G step) is augmented, and
each transform of the pipeline is applied to a sample with probability ``p``. Instead of fixing
``p`` by hand, ADA measures how much the discriminator overfits with the heuristic

    r_t = E[sign(D(x_real))]

(1: D is sure of every real, i.e. it memorised them; 0: no overfitting) and every ``interval``
discriminator steps moves ``p`` by ``sign(r_t - target) * images_seen / (speed_kimg * 1000)``, so
``p`` can go from 0 to 1 in ``speed_kimg`` thousand images. The paper's target is 0.6.

The transforms are DiffAugment's (Zhao et al. 2020; :mod:`lightning_medaug.generative.diffaugment`,
mostly kornia's), each applied per sample with probability ``p``: they are differentiable (the
generator gets gradients through them) and handle 2D images and 3D volumes. This is a smaller
pipeline than the paper's 18 transforms. Applying each with probability ``p < 1`` is what keeps
augmentations from leaking into the generated images (Karras 2020, Sec. 2.2: leaks appeared only
above p ~ 0.8 for their transforms); ``max_p`` caps ``p`` when samples start to look augmented.
The heuristic that moves ``p`` is ours: kornia has none.
``p`` and the running sign statistics are buffers, so checkpoints and ``save_pretrained`` keep them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_medaug.data.batch import IMAGE_RANGE
from lightning_medaug.generative.diffaugment import DiffAugment

__all__ = ["AdaptiveAugment"]


class AdaptiveAugment(nn.Module):
    """DiffAugment transforms applied with an adaptive probability ``p`` (Karras et al. 2020).

    Call :meth:`forward` on every discriminator input and :meth:`observe` with the
    discriminator's logits on the (augmented) reals after every D step.

    Args:
        policy: comma-separated subset of ``"color,translation,cutout"``; ``""`` disables it.
        target: r_t the heuristic steers towards (paper: 0.6).
        interval: D steps between two adjustments of ``p`` (paper: 4).
        speed_kimg: thousands of real images over which ``p`` may go from 0 to 1 (paper: 500,
            for data sets of tens of thousands of images; smaller reacts faster).
        initial_p: starting probability.
        max_p: upper bound of ``p``; keep it below 1 so some reals are always seen un-augmented.
        translation_ratio, cutout_ratio, fill: see :class:`~lightning_medaug.generative.diffaugment.DiffAugment`.
    """

    p: Tensor

    def __init__(self, policy: str = "color,translation,cutout", target: float = 0.6, interval: int = 4,
                 speed_kimg: float = 100.0, initial_p: float = 0.0, max_p: float = 1.0,
                 translation_ratio: float = 0.125, cutout_ratio: float = 0.5, fill: float = IMAGE_RANGE[0]):
        super().__init__()
        if not 0.0 < target < 1.0:
            raise ValueError(f"ADA target must be in (0, 1) (the paper uses 0.6), got {target}")
        if interval < 1:
            raise ValueError(f"ADA interval must be at least 1 discriminator step, got {interval}")
        if speed_kimg <= 0:
            raise ValueError(f"ADA speed_kimg must be positive (thousands of images from p=0 to 1), got {speed_kimg}")
        if not 0.0 < max_p <= 1.0:
            raise ValueError(f"ADA max_p must be in (0, 1], got {max_p}")
        if not 0.0 <= initial_p <= max_p:
            raise ValueError(f"ADA initial_p must be in [0, max_p={max_p}], got {initial_p}")
        self.target, self.interval, self.speed_kimg, self.max_p = target, interval, speed_kimg, max_p
        # holds no state: the state_dict stays p and the sign statistics
        self.pipeline = DiffAugment(policy, translation_ratio, cutout_ratio, fill)
        self.register_buffer("p", torch.tensor(float(initial_p)))
        # Sum of sign(D(real)), number of reals and D steps since the last adjustment: buffers, so a
        # resumed run continues the same accumulation window.
        self.register_buffer("sign_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("num_seen", torch.zeros((), dtype=torch.float64))
        self.register_buffer("num_calls", torch.zeros((), dtype=torch.long))
        #: r_t of the last adjustment (NaN before the first), for logging.
        self.register_buffer("last_rt", torch.tensor(float("nan")))

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment ``x`` (N, C, *spatial): each transform hits each sample with probability ``p``."""
        p = float(self.p)
        if p == 0.0:
            return x  # the common early-training case costs nothing
        return self.pipeline(x, generator, p)

    @torch.no_grad()
    def observe(self, real_logits: Tensor) -> bool:
        """Accumulate sign(D(real)); every ``interval`` calls adjust ``p``. Returns whether it did."""
        self.sign_sum += real_logits.detach().float().sign().sum().to(self.sign_sum.dtype)
        self.num_seen += real_logits.numel()
        self.num_calls += 1
        if int(self.num_calls) % self.interval != 0 or float(self.num_seen) == 0:
            return False
        rt = self.sign_sum / self.num_seen
        # Karras 2020, Sec. 3: the step size makes p go from 0 to 1 in speed_kimg thousand reals.
        step = torch.sign(rt - self.target) * self.num_seen / (self.speed_kimg * 1000.0)
        self.p.copy_((self.p + step.to(self.p.dtype)).clamp(0.0, self.max_p))
        self.last_rt.copy_(rt.to(self.last_rt.dtype))
        self.sign_sum.zero_()
        self.num_seen.zero_()
        return True

    def extra_repr(self) -> str:
        return f"policy={self.pipeline.policy!r}, target={self.target}, p={float(self.p):.3f}"
