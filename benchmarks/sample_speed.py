"""Sampling speed of the diffusion generators (and of the GAN and VAE, for scale) on this machine.

Prints one JSON line:

* ``ddim_vs_pipeline``: images/s of our DDIM sampler (``DDPM.sample``) against diffusers'
  ``DDIMPipeline`` driving the very same UNet weights (our UNet wrapped as a diffusers model),
  the same ``DDIMScheduler`` config and the same number of steps, timed side by side in this run;
  ``ratio`` = ours / pipeline (target >= 1.2). On CUDA our sampler replays the UNet as a CUDA graph
  (its default there); ``ours_eager_images_per_s`` and ``eager_ratio`` time it without;
* ``dpmsolver_ms_per_sample``: our default sampler and UNet (DPM-Solver++) at 10 and 20 steps at 28x28,
  unconditional and class-conditional with classifier-free guidance (cond and uncond in one
  batched pass), amortised over ``--batch-size`` (target < 100 ms/sample on 2 CPU cores);
* ``other_ms_per_sample``: ``cgan`` and ``vae`` (skipped with a note when not registered).

Weights are random (speed does not depend on them). Each figure is the median of ``--repeats``
timed runs after one warm-up run.

    python benchmarks/sample_speed.py                       # 28x28, batch 64, 3 repeats
    python benchmarks/sample_speed.py --device cuda --precision bf16-mixed
    python benchmarks/sample_speed.py --tiny                # smoke test: seconds
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time
from collections.abc import Callable

import torch
from _common import emit, versions
from diffusers import DDIMPipeline, ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput
from unet_efficiency import PRECISIONS, precision_context, resolve_device, set_threads, synchronize

from lightning_medaug.generative.diffusion import DDPM
from lightning_medaug.generative.schedulers import build_sampler
from lightning_medaug.registry import create_generator, list_generators


class WrappedUNet(ModelMixin, ConfigMixin):
    """Our DDPM's (EMA) UNet, with its padding, behind the ``unet(x, t).sample`` call of diffusers."""

    @register_to_config
    def __init__(self, sample_size: int, in_channels: int):
        super().__init__()
        self.ddpm: DDPM | None = None

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> UNet2DOutput:
        net = self.ddpm.ema.module if self.ddpm.ema is not None else self.ddpm.unet
        t = torch.as_tensor(timestep, device=sample.device)
        return UNet2DOutput(sample=self.ddpm.denoise(net, sample, t, None, None))


def timed(run: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of ``run``, with queued device kernels waited for on both sides."""
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def median_ms_per_sample(run: Callable[[], object], n: int, repeats: int, device: torch.device) -> float:
    run()  # warm-up: allocator, oneDNN primitive cache, CUDA kernels and handles
    times = [timed(run, device) for _ in range(repeats)]
    return 1000.0 * statistics.median(times) / n


def ddim_vs_pipeline(image_size: int, batch: int, steps: int, repeats: int, channels: tuple[int, ...],
                     device: torch.device, precision: str) -> dict:
    model = DDPM(image_size=image_size, channels=channels).eval()
    # A fresh UNet's last convolution is zero (it predicts 0 whatever it gets), which would make the
    # same-images check below pass for any network: give every weight small random values first.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=generator))
    model.to(device)
    wrapped = WrappedUNet(sample_size=image_size, in_channels=1)
    wrapped.ddpm = model
    pipe = DDIMPipeline(unet=wrapped, scheduler=build_sampler("ddim", model.schedule))
    pipe.set_progress_bar_config(disable=True)

    # Both draw their noise from a CPU generator (moved to the device), so the images match anywhere.
    def ours(cuda_graph: bool | None = None):
        generator = torch.Generator().manual_seed(0)
        with precision_context(precision, device):
            return model.sample(batch, sampler="ddim", num_inference_steps=steps, generator=generator,
                                cuda_graph=cuda_graph).float().cpu()

    def theirs():
        with precision_context(precision, device):
            return pipe(batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                        output_type="np")

    # fairness: both must turn the same initial noise into the same images
    ours_images = ours()
    theirs_images = torch.from_numpy(theirs().images).permute(0, 3, 1, 2) * 2 - 1
    # bf16 rounding differs between the two loops' arithmetic orders: compare loosely there
    same = bool(torch.allclose(ours_images, theirs_images, atol=1e-3 if precision == "32-true" else 5e-2))
    # On CUDA our default replays the UNet as a CUDA graph; the eager loop is timed beside it.
    runs = {"ours": ours, "pipeline": theirs}
    if device.type == "cuda":
        runs["ours_eager"] = lambda: ours(cuda_graph=False)
        same = same and bool(torch.allclose(runs["ours_eager"](), ours_images, atol=1e-3 if precision == "32-true"
                                            else 5e-2))
    # interleaved, the order reversed every round, so that all see the same machine load
    ms: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(repeats):
        for name in list(runs) if i % 2 == 0 else list(runs)[::-1]:
            ms[name].append(1000.0 * timed(runs[name], device) / batch)
    med = {name: statistics.median(times) for name, times in ms.items()}
    record = {"image_size": image_size, "batch_size": batch, "steps": steps, "channels": list(channels),
              "ours_images_per_s": round(1000.0 / med["ours"], 2),
              "pipeline_images_per_s": round(1000.0 / med["pipeline"], 2),
              "ratio": round(med["pipeline"] / med["ours"], 3),
              "ratio_of_best_runs": round(min(ms["pipeline"]) / min(ms["ours"]), 3), "same_images": same}
    if "ours_eager" in med:
        record.update(ours_eager_images_per_s=round(1000.0 / med["ours_eager"], 2),
                      eager_ratio=round(med["pipeline"] / med["ours_eager"], 3))
    return record


def dpmsolver(image_size: int, batch: int, repeats: int, channels: tuple[int, ...], steps_list: list[int],
              device: torch.device, precision: str) -> dict:
    result = {}
    for num_classes, scale, tag in ((0, 1.0, "uncond"), (2, 2.0, "cfg2")):
        model = DDPM(image_size=image_size, num_classes=num_classes, channels=channels, guidance_scale=scale)
        model = model.to(device).eval()
        for steps in steps_list:
            def run(model=model, steps=steps):
                with precision_context(precision, device):
                    return model.sample(batch, sampler="dpmsolver++", num_inference_steps=steps)

            result[f"{tag}_{steps}_steps"] = round(median_ms_per_sample(run, batch, repeats, device), 2)
    return result


def others(image_size: int, batch: int, repeats: int, device: torch.device, precision: str) -> dict:
    out = {}
    available = list_generators()
    for name, kwargs in (("cgan", {"num_classes": 2}), ("vae", {})):
        if name not in available:
            out[name] = f"skipped: '{name}' is not registered"
            continue
        model = create_generator(name, image_size=image_size, **kwargs).to(device).eval()

        def run(model=model):
            with precision_context(precision, device):
                return model.sample(batch)

        out[name] = round(median_ms_per_sample(run, batch, repeats, device), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps for the pipeline comparison")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument("--precision", default="32-true", choices=PRECISIONS, help="autocast of both sides")
    parser.add_argument("--tiny", action="store_true", help="smoke test: small batch, few steps, 1 repeat")
    parser.add_argument("--out", default=None, help="also append the JSON line to this file")
    args = parser.parse_args()
    set_threads(args.threads)
    device = resolve_device(args.device)
    channels = tuple(inspect.signature(DDPM).parameters["channels"].default)
    batch, steps, repeats, dpm_steps = args.batch_size, args.steps, args.repeats, [10, 20]
    if args.tiny:
        batch, steps, repeats, dpm_steps, channels = 4, 3, 1, [2], (16, 32)
    record = {
        "benchmark": "sample_speed",
        "device": str(device), "precision": args.precision,
        "ddim_vs_pipeline": ddim_vs_pipeline(args.image_size, batch, steps, repeats, channels, device, args.precision),
        "dpmsolver_ms_per_sample": dpmsolver(args.image_size, batch, repeats, channels, dpm_steps, device,
                                             args.precision),
        "other_ms_per_sample": others(args.image_size, batch, repeats, device, args.precision),
        "versions": versions(),
    }
    emit(record, args.out)


if __name__ == "__main__":
    main()
