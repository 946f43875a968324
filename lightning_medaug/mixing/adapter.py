"""Make synthetic samples look exactly like the wrapped data module's real samples.

A user's training step must not notice which samples are synthetic, so each synthetic sample is
rebuilt in the structure of a real one (dict keys or tuple layout), with the same dtypes, label
shape and value range, and passed through the same per-sample transform.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_medaug.data.batch import IMAGE_KEY, LABEL_KEY, MASK_KEY

__all__ = ["SampleTemplate", "SyntheticAdapter", "IS_SYNTHETIC_KEY"]

IS_SYNTHETIC_KEY = "is_synthetic"


class SampleTemplate:
    """The structure of one real sample: where the image, label and mask sit, and their types.

    Args:
        sample: one real training sample (a dict, or a tuple/list like ``(image, label)``).
        image_key, label_key, mask_key: dict keys used by the real data.
        value_range: value range of the real images; synthetic images (always [-1, 1]) are mapped to it.
    """

    def __init__(self, sample: Any, image_key: str = IMAGE_KEY, label_key: str = LABEL_KEY,
                 mask_key: str = MASK_KEY, value_range: Sequence[float] = (-1.0, 1.0)):
        self.value_range = (float(value_range[0]), float(value_range[1]))
        if isinstance(sample, Mapping):
            self.kind = "dict"
            if image_key not in sample:
                raise ValueError(f"the real samples have no {image_key!r} key (keys: {sorted(sample)}); "
                                 "set image_key to the key holding the image")
            unknown = [k for k in sample if k not in (image_key, label_key, mask_key)]
            if unknown:
                raise ValueError(f"the real samples carry keys {unknown} that synthetic samples cannot provide; "
                                 "pass to_sample= to build them yourself")
            self.keys = {"image": image_key, "label": label_key if label_key in sample else None,
                         "mask": mask_key if mask_key in sample else None}
            self.image, self.label, self.mask = (sample.get(k) if k else None for k in self.keys.values())
        elif isinstance(sample, Sequence) and not isinstance(sample, (str, bytes)) and 1 <= len(sample) <= 3:
            self.kind = "tuple" if isinstance(sample, tuple) else "list"
            self.image = torch.as_tensor(sample[0])
            self.label = self.mask = None
            self.order = ["image"]
            for extra in sample[1:]:
                extra = torch.as_tensor(extra)
                is_mask = extra.ndim == self.image.ndim and extra.shape[1:] == self.image.shape[1:]
                self.order.append("mask" if is_mask else "label")
                setattr(self, self.order[-1], extra)
        else:
            raise ValueError(f"cannot mix into samples of type {type(sample).__name__}: expected a dict or "
                             "a tuple like (image, label); pass to_sample= for other layouts")
        self.image = torch.as_tensor(self.image)

    @property
    def has_label(self) -> bool:
        return self.label is not None

    @property
    def has_mask(self) -> bool:
        return self.mask is not None

    def build(self, image: Tensor, label: Tensor | None, mask: Tensor | None, is_synthetic: bool | None = None) -> Any:
        """A sample in the real structure from synthetic parts (image in [-1, 1])."""
        lo, hi = self.value_range
        if (lo, hi) != (-1.0, 1.0):
            image = (image + 1.0) / 2.0 * (hi - lo) + lo
        parts = {"image": image.to(self.image.dtype)}
        if self.has_label:
            if label is None:
                raise ValueError("the real samples have labels but the synthetic source has none")
            ref = torch.as_tensor(self.label)
            parts["label"] = torch.as_tensor(label).to(ref.dtype).reshape(ref.shape)
        if self.has_mask:
            if mask is None:
                raise ValueError("the real samples have masks but the synthetic source has none; "
                                 "write the bank from a mask-conditional generator or a pair synthesizer")
            parts["mask"] = mask.to(torch.as_tensor(self.mask).dtype)
        if self.kind == "dict":
            out = {self.keys[name]: value for name, value in parts.items()}
            if is_synthetic is not None:
                out[IS_SYNTHETIC_KEY] = torch.tensor(is_synthetic)
            return out
        items = [parts[name] for name in self.order]
        if is_synthetic is not None:
            items.append(torch.tensor(is_synthetic))
        return tuple(items) if self.kind == "tuple" else items

    def mark_real(self, sample: Any) -> Any:
        """Add the ``is_synthetic=False`` flag to a real sample (only when flags are requested)."""
        if self.kind == "dict":
            return {**sample, IS_SYNTHETIC_KEY: torch.tensor(False)}
        items = [*sample, torch.tensor(False)]
        return tuple(items) if self.kind == "tuple" else items


class SyntheticAdapter(Dataset):
    """A synthetic source (a ``SyntheticBank`` or generated tensors) seen as real samples."""

    def __init__(self, source: Dataset, template: SampleTemplate, transform: Callable | None = None,
                 flag: bool = False, to_sample: Callable[[dict], Any] | None = None):
        self.source, self.template, self.transform, self.flag, self.to_sample = source, template, transform, flag, to_sample

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Any:
        item = self.source[index]
        if self.to_sample is not None:
            return self.to_sample(item)
        if self.transform is not None:  # the real data's per-sample transform, on our dict layout
            item = self.transform(dict(item))
        return self.template.build(item[IMAGE_KEY], item.get(LABEL_KEY), item.get(MASK_KEY),
                                   True if self.flag else None)


class FlaggedReal(Dataset):
    """The real training set with ``is_synthetic=False`` added to every sample."""

    def __init__(self, dataset: Dataset, template: SampleTemplate):
        self.dataset, self.template = dataset, template

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.template.mark_real(self.dataset[index])
