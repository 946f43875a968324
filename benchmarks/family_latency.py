"""Figure 3: sampling latency, ms per sample amortised over a batch, of every registered noise -> image family.

Prints one JSON line with, for 2D (28x28) and 3D (32^3), one entry per family of
``lightning_medaug.registry.list_generators()`` built with its default settings:

* diffusion families (their ``sample`` takes ``num_inference_steps``: ``ddpm``, ``ldm``) at
  DPM-Solver++ 10 and 20 steps (families that refuse DPM-Solver++, such as SinDDM's multi-scale
  sampler, at their default sampler); target < 100 ms per 2D sample;
* every other family (VAEs, VQ-VAE, GANs): one figure; target < 5 ms per 2D sample;
* single-image models (``fit_image``, e.g. ``sinddm``) are given a random image first; families
  that cannot be built at a size with their defaults are listed as skipped with the reason;
* families that do not sample from noise are listed as skipped with the reason: mask -> image
  models (``requires_masks``, e.g. ``pix2pix``) and models whose ``sample`` refuses to run
  (``cyclegan`` translates between domains).

The baseline of this figure is its target: each entry reports ``budget_fraction`` =
ms / target (3D entries have no target and report only the time). ``ldm`` runs on an untrained
VAE written with ``save_pretrained`` to a temporary folder; weights are random everywhere, which
does not change the time. Each time is the median of ``--repeats`` runs after one warm-up run
(of 1 step for diffusion: the caches it fills depend on the batch shape, not on the steps).

    python benchmarks/family_latency.py                      # batch 64 in 2D, 2 in 3D
    python benchmarks/family_latency.py --families ddpm vae  # a subset
    python benchmarks/family_latency.py --tiny               # smoke test: 16x16 and 8^3
"""

from __future__ import annotations

import argparse
import gc
import inspect
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import emit, versions
from unet_efficiency import (
    PRECISIONS,
    precision_context,
    resolve_device,
    set_threads,
    synchronize,
)

DIFFUSION_TARGET_MS = 100.0
OTHER_TARGET_MS = 5.0
#: settings a family needs beyond its defaults to build at all.
EXTRA_KWARGS: dict[str, dict[str, Any]] = {"cvae": {"num_classes": 2}}


def build(name: str, spatial_dims: int, image_size: int, workdir: Path) -> torch.nn.Module:
    """The family ``name`` with default settings; ``ldm`` gets an untrained VAE saved under ``workdir``."""
    from lightning_medaug.registry import create_generator

    torch.manual_seed(0)
    if name == "ldm":
        autoencoder = create_generator("vae", spatial_dims=spatial_dims, image_size=image_size)
        folder = autoencoder.save_pretrained(workdir / f"vae_{spatial_dims}d_{image_size}")
        return create_generator("ldm", autoencoder_path=str(folder))
    return create_generator(name, spatial_dims=spatial_dims, image_size=image_size, **EXTRA_KWARGS.get(name, {}))


def median_ms_per_sample(run: Callable[[], object], batch: int, repeats: int, device: torch.device) -> float:
    """Median wall time of ``run`` over ``repeats`` (the caller warms up), in ms per sample."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / batch


def time_family(model: torch.nn.Module, batch: int, repeats: int, steps_list: list[int], precision: str,
                device: torch.device, target_ms: float | None) -> dict[str, Any]:
    """Timings of one built family; ``{"skipped": reason}`` when its ``sample`` refuses to run."""
    params = inspect.signature(model.sample).parameters
    diffusion = "num_inference_steps" in params

    def run(kwargs: dict[str, Any]) -> torch.Tensor:
        with precision_context(precision, device):
            return model.sample(batch, **kwargs)

    sampler, name = ({"sampler": "dpmsolver++"}, "dpmsolver++") if "sampler" in params else ({}, "default_sampler")
    try:  # warm-up at the timed batch shape (1 step is enough), and the check that it samples from noise
        run({"num_inference_steps": 1, **sampler} if diffusion else {})
    except ValueError as err:
        if not sampler:
            return {"skipped": f"sample() refused: {err}"}
        sampler, name = {}, "default_sampler"  # a family with its own samplers (e.g. SinDDM's multi-scale one)
        try:
            run({"num_inference_steps": 1} if diffusion else {})
        except ValueError as err2:
            return {"skipped": f"sample() refused: {err2}"}
    settings = ({f"{name}_{steps}_steps": {"num_inference_steps": steps, **sampler} for steps in steps_list}
                if diffusion else {"ms_per_sample": {}})
    entry: dict[str, Any] = {"parameters": sum(p.numel() for p in model.parameters())}
    for key, kwargs in settings.items():
        entry[key] = round(median_ms_per_sample(lambda kwargs=kwargs: run(kwargs), batch, repeats, device), 3)
    if target_ms is not None:
        worst = max(entry[key] for key in settings)
        entry.update(target_ms=target_ms, budget_fraction=round(worst / target_ms, 3), meets_target=worst < target_ms)
    return entry


def measure(args: argparse.Namespace, device: torch.device) -> dict[str, dict[str, Any]]:
    from lightning_medaug.registry import get_generator_class, list_generators

    families = args.families or list_generators()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spatial_dims, size, batch in ((2, args.image_size_2d, args.batch_size), (3, args.image_size_3d,
                                                                                    args.batch_size_3d)):
            block = results.setdefault(f"{spatial_dims}d", {})
            for name in families:
                if getattr(get_generator_class(name), "requires_masks", False):
                    block[name] = {"skipped": "mask -> image model (requires_masks): it needs masks, not noise"}
                    continue
                try:
                    model = build(name, spatial_dims, size, Path(tmp)).to(device).eval()
                except ValueError as err:  # e.g. a multi-scale model whose pyramid does not fit this size
                    block[name] = {"skipped": f"cannot build at {size}px with default settings: {err}"}
                    continue
                if hasattr(model, "fit_image"):  # single-image models sample only once they hold their image
                    model.fit_image(torch.rand((1, *model.image_shape), device=device) * 2 - 1)
                diffusion = "num_inference_steps" in inspect.signature(model.sample).parameters
                target = (DIFFUSION_TARGET_MS if diffusion else OTHER_TARGET_MS) if spatial_dims == 2 else None
                block[name] = time_family(model, batch, args.repeats, args.steps, args.precision, device, target)
                del model
                gc.collect()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=None, help="registered names (default: all)")
    parser.add_argument("--image-size-2d", type=int, default=28)
    parser.add_argument("--image-size-3d", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64, help="2D samples per sample() call")
    parser.add_argument("--batch-size-3d", type=int, default=2, help="3D samples per sample() call")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20], help="DPM-Solver++ steps of diffusion")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="32-true", choices=PRECISIONS)
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--tiny", action="store_true", help="smoke test: 16x16 and 8^3, batch 2, 2 steps, 1 repeat")
    parser.add_argument("--out", default=None, help="also append the JSON line to this file")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.tiny:
        args.image_size_2d, args.image_size_3d, args.batch_size, args.batch_size_3d = 16, 8, 2, 1
        args.steps, args.repeats = [2], 1
    from lightning_medaug.registry import list_generators

    unknown = sorted(set(args.families or []) - set(list_generators()))
    if unknown:
        raise ValueError(f"unknown families {unknown}; registered: {list_generators()}")
    results = measure(args, resolve_device(args.device))
    verdicts = [e["meets_target"] for e in results["2d"].values() if "meets_target" in e]
    emit({
        "benchmark": "family_latency", "tiny": args.tiny, "image_size_2d": args.image_size_2d,
        "image_size_3d": args.image_size_3d, "batch_size_2d": args.batch_size, "batch_size_3d": args.batch_size_3d,
        "steps": args.steps, "precision": args.precision, "results": results,
        "targets_ms_2d": {"diffusion": DIFFUSION_TARGET_MS, "other": OTHER_TARGET_MS},
        "meets_target": bool(verdicts) and all(verdicts), "versions": versions(),
    }, args.out)


if __name__ == "__main__":
    main()
