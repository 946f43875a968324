"""Figure 7: peak GPU memory of 3D generator training under bf16-mixed, and the largest batch that fits.

Only runs on a CUDA device; elsewhere it prints one JSON line with ``"skipped": "no CUDA device"``.

For each family (``ddpm``, ``vae``; default settings) and each volume side (64, 128), a few
training steps run under ``L.Trainer(precision="bf16-mixed")`` on random volumes:

* ``peak_mb_at_batch``: ``torch.cuda.max_memory_allocated`` at ``--batch-size`` (default 1);
* ``largest_batch``: the batch doubles from 1 until a step runs out of memory (or reaches
  ``--max-batch``), with the peak at that batch;
* ``fraction_of_device``: that peak over the device's total memory, the baseline of this figure.

The issue sets no target: ``meets_target`` is null. Bench the other figures in bf16 with
``python benchmarks/run_all.py --precision bf16-mixed``.

    python benchmarks/gpu_memory.py                          # ddpm and vae at 64^3 and 128^3
    python benchmarks/gpu_memory.py --families vae --sizes 64 --max-batch 8
    python benchmarks/gpu_memory.py --tiny                   # smoke test (still needs CUDA)
"""

from __future__ import annotations

import argparse
import gc
from typing import Any

import torch
from _common import emit
from torch.utils.data import DataLoader, Dataset

SKIP_REASON = "no CUDA device"


class RandomVolumes(Dataset):
    """``length`` random volumes in [-1, 1] with label 0, in the library's batch convention."""

    def __init__(self, length: int, size: int):
        self.length, self.size = length, size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = torch.rand((1, self.size, self.size, self.size)) * 2 - 1
        return {"image": image, "label": torch.tensor(0)}


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def peak_bytes(name: str, size: int, batch: int, steps: int, precision: str) -> int:
    """``max_memory_allocated`` over ``steps`` training steps of ``name`` at ``batch`` volumes of ``size``^3."""
    import lightning as L

    from lightning_medaug.registry import create_generator

    torch.manual_seed(0)
    model = create_generator(name, spatial_dims=3, image_size=size)
    loader = DataLoader(RandomVolumes(batch * steps, size), batch_size=batch)
    trainer = L.Trainer(accelerator="gpu", devices=1, precision=precision, max_steps=steps, limit_val_batches=0,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    release()
    torch.cuda.reset_peak_memory_stats()
    try:
        trainer.fit(model, train_dataloaders=loader)
        return int(torch.cuda.max_memory_allocated())
    finally:
        del trainer, model
        release()


def release() -> None:
    """Free what the last run left, so each measurement starts from an empty cache."""
    gc.collect()
    torch.cuda.empty_cache()


def try_peak(name: str, size: int, batch: int, steps: int, precision: str) -> int | None:
    """:func:`peak_bytes`, or None when the run is out of memory (then freed)."""
    try:
        return peak_bytes(name, size, batch, steps, precision)
    except (torch.cuda.OutOfMemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
    # Only here, after the except block dropped the traceback (and the frames holding tensors).
    release()
    return None


def largest_batch(name: str, size: int, steps: int, precision: str, max_batch: int) -> dict[str, Any]:
    """Double the batch from 1 until a run is out of memory or ``max_batch`` is reached."""
    best: dict[str, Any] = {"largest_batch": 0, "peak_mb_at_largest": None, "stopped_by": "max_batch"}
    batch = 1
    while batch <= max_batch:
        peak = try_peak(name, size, batch, steps, precision)
        if peak is None:
            best["stopped_by"] = f"out of memory at batch {batch}"
            break
        best.update(largest_batch=batch, peak_mb_at_largest=round(peak / 2 ** 20, 1))
        batch *= 2
    return best


def measure(args: argparse.Namespace) -> dict[str, Any]:
    total = torch.cuda.get_device_properties(0).total_memory
    results: dict[str, Any] = {}
    for name in args.families:
        for size in args.sizes:
            entry: dict[str, Any] = {"batch_size": args.batch_size}
            peak = try_peak(name, size, args.batch_size, args.steps, args.precision)
            entry["peak_mb_at_batch"] = round(peak / 2 ** 20, 1) if peak is not None else "out of memory"
            entry.update(largest_batch(name, size, args.steps, args.precision, args.max_batch))
            if entry["peak_mb_at_largest"] is not None:
                entry["fraction_of_device"] = round(entry["peak_mb_at_largest"] * 2 ** 20 / total, 3)
            results[f"{name}_{size}"] = entry
    return {"device_name": torch.cuda.get_device_name(0), "device_total_mb": round(total / 2 ** 20, 1),
            "precision": args.precision, "steps": args.steps, "results": results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=["ddpm", "vae"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="volume sides")
    parser.add_argument("--batch-size", type=int, default=1, help="batch of the fixed-batch peak")
    parser.add_argument("--max-batch", type=int, default=256, help="stop doubling here")
    parser.add_argument("--steps", type=int, default=2, help="training steps per measurement")
    parser.add_argument("--precision", default="bf16-mixed", choices=("32-true", "bf16-mixed"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--tiny", action="store_true", help="smoke test: vae at 16^3, batches up to 4")
    parser.add_argument("--out", default=None, help="also append the JSON line to this file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    record: dict[str, Any] = {"benchmark": "gpu_memory", "tiny": args.tiny, "meets_target": None}
    if not torch.cuda.is_available():
        # versions() would import the whole library only to say that nothing ran
        emit({**record, "skipped": SKIP_REASON, "versions": {"torch": torch.__version__}}, args.out)
        return
    if args.tiny:
        args.families, args.sizes, args.max_batch, args.steps = ["vae"], [16], 4, 1
    from _common import versions

    emit({**record, **measure(args), "versions": versions()}, args.out)


if __name__ == "__main__":
    main()
