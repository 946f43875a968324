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
from torch.utils.data import ConcatDataset, Dataset

from lightning_medaug.data.batch import IMAGE_KEY, LABEL_KEY, MASK_KEY

__all__ = ["SampleTemplate", "SyntheticAdapter", "MixedDataset", "IS_SYNTHETIC_KEY"]

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
        # Converted once here, not once per synthetic sample.
        self._label_ref = None if self.label is None else torch.as_tensor(self.label)
        self._mask_dtype = None if self.mask is None else torch.as_tensor(self.mask).dtype

    @property
    def has_label(self) -> bool:
        return self.label is not None

    @property
    def has_mask(self) -> bool:
        return self.mask is not None

    def build(self, image: Tensor, label: Tensor | None, mask: Tensor | None, is_synthetic: bool | None = None) -> Any:
        """A sample in the real structure from synthetic parts (image in [-1, 1])."""
        parts = self._convert(image, label, mask, None)
        if is_synthetic is not None:
            parts[IS_SYNTHETIC_KEY] = torch.tensor(is_synthetic)
        return self._assemble(parts)

    def build_batch(self, images: Tensor, labels: Tensor | None, masks: Tensor | None,
                    is_synthetic: bool | None = None) -> list[Any]:
        """``build`` for a stacked batch of synthetic parts: the same samples as ``build`` one by
        one, with the conversions done once per batch (the samples are views into batch tensors)."""
        parts = self._convert(images, labels, masks, images.shape[0])
        if is_synthetic is not None:
            parts[IS_SYNTHETIC_KEY] = torch.full((images.shape[0],), bool(is_synthetic))
        names = list(parts)
        return [self._assemble(dict(zip(names, row))) for row in zip(*(parts[n].unbind(0) for n in names))]

    def _convert(self, image: Tensor, label: Tensor | None, mask: Tensor | None,
                 batch: int | None) -> dict[str, Tensor]:
        """Value range, dtypes and label shape of the real samples (``batch``: leading batch size, if any)."""
        lo, hi = self.value_range
        if (lo, hi) != (-1.0, 1.0):
            image = (image + 1.0) / 2.0 * (hi - lo) + lo
        parts = {"image": image.to(self.image.dtype)}
        if self.has_label:
            if label is None:
                raise ValueError("the real samples have labels but the synthetic source has none")
            ref = self._label_ref
            shape = ref.shape if batch is None else (batch, *ref.shape)
            parts["label"] = torch.as_tensor(label).to(ref.dtype).reshape(shape)
        if self.has_mask:
            if mask is None:
                raise ValueError("the real samples have masks but the synthetic source has none; "
                                 "write the bank from a mask-conditional generator or a pair synthesizer")
            parts["mask"] = mask.to(self._mask_dtype)
        return parts

    def _assemble(self, parts: dict[str, Tensor]) -> Any:
        """One sample in the real layout from ``{"image", "label", "mask", IS_SYNTHETIC_KEY}`` parts."""
        flag = parts.pop(IS_SYNTHETIC_KEY, None)
        if self.kind == "dict":
            out = {self.keys[name]: value for name, value in parts.items()}
            if flag is not None:
                out[IS_SYNTHETIC_KEY] = flag
            return out
        items = [parts[name] for name in self.order]
        if flag is not None:
            items.append(flag)
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
        self.source, self.template, self.transform = source, template, transform
        self.flag, self.to_sample = flag, to_sample

    def __len__(self) -> int:
        return len(self.source)

    @property
    def batched(self) -> bool:
        """Whole batches are read and converted at once (no per-sample callable to run in order)."""
        return self.to_sample is None and self.transform is None and hasattr(self.source, "read")

    def __getitem__(self, index: int) -> Any:
        return self.finish(self.source[index])

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """The samples of ``[self[i] for i in indices]``, read from the source in one go."""
        if self.batched:
            parts = self.source.read(indices)
            return self.template.build_batch(parts[IMAGE_KEY], parts.get(LABEL_KEY), parts.get(MASK_KEY),
                                             True if self.flag else None)
        return [self.finish(item) for item in self.raw(indices)]

    def raw(self, indices: Sequence[int]) -> list[dict[str, Tensor]]:
        """The source's items (``{"image", "label", "mask"}``), before :meth:`finish`; no randomness."""
        getitems = getattr(self.source, "__getitems__", None)
        return getitems(list(indices)) if getitems is not None else [self.source[i] for i in indices]

    def finish(self, item: dict[str, Tensor]) -> Any:
        """A source item as a real-looking sample: ``to_sample``, or the real transform and the template."""
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


class MixedDataset(ConcatDataset):
    """``ConcatDataset([real, synthetic])`` whose batches read their synthetic samples in one go.

    torch's DataLoader calls ``__getitems__`` with a whole batch of indices: the synthetic ones are
    read together (one read and dtype conversion per batch), the real ones one by one as
    before, and the batch keeps the sampler's order. Per-sample callables (transforms, ``to_sample``)
    still run one sample at a time in batch order, so random augmentations draw exactly as before.
    """

    def __init__(self, real: Dataset, synthetic: SyntheticAdapter):
        super().__init__([real, synthetic])
        self.real, self.synthetic = real, synthetic

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        num_real, real = self.cumulative_sizes[0], self.real
        if indices and min(indices) < 0:
            indices = [i + len(self) if i < 0 else i for i in indices]
        wanted = [i - num_real for i in indices if i >= num_real]
        if not wanted:
            return [real[i] for i in indices]
        if self.synthetic.batched:
            made = iter(self.synthetic.__getitems__(wanted))
            return [real[i] if i < num_real else next(made) for i in indices]
        raw, finish = iter(self.synthetic.raw(wanted)), self.synthetic.finish
        return [real[i] if i < num_real else finish(next(raw)) for i in indices]
