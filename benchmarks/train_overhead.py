"""Figure 4: training overhead of our LightningModule + Lightning's Trainer against a plain PyTorch loop.

Prints one JSON line: the wall time of one epoch (or ``--max-batches`` batches) of a generator on
PneumoniaMNIST, run by ``L.Trainer(logger=False, enable_checkpointing=False,
enable_progress_bar=False, enable_model_summary=False)`` and by a hand-written loop that calls the
very same module's ``training_step``, its optimizer from ``configure_optimizers`` and its
``on_train_batch_end`` hook (the DDPM's EMA update), on the same loader and batch size.
``ratio`` = Lightning / plain (medians of interleaved repeats; target <= 1.05), where every
Lightning epoch is a fresh ``Trainer.fit``. ``steady_ratio`` divides instead the median epoch of one
longer ``fit`` (epochs after its first) by the same plain epoch: what an epoch costs in a real
run, once the Trainer's set-up (device and strategy set-up, teardown that empties the CUDA cache)
is paid. The verdict stays on ``ratio``. To say where a gap comes from, ``fit_setup_teardown_s`` is a
fresh fit's wall time minus that of its one epoch (building the Trainer, set-up, teardown) and
``in_fit_overhead_ms_per_batch`` is what the Trainer's epoch costs per batch beyond the plain loop's.
``fit_phases_ms`` splits a fresh fit's fixed cost by the Trainer's hooks (medians over the repeats,
the device synchronised at each): ``build`` (the ``Trainer`` constructor), ``enter`` (``fit()`` up to
the ``setup`` hook: connecting the module, the strategy's environment), ``strategy_setup`` (up to
``on_fit_start``: the module moved to the device, ``configure_optimizers``, precision),
``loop_start`` (up to the first epoch: data loaders, ``on_train_start``), ``first_batch`` and
``later_batches`` (the epoch; on a GPU a fresh fit's first batch may pay again for the memory
the last fit's teardown emptied from the cache: ``first_batch_ms`` sets it beside the plain
loop's first batch), ``loop_end_and_teardown`` (the epoch's end to ``on_fit_end``: the model and
optimizer state moved back to the CPU, the CUDA cache emptied) and ``exit`` (teardown hooks, the
return from ``fit()``). ``ratio_to_released_plain`` divides by a third side instead, the plain loop
plus the memory handling a fit adds on CUDA (the allocator's cache and cuBLAS's workspaces emptied
before and after, the model moved back to the CPU): how much of a GPU gap that handling explains.

Each side trains its own instance, built from the same seed, across all its repeats (the work
per step does not depend on the weights), so no run pays for building a model; the Lightning
side does pay for building its Trainer, as a user does. Only modules with automatic
optimisation qualify: a GAN's manual steps need a Trainer by design.

    python benchmarks/train_overhead.py                          # cVAE, batch 128, one epoch
    python benchmarks/train_overhead.py --generator ddpm --max-batches 10
    python benchmarks/train_overhead.py --data-root DIR          # or MEDAUG_DATA=DIR
    python benchmarks/train_overhead.py --tiny                   # smoke test: 3 batches of 16
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Iterable
from typing import Any, ClassVar

import lightning as L
import torch
from _common import data_root, emit, versions
from unet_efficiency import (
    PRECISIONS,
    interleaved_times,
    precision_context,
    resolve_device,
    set_threads,
    synchronize,
)

TARGET = 1.05
#: families with automatic optimisation and settings that fit PneumoniaMNIST (28x28, 2 classes).
GENERATORS: dict[str, dict[str, Any]] = {
    "cvae": {"num_classes": 2},
    "vae": {},
    "ddpm": {"num_classes": 2, "channels": (16, 32, 64)},
}
TINY_SETTINGS: dict[str, dict[str, Any]] = {
    "cvae": {"channels": (8, 16), "norm_num_groups": 4},
    "vae": {"channels": (8, 16), "norm_num_groups": 4},
    "ddpm": {"channels": (8, 16), "norm_num_groups": 4},
}


def build(name: str, tiny: bool) -> L.LightningModule:
    from lightning_medaug.registry import create_generator

    torch.manual_seed(0)
    return create_generator(name, image_size=28, **{**GENERATORS[name], **(TINY_SETTINGS[name] if tiny else {})})


def first_optimizer(configured: Any) -> torch.optim.Optimizer:
    """The optimizer of ``configure_optimizers()``'s answer (an optimizer, a list or a dict)."""
    if isinstance(configured, torch.optim.Optimizer):
        return configured
    if isinstance(configured, dict):
        return configured["optimizer"]
    if isinstance(configured, (list, tuple)) and len(configured) == 1:
        return first_optimizer(configured[0])
    raise ValueError(f"the plain loop handles one optimizer; configure_optimizers returned {type(configured)}")


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    return [v.to(device, non_blocking=True) if torch.is_tensor(v) else v for v in batch]


def plain_epoch(model: L.LightningModule, loader: Iterable, max_batches: int | None, precision: str,
                device: torch.device, first_batch_ms: list[float] | None = None) -> None:
    """What the Trainer does per batch, written out: step, backward, optimizer step, batch-end hook.

    ``first_batch_ms`` collects the first batch's milliseconds, synchronised as :class:`FitPhases` does.
    """
    model.to(device).train()
    optimizer = first_optimizer(model.configure_optimizers())
    synchronize(device)
    start = time.perf_counter()
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        batch = to_device(batch, device)
        with precision_context(precision, device):
            loss = model.training_step(batch, i)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.on_train_batch_end(loss, batch, i)
        if i == 0 and first_batch_ms is not None:
            synchronize(device)
            first_batch_ms.append(1000 * (time.perf_counter() - start))


def released_plain_epoch(model: L.LightningModule, loader: Iterable, max_batches: int | None, precision: str,
                         device: torch.device) -> None:
    """The plain loop plus the memory handling a Lightning fit adds on CUDA: Lightning's own
    ``_clear_cuda_memory`` (caching allocator and cuBLAS workspaces emptied) before and after, and
    the model back on the CPU after, as the strategy's teardown does. The same as the plain loop on a CPU."""
    release_cuda_memory(device)
    plain_epoch(model, loader, max_batches, precision, device)
    model.cpu()
    release_cuda_memory(device)


def release_cuda_memory(device: torch.device) -> None:
    if device.type == "cuda":
        from lightning.fabric.accelerators.cuda import _clear_cuda_memory

        _clear_cuda_memory()


def lightning_epoch(model: L.LightningModule, loader: Iterable, max_batches: int | None, precision: str,
                    device: torch.device, callbacks: list[L.Callback] | None = None,
                    phases: FitPhases | None = None) -> None:
    if phases is not None:
        phases.stamp("start")
    trainer = L.Trainer(accelerator=device.type, devices=1, precision=precision, max_epochs=1,
                        limit_train_batches=max_batches if max_batches is not None else 1.0, limit_val_batches=0,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[*(callbacks or []), *([phases] if phases else [])])
    if phases is not None:
        phases.stamp("built")
    trainer.fit(model, train_dataloaders=loader)
    if phases is not None:
        phases.stamp("returned")
        phases.close_fit()


class EpochTimer(L.Callback):
    """Wall seconds of every training epoch of one ``fit``, device work included."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self._start = device, [], 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        synchronize(self.device)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        synchronize(self.device)
        self.seconds.append(time.perf_counter() - self._start)


class FitPhases(L.Callback):
    """Milliseconds of each phase of a fresh ``fit`` (see the module docstring), one dict per fit.

    The stamps sit on the Trainer's own hooks, so each phase is what Lightning does between two of
    them; the device is synchronised at every stamp so that queued GPU work lands in its phase.
    """

    #: phase name -> (stamp it starts at, stamp it ends at)
    PHASES: ClassVar[dict[str, tuple[str, str]]] = {
        "build": ("start", "built"), "enter": ("built", "setup"), "strategy_setup": ("setup", "fit_start"),
        "loop_start": ("fit_start", "epoch_start"), "first_batch": ("epoch_start", "first_batch_end"),
        "later_batches": ("first_batch_end", "epoch_end"), "loop_end_and_teardown": ("epoch_end", "fit_end"),
        "exit": ("fit_end", "returned"),
    }

    def __init__(self, device: torch.device):
        self.device, self.fits, self._stamps = device, [], {}

    def stamp(self, name: str) -> None:
        synchronize(self.device)
        self._stamps.setdefault(name, time.perf_counter())  # first epoch only, were there several

    def close_fit(self) -> None:
        self.fits.append({phase: 1000 * (self._stamps[end] - self._stamps[begin])
                          for phase, (begin, end) in self.PHASES.items()})
        self._stamps = {}

    def medians(self) -> dict[str, float]:
        return {phase: round(statistics.median(fit[phase] for fit in self.fits), 2) for phase in self.PHASES}

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        self.stamp("setup")

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.stamp("fit_start")

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.stamp("epoch_start")

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx == 0:
            self.stamp("first_batch_end")

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.stamp("epoch_end")

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.stamp("fit_end")


def steady_epochs(model: L.LightningModule, loader: Iterable, max_batches: int | None, precision: str,
                  device: torch.device, epochs: int) -> list[float]:
    """Seconds of epochs 2.. of one ``fit`` of ``epochs + 1`` epochs: the Trainer's per-epoch cost once
    it is built and set up, as in a real training run (the first epoch pays for the set-up)."""
    timer = EpochTimer(device)
    trainer = L.Trainer(accelerator=device.type, devices=1, precision=precision, max_epochs=epochs + 1,
                        limit_train_batches=max_batches if max_batches is not None else 1.0, limit_val_batches=0,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer])
    trainer.fit(model, train_dataloaders=loader)
    return timer.seconds[1:]


def measure(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from lightning_medaug.data import MedMNISTDataModule

    data = MedMNISTDataModule(name="pneumoniamnist", root=data_root(args.data_root), batch_size=args.batch_size,
                              subset=args.subset)
    data.setup("fit")
    loader = data.train_dataloader()
    batches = len(loader) if args.max_batches is None else min(args.max_batches, len(loader))
    ours, plain, released = (build(args.generator, args.tiny) for _ in range(3))
    # Warm-up of 2 batches each (allocator, oneDNN caches, lazy imports), not of a whole epoch.
    lightning_epoch(ours, loader, 2, args.precision, device)
    plain_epoch(plain, loader, 2, args.precision, device)
    released_plain_epoch(released, loader, 2, args.precision, device)
    # The same timer rides along every timed fit: the fit's wall time minus its epoch's is what
    # building, setting up and tearing down a Trainer costs; the epoch itself is the per-batch cost.
    in_fit, phases, plain_first = EpochTimer(device), FitPhases(device), []
    times = interleaved_times({
        "lightning": lambda: lightning_epoch(ours, loader, args.max_batches, args.precision, device, [in_fit],
                                             phases),
        "plain": lambda: plain_epoch(plain, loader, args.max_batches, args.precision, device, plain_first),
        "released": lambda: released_plain_epoch(released, loader, args.max_batches, args.precision, device),
    }, args.repeats, device, warmup=False)
    light_s, plain_s = statistics.median(times["lightning"]), statistics.median(times["plain"])
    ratio = light_s / plain_s
    released_s = statistics.median(times["released"])
    epoch_s = statistics.median(in_fit.seconds)
    phase_ms = phases.medians()
    steady_s = statistics.median(steady_epochs(ours, loader, args.max_batches, args.precision, device, args.repeats))
    return {
        "generator": args.generator, "batch_size": args.batch_size, "batches": batches, "repeats": args.repeats,
        "precision": args.precision, "device": str(device),
        "lightning_s": round(light_s, 4), "plain_s": round(plain_s, 4),
        "lightning_ms_per_batch": round(1000 * light_s / batches, 2),
        "plain_ms_per_batch": round(1000 * plain_s / batches, 2),
        "ratio": round(ratio, 4), "ratio_of_best_runs": round(min(times["lightning"]) / min(times["plain"]), 4),
        "fit_setup_teardown_s": round(light_s - epoch_s, 4), "in_fit_epoch_s": round(epoch_s, 4),
        "in_fit_overhead_ms_per_batch": round(1000 * (epoch_s - plain_s) / batches, 2),
        "fit_phases_ms": phase_ms,
        "first_batch_ms": {"lightning": phase_ms["first_batch"],
                           "plain": round(statistics.median(plain_first), 2)},
        "steady_lightning_s": round(steady_s, 4), "steady_ratio": round(steady_s / plain_s, 4),
        "released_plain_s": round(released_s, 4), "ratio_to_released_plain": round(light_s / released_s, 4),
        "target": TARGET, "meets_target": bool(ratio <= TARGET),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", default="cvae", choices=sorted(GENERATORS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-batches", type=int, default=None, help="batches per run (default: one epoch)")
    parser.add_argument("--subset", type=int, default=None, help="training samples per class (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="32-true", choices=PRECISIONS)
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument("--data-root", default=None, help="folder with pneumoniamnist.npz (default: $MEDAUG_DATA, "
                                                          "else the shipped copy)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--tiny", action="store_true", help="smoke test: narrow model, 3 batches of 16, 1 repeat")
    parser.add_argument("--out", default=None, help="also append the JSON line to this file")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.max_batches is not None and args.max_batches < 1:
        raise ValueError(f"--max-batches must be at least 1, got {args.max_batches}")
    if args.tiny:
        args.batch_size, args.max_batches, args.repeats, args.subset = 16, 3, 1, 32
    # The plain loop calls training_step without a Trainer: its self.log calls are no-ops that warn.
    warnings.filterwarnings("ignore", message=".*self.log.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    record = {"benchmark": "train_overhead", "tiny": args.tiny, **measure(args, resolve_device(args.device)),
              "versions": versions()}
    emit(record, args.out)


if __name__ == "__main__":
    main()
