"""Make synthetic samples look exactly like the wrapped data module's real samples.

:class:`SampleTemplate` is the real sample's structure (:class:`~lightning_medaug.mixing.structure.SampleStructure`)
plus the conversions of synthetic parts into it: value range, dtype (rounded for integer images),
layout, and label encoding (a class index becomes the real label's shape: ``()``, ``(1,)`` or a
one-hot vector). :class:`SyntheticAdapter` serves a synthetic source through it, and runs the
user's own per-sample transform on samples in the user's keys and layout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

from lightning_medaug.data.batch import IMAGE_KEY, LABEL_KEY, MASK_KEY
from lightning_medaug.mixing.structure import IS_SYNTHETIC_KEY, Leaf, SampleStructure

__all__ = ["SampleTemplate", "SyntheticAdapter", "MixedDataset", "IS_SYNTHETIC_KEY", "infer_value_range"]

#: Value ranges recognised from real images, tried in this order (uint8 images are always 0..255).
KNOWN_RANGES = ((0.0, 1.0), (-1.0, 1.0), (0.0, 255.0))


class SampleTemplate(SampleStructure):
    """The structure of one real sample, and synthetic samples (images in [-1, 1]) converted into it.

    Args:
        sample: one real training sample, as the user's dataset returns it.
        image_key, label_key, mask_key: dict keys of the image, label and mask.
        value_range: value range of the real images; synthetic images (always [-1, 1]) are mapped to it.
        fill: constants for fields no generator can provide, by key.
        strict: see :class:`~lightning_medaug.mixing.structure.SampleStructure`.
    """

    def __init__(self, sample: Any, image_key: str = IMAGE_KEY, label_key: str = LABEL_KEY,
                 mask_key: str = MASK_KEY, value_range: Sequence[float] = (-1.0, 1.0),
                 fill: Mapping[str, Any] | None = None, strict: bool = True):
        super().__init__(sample, image_key, label_key, mask_key, fill, strict)
        self.value_range = (float(value_range[0]), float(value_range[1]))
        if not self.value_range[0] < self.value_range[1]:
            raise ValueError(f"value_range must be (low, high) with low < high, got {tuple(value_range)}")
        label = self.roles.get("label")
        if label is not None and len(label.shape) > 1:
            raise ValueError(f"the real label at {label.where()} has shape {label.shape}; synthetic labels can be "
                             "a class index (shape () or (1,)) or a one-hot vector: pass to_sample= for others")

    @property
    def label_classes(self) -> int | None:
        """Length of a one-hot / multi-hot real label vector (None for class-index labels)."""
        label = self.roles.get("label")
        if label is None or len(label.shape) != 1 or label.shape[0] == 1:
            return None
        return int(label.shape[0])

    def build(self, image: Tensor, label: Tensor | None, mask: Tensor | None, is_synthetic: bool | None = None) -> Any:
        """A sample in the real structure from synthetic parts (image in [-1, 1], class-index label)."""
        one = self.build_batch(image.unsqueeze(0), None if label is None else torch.as_tensor(label).unsqueeze(0),
                               None if mask is None else mask.unsqueeze(0), is_synthetic)
        return one[0]

    def build_batch(self, images: Tensor, labels: Tensor | None, masks: Tensor | None,
                    is_synthetic: bool | None = None) -> list[Any]:
        """``build`` for a stacked batch: conversions run once per batch, then each row is wrapped."""
        fields = self._convert(images, labels, masks)
        columns = {path: tensor.unbind(0) if leaf.kind == "tensor" else [leaf.wrap(row) for row in tensor.unbind(0)]
                   for path, (leaf, tensor) in fields.items()}
        flat = self.flat_layout()
        if flat is None:
            return [self.assemble({path: column[i] for path, column in columns.items()}, is_synthetic)
                    for i in range(images.shape[0])]
        cls, paths = flat  # one plain container: whole rows at once, the hot path of mixed loading
        rows = zip(*(columns[path] for path in paths))
        if cls is dict:
            keys = [path[0] for path in paths]
            samples = [dict(zip(keys, row)) for row in rows]
        else:
            samples = [cls(row) for row in rows]
        return samples if is_synthetic is None else [self.with_flag(sample, is_synthetic) for sample in samples]

    def _convert(self, images: Tensor, labels: Tensor | None, masks: Tensor | None) -> dict[Any, tuple[Leaf, Tensor]]:
        image = self.image
        lo, hi = self.value_range
        if (lo, hi) != (-1.0, 1.0):
            images = (images + 1.0) / 2.0 * (hi - lo) + lo
        fields = {image.path: (image, _cast(_arrange(images, image.layout), image.torch_dtype))}
        if self.has_label:
            leaf = self.roles["label"]
            if labels is None:
                raise ValueError("the real samples have labels but the synthetic source has none")
            fields[leaf.path] = (leaf, _encode_label(torch.as_tensor(labels), leaf))
        if self.has_mask:
            leaf = self.roles["mask"]
            if masks is None:
                raise ValueError("the real samples have masks but the synthetic source has none; "
                                 "write the bank from a mask-conditional generator or a pair synthesizer")
            fields[leaf.path] = (leaf, _cast(_arrange(masks, leaf.layout), leaf.torch_dtype))
        return fields

    def mark_real(self, sample: Any) -> Any:
        """Add the ``is_synthetic=False`` flag to a real sample (only when flags are requested)."""
        return self.with_flag(sample, False)


def _arrange(batch: Tensor, layout: str) -> Tensor:
    """``(N, C, *spatial)`` in the real field's layout."""
    if layout == "channel_last":
        return batch.movedim(1, -1)
    if layout == "no_channel":
        return batch.squeeze(1)
    return batch


def _cast(batch: Tensor, dtype: torch.dtype) -> Tensor:
    if dtype.is_floating_point or dtype == torch.bool:
        return batch.to(dtype)
    info = torch.iinfo(dtype)  # integer images (uint8 PNG-style): round, and stay inside the type
    return batch.round().clamp(info.min, info.max).to(dtype)


def _encode_label(labels: Tensor, leaf: Leaf) -> Tensor:
    """Class indices (N,) or soft labels (N, K) in the real label's shape and dtype."""
    n = labels.shape[0]
    shape = leaf.shape
    if int(np.prod(shape)) == 1:
        if labels.ndim == 2:  # soft labels for a class-index target: the most likely class
            labels = labels.argmax(1)
        return labels.to(leaf.torch_dtype).reshape(n, *shape)
    classes = shape[0]
    if labels.ndim == 2:
        if labels.shape[1] != classes:
            raise ValueError(f"synthetic soft labels have {labels.shape[1]} classes but the real label vector at "
                             f"{leaf.where()} has {classes}")
        return labels.to(leaf.torch_dtype)
    if n and int(labels.max()) >= classes:
        raise ValueError(f"a synthetic label {int(labels.max())} does not fit the real one-hot label vector of "
                         f"length {classes} at {leaf.where()}")
    return torch.nn.functional.one_hot(labels.long(), classes).to(leaf.torch_dtype)


def infer_value_range(samples: Sequence[Any], template: SampleStructure) -> tuple[float, float]:
    """The value range of real images, recognised from a few samples: uint8 images are 0..255; float
    images within [0, 1], [-1, 1] or [0, 255] are taken to use that range. Anything else is refused:
    the range cannot be guessed, so the user passes ``value_range=``."""
    dtype = template.image.torch_dtype
    if dtype == torch.uint8:
        return (0.0, 255.0)
    values = [template.get(s, "image").float() for s in samples]
    lo = min(float(v.min()) for v in values)
    hi = max(float(v.max()) for v in values)
    if dtype.is_floating_point:
        for low, high in KNOWN_RANGES:
            if low - 1e-3 <= lo and hi <= high + 1e-3:
                return (low, high)
    raise ValueError(f"cannot tell the value range of the real images ({dtype}, values seen in [{lo:.4g}, {hi:.4g}]); "
                     "pass value_range=(low, high), the range synthetic images in [-1, 1] should be mapped to")


class SyntheticAdapter(Dataset):
    """A synthetic source (a ``SyntheticBank`` or generated tensors) seen as real samples.

    ``transform`` (the user's per-sample transform) runs on each sample built in the user's own
    structure, and its output is cast back to the real fields' types.
    """

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
        """A source item as a real-looking sample: ``to_sample``, or the template and the real transform."""
        flag = True if self.flag else None
        if self.to_sample is not None:
            sample = self.to_sample(item)
            return sample if flag is None else self.template.with_flag(sample, True)
        template = self.template
        if self.transform is None:
            return template.build(item[IMAGE_KEY], item.get(LABEL_KEY), item.get(MASK_KEY), flag)
        sample = template.conform(self.transform(template.build(item[IMAGE_KEY], item.get(LABEL_KEY),
                                                                item.get(MASK_KEY))))
        return sample if flag is None else template.with_flag(sample, True)


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
