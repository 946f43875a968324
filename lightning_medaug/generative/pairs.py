"""Joint (image, mask) synthesis for segmentation: sample a mask, then an image for that mask.

Two generators, each trained alone on the same paired data:

1. a mask generator, e.g. ``DDPM(data_key="mask")``, trained on the masks (it returns masks in
   {0, 1}; generators returning soft masks are thresholded);
2. a mask-conditional image generator (``requires_masks=True``), e.g.
   ``DDPM(mask_conditional=True)`` or a ``"pix2pix"``, called through the shared
   ``sample(n, masks=...)`` contract.

Factorising p(image, mask) = p(mask) p(image | mask) keeps each model a plain generator of this
library, as in the two-stage label-then-image synthesis of Fernandez et al. 2022 ("Can
segmentation models be trained with fully synthetically generated data?").
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_medaug.generative.base import GenerativeModule, load_generator

__all__ = ["PairedSynthesizer"]


class PairedSynthesizer(nn.Module):
    """Samples ``(images, masks)`` pairs from a mask generator and a mask -> image generator.

    Args:
        mask_generator: a generator of single-channel masks (not mask-conditional itself).
        image_generator: a mask-conditional generator (``requires_masks`` is True).
        threshold: masks are ``sample > threshold``; 0.5 suits generators that return masks in
            {0, 1} or [0, 1]; use 0.0 for one trained on masks mapped to [-1, 1].
    """

    def __init__(self, mask_generator: GenerativeModule, image_generator: GenerativeModule, threshold: float = 0.5):
        super().__init__()
        if mask_generator.requires_masks:
            raise ValueError(f"the mask generator ({type(mask_generator).__name__}) is itself mask-conditional: "
                             "pass a generator trained on masks, e.g. DDPM(data_key='mask')")
        if mask_generator.in_channels != 1:
            raise ValueError(f"the mask generator makes {mask_generator.in_channels}-channel samples; "
                             "masks have 1 channel")
        if not image_generator.requires_masks:
            raise ValueError(f"the image generator ({type(image_generator).__name__}) is not mask-conditional: "
                             "pass e.g. DDPM(mask_conditional=True) or a pix2pix generator")
        for name in ("spatial_dims", "image_size"):
            a, b = getattr(mask_generator, name), getattr(image_generator, name)
            if a != b:
                raise ValueError(f"the generators disagree on {name}: masks {a}, images {b}; "
                                 "train both on the same data")
        classes = {g.num_classes for g in (mask_generator, image_generator)} - {0}
        if len(classes) > 1:
            raise ValueError(f"the generators are conditioned on different class counts {sorted(classes)}")
        self.mask_generator = mask_generator
        self.image_generator = image_generator
        self.threshold = float(threshold)
        self.num_classes = classes.pop() if classes else 0

    @classmethod
    def from_pretrained(cls, mask_generator_path: str | Path, image_generator_path: str | Path,
                        threshold: float = 0.5, map_location: str | torch.device = "cpu") -> PairedSynthesizer:
        """Build from two ``save_pretrained`` folders."""
        masks = load_generator(mask_generator_path, map_location)
        return cls(masks, load_generator(image_generator_path, map_location), threshold)

    def sample_pairs(self, n: int, labels: Tensor | None = None,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` pairs: images (n, C, *S) in [-1, 1] and masks (n, 1, *S) in {0, 1}.

        With class-conditional generators both stages get the same ``labels`` (drawn uniformly
        when ``None``); unconditional ones get none.
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if labels is None and self.num_classes > 0:
            device = generator.device if generator is not None else self.mask_generator.device
            labels = torch.randint(0, self.num_classes, (n,), generator=generator, device=device)
        elif labels is not None and self.num_classes == 0:
            raise ValueError("both generators are unconditional (num_classes=0): they cannot sample given labels")
        soft = self.mask_generator.sample(n, labels=_labels_for(self.mask_generator, labels), generator=generator)
        masks = (soft > self.threshold).to(torch.float32)
        images = self.image_generator.sample(n, labels=_labels_for(self.image_generator, labels),
                                             masks=masks.to(self.image_generator.device), generator=generator)
        return images, masks.to(images.device)


def _labels_for(model: GenerativeModule, labels: Tensor | None) -> Tensor | None:
    return labels if model.num_classes > 0 else None
