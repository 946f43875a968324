"""Differentiable augmentation for data-efficient GAN training (DiffAugment, Zhao et al. 2020).

With little data a discriminator memorises the training images and its gradients stop being
useful to the generator. DiffAugment applies the same family of random, *differentiable*
transforms to real and generated images before every discriminator call (in both the D and the
G step), so the discriminator never sees un-augmented images and the generator still gets
gradients through the transform. Every call draws new parameters for every sample, so reals and
fakes get independent draws. Transforms:

* ``color``: random brightness (+U(-0.5, 0.5)), saturation (x U(0, 2) around the grey level)
  and contrast (x U(0.5, 1.5) around the image mean), by kornia's ``RandomBrightness`` and
  ``ColorJitter``; a volume goes through them as a tall 2D image, since they ignore layout;
* ``translation``: whole-pixel shift of up to ``translation_ratio`` of each axis, filled with
  ``fill``, by kornia's ``RandomTranslate`` (2D) and ``RandomAffine3D`` (3D) with nearest resampling;
* ``cutout``: one box of ``cutout_ratio`` of each axis set to ``fill``, our own (see ``_cutout``).

``fill`` defaults to -1, the background of the library's [-1, 1] images (Zhao used 0).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from lightning_medaug.data.batch import IMAGE_RANGE

__all__ = ["DIFFAUGMENT_POLICIES", "DiffAugment", "diff_augment"]

DIFFAUGMENT_POLICIES = ("color", "translation", "cutout")

# kornia's colour ops clamp to [0, 1]; Zhao's (and ADA's) do not, and a clamp would stop the
# generator's gradient at every saturated pixel. Images in [-1, 1] are mapped into the middle of
# [0, 1] with room for the largest value the three ops can reach (|x| <= 1.5 after brightness,
# <= 7.5 after saturation x2 of RGB, <= 30 after contrast x1.5), so the clamp never bites; the
# float32 rounding this costs is below 4e-6 of the image range.
_COLOR_HALF_RANGE = 32.0


def parse_policy(policy: str) -> tuple[str, ...]:
    """``"color,translation"`` -> ``("color", "translation")``; ``""`` -> ``()``; ValueError on unknown names."""
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [p for p in names if p not in DIFFAUGMENT_POLICIES]
    if unknown:
        raise ValueError(
            f"unknown DiffAugment policy {unknown}: use a comma-separated subset of "
            f"{DIFFAUGMENT_POLICIES}, or '' for none"
        )
    return names


@contextmanager
def _kornia_rng(generator: torch.Generator | None) -> Iterator[None]:
    """kornia draws from torch's global CPU generator: a given ``generator`` seeds a forked copy of it."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield


def _cutout(x: Tensor, generator: torch.Generator | None, ratio: float, fill: float, p: float) -> Tensor:
    # Ours: kornia's RandomErasing is 2D only, and it keeps the box inside the image, where Zhao draws
    # the centre anywhere and clips the box at the border. One loop over the axes serves 2D and 3D.
    n, spatial = x.shape[0], x.shape[2:]
    device = generator.device if generator is not None else x.device
    chosen = torch.ones(n, dtype=torch.bool, device=x.device)
    if p < 1.0:
        chosen = torch.rand(n, generator=generator, device=device).to(x.device) < p
    inside = chosen.view((n, 1) + (1,) * len(spatial))
    for axis, size in enumerate(spatial):
        cut = int(size * ratio + 0.5)
        start = torch.randint(0, size, (n,), generator=generator, device=device).to(x.device) - cut // 2
        view = [1] * (len(spatial) + 2)
        view[axis + 2] = size
        coords = torch.arange(size, device=x.device).view(view)
        start = start.view((n,) + (1,) * (len(spatial) + 1))
        inside = inside & (coords >= start) & (coords < start + cut)
    return torch.where(inside, torch.full_like(x, fill), x)


class DiffAugment(nn.Module):
    """DiffAugment (Zhao et al. 2020) on a batch (N, C, *spatial), 2D or 3D; no parameters.

    Args:
        policy: comma-separated subset of ``"color,translation,cutout"``; ``""`` is the identity.
        translation_ratio: largest shift as a fraction of each axis (Zhao: 1/8).
        cutout_ratio: side of the cut-out box as a fraction of each axis (Zhao: 1/2).
        fill: value of pixels shifted in or cut out.
    """

    def __init__(self, policy: str = "color,translation,cutout", translation_ratio: float = 0.125,
                 cutout_ratio: float = 0.5, fill: float = IMAGE_RANGE[0]):
        super().__init__()
        self.transforms = parse_policy(policy)
        self.policy = ",".join(self.transforms)
        if not 0.0 <= translation_ratio < 0.5:
            raise ValueError(f"translation_ratio must be in [0, 0.5), got {translation_ratio}")
        if not 0.0 < cutout_ratio < 1.0:
            raise ValueError(f"cutout_ratio must be in (0, 1), got {cutout_ratio}")
        self.translation_ratio, self.cutout_ratio, self.fill = translation_ratio, cutout_ratio, fill
        brightness = 0.5 / (2 * _COLOR_HALF_RANGE)  # +-0.5 of [-1, 1] in the mapped range
        r = translation_ratio
        # A plain dict, not submodules: kornia modules may hold buffers (RandomBrightness does), which
        # would change the state_dict of every GAN and break loading its saved checkpoints. Unmoved by
        # .to(), they draw their parameters on the CPU, which is also what seeds them (_kornia_rng).
        self._kornia = {
            "color": (K.RandomBrightness((1 - brightness, 1 + brightness), clip_output=False),
                      K.ColorJitter(contrast=0.5, saturation=1.0, order=(2, 1))),  # saturation, then contrast
            "translation": {2: K.RandomTranslate((-r, r), (-r, r), resample="nearest"),
                            3: K.RandomAffine3D(0.0, translate=(r, r, r), resample="nearest")},
        }

    def forward(self, x: Tensor, generator: torch.Generator | None = None, p: float = 1.0) -> Tensor:
        """Augment ``x``; each transform hits each sample with probability ``p`` (1: every sample, as Zhao).

        Random parameters come from ``generator`` (global RNG when ``None``), so the same seed gives
        the same transform to any two batches of the same shape. Gradients flow to ``x``.
        """
        if not self.transforms or p == 0.0:
            return x
        dtype, x = x.dtype, x.float()
        with _kornia_rng(generator):
            for name in self.transforms:
                if name == "color":
                    x = self._color(x, p)
                elif name == "translation":
                    # kornia pads with zeros: shifting by ``fill`` makes the padding take the fill value.
                    # It draws a continuous shift that nearest resampling rounds: an exact whole-pixel shift.
                    shift = self._kornia["translation"][x.ndim - 2]
                    shift.p = p
                    x = shift(x - self.fill) + self.fill
                else:
                    x = _cutout(x, generator, self.cutout_ratio, self.fill, p)
        return x.to(dtype)

    def _color(self, x: Tensor, p: float) -> Tensor:
        # Colour ops only read per-sample statistics, so (N, C, *spatial) can be viewed as (N, C, -1, W).
        # kornia centres RGB saturation and contrast on the luma (0.299, 0.587, 0.114), where Zhao took
        # the plain channel mean; with one channel saturation is the identity in both. With p < 1 (ADA)
        # brightness and saturation-contrast are gated separately, as Karras et al. gate each colour op.
        unit = x.reshape(x.shape[0], x.shape[1], -1, x.shape[-1]) / (2 * _COLOR_HALF_RANGE) + 0.5
        for op in self._kornia["color"]:
            op.p = p
            unit = op(unit)
        return ((unit - 0.5) * (2 * _COLOR_HALF_RANGE)).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}"


def diff_augment(x: Tensor, policy: str = "color,translation,cutout", generator: torch.Generator | None = None,
                 translation_ratio: float = 0.125, cutout_ratio: float = 0.5, fill: float = IMAGE_RANGE[0]) -> Tensor:
    """:class:`DiffAugment` as a function (builds the module on every call; keep a module in a loop)."""
    return DiffAugment(policy, translation_ratio, cutout_ratio, fill)(x, generator)
