"""Feature extractors for the fidelity and memorization metrics, and the images they read.

No network weights can be downloaded, so Inception features (Heusel et al. 2017, "GANs Trained
by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium") are not an option. The
default extractor is a medical-domain one: the library's own :class:`ClassificationTask`
trained on the real training split of the same data set, whose penultimate activations are the
features (the role Inception's pool3 plays in FID). It is saved as ``config.json`` +
``model.safetensors`` in a folder keyed by a SHA-256 of the training images and labels, so a
second evaluation of the same data loads it instead of training again.

Any other ``nn.Module`` mapping images ``(N, C, *S)`` in [-1, 1] to ``(N, D)`` features can be
passed to the metrics instead, e.g. ``timm.create_model(name, in_chans=1, num_classes=0)`` or a
MONAI network built with ``feed_forward=False``.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.utils.data import Dataset

from lightning_medaug.data.batch import unpack_batch
from lightning_medaug.registry import register_feature_extractor
from lightning_medaug.validation import check_at_least, check_spatial_dims
from lightning_medaug.weights_folder import CONFIG_NAME, WEIGHTS_NAME, write_weights_folder

if TYPE_CHECKING:  # imported where used: the metrics need no timm or MONAI until a classifier is built
    from lightning_medaug.tasks.classification import ClassificationTask

__all__ = [
    "DomainFeatureExtractor",
    "as_feature_matrix",
    "collect_images",
    "dataset_fingerprint",
    "extract_features",
    "load_feature_extractor",
    "save_feature_extractor",
    "train_feature_extractor",
]



class DomainFeatureExtractor(nn.Module):
    """Penultimate features ``(N, D)`` float32 of a trained classifier, frozen and always in eval mode.

    The classifier's head is its last registered ``nn.Linear`` (``fc`` of timm and MONAI ResNets,
    ``class_layers.out`` of MONAI's DenseNet, ``head`` of timm ViTs); a copy of the network with
    that layer replaced by ``nn.Identity`` returns the pooled features that fed it.

    Args:
        classifier: network mapping ``(N, in_channels, *S)`` to logits; it is copied, not changed.
        spatial_dims: 2 for images (N, C, H, W), 3 for volumes (N, C, D, H, W).
        in_channels: channels the classifier expects, checked on every call.
    """

    def __init__(self, classifier: nn.Module, spatial_dims: int, in_channels: int):
        super().__init__()
        check_spatial_dims(spatial_dims)
        check_at_least(1, in_channels=in_channels)
        self.net, self.num_features = _strip_head(classifier)
        self.spatial_dims, self.in_channels = spatial_dims, in_channels
        self.requires_grad_(False)
        self.eval()
        #: what ``config.json`` held, where it lives and whether it was loaded rather than trained.
        self.config: dict[str, Any] = {}
        self.path: Path | None = None
        self.from_cache = False

    @classmethod
    def from_task(cls, task: ClassificationTask) -> DomainFeatureExtractor:
        """Wrap a (trained) :class:`ClassificationTask`."""
        extractor = cls(task.net, task.spatial_dims, task.in_channels)
        head_outputs = _last_linear(task.net)[1].out_features
        if head_outputs != task.num_classes:
            raise ValueError(f"the last nn.Linear of {task.hparams.backbone!r} has {head_outputs} outputs, not the "
                             f"task's {task.num_classes} classes, so it is not the classifier head")
        return extractor

    def train(self, mode: bool = True) -> DomainFeatureExtractor:
        # Frozen: batch-norm statistics must not move when a parent module is put in train mode.
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != self.spatial_dims + 2 or images.shape[1] != self.in_channels:
            raise ValueError(f"expected images (N, {self.in_channels}, *S) with {self.spatial_dims} spatial axes, "
                             f"got shape {tuple(images.shape)}")
        return self.net(images).float()


def _last_linear(net: nn.Module) -> tuple[str, nn.Linear]:
    found = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError(f"{type(net).__name__} has no nn.Linear classifier head; pass a module that returns "
                         "(N, D) features to the metrics directly instead")
    return found[-1]


def _strip_head(classifier: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``classifier`` whose head is ``nn.Identity``, and the head's input width."""
    net = copy.deepcopy(classifier)
    name, head = _last_linear(net)
    parent_name, _, attr = name.rpartition(".")
    setattr(net.get_submodule(parent_name) if parent_name else net, attr, nn.Identity())
    return net, head.in_features


# -- fingerprint, save, load --------------------------------------------------------------------
def dataset_fingerprint(dataset: Dataset, with_masks: bool = False) -> str:
    """SHA-256 over a data set's images and labels (``with_masks``: images and masks), in index order.

    Data sets that keep their arrays as ``images`` / ``labels`` tensors (phantoms, MedMNIST) are
    hashed from those arrays without reading samples; others are read sample by sample, which is
    only stable if they apply no random transforms.
    """
    if with_masks and len(dataset) and unpack_batch(dataset[0]).mask is None:  # type: ignore[arg-type]
        raise ValueError("training sample 0 has no mask: the segmentation extractor learns from image and mask "
                         "pairs; use --extractor domain for class labels")
    digest = hashlib.sha256()
    arrays = [getattr(dataset, name, None) for name in ("images", "masks" if with_masks else "labels")]
    if all(isinstance(a, Tensor) for a in arrays):
        for array in arrays:
            _update_digest(digest, array)
        return digest.hexdigest()
    for index in range(len(dataset)):  # type: ignore[arg-type]
        image, label, mask = unpack_batch(dataset[index])
        _update_digest(digest, image)
        second = mask if with_masks else label
        if second is not None:
            _update_digest(digest, torch.as_tensor(second))
    return digest.hexdigest()


def _update_digest(digest: Any, tensor: Tensor) -> None:
    tensor = tensor.detach().cpu().contiguous()
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)


def save_feature_extractor(task: ClassificationTask, folder: str | Path, **metadata: Any) -> Path:
    """Write ``task``'s classifier as ``config.json`` + ``model.safetensors`` into ``folder``.

    ``metadata`` (JSON-serialisable: data hash, training settings, validation scores) is stored
    in ``config.json`` beside the task's init arguments.
    """
    init_args = {k: v for k, v in task.hparams.items() if not k.startswith("_")}
    from lightning_medaug import __version__

    config = {"feature_extractor": "domain", "task_init_args": init_args, "library_version": __version__, **metadata}
    return write_weights_folder(folder, config, task.net.state_dict(), metadata={"feature_extractor": "domain"})


def load_feature_extractor(folder: str | Path, map_location: str | torch.device = "cpu") -> DomainFeatureExtractor:
    """Rebuild a :class:`DomainFeatureExtractor` from a folder written by :func:`save_feature_extractor`.

    Reads safetensors only; nothing is unpickled.
    """
    from lightning_medaug.tasks.classification import ClassificationTask

    folder = Path(folder)
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for f in (config_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: pass a folder written by save_feature_extractor() or "
                                    "train_feature_extractor()")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if config.get("feature_extractor") == "segmentation":  # a segmenter's encoder, not a classifier
            from lightning_medaug.metrics.segmentation_features import load_segmentation_extractor

            return load_segmentation_extractor(folder, config, map_location)
        task = ClassificationTask(**config["task_init_args"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{config_file} is not a feature-extractor config ({err})") from err
    try:
        task.net.load_state_dict(load_file(str(weights_file), device=str(map_location)))
    except RuntimeError as err:  # missing, unexpected or mis-shaped tensors
        raise ValueError(f"{weights_file} does not match the classifier described by {config_file}: {err}") from err
    extractor = DomainFeatureExtractor.from_task(task).to(map_location)
    extractor.config, extractor.path = config, folder
    return extractor


# -- training with a cache ------------------------------------------------------------------
def _train_dataset(datamodule: L.LightningDataModule) -> Dataset:
    dataset = getattr(datamodule, "train_dataset", None)
    if dataset is None:
        datamodule.setup("fit")
        dataset = datamodule.train_dataloader().dataset
    return dataset


def _required(datamodule: L.LightningDataModule, name: str) -> int:
    value = getattr(datamodule, name, None)
    if not isinstance(value, int):
        raise ValueError(f"{type(datamodule).__name__} has no integer attribute {name!r}; the feature extractor is "
                         f"a classifier of the training labels, so the data module must say its {name} (data with "
                         "masks and no labels: use the 'segmentation' extractor)")
    return value


@register_feature_extractor("domain")
def train_feature_extractor(datamodule: L.LightningDataModule, cache_dir: str | Path, backbone: str = "resnet18",
                            epochs: int = 5, max_steps: int = -1, seed: int = 0, small_input_stem: bool = False,
                            lr: float = 1e-3, retrain: bool = False,
                            trainer_kwargs: Mapping[str, Any] | None = None) -> DomainFeatureExtractor:
    """Train (or load from cache) a classifier on ``datamodule``'s real training split; return its features.

    The cache folder is ``cache_dir/<data-hash[:16]>/<backbone>-<settings-hash[:8]>``: the data
    hash is :func:`dataset_fingerprint` of the training split, the settings hash covers every
    argument that changes the weights. The returned extractor's ``from_cache`` says whether it
    was loaded, ``path`` where it lives and ``config["val_metrics"]`` how well it classifies.

    Args:
        datamodule: yields labelled batches; needs ``spatial_dims``, ``in_channels`` and
            ``num_classes`` attributes (all data modules of this library have them).
        cache_dir: folder holding cached extractors.
        backbone, small_input_stem, lr: as for :class:`ClassificationTask` (timm in 2D, MONAI in 3D).
        epochs, max_steps: training length (``max_steps=-1``: ``epochs`` decides).
        seed: seeds initialisation and data order.
        retrain: train even when a cached extractor exists, replacing it.
        trainer_kwargs: extra ``lightning.Trainer`` arguments (``accelerator``, ``precision``, ...).
    """
    if epochs < 1 and max_steps < 1:
        raise ValueError(f"give epochs >= 1 or max_steps >= 1 (got epochs={epochs}, max_steps={max_steps})")
    data_hash = dataset_fingerprint(_train_dataset(datamodule))  # first: set-up may fill in in_channels
    task_args = {"backbone": backbone, "spatial_dims": _required(datamodule, "spatial_dims"),
                 "in_channels": _required(datamodule, "in_channels"),
                 "num_classes": _required(datamodule, "num_classes"),
                 "multilabel": bool(getattr(datamodule, "multi_label", False)),
                 "small_input_stem": small_input_stem, "lr": lr}
    settings = {**task_args, "epochs": epochs, "max_steps": max_steps, "seed": seed}
    folder = cache_entry(cache_dir, data_hash, backbone.replace("/", "_"), settings)
    if not retrain and is_cached(folder):
        extractor = load_feature_extractor(folder)
        extractor.from_cache = True
        return extractor

    from lightning_medaug.tasks.classification import ClassificationTask

    L.seed_everything(seed, workers=True, verbose=False)
    task = ClassificationTask(**task_args)

    def write(staging: Path, global_step: int, val_metrics: dict[str, float]) -> None:
        save_feature_extractor(task, staging, data_hash=data_hash, training=settings, global_step=global_step,
                               val_metrics=val_metrics)

    fit_and_cache(task, datamodule, folder, write, epochs, max_steps, trainer_kwargs)
    extractor = DomainFeatureExtractor.from_task(task.cpu())
    extractor.config, extractor.path = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8")), folder
    return extractor


def cache_entry(cache_dir: str | Path, data_hash: str, name: str, settings: Mapping[str, Any]) -> Path:
    """``cache_dir/<data-hash[:16]>/<name>-<settings-hash[:8]>``: one trained extractor per data and settings."""
    settings_hash = hashlib.sha256(json.dumps(dict(settings), sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / data_hash[:16] / f"{name}-{settings_hash[:8]}"


def is_cached(folder: Path) -> bool:
    """Whether ``folder`` holds a complete cache entry (entries are renamed into place whole)."""
    return (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file()


def fit_and_cache(task: L.LightningModule, datamodule: L.LightningDataModule, folder: Path,
                  write: Callable[[Path, int, dict[str, float]], Any], epochs: int, max_steps: int,
                  trainer_kwargs: Mapping[str, Any] | None = None) -> None:
    """Train ``task`` on ``datamodule``'s training split, validate it once, and let ``write(staging, global_step,
    val_metrics)`` fill a staging folder that then replaces ``folder``: a reader never sees half a cache entry."""
    options: dict[str, Any] = {"accelerator": "auto", "devices": 1, "logger": False, "enable_checkpointing": False,
                               "enable_progress_bar": False, "enable_model_summary": False,
                               "max_epochs": epochs if max_steps < 1 else -1, "max_steps": max_steps,
                               "num_sanity_val_steps": 0, **(trainer_kwargs or {})}
    trainer = L.Trainer(**options)
    with warnings.catch_warnings():  # validation runs once, after training, not in the fit loop
        warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
        trainer.fit(task, train_dataloaders=datamodule.train_dataloader())
    val_metrics: dict[str, float] = {}
    if getattr(datamodule, "val_dataloader", None) is not None:
        try:
            val_loader = datamodule.val_dataloader()
        except (ValueError, NotImplementedError, KeyError, MisconfigurationException):  # no validation split
            val_loader = None
        if val_loader is not None:
            scores = trainer.validate(task, val_loader, verbose=False)  # [] for an empty validation split
            val_metrics = {k: float(v) for k, v in (scores[0] if scores else {}).items()}
    if trainer.is_global_zero:
        staging = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        write(staging, trainer.global_step, val_metrics)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    trainer.strategy.barrier()  # other ranks read the folder rank 0 just wrote


# -- images in, features out ----------------------------------------------------------------
def collect_images(source: Tensor | Dataset | Iterable, num_samples: int | None = None, seed: int = 0) -> Tensor:
    """Images ``(N, C, *S)`` from a tensor, a map-style data set or an iterable of batches.

    Tensors and data sets give a seeded random subset of ``num_samples`` (all when ``None`` or
    larger than the source); iterables (data loaders) give their first ``num_samples`` images.
    """
    if num_samples is not None and num_samples < 1:
        raise ValueError(f"num_samples must be at least 1 or None, got {num_samples}")
    if isinstance(source, Tensor) or (hasattr(source, "__getitem__") and hasattr(source, "__len__")):
        total = len(source)  # type: ignore[arg-type]
        if total == 0:
            raise ValueError("the image source is empty")
        if num_samples is None or num_samples >= total:
            if isinstance(source, Tensor):
                return source
            indices = torch.arange(total)
        else:
            indices = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:num_samples].sort().values
        if isinstance(source, Tensor):
            return source[indices.to(source.device)]
        return torch.stack([unpack_batch(source[int(i)]).image for i in indices])  # type: ignore[index]
    images, count = [], 0
    for batch in source:
        image = unpack_batch(batch).image
        images.append(image)
        count += image.shape[0]
        if num_samples is not None and count >= num_samples:
            break
    if not images:
        raise ValueError("the image source is empty")
    return torch.cat(images)[:num_samples]


def _module_device(module: nn.Module | None, fallback: torch.device) -> torch.device:
    if module is None:
        return fallback
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return fallback if tensor is None else tensor.device


@torch.no_grad()
def extract_features(extractor: nn.Module | None, images: Tensor, batch_size: int = 256) -> Tensor:
    """Features ``(N, D)`` float32 of ``images`` on the extractor's device; ``None`` flattens (pixel space).

    The extractor runs in eval mode (its mode is restored afterwards) without gradients.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = _module_device(extractor, images.device)
    if extractor is None:
        return images.reshape(images.shape[0], -1).to(device).float()
    was_training = extractor.training
    extractor.eval()
    try:
        chunks = [as_feature_matrix(extractor(images[i:i + batch_size].to(device)))
                  for i in range(0, images.shape[0], batch_size)]
    finally:
        extractor.train(was_training)
    return torch.cat(chunks)


def as_feature_matrix(features: Tensor) -> Tensor:
    """Check that an extractor returned ``(N, D)``; return it as float32."""
    if features.ndim != 2:
        raise ValueError(f"the feature extractor returned shape {tuple(features.shape)}, expected (N, D); pool its "
                         "spatial axes (e.g. timm models with num_classes=0 return pooled (N, D) features)")
    return features.float()
