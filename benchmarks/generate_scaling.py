"""Figure 6: scaling of synthetic-bank generation with processes, and of DDPM sampling with size and steps.

Prints one JSON line with three parts:

* ``ddp``: wall time of ``medaug generate`` (``python -m torch.distributed.run --standalone
  --nproc_per_node K -m lightning_medaug.cli generate ...``) for K = 1 and 2 on one saved
  generator (a small untrained DDPM), interleaved repeats into fresh bank folders; ``ratio`` =
  samples/s with 2 processes / with 1. Wall times include starting the processes and importing
  the library, as a user sees them. torchrun gives each of several processes
  ``OMP_NUM_THREADS=1`` unless it is set (``--threads`` sets it for both runs);
* ``image_size``: ms per sample of ``DDPM.sample`` (default UNet, DPM-Solver++) at 28, 64, 128
  (2D) and 16, 32, 64 (3D), each also relative to the smallest size of its row, beside the ratio
  of pixel counts (the UNet pads every size to a multiple of 8);
* ``steps``: the same at 28x28 for 10, 20 and 40 steps, relative to the fewest.

The issue sets no target for these figures: they are reported for reading, with
``meets_target`` null. Weights are random (time does not depend on them).

    python benchmarks/generate_scaling.py                     # all three parts
    python benchmarks/generate_scaling.py --parts ddp         # one part
    python benchmarks/generate_scaling.py --tiny              # smoke test
"""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from _common import emit, versions
from unet_efficiency import interleaved_times, resolve_device, set_threads

PARTS = ("ddp", "image_size", "steps")


def generate_command(nproc: int, model_dir: Path, out: Path, args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "lightning_medaug.cli", "generate", "--model", str(model_dir), "--out", str(out),
            "--num-samples", str(args.num_samples), "--shard-size", str(args.shard_size),
            "--batch-size", str(args.gen_batch_size), "--steps", str(args.gen_steps), "--device", "cpu",
            "--no-progress"]


def ddp_scaling(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Interleaved ``medaug generate`` runs with 1 and 2 processes on one saved DDPM."""
    from lightning_medaug.generative.diffusion import DDPM

    torch.manual_seed(0)
    channels = tuple(args.gen_channels)
    model_dir = DDPM(image_size=args.gen_image_size, channels=channels,
                     norm_num_groups=min(16, channels[0])).save_pretrained(workdir / "ddpm")
    env = dict(os.environ)
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    counter = iter(range(10 ** 6))

    def launch(nproc: int) -> None:
        out = workdir / f"bank_{nproc}_{next(counter)}"
        done = subprocess.run(generate_command(nproc, model_dir, out, args), check=False, env=env, capture_output=True,
                              text=True, encoding="utf-8", errors="replace", timeout=args.timeout)
        if done.returncode != 0:
            raise RuntimeError(f"medaug generate with {nproc} processes failed ({done.returncode}):\n"
                               f"{done.stderr[-2000:]}")
        shutil.rmtree(out)

    # No warm-up launch: it would only warm the page cache, which the first round does for both alike.
    times = interleaved_times({"1": lambda: launch(1), "2": lambda: launch(2)}, args.repeats, warmup=False)
    one, two = statistics.median(times["1"]), statistics.median(times["2"])
    return {
        "num_samples": args.num_samples, "shard_size": args.shard_size, "batch_size": args.gen_batch_size,
        "steps": args.gen_steps, "image_size": args.gen_image_size, "channels": list(channels),
        "omp_num_threads": env.get("OMP_NUM_THREADS", "torchrun default"),
        "seconds_1_process": round(one, 2), "seconds_2_processes": round(two, 2),
        "samples_per_s_1_process": round(args.num_samples / one, 2),
        "samples_per_s_2_processes": round(args.num_samples / two, 2),
        "ratio": round(one / two, 3), "target": None, "meets_target": None,
    }


def ddpm(spatial_dims: int, size: int, channels: tuple[int, ...], device: torch.device):
    from lightning_medaug.generative.diffusion import DDPM

    torch.manual_seed(0)
    return DDPM(spatial_dims=spatial_dims, image_size=size, channels=channels,
                norm_num_groups=min(16, channels[0])).to(device).eval()


def ms_per_sample(runs: dict[str, tuple[Any, int, int]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median ms per sample of ``model.sample(batch, steps)`` (DPM-Solver++) for each ``name: (model, batch, steps)``,
    interleaved like every figure, after a 1-step warm-up of each at its batch shape."""
    calls = {name: (lambda m=model, b=batch, s=steps: m.sample(b, sampler="dpmsolver++", num_inference_steps=s))
             for name, (model, batch, steps) in runs.items()}
    for model, batch, _ in runs.values():
        model.sample(batch, sampler="dpmsolver++", num_inference_steps=1)
    times = interleaved_times(calls, repeats, device, warmup=False)
    return {name: 1000.0 * statistics.median(times[name]) / runs[name][1] for name in runs}


def size_scaling(args: argparse.Namespace, channels: tuple[int, ...], device: torch.device) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for spatial_dims, sizes, batch in ((2, args.sizes_2d, args.batch_size_2d), (3, args.sizes_3d, args.batch_size_3d)):
        runs = {str(size): (ddpm(spatial_dims, size, channels, device), batch, args.size_steps) for size in sizes}
        ms = ms_per_sample(runs, args.repeats, device)
        base = str(min(sizes))
        rows[f"{spatial_dims}d"] = {
            size: {"ms_per_sample": round(ms[size], 2), "batch_size": batch,
                   "relative_to_smallest": round(ms[size] / ms[base], 2),
                   "pixel_ratio": round((int(size) / int(base)) ** spatial_dims, 2)}
            for size in runs
        }
    return {"steps": args.size_steps, "channels": list(channels), "sizes": rows, "target": None,
            "meets_target": None}


def steps_scaling(args: argparse.Namespace, channels: tuple[int, ...], device: torch.device) -> dict[str, Any]:
    model = ddpm(2, args.steps_image_size, channels, device)
    ms = ms_per_sample({str(s): (model, args.batch_size_2d, s) for s in args.steps}, args.repeats, device)
    fewest = str(min(args.steps))
    row = {steps: {"ms_per_sample": round(value, 2), "relative_to_fewest": round(value / ms[fewest], 2),
                   "steps_ratio": round(int(steps) / int(fewest), 2)} for steps, value in ms.items()}
    return {"image_size": args.steps_image_size, "batch_size": args.batch_size_2d, "channels": list(channels),
            "steps": row, "target": None, "meets_target": None}


def apply_tiny(args: argparse.Namespace) -> tuple[int, ...]:
    """Smoke-test sizes; returns the UNet channels of the size and steps parts."""
    args.num_samples, args.shard_size, args.gen_batch_size, args.gen_steps = 4, 2, 2, 1
    args.gen_image_size, args.gen_channels, args.repeats = 8, [8, 16], 1
    args.sizes_2d, args.sizes_3d, args.batch_size_2d, args.batch_size_3d = [8, 16], [8], 1, 1
    args.size_steps, args.steps, args.steps_image_size = 1, [1, 2], 8
    return (8, 16)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--num-samples", type=int, default=512, help="bank size of each `medaug generate` run")
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--gen-batch-size", type=int, default=32)
    parser.add_argument("--gen-steps", type=int, default=10, help="DPM-Solver++ steps of `medaug generate`")
    parser.add_argument("--gen-image-size", type=int, default=28)
    parser.add_argument("--gen-channels", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--sizes-2d", type=int, nargs="+", default=[28, 64, 128])
    parser.add_argument("--sizes-3d", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--batch-size-2d", type=int, default=8)
    parser.add_argument("--batch-size-3d", type=int, default=1)
    parser.add_argument("--size-steps", type=int, default=5, help="DPM-Solver++ steps of the image-size part")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--steps-image-size", type=int, default=28)
    parser.add_argument("--channels", type=int, nargs="+", default=None, help="UNet channels (default: DDPM's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed to one `medaug generate` run")
    parser.add_argument("--device", default="auto", help="device of the size and steps parts")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--tiny", action="store_true", help="smoke test: 8-16 px, 1-2 steps, 1 repeat")
    parser.add_argument("--out", default=None, help="also append the JSON line to this file")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    from lightning_medaug.generative.diffusion import DDPM

    channels = tuple(args.channels or inspect.signature(DDPM).parameters["channels"].default)
    if args.tiny:
        channels = apply_tiny(args)
    if args.num_samples < 2 * args.shard_size:
        raise ValueError(f"--num-samples {args.num_samples} gives fewer than 2 shards of {args.shard_size}: "
                         "the second process would have nothing to write")
    device = resolve_device(args.device)
    record: dict[str, Any] = {"benchmark": "generate_scaling", "tiny": args.tiny}
    if "ddp" in args.parts:
        with tempfile.TemporaryDirectory() as tmp:
            record["ddp"] = ddp_scaling(args, Path(tmp))
    if "image_size" in args.parts:
        record["image_size"] = size_scaling(args, channels, device)
    if "steps" in args.parts:
        record["steps"] = steps_scaling(args, channels, device)
    record.update(meets_target=None, versions=versions())
    emit(record, args.out)


if __name__ == "__main__":
    main()
