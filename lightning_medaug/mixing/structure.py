"""The structure of a user's real training sample, read once, so synthetic samples can be built in it.

A user's training step must not notice which samples are synthetic, and their collate function
(torch's ``default_collate``, MONAI's ``list_data_collate``, TorchIO's, a detection-style
``tuple(zip(*batch))``) must accept a batch that holds both. So a synthetic sample mirrors a real
one exactly: the same container (dict, tuple, list, named tuple, nested dicts, TorchIO ``Subject``),
the same keys, and per field the same Python / NumPy / torch type (MONAI ``MetaTensor`` and TorchIO
images included), dtype, shape and layout (channel-first, channel-last or none).

Each field of the real sample is a *leaf* with a role: ``image``, ``label``, ``mask``, a constant
given by the user (``fill``), or a field no generator can provide, which makes the structure
refuse itself with one line naming the field (pass ``to_sample=`` or ``fill=`` instead).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_medaug.data.batch import IMAGE_KEY, LABEL_KEY, MASK_KEY

__all__ = ["Leaf", "SampleStructure", "IS_SYNTHETIC_KEY", "ROLES"]

IS_SYNTHETIC_KEY = "is_synthetic"
ROLES = ("image", "label", "mask")
#: Fields that sampling frameworks add to every sample and that mean nothing for a synthetic one:
#: TorchIO's patch ``location`` (where a patch sat in its volume) is filled with zeros.
_FRAMEWORK_FIELDS = {"location": "zeros"}


def _is_tio_image(value: Any) -> bool:
    """A TorchIO ``ScalarImage`` / ``LabelMap`` (a dict subclass that is one field, not a container)."""
    return isinstance(value, dict) and type(value).__module__.startswith("torchio") and "data" in value \
        and "affine" in value


def _is_metatensor(value: Any) -> bool:
    return isinstance(value, Tensor) and hasattr(value, "meta") and hasattr(value, "affine")


@dataclass
class Leaf:
    """One field of the real sample: where it sits, what it is for and how it is typed."""

    path: tuple[Any, ...]
    kind: str  # tensor | metatensor | tio | ndarray | npscalar | int | float | bool | other
    shape: tuple[int, ...]
    dtype: Any
    ref: Any = field(repr=False)
    role: str | None = None
    layout: str = "channel_first"  # how (C, *spatial) maps onto ``shape``: channel_first/channel_last/no_channel

    @classmethod
    def of(cls, path: tuple[Any, ...], value: Any) -> Leaf:
        if _is_tio_image(value):
            data = value["data"]
            return cls(path, "tio", tuple(data.shape), data.dtype, value)
        if isinstance(value, Tensor):
            kind = "metatensor" if _is_metatensor(value) else "tensor"
            return cls(path, kind, tuple(value.shape), value.dtype, value)
        if isinstance(value, np.ndarray):
            return cls(path, "ndarray", value.shape, value.dtype, value)
        if isinstance(value, np.generic):
            return cls(path, "npscalar", (), value.dtype, value)
        if isinstance(value, bool):
            return cls(path, "bool", (), torch.bool, value)
        if isinstance(value, int):
            return cls(path, "int", (), torch.int64, value)
        if isinstance(value, float):
            return cls(path, "float", (), torch.float64, value)
        return cls(path, "other", (), None, value)

    @property
    def is_array(self) -> bool:
        return self.kind in ("tensor", "metatensor", "tio", "ndarray")

    @property
    def torch_dtype(self) -> torch.dtype:
        if isinstance(self.dtype, torch.dtype):
            return self.dtype
        return torch.from_numpy(np.zeros(0, dtype=self.dtype)).dtype

    def where(self) -> str:
        return "sample" + "".join(f"[{p!r}]" for p in self.path)

    def wrap(self, value: Tensor) -> Any:
        """``value`` (already of this leaf's dtype and shape) as this leaf's Python / NumPy / torch type."""
        if self.kind == "tensor":
            return value
        if self.kind == "metatensor":  # MONAI collates MetaTensors only with MetaTensors
            return type(self.ref)(value, affine=self.ref.affine.clone(), meta=copy.deepcopy(dict(self.ref.meta)))
        if self.kind == "tio":
            return type(self.ref)(tensor=value, affine=np.array(self.ref["affine"], copy=True))
        if self.kind == "ndarray":
            return value.numpy().astype(self.dtype, copy=False)
        if self.kind == "npscalar":
            return self.dtype.type(value.item())
        return {"int": int, "float": float, "bool": bool}[self.kind](value.item())

    def unwrap(self, value: Any) -> Tensor:
        """The array inside a field value of any supported type, as a tensor."""
        if _is_tio_image(value):
            value = value["data"]
        if _is_metatensor(value):
            value = value.as_tensor()
        return torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)


class SampleStructure:
    """The layout of one real sample, and synthetic samples built in it.

    Args:
        sample: one real training sample, exactly as the user's dataset returns it.
        image_key, label_key, mask_key: dict keys of the image, label and mask (at any depth).
            In tuples and lists without keys, the first array with at least 2 dimensions is the
            image, a top-level array of the image's spatial shape a mask, and a top-level scalar or
            small vector the label.
        fill: constant values for fields no generator can provide, by key (copied into every
            synthetic sample).
        strict: refuse a sample with no recognisable image or with fields of no role; off when the
            user builds synthetic samples themselves (``to_sample=``).
    """

    def __init__(self, sample: Any, image_key: str = IMAGE_KEY, label_key: str = LABEL_KEY,
                 mask_key: str = MASK_KEY, fill: Mapping[str, Any] | None = None, strict: bool = True):
        self.sample, self.fill = sample, dict(fill or {})
        self.leaves: list[Leaf] = []
        self.constants: dict[tuple[Any, ...], Any] = {}
        self._skeleton = self._read(sample, (), {image_key: "image", label_key: "label", mask_key: "mask"})
        self.kind = "dict" if isinstance(sample, Mapping) else "sequence"
        self.roles: dict[str, Leaf] = {}
        for leaf in self.leaves:
            if leaf.role in ROLES and leaf.role not in self.roles:
                self.roles[leaf.role] = leaf
        if "image" not in self.roles:
            self._infer_positional_roles()
        image = self.roles.get("image")
        if image is None and not strict:
            image = self.leaves[0] if self.leaves else Leaf((), "other", (), None, sample)
        if image is None:
            keys = sorted(sample) if isinstance(sample, Mapping) else None
            raise ValueError(f"cannot find the image in the real samples ({type(sample).__name__}"
                             + (f" with keys {keys}" if keys is not None else "")
                             + f"); set image_key={'<key>'!r} to the key holding the image, or pass to_sample=")
        self.image = image
        unknown = [leaf for leaf in self.leaves if leaf.role is None]
        if unknown and strict:
            names = ", ".join(leaf.where() for leaf in unknown)
            raise ValueError(f"the real samples carry fields that synthetic samples cannot provide: {names}; "
                             "pass to_sample= to build synthetic samples yourself, or fill={'<key>': value} "
                             "for a constant")

    # -- reading the real sample --------------------------------------------------------------
    def _read(self, node: Any, path: tuple[Any, ...], keys: dict[str, str]) -> Any:
        if isinstance(node, Mapping) and not _is_tio_image(node):
            children = {}
            for key, value in node.items():
                if key in self.fill:
                    self.constants[(*path, key)] = self.fill[key]
                    children[key] = None
                    continue
                if key in _FRAMEWORK_FIELDS and type(node).__module__.startswith("torchio"):
                    self.constants[(*path, key)] = torch.zeros_like(torch.as_tensor(value))
                    children[key] = None
                    continue
                role = keys.get(key) if isinstance(key, str) else None
                if role is not None and not isinstance(value, (Mapping, list, tuple)) or _is_tio_image(value):
                    leaf = Leaf.of((*path, key), value)
                    leaf.role = role
                    self.leaves.append(leaf)
                    children[key] = leaf
                else:
                    children[key] = self._read(value, (*path, key), keys)
            return ("mapping", type(node), children)
        if isinstance(node, (tuple, list)):
            return ("sequence", type(node), [self._read(v, (*path, i), keys) for i, v in enumerate(node)])
        leaf = Leaf.of(path, node)
        self.leaves.append(leaf)
        return leaf

    def _infer_positional_roles(self) -> None:
        """Roles in a tuple/list sample: image first, then masks of its shape and a label."""
        top = [leaf for leaf in self.leaves if len(leaf.path) == 1 and leaf.role is None]
        image = next((leaf for leaf in top if leaf.is_array and len(leaf.shape) >= 2), None)
        if image is None:
            return
        image.role, self.roles["image"] = "image", image
        spatial = {image.shape, image.shape[1:], image.shape[:-1]}
        for leaf in top:
            if leaf is image:
                continue
            if leaf.is_array and len(leaf.shape) >= 2 and (leaf.shape in spatial or leaf.shape[1:] in spatial
                                                           or leaf.shape[:-1] in spatial):
                if "mask" not in self.roles:
                    leaf.role, self.roles["mask"] = "mask", leaf
            elif len(leaf.shape) <= 1 and leaf.kind != "other" and "label" not in self.roles:
                leaf.role, self.roles["label"] = "label", leaf

    # -- what the structure holds -------------------------------------------------------------
    @property
    def has_label(self) -> bool:
        return "label" in self.roles

    @property
    def has_mask(self) -> bool:
        return "mask" in self.roles

    def get(self, sample: Any, role: str) -> Tensor:
        """The field of ``role`` in a real ``sample`` of this structure, as a tensor."""
        leaf = self.roles[role]
        value = sample
        for step in leaf.path:
            value = value[step]
        return leaf.unwrap(value)

    def bind_layout(self, image_shape: Sequence[int]) -> None:
        """Fix how synthetic ``(C, *spatial)`` images (and ``(1, *spatial)`` masks) map onto the real fields.

        Raises ``ValueError`` when the real image cannot hold a synthetic one of ``image_shape``.
        """
        shape = tuple(int(s) for s in image_shape)
        self.image.layout = _layout(self.image.shape, shape, "image", self.image.where())
        if self.has_mask:
            mask = self.roles["mask"]
            mask.layout = _layout(mask.shape, (1, *shape[1:]), "mask", mask.where())

    # -- building synthetic samples -----------------------------------------------------------
    def flat_layout(self) -> tuple[type, list[Any]] | None:
        """``(dict | tuple | list, [key or index per field])`` when the sample is one plain container of
        fields (the common case), so whole batches can be assembled with ``zip``; else None."""
        if not isinstance(self._skeleton, tuple):
            return None
        kind, cls, children = self._skeleton
        if cls not in (dict, tuple, list):
            return None
        items = children.items() if kind == "mapping" else enumerate(children)
        if not all(isinstance(node, Leaf) for _, node in items):
            return None
        return cls, [node.path for node in (children.values() if kind == "mapping" else children)]

    def assemble(self, parts: Mapping[Any, Any], flag: bool | None = None) -> Any:
        """A sample in the real structure from finished field values (keyed by their leaf's path)."""
        out = self._fill(self._skeleton, (), parts)
        if flag is not None:
            out = self.with_flag(out, flag)
        return out

    def _fill(self, node: Any, path: tuple[Any, ...], parts: Mapping[Any, Any]) -> Any:
        if isinstance(node, Leaf):
            return parts[node.path]
        if node is None:  # a constant
            return copy.deepcopy(self.constants[path])
        kind, cls, children = node
        if kind == "mapping":
            items = {k: self._fill(v, (*path, k), parts) for k, v in children.items()}
            return items if cls is dict else _rebuild(cls, items)
        values = [self._fill(v, (*path, i), parts) for i, v in enumerate(children)]
        if cls is list:
            return values
        return cls(*values) if hasattr(cls, "_fields") else cls(values)

    def with_flag(self, sample: Any, flag: bool) -> Any:
        """``sample`` with an ``is_synthetic`` flag: a key of a dict, or one more item of a tuple/list."""
        value = torch.tensor(flag)
        if isinstance(sample, Mapping):
            out = dict(sample) if type(sample) is dict else _rebuild(type(sample), dict(sample))
            out[IS_SYNTHETIC_KEY] = value
            return out
        items = [*sample, value]
        return items if isinstance(sample, list) else tuple(items)

    def conform(self, sample: Any) -> Any:
        """A sample after a user transform, with each role field cast back to the real field's type."""
        parts = {}
        for leaf in self.leaves:
            value = sample
            for step in leaf.path:
                value = value[step]
            tensor = leaf.unwrap(value).to(leaf.torch_dtype)
            parts[leaf.path] = leaf.wrap(tensor.reshape(leaf.shape) if tensor.numel() == int(np.prod(leaf.shape))
                                         else tensor)
        return self.assemble(parts)


def _layout(real: tuple[int, ...], synthetic: tuple[int, ...], what: str, where: str) -> str:
    channels, spatial = synthetic[0], synthetic[1:]
    if real == synthetic:
        return "channel_first"
    if real == (*spatial, channels):
        return "channel_last"
    if channels == 1 and real == spatial:
        return "no_channel"
    raise ValueError(f"synthetic {what}s have shape {synthetic} (channels first) but the real {what} at {where} "
                     f"has shape {real}: the synthetic source was made for another image size or channel count")


def _rebuild(cls: type, items: dict) -> Any:
    """A mapping of the user's own class (a TorchIO ``Subject``, an ``OrderedDict``) from ``items``."""
    try:
        return cls(items)
    except TypeError:
        return cls(**items)
