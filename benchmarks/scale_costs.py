"""Figure 8: cost curves at clinical resolutions, pixel-space vs latent diffusion side by side.

For each 2D size (default 64, 128, 256 px) and 3D size (default 32, 64, 96 voxels a side; add 128
with ``--sizes-3d``), two mask-conditional generators are built at the width of the clinical
recipes and measured in the same run, alternating (see ``interleaved_times``):

* ``pixel``: a DDPM on the pixels (``recipes/ddpm_isbi_mask.yaml``'s UNet, the mask as an input channel);
* ``latent``: latent diffusion on an untrained KL autoencoder with factor-4 latents
  (``recipes/autoencoder_isbi_256.yaml`` / ``ldm_isbi_256.yaml`` in 2D, ``*_phantom3d_96.yaml`` in 3D);
  ``--latent-factor 8`` adds one autoencoder level (a 4x smaller latent grid in 2D, 8x in 3D).

Per side: ``train_s_per_step`` (median; one optimiser step with the EMA update, the frozen
encoder included for ``latent``), ``sample_s_per_image`` (DPM-Solver++ at ``--steps``, the
decoder included), ``peak_train_mb`` / ``peak_sample_mb`` and, per size, ``sampling_speedup``
(pixel over latent). Weights are random: time does not depend on them. Memory is CUDA's
``max_memory_allocated`` on a GPU; on the CPU the resident set sampled every 2 ms above its level
before the call (an approximation: the allocator may keep freed memory).

``--width full`` uses the settings the recipes tell a GPU user to raise to. The targets (on 2 CPU
cores, recipe width, 20 steps): latent sampling at 256 px under 1 s per image and at least 8x
faster than pixel sampling; ``meets_target`` is null where they do not apply.

    python benchmarks/scale_costs.py --threads 1
    python benchmarks/scale_costs.py --width full --sizes-3d 32 64 96 128 --precision bf16-mixed   # a GPU
    python benchmarks/scale_costs.py --tiny
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import torch
from _common import emit, versions
from unet_efficiency import (
    PRECISIONS,
    interleaved_times,
    precision_context,
    resolve_device,
    set_threads,
    synchronize,
)

#: channels of the pixel UNet, the autoencoder and the latent UNet; GroupNorm groups of the autoencoder and UNets
WIDTHS: dict[str, dict[int, dict[str, Any]]] = {
    "small": {  # the CPU recipes
        2: {"pixel": (16, 32, 64, 64), "autoencoder": (16, 32, 32), "latent": (32, 64, 64), "groups": 16,
            "unet_groups": 16},
        3: {"pixel": (16, 32, 64, 64), "autoencoder": (8, 16, 16), "latent": (32, 64, 64), "groups": 8,
            "unet_groups": 16},
    },
    "full": {  # what the recipes tell a GPU user to raise to
        2: {"pixel": (64, 128, 256, 256), "autoencoder": (64, 128, 128), "latent": (128, 256, 256), "groups": 32,
            "unet_groups": 32},
        3: {"pixel": (32, 64, 128, 128), "autoencoder": (32, 64, 64), "latent": (64, 128, 256), "groups": 32,
            "unet_groups": 32},
    },
    "tiny": {
        2: {"pixel": (8, 16), "autoencoder": (8, 16, 16), "latent": (16, 32), "groups": 8, "unet_groups": 8},
        3: {"pixel": (8, 16), "autoencoder": (8, 16, 16), "latent": (16, 32), "groups": 8, "unet_groups": 8},
    },
}
MASK_DOWNSAMPLING = {2: "space_to_depth", 3: "area"}  # as the recipes
TARGET_S_PER_IMAGE, TARGET_SPEEDUP = 1.0, 8.0


class PeakMemory:
    """Peak memory of a block in MB: CUDA's ``max_memory_allocated``, or the CPU's resident set above
    its level at entry, sampled every 2 ms by a thread (None where /proc is missing).

    On the CPU, glibc would serve the block from memory freed earlier (its heap keeps it), so the
    resident set would not grow: inside the block every allocation of 64 KiB or more gets its own
    mapping, returned on free (``mallopt(M_MMAP_THRESHOLD)``); the timed runs keep the defaults.
    """

    def __init__(self, device: torch.device):
        self.device, self.mb = device, None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        _mmap_threshold(64 * 1024)
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.mb = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
            return
        self._stop.set()
        self._thread.join()
        _mmap_threshold(32 * 2**20)  # glibc's largest dynamic threshold: large blocks reuse the heap again
        if self.base is not None:
            self.mb = round((max(self.peak, _rss()) - self.base) / 2**20, 1)


def _mmap_threshold(nbytes: int) -> None:
    """glibc's ``mallopt(M_MMAP_THRESHOLD, nbytes)`` and ``malloc_trim(0)``; nothing elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
        libc.mallopt(-3, nbytes)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _rss() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def build(dims: int, size: int, width: dict[str, Any], steps: int, folder: str,
          factor: int = 4) -> dict[str, torch.nn.Module]:
    """The two mask-conditional generators of one size, on random weights; the autoencoder's
    ``factor`` (4 or 8) adds a level to the recipe's (a factor-4) autoencoder for 8."""
    from lightning_medaug.registry import create_generator

    torch.manual_seed(0)
    common = {"num_inference_steps": steps, "norm_num_groups": width["unet_groups"]}
    pixel = create_generator("ddpm", spatial_dims=dims, image_size=size, channels=width["pixel"],
                             mask_conditional=True, **common)
    autoencoder = create_generator("kl_autoencoder", spatial_dims=dims, image_size=size, latent_channels=3,
                                   channels=width["autoencoder"] + (width["autoencoder"][-1],) * (factor == 8),
                                   norm_num_groups=width["groups"])
    latent = create_generator("ldm", autoencoder_path=str(autoencoder.save_pretrained(folder)),
                              channels=width["latent"], mask_conditional=True,
                              mask_downsampling=MASK_DOWNSAMPLING[dims], **common)
    latent.latent_scale.fill_(1.0)  # measured on data in a real fit; speed does not depend on it
    return {"pixel": pixel, "latent": latent}


def train_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], precision: str,
               device: torch.device) -> Callable[[], None]:
    """One optimiser step as a fit makes it: loss, backward, AdamW step, EMA update."""
    optimizer = model.configure_optimizers()

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        with precision_context(precision, device):
            loss = model._shared_step(batch, "train")
        loss.backward()
        optimizer.step()
        model.on_train_batch_end(None, batch, 0)

    return run


def measure_size(dims: int, size: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    batch_n, sample_n = (args.batch_2d, args.sample_batch_2d) if dims == 2 else (args.batch_3d, args.sample_batch_3d)
    shape = (size,) * dims
    with tempfile.TemporaryDirectory() as folder:
        models = build(dims, size, WIDTHS[args.width][dims], args.steps, folder, args.latent_factor)
    masks = (torch.rand(max(batch_n, sample_n), 1, *shape, device=device) > 0.5).float()
    batch = {"image": torch.rand(batch_n, 1, *shape, device=device) * 2 - 1, "mask": masks[:batch_n]}
    entry: dict[str, Any] = {name: {"train_batch": batch_n, "sample_batch": sample_n} for name in models}
    entry["latent"]["latent_shape"] = list(models["latent"].autoencoder.latent_shape)
    steps, samplers = {}, {}
    for name, model in models.items():
        model.to(device).train()
        steps[name] = train_step(model, batch, args.precision, device)

        def sample(model: torch.nn.Module = model, n: int = args.steps) -> None:
            with precision_context(args.precision, device):
                model.sample(sample_n, masks=masks[:sample_n], num_inference_steps=n)

        samplers[name] = sample
    for name, run in steps.items():  # warm-up, then the peak of one more step (optimizer state exists)
        run()
        with PeakMemory(device) as peak:
            run()
        entry[name]["peak_train_mb"] = peak.mb
    train_times = interleaved_times(steps, args.repeats, device, warmup=False)
    for name, model in models.items():
        model.eval()
        samplers[name](n=1)  # warm-up: one solver step
        with PeakMemory(device) as peak:
            samplers[name](n=1)
        entry[name]["peak_sample_mb"] = peak.mb
    sample_times = interleaved_times(samplers, args.sample_repeats, device, warmup=False)
    for name in models:
        entry[name]["train_s_per_step"] = round(statistics.median(train_times[name]), 4)
        entry[name]["sample_s_per_image"] = round(statistics.median(sample_times[name]) / sample_n, 4)
    entry["sampling_speedup"] = round(entry["pixel"]["sample_s_per_image"] / entry["latent"]["sample_s_per_image"], 2)
    entry["train_speedup"] = round(entry["pixel"]["train_s_per_step"] / entry["latent"]["train_s_per_step"], 2)
    del models, steps, samplers
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return entry


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-2d", type=int, nargs="*", default=[64, 128, 256])
    parser.add_argument("--sizes-3d", type=int, nargs="*", default=[32, 64, 96])
    parser.add_argument("--width", default="small", choices=("small", "full"), help="recipe width or the GPU one")
    parser.add_argument("--steps", type=int, default=20, help="DPM-Solver++ steps per sample")
    parser.add_argument("--latent-factor", type=int, default=4, choices=(4, 8),
                        help="downsampling of the autoencoder (the recipes: 4)")
    parser.add_argument("--batch-2d", type=int, default=4, help="images per training step")
    parser.add_argument("--batch-3d", type=int, default=1, help="volumes per training step")
    parser.add_argument("--sample-batch-2d", type=int, default=2, help="images per sample() call")
    parser.add_argument("--sample-batch-3d", type=int, default=1, help="volumes per sample() call")
    parser.add_argument("--repeats", type=int, default=3, help="timed training steps per side")
    parser.add_argument("--sample-repeats", type=int, default=1, help="timed sample() calls per side")
    parser.add_argument("--precision", default="32-true", choices=PRECISIONS)
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--tiny", action="store_true", help="smoke test: 16 px and 16^3, tiny width, 2 steps")
    parser.add_argument("--out", default=None, help="also append the JSON line to this file")
    args = parser.parse_args(argv)
    if args.tiny:
        args.sizes_2d, args.sizes_3d, args.width, args.steps = [16], [16], "tiny", 2
        args.batch_2d = args.sample_batch_2d = 2
        args.repeats = args.sample_repeats = 1
    set_threads(args.threads)
    device = resolve_device(args.device)
    results: dict[str, dict[str, Any]] = {"2d": {}, "3d": {}}
    for dims, sizes in ((2, args.sizes_2d), (3, args.sizes_3d)):
        for size in sizes:
            try:
                results[f"{dims}d"][str(size)] = measure_size(dims, size, args, device)
            except (torch.cuda.OutOfMemoryError, RuntimeError) as err:
                if not is_out_of_memory(err):
                    raise
                results[f"{dims}d"][str(size)] = {"skipped": "out of memory"}
                gc.collect()
                torch.cuda.empty_cache()
    at_256 = results["2d"].get("256", {})
    applies = device.type == "cpu" and args.width == "small" and args.steps == 20 and "latent" in at_256
    meets = None
    if applies:
        meets = (at_256["latent"]["sample_s_per_image"] < TARGET_S_PER_IMAGE
                 and at_256["sampling_speedup"] >= TARGET_SPEEDUP)
    widths = {f"{d}d": {k: list(v) if isinstance(v, tuple) else v for k, v in w.items()}
              for d, w in WIDTHS[args.width].items()}
    emit({"benchmark": "scale_costs", "device": str(device), "precision": args.precision, "width": args.width,
          "widths": widths, "steps": args.steps, "latent_factor": args.latent_factor,
          "memory_measure": "cuda_max_allocated" if device.type == "cuda" else "cpu_rss_above_start",
          "results": results, "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
          "target": {"latent_2d_256_s_per_image": TARGET_S_PER_IMAGE, "sampling_speedup_2d_256": TARGET_SPEEDUP},
          "meets_target": meets, "versions": versions()}, args.out)


if __name__ == "__main__":
    main()
