"""Figure 2: arithmetic efficiency of the diffusion UNet while sampling, against this machine's matmul peak.

Prints one JSON line:

* ``sampling_gflops_per_s``: FLOPs of one ``DDPM.sample`` call (counted by
  ``torch.utils.flop_counter.FlopCounterMode``; convolutions and matmuls, i.e. the UNet) divided
  by its wall time; ``unet_calls_per_sample_call`` (the count over one UNet forward's) checks the
  count: one per step without guidance;
* ``matmul_gflops_per_s``: a large ``torch.mm`` (fp32; bf16 under ``--precision bf16-mixed``),
  the practical peak of this machine, timed interleaved with the sampling runs, so both see the
  same load;
* ``efficiency`` = sampling / matmul (medians; target >= 0.5), and ``unet_forward_efficiency``:
  the same for bare UNet forward passes on the same batch, which tells the sampler loop's own
  overhead apart from the network's.
* the roofline of this device (Williams et al. 2009): ``flop_per_byte``, the sampler's FLOPs over
  the bytes its operators read and write (:class:`ByteCounter`); ``memory_gb_per_s``, a large
  copy timed in the same rounds; ``ridge_flop_per_byte`` = matmul peak / bandwidth; and
  ``roofline_efficiency`` = min(1, intensity / ridge), the best ``efficiency`` eager sampling could
  reach if every operand and result travelled through main memory. Below 1, the UNet is bound by
  memory traffic on this device, and a target above it needs fusion or caches, not faster kernels.

Weights are random (FLOPs and speed do not depend on them).

    python benchmarks/unet_efficiency.py                    # 28x28, batch 64, DPM-Solver++ 20 steps
    python benchmarks/unet_efficiency.py --spatial-dims 3 --image-size 32 --batch-size 4
    python benchmarks/unet_efficiency.py --tiny             # smoke test: seconds

The helpers :func:`interleaved_times`, :func:`resolve_device`, :func:`precision_context` and
:func:`set_threads` are shared by the other figure scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from _common import emit, versions
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

TARGET = 0.5
PRECISIONS = ("32-true", "bf16-mixed")


# -- helpers shared by the figure scripts ---------------------------------------------------------
def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` when given; ``None`` keeps torch's default."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> the CUDA device when there is one, else the CPU; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so wall time measures the work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device) -> Iterator[None]:
    """Autocast to bf16 for ``"bf16-mixed"`` (as Lightning's precision plugin does); nothing for ``"32-true"``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        yield


def interleaved_times(runs: dict[str, Callable[[], object]], repeats: int, device: torch.device | None = None,
                      warmup: bool = True) -> dict[str, list[float]]:
    """Seconds of each run over ``repeats`` rounds, after one untimed warm-up of each (unless ``warmup=False``).

    The runs alternate within every round and the order flips each round, so a change in the
    load of a shared machine hits all of them alike; compare their medians.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    device = device or torch.device("cpu")
    for run in runs.values() if warmup else ():  # allocator, oneDNN primitive cache, lazy imports
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            synchronize(device)
            start = time.perf_counter()
            runs[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


# -- figure 2 ---------------------------------------------------------------------------------------
class ByteCounter(TorchDispatchMode):
    """Bytes that operators read and write, counting each operand and result once per operator.

    Views move no data and are skipped, as are allocations; an expanded (broadcast) operand counts
    its storage, not its shape. This is the traffic of eager execution if no operand stayed in a
    cache between operators: fusion would lower it, caches make it an upper bound.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and func.overloadpacket not in _NO_TRAFFIC:
            operands = [t for t in tree_flatten((args, kwargs or {}, out))[0] if isinstance(t, torch.Tensor)]
            self.bytes += sum(min(t.numel() * t.element_size(), t.untyped_storage().nbytes()) for t in operands)
        return out


_NO_TRAFFIC = {torch.ops.aten.empty, torch.ops.aten.empty_strided, torch.ops.aten.empty_like,
               torch.ops.aten.detach, torch.ops.aten.alias, torch.ops.aten.lift_fresh}


def count_flops_and_bytes(run: Callable[[], object]) -> tuple[int, int]:
    """FLOPs (as :func:`count_flops`) and bytes moved (as :class:`ByteCounter`) of one call of ``run``:
    both modes see every operator, so one counted run serves both."""
    with FlopCounterMode(display=False) as flops, ByteCounter() as moved:
        run()
    return int(flops.get_total_flops()), moved.bytes


def copy_run(megabytes: int, device: torch.device) -> tuple[Callable[[], object], int]:
    """A copy between two ``megabytes`` buffers, and the bytes it moves (read + write): the memory bandwidth."""
    n = megabytes * 2**20 // 4
    src, dst = torch.randn(n, device=device), torch.empty(n, device=device)
    return (lambda: dst.copy_(src)), 2 * 4 * n


def count_flops(run: Callable[[], object]) -> int:
    """FLOPs of one call of ``run`` (matmuls and convolutions, as FlopCounterMode counts them)."""
    with FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


def matmul_run(size: int, precision: str, device: torch.device) -> tuple[Callable[[], object], int]:
    """A ``size x size`` matmul in the precision's compute dtype, and its FLOPs (2 n^3)."""
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return (lambda: torch.mm(a, b)), 2 * size ** 3


def measure(args: argparse.Namespace, channels: tuple[int, ...], device: torch.device) -> dict:
    from lightning_medaug.generative.diffusion import DDPM

    torch.manual_seed(0)
    model = DDPM(spatial_dims=args.spatial_dims, image_size=args.image_size, channels=channels,
                 norm_num_groups=min(16, channels[0])).to(device).eval()
    net = model.ema.module if model.ema is not None else model.unet
    x = torch.randn((args.batch_size,) + model.data_shape, device=device)
    t = torch.tensor(500, device=device)

    def sample(cuda_graph: bool | None = None):
        with precision_context(args.precision, device):
            return model.sample(args.batch_size, sampler=args.sampler, num_inference_steps=args.steps,
                                cuda_graph=cuda_graph)

    def forward():
        with torch.inference_mode(), precision_context(args.precision, device):
            return model.denoise(net, x, t, None, None)

    matmul, matmul_flops = matmul_run(args.mm_size, args.precision, device)
    copy, copy_bytes = copy_run(args.copy_mb, device)
    # Counted eagerly: a CUDA graph's replays dispatch no operators, so on a GPU FlopCounterMode would
    # see only the two warm-up calls and the capture, 3 of the loop's UNet calls. Same arithmetic.
    (sample_flops, sample_bytes), forward_flops = count_flops_and_bytes(lambda: sample(cuda_graph=False)), \
        count_flops(forward)
    times = interleaved_times({"sample": sample, "forward": forward, "matmul": matmul, "copy": copy},
                              args.repeats, device)
    rate = {name: [work / s for s in times[name]] for name, work in (
        ("sample", sample_flops), ("forward", forward_flops), ("matmul", matmul_flops), ("copy", copy_bytes))}
    med = {name: statistics.median(values) for name, values in rate.items()}
    efficiency = med["sample"] / med["matmul"]
    # Roofline (Williams et al. 2009): at intensity I FLOP/byte, bandwidth B and peak P, eager
    # sampling reaches at most min(P, I * B), i.e. an efficiency of min(1, I / (P / B)).
    intensity, ridge = sample_flops / sample_bytes, med["matmul"] / med["copy"]
    return {
        "spatial_dims": args.spatial_dims, "image_size": args.image_size, "batch_size": args.batch_size,
        "sampler": args.sampler, "steps": args.steps, "channels": list(channels), "precision": args.precision,
        "device": str(device), "matmul_size": args.mm_size,
        "gflop_per_sample_call": round(sample_flops / 1e9, 3),
        "gflop_per_forward_per_image": round(forward_flops / args.batch_size / 1e9, 4),
        "unet_calls_per_sample_call": round(sample_flops / forward_flops, 2),
        "sampling_ms_per_image": round(1000 * statistics.median(times["sample"]) / args.batch_size, 3),
        "sampling_gflops_per_s": round(med["sample"] / 1e9, 2),
        "unet_forward_gflops_per_s": round(med["forward"] / 1e9, 2),
        "matmul_gflops_per_s": round(med["matmul"] / 1e9, 2),
        "matmul_gflops_per_s_best": round(max(rate["matmul"]) / 1e9, 2),
        "efficiency": round(efficiency, 4),
        "efficiency_of_best_runs": round(max(rate["sample"]) / max(rate["matmul"]), 4),
        "unet_forward_efficiency": round(med["forward"] / med["matmul"], 4),
        "gb_per_sample_call": round(sample_bytes / 1e9, 3),
        "flop_per_byte": round(intensity, 2),
        "memory_gb_per_s": round(med["copy"] / 1e9, 2),
        "ridge_flop_per_byte": round(ridge, 2),
        "roofline_efficiency": round(min(1.0, intensity / ridge), 4),
        "target": TARGET, "meets_target": bool(efficiency >= TARGET),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spatial-dims", type=int, default=2, choices=(2, 3))
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="dpmsolver++")
    parser.add_argument("--channels", type=int, nargs="+", default=None, help="UNet channels (default: DDPM's)")
    parser.add_argument("--mm-size", type=int, default=2048, help="side of the square matmul giving the peak")
    parser.add_argument("--copy-mb", type=int, default=256, help="buffer size of the copy giving the memory bandwidth")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="32-true", choices=PRECISIONS)
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--tiny", action="store_true", help="smoke test: 16x16, batch 4, 2 steps, 1 repeat")
    parser.add_argument("--out", default=None, help="also append the JSON line to this file")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    from lightning_medaug.generative.diffusion import DDPM

    channels = tuple(args.channels or inspect.signature(DDPM).parameters["channels"].default)
    if args.tiny:
        args.image_size, args.batch_size, args.steps, args.repeats, args.mm_size, args.copy_mb = 16, 4, 2, 1, 256, 4
        channels = (16, 32)
    record = {"benchmark": "unet_efficiency", "tiny": args.tiny, **measure(args, channels, resolve_device(args.device)),
              "versions": versions()}
    emit(record, args.out)


if __name__ == "__main__":
    main()
