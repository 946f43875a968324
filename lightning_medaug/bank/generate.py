"""``medaug generate``: draw a synthetic bank from a saved generator.

::

    medaug generate --model runs/cvae/ --num-samples 10000 --labels balanced --out banks/cvae/
    medaug generate --model runs/ddpm/ --num-samples 5000 --labels proportional \\
        --proportions 0:0.26,1:0.74 --sampler ddim --steps 50 --guidance-scale 2 --out banks/ddpm/
    medaug generate --model runs/pix2pix/ --num-samples 2000 --masks data/label/ --out banks/p2p/
    medaug generate --model runs/vae3d/ --num-samples 100 --format nifti \
        --geometry-from recipes/cvae_phantom3d_anisotropic.yaml --out banks/vae3d/   # + .nii.gz files
    medaug generate --model runs/ddpm/ --edit-from recipes/classify_pneumonia.yaml --strength 0.5 \
        --target-labels other --out banks/ddpm_edits/   # edits of the real training images
    torchrun --nproc_per_node 4 -m lightning_medaug.cli generate ...   # one shard stream per rank

An interrupted run resumes when rerun with the same arguments; see :func:`write_bank`.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jsonargparse import ArgumentParser, Namespace

from lightning_medaug.bank.encoding import DTYPES
from lightning_medaug.bank.image_files import FILE_FORMATS
from lightning_medaug.bank.writer import WriteSummary, write_bank
from lightning_medaug.command_parser import command_parser, parse_command

__all__ = ["main", "build_parser", "read_mask_folder", "sampler_kwargs"]


def build_parser() -> ArgumentParser:
    p = command_parser("medaug generate", "Draw a sharded, resumable synthetic bank from a generator.")
    p.add_argument("--model", type=str, required=True,
                   help="folder written by save_pretrained (config.json + model.safetensors)")
    p.add_argument("--out", type=str, required=True, help="bank folder (new, empty, or a bank to resume)")
    p.add_argument("--num-samples", type=int | None, help="bank size (optional with explicit --labels counts)")
    p.add_argument("--labels", type=str | None, help="balanced (default), proportional, or counts like 0:1000,1:500")
    p.add_argument("--proportions", type=str | None, help="class shares for --labels proportional, like 0:0.26,1:0.74")
    p.add_argument("--masks", type=str | None,
                   help="folder of mask files (any SimpleITK format), cycled, for mask-conditional models")
    p.add_argument("--edit-from", type=str | None, help="recipe (its 'data' section) or data config whose real "
                   "training images a diffusion model edits, one edit per image (cycled up to --num-samples)")
    p.add_argument("--strength", type=float | None, help="edit strength in (0, 1] (with --edit-from): how far along "
                   "the noise schedule the real images are taken back; 1 = from pure noise")
    p.add_argument("--target-labels", type=str | None, help="classes edits are guided to (with --edit-from): same "
                   "(default), other (a random other class, Diff-Mix counterfactuals) or a map like 0:1,1:0")
    p.add_argument("--sampler", type=str | None, help="sampler of diffusion models, e.g. ddim, dpmsolver++, ddpm")
    p.add_argument("--steps", type=int | None, help="sampling steps of diffusion models")
    p.add_argument("--guidance-scale", type=float | None, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--shard-size", type=int, default=1024, help="samples per shard file")
    p.add_argument("--batch-size", type=int | None,
                   help="samples per sample() call (default: the resumed bank's; else 256 images up to 128x128, "
                        "fewer for larger images and volumes: 128 at 32^3, 16 at 64^3, 2 at 128^3)")
    p.add_argument("--seed", type=int, default=0, help="base seed; shard k uses SeedSequence([seed, k])")
    p.add_argument("--device", type=str, default="auto", help="auto (this rank's GPU if any), cpu, cuda or cuda:N")
    # choices rather than a Literal type: the error lists the choices
    p.add_argument("--dtype", type=str, default="float16", choices=DTYPES, help="storage dtype of the images")
    p.add_argument("--format", type=str, default="shards", choices=("shards", *FILE_FORMATS),
                   help="shards only, or also every sample as an image file: nifti (.nii.gz), mha or nrrd, "
                        "float32 in [-1, 1], in BANK/image/ (masks in BANK/label/)")
    p.add_argument("--geometry-from", type=str | None, help="image file (any SimpleITK format) or recipe / data "
                   "config whose images' spacing, origin and direction the bank records in bank.json and its "
                   "image files")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def sampler_kwargs(model: Any, sampler: str | None, steps: int | None, guidance: float | None) -> dict[str, Any]:
    """Map the sampler options the user set to the names ``model.sample`` takes.

    Options left unset are not passed; a set option ``model.sample`` does not take raises.
    """
    params = inspect.signature(model.sample).parameters
    wanted = {("sampler",): sampler, ("num_inference_steps", "steps"): steps,
              ("guidance_scale", "guidance"): guidance}
    kwargs: dict[str, Any] = {}
    for names, value in wanted.items():
        if value is None:
            continue
        name = next((n for n in names if n in params), None)
        if name is None:
            option = "--" + {"sampler": "sampler", "num_inference_steps": "steps"}.get(names[0], "guidance-scale")
            raise ValueError(f"option {option} does not apply: {type(model).__name__}.sample() takes no "
                             f"{names[0]} argument")
        kwargs[name] = value
    return kwargs


def read_mask_folder(folder: str | Path, spatial_dims: int, image_size: int | Sequence[int],
                     threshold: float = 0.5) -> tuple[np.ndarray, list[str]]:
    """Masks of a folder as a uint8 (M, 1, *S) {0, 1} array plus their file names.

    Read like :class:`~lightning_medaug.data.FolderDataModule` reads masks: SimpleITK, one channel,
    foreground where ``value > threshold * max``, resized (nearest) to ``image_size``.
    """
    from lightning_medaug.data.imageio import (
        image_to_array,
        read_image,
        resize,
        scan_folder,
    )

    files = scan_folder(Path(folder))
    if not files:
        raise ValueError(f"no mask files in {folder}: expected images such as .png or .nii.gz")
    masks, names = [], []
    for path in files.values():
        image = read_image(path)
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(f"mask {path} has {image.GetNumberOfComponentsPerPixel()} channels, expected 1")
        array = image_to_array(image, path, spatial_dims)
        top = array.max()
        binary = (array > threshold * top) if top > 0 else np.zeros_like(array, dtype=bool)
        masks.append(resize(torch.from_numpy(binary.astype(np.float32)), image_size, True).numpy().astype(np.uint8))
        names.append(path.name)
    return np.stack(masks), names


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``medaug generate``; returns the exit code (errors raise ValueError / FileNotFoundError)."""
    args = parse_command(build_parser(), sys.argv[1:] if argv is None else argv)
    from lightning_medaug.generative.base import load_generator

    model = load_generator(args.model)
    outputs = _outputs(args)
    summary = _write_edits(model, args, outputs) if args.edit_from is not None else _write_samples(model, args, outputs)
    if summary.world_size > 1:  # which rank drew what: a cluster log shows the split at a glance
        print(f"rank {summary.rank} of {summary.world_size} drew {len(summary.drawn_here)} shard(s): "
              f"{list(summary.drawn_here)}", flush=True)
    if summary.rank == 0:
        if summary.was_complete:
            print(f"bank {summary.path} is complete ({summary.num_samples} samples in {summary.num_shards} shards); "
                  "nothing to do")
        else:
            print(f"wrote {summary.written} of {summary.num_shards} shards; bank {summary.path} is complete "
                  f"({summary.num_samples} samples)")
    return 0


def _outputs(args: Namespace) -> dict[str, Any]:
    """``geometry`` and ``file_format`` of the writers, from --geometry-from and --format."""
    from lightning_medaug.bank.geometry import geometry_from

    geometry = None if args.geometry_from is None else geometry_from(args.geometry_from)
    return {"geometry": geometry, "file_format": None if args.format == "shards" else args.format}


def _write_samples(model: Any, args: Namespace, outputs: dict[str, Any]) -> WriteSummary:
    given = [f"--{name.replace('_', '-')}" for name in ("strength", "target_labels") if getattr(args, name) is not None]
    if given:
        raise ValueError(f"generate: {', '.join(given)} only apply to edits of real images: add --edit-from")
    hp = model.hparams
    masks, names = (None, None)
    if args.masks is not None:
        masks, names = read_mask_folder(args.masks, int(hp["spatial_dims"]), hp["image_size"])
    return write_bank(
        model, args.out, args.num_samples, labels=args.labels, proportions=args.proportions,
        shard_size=args.shard_size, batch_size=args.batch_size, seed=args.seed,
        sample_kwargs=sampler_kwargs(model, args.sampler, args.steps, args.guidance_scale), masks=masks,
        mask_names=names, dtype=args.dtype, device=args.device, progress=not args.no_progress,
        checkpoint_folder=args.model, **outputs,
    )


def _write_edits(model: Any, args: Namespace, outputs: dict[str, Any]) -> WriteSummary:
    from lightning_medaug.bank.edits import load_training_set, write_edit_bank

    given = [f"--{name}" for name in ("labels", "proportions", "masks") if getattr(args, name) is not None]
    if given:
        raise ValueError(f"generate: {', '.join(given)} do not apply with --edit-from (an edit keeps its image's "
                         "class, or takes --target-labels)")
    if args.strength is None:
        raise ValueError("generate: --edit-from needs --strength, a number in (0, 1], e.g. --strength 0.5")
    dataset, section = load_training_set(args.edit_from)
    return write_edit_bank(
        model, args.out, dataset, args.strength, target_labels=args.target_labels, num_samples=args.num_samples,
        shard_size=args.shard_size, batch_size=args.batch_size, seed=args.seed,
        sample_kwargs=sampler_kwargs(model, args.sampler, args.steps, args.guidance_scale), dtype=args.dtype,
        device=args.device, progress=not args.no_progress, checkpoint_folder=args.model, source=section,
        **outputs,
    )
