"""Writing a synthetic bank: sharded, atomic, resumable and split over DDP ranks.

Every shard is a pure function of the bank's settings and its index: its labels come from the
:class:`~lightning_medaug.bank.plan.LabelPlan`, its masks from cycling the given masks by global
index, and its noise from a ``torch.Generator`` seeded with ``SeedSequence([seed, shard])``. So
shards can be written in any order, by any rank, again after a crash, and the same settings give
bit-identical shards on CPU at the same intra-op thread count (``torch.set_num_threads`` /
``OMP_NUM_THREADS``, which torchrun sets to 1: convolutions round differently with more threads;
GPU kernels may differ in the last bits too). ``batch_size`` is part of the settings, since
splitting a shard into other batches draws its noise in another order; left unset, it is sized to
the images (:func:`default_batch_size`) for a new bank and read from ``bank.json`` for a resumed one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from lightning_medaug.bank import manifest as mf
from lightning_medaug.bank.batch_size import default_batch_size
from lightning_medaug.bank.conditions import check_sample_kwargs, prepare_masks
from lightning_medaug.bank.device import resolve_device
from lightning_medaug.bank.distributed import RankContext, rank_context
from lightning_medaug.bank.encoding import DTYPES, encode_images
from lightning_medaug.bank.geometry import GeometryLike, bank_geometry
from lightning_medaug.bank.image_files import FILE_COLUMNS, SampleFiles
from lightning_medaug.bank.plan import LabelPlan, label_plan
from lightning_medaug.bank.progress import shard_progress
from lightning_medaug.data.imageio import Geometry
from lightning_medaug.federated.record import read_federation
from lightning_medaug.hashing import file_digest
from lightning_medaug.sizes import spatial_size

__all__ = ["write_bank", "WriteSummary", "shard_seed", "checkpoint_sha256"]

@dataclass(frozen=True)
class WriteSummary:
    """What a :func:`write_bank` call did, over all ranks: ``written`` shards were drawn now,
    the other ``num_shards - written`` were complete already."""

    path: Path
    num_samples: int
    num_shards: int
    written: int
    rank: int = 0
    world_size: int = 1
    #: the shards this rank drew in this call (a rank draws shards ``k % world_size == rank``)
    drawn_here: tuple[int, ...] = ()

    @property
    def was_complete(self) -> bool:
        return self.written == 0


def _resumed_batch_size(root: Path) -> int | None:
    """The batch size recorded by the bank in ``root``, so a resumed bank keeps it (``None``: no bank yet)."""
    if not (root / mf.BANK_FILE).is_file():
        return None
    recorded = mf.read_bank_info(root).get("settings", {}).get("batch_size")
    return recorded if isinstance(recorded, int) and recorded > 0 else None  # else the settings check says why


def shard_seed(seed: int, shard: int) -> int:
    """The seed of shard ``shard``: 63 bits of ``numpy.random.SeedSequence([seed, shard])``."""
    return int(np.random.SeedSequence([seed, shard]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def checkpoint_sha256(model: torch.nn.Module, registry_name: str) -> str:
    """SHA-256 of the ``model.safetensors`` that ``save_pretrained`` writes for these weights."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return hashlib.sha256(safetensors_bytes(state, metadata={"generator": registry_name})).hexdigest()


def _model_spec(model: Any) -> tuple[int, int, tuple[int, ...], int]:
    """``(spatial_dims, in_channels, spatial size per axis, num_classes)`` from the hyperparameters."""
    hp = getattr(model, "hparams", {})
    values = {}
    for name in ("spatial_dims", "in_channels", "image_size", "num_classes"):
        value = hp.get(name, getattr(model, name, None))
        if value is None:
            raise ValueError(f"{type(model).__name__} does not record {name}; generators must save it in hparams")
        values[name] = value if name == "image_size" else int(value)
    size = spatial_size(values["image_size"], values["spatial_dims"], min_side=1)
    return values["spatial_dims"], values["in_channels"], size, values["num_classes"]


def write_bank(model: Any, out: str | Path, num_samples: int | None = None,
               labels: str | Mapping[int, int] | LabelPlan | None = None,
               proportions: str | Mapping[int, float] | None = None, shard_size: int = 1024,
               batch_size: int | None = None,
               seed: int = 0, sample_kwargs: Mapping[str, Any] | None = None,
               masks: Tensor | np.ndarray | None = None, mask_names: Sequence[str] | None = None,
               dtype: str = "float16", device: str | torch.device | None = None, progress: bool = True,
               checkpoint_folder: str | Path | None = None, geometry: GeometryLike | None = None,
               file_format: str | None = None) -> WriteSummary:
    """Draw ``num_samples`` images from ``model`` into the bank folder ``out`` (or finish one).

    Args:
        model: a generator, or the folder ``save_pretrained`` wrote (its ``model.safetensors`` is
            hashed into the manifest either way).
        labels, proportions: the label plan, see :func:`~lightning_medaug.bank.plan.label_plan`.
        shard_size: samples per shard file.
        batch_size: samples per ``sample`` call; ``None``: the batch size of the bank being resumed,
            else :func:`default_batch_size` for the model's image size.
        seed: base seed; shard ``k`` draws with :func:`shard_seed` ``(seed, k)``.
        sample_kwargs: extra keyword arguments of ``model.sample`` (e.g. ``sampler``,
            ``num_inference_steps``, ``guidance_scale``); each must be in its signature.
        masks, mask_names: (M, 1, *S) {0, 1} masks for mask-conditional models, cycled by global
            index, and their (relative) source names for the manifest.
        dtype: storage dtype, one of :data:`DTYPES`.
        device: ``"auto"``, ``"cpu"``, ``"cuda[:N]"`` or ``None`` (leave the model where it is).
        checkpoint_folder: the ``save_pretrained`` folder an in-memory ``model`` was loaded from;
            its ``model.safetensors`` is hashed. Without it, the weights are hashed as
            ``save_pretrained`` would write them.
        geometry: spacing, origin and direction of the real data the bank imitates, recorded in
            ``bank.json`` (see :mod:`~lightning_medaug.bank.geometry`: a ``Geometry`` of real images
            of another size keeps their field of view).
        file_format: ``"nifti"``, ``"mha"`` or ``"nrrd"``: also write every sample as an image file
            with that geometry (see :mod:`~lightning_medaug.bank.image_files`); ``None``: shards only.

    Under ``torch.distributed`` (or ``torchrun``, whose environment is read and a gloo group
    started) rank ``r`` writes the shards ``k`` with ``k % world_size == r``; rank 0 writes
    ``bank.json`` and ``manifest.csv``. A rerun with other settings into the same folder raises.
    """
    model, settings = prepare_generator(model, out, shard_size, batch_size, seed, dtype, device, checkpoint_folder)
    _, _, size, num_classes = _model_spec(model)
    mask_array, names = prepare_masks(masks, mask_names, bool(getattr(model, "requires_masks", False)),
                                      (1,) + size, type(model).__name__)
    plan = label_plan(labels, num_samples, num_classes, proportions)
    kwargs = check_sample_kwargs(model, sample_kwargs or {})
    settings |= {
        "label_plan": plan.to_dict(), "num_samples": plan.num_samples, "sample_kwargs": kwargs,
        "masks": None if mask_array is None else {"count": len(mask_array), "shape": list(mask_array.shape[1:]),
                                                  "sha256": hashlib.sha256(mask_array.tobytes()).hexdigest()},
    }
    outputs, files = prepare_outputs(geometry, file_format, size, mask_array is not None)
    job = _ShardJob(model, Path(out), settings | outputs, plan.labels(), mask_array, names, kwargs,
                    _sampler_record(model, kwargs), files)
    with rank_context() as ctx:
        return _run(job, ctx, progress)


def prepare_outputs(geometry: GeometryLike | None, file_format: str | None, size: tuple[int, ...],
                    has_masks: bool) -> tuple[dict[str, Any], SampleFiles | None]:
    """The settings ``geometry`` and ``file_format`` add to ``bank.json`` (none when unset) and the
    writer of the sample files (``None`` for shards only); images without a geometry get unit spacing."""
    placed = bank_geometry(geometry, size)
    files = None if file_format is None else SampleFiles(file_format, placed or Geometry.grid(size), has_masks)
    outputs: dict[str, Any] = {} if placed is None else {"geometry": placed.to_dict()}
    return outputs | ({} if files is None else {"files": files.settings()}), files


def prepare_generator(model: Any, out: str | Path, shard_size: int, batch_size: int | None, seed: int, dtype: str,
                      device: str | torch.device | None,
                      checkpoint_folder: str | Path | None) -> tuple[Any, dict[str, Any]]:
    """Check the settings every bank shares, load ``model`` (a generator or its folder) onto ``device``;
    returns the model in eval mode and those settings (generator, weights' hash, shapes, sharding, seed and,
    for a generator a federation trained, its summary from ``federation.json``)."""
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError("batch_size must be a positive integer (or unset, to size it to the images), "
                         f"got {batch_size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if isinstance(model, (str, Path)):
        from lightning_medaug.generative.base import load_generator

        model, checkpoint_folder = load_generator(model), model
    if not callable(getattr(model, "sample", None)):
        raise ValueError(f"model must be a generator with a sample() method or a save_pretrained folder, "
                         f"got {type(model).__name__}")
    checkpoint = None if checkpoint_folder is None else _file_digest(checkpoint_folder)
    model = model.to(resolve_device(device, model.device)).eval()
    name, class_path = _names(model)
    _, in_channels, size, num_classes = _model_spec(model)
    image_shape = (in_channels,) + size
    if batch_size is None:
        batch_size = _resumed_batch_size(Path(out)) or default_batch_size(image_shape)
    settings = {
        "generator": name, "generator_class": class_path,
        "checkpoint_sha256": checkpoint or checkpoint_sha256(model, name),
        "image_shape": list(image_shape), "num_classes": num_classes, "shard_size": shard_size,
        "batch_size": batch_size, "dtype": dtype, "seed": seed,
    }
    # a generator trained by sites that could not pool their images: the bank names that federation
    federation = None if checkpoint_folder is None else read_federation(checkpoint_folder)
    return model, settings | ({} if federation is None else {"federation": federation["summary"]})


def _file_digest(folder: str | Path) -> str:
    from lightning_medaug.generative.base import WEIGHTS_NAME

    weights = Path(folder) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: pass a folder written by save_pretrained()")
    return file_digest(weights)


def _names(model: Any) -> tuple[str, str]:
    from lightning_medaug.registry import GENERATORS

    cls = type(model)
    name = GENERATORS.name_of(model)
    if name is None:
        raise ValueError(f"{cls.__name__} is not a registered generator; decorate it with @register_generator(name)")
    return name, f"{cls.__module__}.{cls.__qualname__}"


def _sampler_record(model: Any, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The sampler, step count and guidance in force, for the manifest (``None`` when not applicable)."""
    hp = getattr(model, "hparams", {})

    def pick(*keys: str) -> Any:
        for key in keys:
            if key in kwargs:
                return kwargs[key]
        for key in keys:
            if key in hp:
                return hp[key]
        return None

    return {"sampler": pick("sampler"), "steps": pick("num_inference_steps", "steps"),
            "guidance": pick("guidance_scale", "guidance")}


@dataclass
class _ShardJob:
    model: Any
    root: Path
    settings: dict[str, Any]
    labels: np.ndarray
    masks: np.ndarray | None
    mask_names: list[str] | None
    sample_kwargs: dict[str, Any]
    sampler: dict[str, Any]
    files: SampleFiles | None = None

    @property
    def num_samples(self) -> int:
        return int(self.settings["num_samples"])

    @property
    def shard_size(self) -> int:
        return int(self.settings["shard_size"])

    #: manifest columns; a job kind with more per-sample records (edits) extends them
    columns = mf.COLUMNS

    @property
    def manifest_columns(self) -> tuple[str, ...]:
        """:attr:`columns` plus the sample files' paths when the bank writes them."""
        return self.columns + (FILE_COLUMNS if self.files is not None else ())

    def draw(self, part: np.ndarray, labels: Tensor | None, masks: Tensor | None,
             generator: torch.Generator) -> Tensor:
        """The images of global indices ``part`` (labels and masks already on the model's device)."""
        return self.model.sample(len(part), labels=labels, masks=masks, generator=generator, **self.sample_kwargs)

    def row_extras(self, index: int) -> dict[str, Any]:
        """Manifest fields of global index ``index`` beyond :data:`~.manifest.COLUMNS`."""
        return {}


def _run(job: _ShardJob, ctx: RankContext, progress: bool) -> WriteSummary:
    root, total = job.root, mf.num_shards(job.num_samples, job.shard_size)
    ctx.run_everywhere(lambda: _prepare_root(root, job.settings) if ctx.rank == 0 else None)
    ctx.run_everywhere(lambda: _check_settings(root, job.settings) if ctx.rank != 0 else None)
    mine = [k for k in range(total) if k % ctx.world_size == ctx.rank]
    todo = [k for k in mine if not mf.shard_complete(root, k, len(mf.shard_range(k, job.num_samples, job.shard_size)),
                                                      job.masks is not None)]

    def work() -> None:
        count = sum(len(mf.shard_range(k, job.num_samples, job.shard_size)) for k in todo)
        with shard_progress(count, enabled=progress and ctx.rank == 0 and bool(todo)) as advance:
            for shard in todo:
                _write_shard(job, shard, advance)

    ctx.run_everywhere(work)
    written = sum(ctx.gather(len(todo)))

    def consolidate() -> None:
        if ctx.rank == 0 and (written or not (root / mf.MANIFEST_FILE).is_file()):
            rows = mf.write_manifest_csv(root, total, job.manifest_columns)
            if rows != job.num_samples:
                raise ValueError(f"{root} holds {rows} manifest rows but the bank has {job.num_samples} samples; "
                                 "a shard manifest was edited: delete it and rerun to regenerate that shard")

    ctx.run_everywhere(consolidate)
    return WriteSummary(root, job.num_samples, total, written, ctx.rank, ctx.world_size, tuple(todo))


def _prepare_root(root: Path, settings: Mapping[str, Any]) -> None:
    """Create the bank folder and ``bank.json``, or check that an existing bank has these settings."""
    if (root / mf.BANK_FILE).is_file():
        _check_settings(root, settings)
    else:
        if root.exists() and not root.is_dir():
            raise ValueError(f"{root} is a file; pass a folder for the bank")
        if root.is_dir() and any(p.name not in (mf.SHARD_DIR, mf.BANK_FILE + ".tmp") for p in root.iterdir()):
            raise ValueError(f"{root} is not empty and holds no bank.json; write the bank into a new or empty folder")
        (root / mf.SHARD_DIR).mkdir(parents=True, exist_ok=True)
        from lightning_medaug import __version__

        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        mf.write_bank_info(root, settings, {"library_version": __version__, "created": created})
    for stale in (root / (mf.BANK_FILE + ".tmp"), root / (mf.MANIFEST_FILE + ".tmp")):
        stale.unlink(missing_ok=True)


def _check_settings(root: Path, settings: Mapping[str, Any]) -> None:
    diffs = mf.settings_mismatch(mf.read_bank_info(root)["settings"], settings)
    if diffs:
        raise ValueError(f"{root} already holds a bank written with other settings ({'; '.join(diffs)}); "
                         "rerun with the same arguments to resume it, or choose a new --out folder")


def _write_shard(job: _ShardJob, shard: int, advance: Callable[[int], None]) -> None:
    """Draw, write and commit shard ``shard``; its manifest is written last (the completion marker)."""
    files = mf.shard_files(job.root, shard)
    for path in (*files, *(mf.temporary(p) for p in files)):  # leftovers of an interrupted run
        path.unlink(missing_ok=True)
    indices = mf.shard_range(shard, job.num_samples, job.shard_size)
    seed = shard_seed(int(job.settings["seed"]), shard)
    model, dtype, batch = job.model, job.settings["dtype"], int(job.settings["batch_size"])
    generator = torch.Generator(device=model.device).manual_seed(seed)
    image_shape = tuple(job.settings["image_shape"])
    targets = [(files.images, (len(indices), *image_shape), dtype)]
    if job.masks is not None:
        targets.append((files.masks, (len(indices), *job.masks.shape[1:]), "uint8"))
    arrays = [np.lib.format.open_memmap(mf.temporary(p), mode="w+", dtype=d, shape=s) for p, s, d in targets]
    for start in range(0, len(indices), batch):
        part = np.arange(indices.start + start, min(indices.stop, indices.start + start + batch))
        labels = None if job.settings["num_classes"] == 0 else torch.as_tensor(job.labels[part], device=model.device)
        masks = None if job.masks is None else job.masks[part % len(job.masks)]
        condition = None if masks is None else torch.as_tensor(masks, device=model.device).float()
        with torch.inference_mode():
            images = job.draw(part, labels, condition, generator)
        arrays[0][start:start + len(part)] = encode_images(_checked(images, len(part), image_shape, shard), dtype)
        if masks is not None:
            arrays[1][start:start + len(part)] = masks
        advance(len(part))
    for array in arrays:
        array.flush()
    arrays.clear()  # unmaps the files before they are renamed
    for path, _, _ in targets:
        mf.commit(mf.temporary(path), path)
    if job.files is not None:  # from the committed arrays, so a file holds exactly what the bank reads
        stored_masks = None if job.masks is None else np.load(files.masks, mmap_mode="r")
        job.files.write(job.root, indices, np.load(files.images, mmap_mode="r"), stored_masks)
    _write_rows(job, shard, indices, seed, file_digest([p for p, _, _ in targets]))


def _checked(images: Tensor, n: int, image_shape: tuple[int, ...], shard: int) -> np.ndarray:
    if tuple(images.shape) != (n, *image_shape):
        raise ValueError(f"sample() returned shape {tuple(images.shape)}, expected {(n, *image_shape)}")
    if not torch.isfinite(images).all():
        raise ValueError(f"the generator produced NaN or infinite values in shard {shard}; check its weights")
    return images.detach().float().clamp(-1.0, 1.0).cpu().numpy()


def _write_rows(job: _ShardJob, shard: int, indices: range, seed: int, digest: str) -> None:
    from lightning_medaug import __version__

    s = job.settings
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    common = {"generator": s["generator"], "generator_class": s["generator_class"],
              "checkpoint_sha256": s["checkpoint_sha256"], "seed": seed, **job.sampler,
              "library_version": __version__, "time": now, "shard_sha256": digest}
    rows = [{"id": g, "shard": shard, "index": i, "label": int(job.labels[g]),
             "mask_source": None if job.mask_names is None else job.mask_names[g % len(job.mask_names)], **common,
             **job.row_extras(g), **({} if job.files is None else job.files.paths(g))} for i, g in enumerate(indices)]
    mf.write_shard_rows(mf.shard_files(job.root, shard).manifest, rows, job.manifest_columns)
