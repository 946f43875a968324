"""Cost of mixing: training-loader throughput mixed vs real-only, and memory with a huge bank.

Prints one JSON line:
- ``throughput_ratio``: samples/s of the SyntheticMixDataModule training loader (PneumoniaMNIST
  train + a synthetic bank, ``add`` mode, ratio 0.5) over samples/s of the real-only loader,
  measured alternately in the same process (target >= 0.98), for the library's dict samples;
  ``throughput_ratio_tuple`` the same for torchvision-style ``(tensor, int)`` samples of a user's
  own module over the same images.
- ``extra_rss_mb``: peak RSS of a process iterating the mixed loader with a bank of
  ``--bank-size`` samples (default 1,000,000 at 28x28) minus that of a process iterating the
  real-only loader (target < 500 MB); each side runs in a fresh child process that only builds
  and iterates its loader.

    python benchmarks/mix_overhead.py                       # writes the bank once under --bank-dir
    python benchmarks/mix_overhead.py --bank-size 20000     # quicker
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
from _common import data_root, emit, versions
from torch.utils.data import DataLoader, Dataset


def build_loaders(args: argparse.Namespace):
    from lightning_medaug.data import MedMNISTDataModule
    from lightning_medaug.mixing import SyntheticMixDataModule

    real = MedMNISTDataModule(name="pneumoniamnist", root=data_root(args.data_root), batch_size=args.batch_size)
    real.setup("fit")
    if getattr(args, "layout", "dict") == "tuple":
        real = TupleModule(real)
    mixed = SyntheticMixDataModule(real, bank=str(args.bank_dir), ratio=0.5, mode="add")
    return real, mixed


class TupleSet(Dataset):
    """torchvision style: ``(image tensor, int label)`` from the library's dict samples."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        sample = self.dataset[index]
        return sample["image"], int(sample["label"])


class TupleModule(L.LightningDataModule):
    """A user's own module over the same images, yielding tuples."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def train_dataloader(self):
        loader = self.inner.train_dataloader()
        return DataLoader(TupleSet(loader.dataset), batch_size=loader.batch_size, shuffle=True)


def ensure_bank(args: argparse.Namespace) -> None:
    import torch

    from lightning_medaug.bank import write_bank
    from lightning_medaug.registry import create_generator

    torch.manual_seed(0)
    # Untrained weights are enough here: this benchmark measures reading, not image quality.
    model = create_generator("cvae", image_size=28, num_classes=2, channels=[8, 16], norm_num_groups=4,
                             latent_channels=2, cond_channels=2)
    write_bank(model, args.bank_dir, num_samples=args.bank_size, labels="balanced", shard_size=65536,
               batch_size=4096, seed=0, dtype=args.dtype, progress=args.progress)


def epoch_rate(loader) -> float:
    start, count = time.perf_counter(), 0
    for batch in loader:
        count += (batch["image"] if isinstance(batch, dict) else batch[0]).shape[0]
    return count / (time.perf_counter() - start)


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MB.

    ``VmHWM`` of ``/proc/self/status``, not ``ru_maxrss``: Linux carries ``ru_maxrss`` over from
    the parent through fork and exec, so a child started by this (big) benchmark process would
    report the parent's peak, the same figure on both sides. ``VmHWM`` belongs to the child's own
    address space, created by exec. Elsewhere ``ru_maxrss`` is the fallback (kB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


def measure_rss(args: argparse.Namespace, which: str) -> None:
    """Child process: build both modules as the main process does, iterate one epoch of ``which``."""
    real, mixed = build_loaders(args)
    loader = (real if which == "real" else mixed).train_dataloader()
    for _ in loader:
        pass
    print(json.dumps({"maxrss_mb": peak_rss_mb()}))


def child_rss(base: list[str], which: str) -> float:
    # A fresh interpreter per side, so each figure is the peak of that side's loading work alone.
    out = subprocess.run(base + ["--measure-rss", which], check=True, capture_output=True, text=True,
                         encoding="utf-8", errors="replace").stdout
    return json.loads(out.strip().splitlines()[-1])["maxrss_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank-size", type=int, default=1_000_000)
    parser.add_argument("--bank-dir", type=Path, default=None, help="default: benchmarks/.cache/bank_<size>")
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32", "uint8"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--measure-rss", choices=["real", "mixed"], help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.bank_dir = args.bank_dir or Path(__file__).parent / ".cache" / f"bank_{args.bank_size}_{args.dtype}"
    if args.measure_rss:
        return measure_rss(args, args.measure_rss)

    start = time.perf_counter()
    ensure_bank(args)
    bank_seconds = time.perf_counter() - start
    ratios = {}
    for layout in ("dict", "tuple"):
        args.layout = layout
        real, mixed = build_loaders(args)
        rates = {"real": [], "mixed": []}
        for _ in range(args.repeats):  # alternate, so drifts in machine load hit both alike
            rates["real"].append(epoch_rate(real.train_dataloader()))
            rates["mixed"].append(epoch_rate(mixed.train_dataloader()))
        ratios[layout] = (statistics.median(rates["real"]), statistics.median(rates["mixed"]))
    args.layout = "dict"
    real_rate, mixed_rate = ratios["dict"]

    base = [sys.executable, __file__, "--bank-size", str(args.bank_size), "--bank-dir", str(args.bank_dir),
            "--dtype", args.dtype, "--batch-size", str(args.batch_size)]
    if args.data_root:
        base += ["--data-root", args.data_root]
    rss = {which: child_rss(base, which) for which in ("real", "mixed")}
    emit({
        "benchmark": "mix_overhead", "bank_size": args.bank_size, "dtype": args.dtype, "batch_size": args.batch_size,
        "real_samples_per_s": real_rate, "mixed_samples_per_s": mixed_rate,
        "throughput_ratio": mixed_rate / real_rate, "throughput_target": 0.98,
        "real_samples_per_s_tuple": ratios["tuple"][0], "mixed_samples_per_s_tuple": ratios["tuple"][1],
        "throughput_ratio_tuple": ratios["tuple"][1] / ratios["tuple"][0],
        "real_maxrss_mb": rss["real"], "mixed_maxrss_mb": rss["mixed"],
        "extra_rss_mb": rss["mixed"] - rss["real"], "extra_rss_target_mb": 500,
        "bank_write_seconds": bank_seconds, "versions": versions(),
    }, args.out)


if __name__ == "__main__":
    main()
