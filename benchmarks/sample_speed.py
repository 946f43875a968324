"""Sampling speed of the diffusion generators (and of the GAN and VAE, for scale) on this machine.

Prints one JSON line:

* ``ddim_vs_pipeline``: images/s of our DDIM sampler (``DDPM.sample``) against diffusers'
  ``DDIMPipeline`` driving the very same UNet weights (our UNet wrapped as a diffusers model),
  the same ``DDIMScheduler`` config and the same number of steps, timed side by side in this run;
  ``ratio`` = ours / pipeline (target >= 1);
* ``dpmsolver_ms_per_sample``: our default sampler and UNet (DPM-Solver++) at 10 and 20 steps at 28x28,
  unconditional and class-conditional with classifier-free guidance (cond and uncond in one
  batched pass), amortised over ``--batch-size`` (target < 100 ms/sample on 2 CPU cores);
* ``other_ms_per_sample``: ``cgan`` and ``vae`` (skipped with a note when not registered).

Weights are random (speed does not depend on them). Each figure is the median of ``--repeats``
timed runs after one warm-up run.

    python benchmarks/sample_speed.py                       # 28x28, batch 64, 3 repeats
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


def median_ms_per_sample(run: Callable[[], object], n: int, repeats: int) -> float:
    run()  # warm-up: allocator, oneDNN primitive cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / n


def ddim_vs_pipeline(image_size: int, batch: int, steps: int, repeats: int, channels: tuple[int, ...]) -> dict:
    model = DDPM(image_size=image_size, channels=channels).eval()
    # A fresh UNet's last convolution is zero (it predicts 0 whatever it gets), which would make the
    # same-images check below pass for any network: give every weight small random values first.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=generator))
    wrapped = WrappedUNet(sample_size=image_size, in_channels=1)
    wrapped.ddpm = model
    pipe = DDIMPipeline(unet=wrapped, scheduler=build_sampler("ddim", model.schedule))
    pipe.set_progress_bar_config(disable=True)

    def ours():
        generator = torch.Generator().manual_seed(0)
        return model.sample(batch, sampler="ddim", num_inference_steps=steps, generator=generator)

    def theirs():
        return pipe(batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                    output_type="np")

    # fairness: both must turn the same initial noise into the same images
    ours_images = ours()
    theirs_images = torch.from_numpy(theirs().images).permute(0, 3, 1, 2) * 2 - 1
    same = bool(torch.allclose(ours_images, theirs_images, atol=1e-3))
    # interleaved, alternating which goes first, so that both see the same machine load
    ours_ms, theirs_ms = [], []
    for i in range(repeats):
        pair = [(ours, ours_ms), (theirs, theirs_ms)]
        for run, times in pair if i % 2 == 0 else pair[::-1]:
            start = time.perf_counter()
            run()
            times.append(1000.0 * (time.perf_counter() - start) / batch)
    ours_med, theirs_med = statistics.median(ours_ms), statistics.median(theirs_ms)
    return {"image_size": image_size, "batch_size": batch, "steps": steps, "channels": list(channels),
            "ours_images_per_s": round(1000.0 / ours_med, 2), "pipeline_images_per_s": round(1000.0 / theirs_med, 2),
            "ratio": round(theirs_med / ours_med, 3), "ratio_of_best_runs": round(min(theirs_ms) / min(ours_ms), 3),
            "same_images": same}


def dpmsolver(image_size: int, batch: int, repeats: int, channels: tuple[int, ...], steps_list: list[int]) -> dict:
    result = {}
    for num_classes, scale, tag in ((0, 1.0, "uncond"), (2, 2.0, "cfg2")):
        model = DDPM(image_size=image_size, num_classes=num_classes, channels=channels, guidance_scale=scale).eval()
        for steps in steps_list:
            def run(model=model, steps=steps):
                return model.sample(batch, sampler="dpmsolver++", num_inference_steps=steps)

            result[f"{tag}_{steps}_steps"] = round(median_ms_per_sample(run, batch, repeats), 2)
    return result


def others(image_size: int, batch: int, repeats: int) -> dict:
    out = {}
    available = list_generators()
    for name, kwargs in (("cgan", {"num_classes": 2}), ("vae", {})):
        if name not in available:
            out[name] = f"skipped: '{name}' is not registered"
            continue
        model = create_generator(name, image_size=image_size, **kwargs).eval()
        out[name] = round(median_ms_per_sample(lambda model=model: model.sample(batch), batch, repeats), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps for the pipeline comparison")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--tiny", action="store_true", help="smoke test: small batch, few steps, 1 repeat")
    parser.add_argument("--out", default=None, help="also append the JSON line to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    channels = tuple(inspect.signature(DDPM).parameters["channels"].default)
    batch, steps, repeats, dpm_steps = args.batch_size, args.steps, args.repeats, [10, 20]
    if args.tiny:
        batch, steps, repeats, dpm_steps, channels = 4, 3, 1, [2], (16, 32)
    record = {
        "benchmark": "sample_speed",
        "ddim_vs_pipeline": ddim_vs_pipeline(args.image_size, batch, steps, repeats, channels),
        "dpmsolver_ms_per_sample": dpmsolver(args.image_size, batch, repeats, channels, dpm_steps),
        "other_ms_per_sample": others(args.image_size, batch, repeats),
        "versions": versions(),
    }
    emit(record, args.out)


if __name__ == "__main__":
    main()
