"""Figure 4: training overhead of our LightningModule + Lightning's Trainer against a plain PyTorch loop.

Prints one JSON line: the wall time of one epoch (or ``--max-batches`` batches) of a generator at
its recipe's size (``recipes/<generator>_pneumonia.yaml``: the model's ``init_args`` and batch size)
on PneumoniaMNIST, run by ``L.Trainer(logger=False, enable_checkpointing=False,
enable_progress_bar=False, enable_model_summary=False)`` and by a hand-written loop on the very same
module (``plain_loop.py``): its ``training_step``, its optimizer from ``configure_optimizers`` and its
``on_train_batch_end`` hook (the DDPM's EMA update), on the same loader and batch size. A GAN trains
with manual optimisation: its own ``training_step`` runs on both sides, and in the plain loop the
few ``LightningModule`` methods that need a Trainer (``optimizers``, ``toggle_optimizer``,
``manual_backward``, ...) are plain PyTorch (raw optimizers, ``requires_grad`` switches,
``loss.backward()``), the optimiser work a hand-written GAN loop does.
``ratio`` = Lightning / plain (medians of interleaved repeats; target <= 1.02), where every
Lightning epoch is a fresh ``Trainer.fit``. ``cpu_ratio`` is the same ratio of the process's CPU
time: on a machine shared with other jobs, time spent waiting for a core drops out of it.
``steady_ratio`` divides instead the median epoch of one
longer ``fit`` (epochs after its first) by the same plain epoch: what an epoch costs in a real
run, once the Trainer's set-up (device and strategy set-up, teardown that empties the CUDA cache)
is paid. The verdict stays on ``ratio``. To say where a gap comes from, ``fit_setup_teardown_s`` is a
fresh fit's wall time minus that of its one epoch (building the Trainer, set-up, teardown) and
``in_fit_overhead_ms_per_batch`` (``in_fit_cpu_overhead_ms_per_batch`` in CPU time) is what the
Trainer's epoch costs per batch beyond the plain loop's.
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
On a CPU that side is the plain loop again, so its distance from ``plain_s`` (and that of
``released_plain_cpu_s`` from ``plain_cpu_s``) shows the noise of the machine.
With ``--recipe-callbacks`` the Trainer side also runs the per-batch callbacks of a ``medaug fit``
run (``FiniteLossGuard``, ``RandomStateCheckpoint``; listed under ``callbacks``): what a recipe adds.

Each side trains its own instance, built from the same seed, across all its repeats (the work
per step does not depend on the weights), so no run pays for building a model; the Lightning
side does pay for building its Trainer, as a user does.

    python benchmarks/train_overhead.py                          # cVAE, batch 128, one epoch
    python benchmarks/train_overhead.py --generator cgan         # the cGAN recipe, batch 64, one epoch
    python benchmarks/train_overhead.py --generator ddpm --max-batches 10
    python benchmarks/train_overhead.py --data-root DIR          # or MEDAUG_DATA=DIR
    python benchmarks/train_overhead.py --tiny                   # smoke test: 3 batches of 16
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import lightning as L
import torch
import yaml
from _common import data_root, emit, versions
from plain_loop import plain_epoch, released_plain_epoch
from unet_efficiency import PRECISIONS, interleaved_times, resolve_device, set_threads, synchronize

TARGET = 1.02
#: generators measured, at the size of their PneumoniaMNIST recipe (``recipes/<name>_pneumonia.yaml``)
GENERATORS = ("cvae", "vae", "ddpm", "cgan")
TINY_SETTINGS: dict[str, dict[str, Any]] = {
    "cvae": {"channels": (8, 16), "norm_num_groups": 4},
    "vae": {"channels": (8, 16), "norm_num_groups": 4},
    "ddpm": {"channels": (8, 16), "norm_num_groups": 4},
    "cgan": {"generator_channels": 8, "discriminator_channels": 8, "latent_dim": 16},
}


def recipe(name: str) -> tuple[dict[str, Any], int]:
    """The model's ``init_args`` and the batch size of the generator's PneumoniaMNIST recipe."""
    from lightning_medaug.recipe_files import find_recipe

    config = yaml.safe_load(find_recipe(f"{name}_pneumonia.yaml").read_text(encoding="utf-8"))
    return dict(config["model"]["init_args"]), int(config["data"]["init_args"]["batch_size"])


def build(name: str, tiny: bool) -> L.LightningModule:
    from lightning_medaug.registry import create_generator

    torch.manual_seed(0)
    return create_generator(name, **{**recipe(name)[0], **(TINY_SETTINGS[name] if tiny else {})})


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
    """Wall and CPU seconds of every training epoch of one ``fit``, device work included."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self.cpu_seconds, self._start = device, [], [], (0.0, 0.0)

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        synchronize(self.device)
        self._start = time.perf_counter(), time.process_time()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        synchronize(self.device)
        self.seconds.append(time.perf_counter() - self._start[0])
        self.cpu_seconds.append(time.process_time() - self._start[1])


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
                  device: torch.device, epochs: int, callbacks: list[L.Callback]) -> list[float]:
    """Seconds of epochs 2.. of one ``fit`` of ``epochs + 1`` epochs: the Trainer's per-epoch cost once
    it is built and set up, as in a real training run (the first epoch pays for the set-up)."""
    timer = EpochTimer(device)
    trainer = L.Trainer(accelerator=device.type, devices=1, precision=precision, max_epochs=epochs + 1,
                        limit_train_batches=max_batches if max_batches is not None else 1.0, limit_val_batches=0,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[*callbacks, timer])
    trainer.fit(model, train_dataloaders=loader)
    return timer.seconds[1:]


def recipe_callbacks() -> list[L.Callback]:
    """The per-batch callbacks of a ``medaug fit`` run: every recipe's ``FiniteLossGuard`` and the
    ``RandomStateCheckpoint`` the CLI adds (the others act once per epoch or checkpoint)."""
    from lightning_medaug.generative.callbacks import FiniteLossGuard, RandomStateCheckpoint

    return [FiniteLossGuard(), RandomStateCheckpoint()]


def with_cpu_time(run: Callable[[], None], seconds: list[float]) -> Callable[[], None]:
    """``run``, appending the CPU seconds of this process each call takes to ``seconds``."""

    def timed() -> None:
        start = time.process_time()
        run()
        seconds.append(time.process_time() - start)

    return timed


def measure(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from lightning_medaug.data import MedMNISTDataModule

    data = MedMNISTDataModule(name="pneumoniamnist", root=data_root(args.data_root), batch_size=args.batch_size,
                              subset=args.subset)
    data.setup("fit")
    loader = data.train_dataloader()
    batches = len(loader) if args.max_batches is None else min(args.max_batches, len(loader))
    ours, plain, released = (build(args.generator, args.tiny) for _ in range(3))
    callbacks = recipe_callbacks() if args.recipe_callbacks else []
    # Warm-up of 2 batches each (allocator, oneDNN caches, lazy imports), not of a whole epoch.
    lightning_epoch(ours, loader, 2, args.precision, device, callbacks)
    plain_epoch(plain, loader, 2, args.precision, device)
    released_plain_epoch(released, loader, 2, args.precision, device)
    # The same timer rides along every timed fit: the fit's wall time minus its epoch's is what
    # building, setting up and tearing down a Trainer costs; the epoch itself is the per-batch cost.
    in_fit, phases, plain_first = EpochTimer(device), FitPhases(device), []
    cpu: dict[str, list[float]] = {"lightning": [], "plain": [], "released": []}
    times = interleaved_times({
        "lightning": with_cpu_time(lambda: lightning_epoch(ours, loader, args.max_batches, args.precision, device,
                                                           [*callbacks, in_fit], phases), cpu["lightning"]),
        "plain": with_cpu_time(lambda: plain_epoch(plain, loader, args.max_batches, args.precision, device,
                                                   plain_first), cpu["plain"]),
        "released": with_cpu_time(lambda: released_plain_epoch(released, loader, args.max_batches, args.precision,
                                                               device), cpu["released"]),
    }, args.repeats, device, warmup=False)
    light_s, plain_s = statistics.median(times["lightning"]), statistics.median(times["plain"])
    light_cpu, plain_cpu = statistics.median(cpu["lightning"]), statistics.median(cpu["plain"])
    ratio = light_s / plain_s
    released_s = statistics.median(times["released"])
    epoch_s, epoch_cpu = statistics.median(in_fit.seconds), statistics.median(in_fit.cpu_seconds)
    phase_ms = phases.medians()
    steady_s = statistics.median(steady_epochs(ours, loader, args.max_batches, args.precision, device, args.repeats,
                                               callbacks))
    return {
        "generator": args.generator, "batch_size": args.batch_size, "batches": batches, "repeats": args.repeats,
        "precision": args.precision, "device": str(device),
        "callbacks": [type(callback).__name__ for callback in callbacks],
        "lightning_s": round(light_s, 4), "plain_s": round(plain_s, 4),
        "lightning_ms_per_batch": round(1000 * light_s / batches, 2),
        "plain_ms_per_batch": round(1000 * plain_s / batches, 2),
        "ratio": round(ratio, 4), "ratio_of_best_runs": round(min(times["lightning"]) / min(times["plain"]), 4),
        "lightning_cpu_s": round(light_cpu, 4), "plain_cpu_s": round(plain_cpu, 4),
        "cpu_ratio": round(light_cpu / plain_cpu, 4),
        "fit_setup_teardown_s": round(light_s - epoch_s, 4), "in_fit_epoch_s": round(epoch_s, 4),
        "in_fit_overhead_ms_per_batch": round(1000 * (epoch_s - plain_s) / batches, 2),
        "in_fit_cpu_overhead_ms_per_batch": round(1000 * (epoch_cpu - plain_cpu) / batches, 2),
        "fit_phases_ms": phase_ms,
        "first_batch_ms": {"lightning": phase_ms["first_batch"],
                           "plain": round(statistics.median(plain_first), 2)},
        "steady_lightning_s": round(steady_s, 4), "steady_ratio": round(steady_s / plain_s, 4),
        "released_plain_s": round(released_s, 4), "ratio_to_released_plain": round(light_s / released_s, 4),
        "released_plain_cpu_s": round(statistics.median(cpu["released"]), 4),
        "target": TARGET, "meets_target": bool(ratio <= TARGET),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", default="cvae", choices=GENERATORS)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--max-batches", type=int, default=None, help="batches per run (default: one epoch)")
    parser.add_argument("--subset", type=int, default=None, help="training samples per class (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="32-true", choices=PRECISIONS)
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument("--data-root", default=None, help="folder with pneumoniamnist.npz (default: $MEDAUG_DATA, "
                                                          "else the shipped copy)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--recipe-callbacks", action="store_true",
                        help="the Trainer side also runs the per-batch callbacks of a medaug fit run")
    parser.add_argument("--tiny", action="store_true", help="smoke test: narrow model, 3 batches of 16, 1 repeat")
    parser.add_argument("--out", default=None, help="also append the JSON line to this file")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.max_batches is not None and args.max_batches < 1:
        raise ValueError(f"--max-batches must be at least 1, got {args.max_batches}")
    if args.tiny:
        args.batch_size, args.max_batches, args.repeats, args.subset = 16, 3, 1, 32
    if args.batch_size is None:
        args.batch_size = recipe(args.generator)[1]
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    # The plain loop calls training_step without a Trainer: its self.log calls are no-ops that warn.
    warnings.filterwarnings("ignore", message=".*self.log.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    record = {"benchmark": "train_overhead", "tiny": args.tiny, **measure(args, resolve_device(args.device)),
              "versions": versions()}
    emit(record, args.out)


if __name__ == "__main__":
    main()
