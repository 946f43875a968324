"""The ``medaug`` command line.

``medaug fit|validate|test|predict --config recipes/<recipe>.yaml`` are LightningCLI subcommands
(recipes use ``class_path`` / ``init_args``); the resolved config, ``metrics.json`` and
``curves.png`` land in every run folder. ``medaug demo`` runs the README's main job,
``medaug generate`` writes a synthetic bank, ``medaug study`` runs a resumable utility study and
``medaug list`` shows what the registries hold. Errors in what the user passed (a missing file, a
bad value) print one line and exit with code 2; running out of memory (GPU or host) prints one line
with what to lower and exits with code 1; any other error is a bug: its traceback, then a line saying
where to report it, exit code 1 (:mod:`lightning_medaug.cli_errors` says which is which). Set
``MEDAUG_DEBUG=1`` to let every error propagate with Python's own traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections.abc import Sequence

from lightning_medaug.cli_errors import one_line, out_of_memory, report_failure
from lightning_medaug.trainer_cli import MedaugCLI, check_checkpoint, check_data_model_compatible

__all__ = ["MedaugCLI", "check_checkpoint", "check_data_model_compatible", "main", "one_line", "out_of_memory"]

TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")

#: What to lower when a command runs out of memory.
_TRAINER_MEMORY_HINT = ("use smaller batches (--data.init_args.batch_size N), images or models, or bf16-mixed on a "
                        "GPU (--trainer.precision bf16-mixed)")
_MEMORY_HINTS = {
    **dict.fromkeys(TRAINER_SUBCOMMANDS, _TRAINER_MEMORY_HINT),
    "generate": ("lower --batch-size (samples per sample() call; it fixes the order in which a bank draws its "
                 "noise, so write to a new --out folder) or --num-samples"),
    "evaluate": "compare fewer images (--num-samples N) or run on the CPU (--device cpu)",
    "score": "lower --batch-size or use a smaller --backbone",
    "study": "lower batch_size in the study's recipes",
}

#: Commands beside LightningCLI's, each ``main(argv) -> exit code`` imported on first use (start-up stays fast).
_COMMANDS = {
    "demo": "lightning_medaug.demo:main",
    "generate": "lightning_medaug.bank.generate:main",
    "evaluate": "lightning_medaug.evaluation.command:main",
    "score": "lightning_medaug.selection.command:main",
    "study": "lightning_medaug.study.command:main",
    "federate": "lightning_medaug.federated.command:main",
    "card": "lightning_medaug.model_card.command:main",
}


def _usage() -> str:
    return (
        "usage: medaug {fit,validate,test,predict,demo,generate,evaluate,score,study,federate,card,list} ...\n\n"
        "  fit|validate|test|predict --config RECIPE.yaml   train or evaluate (LightningCLI; --help for options)\n"
        "  demo [--out DIR]                                 the README's main job on the shipped PneumoniaMNIST\n"
        "  generate --model DIR --num-samples N --out BANK  draw a synthetic bank (--help for options)\n"
        "  evaluate --bank BANK --data RECIPE --out REPORT  fidelity, memorization, privacy report of a bank\n"
        "  score --bank BANK --data RECIPE                  keep confident, novel, diverse bank samples (min_score=1)\n"
        "  study --config STUDY.yaml                        resumable utility study: real vs augmented vs mixed\n"
        "  federate --config FEDERATION.yaml --out DIR      one generator trained across sites (Flower)\n"
        "  card FOLDER [--metrics EVAL/metrics.json]        write MODEL_CARD.md for a generator folder\n"
        "  list                                             registered generators, tasks and feature extractors\n"
    )


def _list() -> int:
    from lightning_medaug.registry import FEATURE_EXTRACTORS, GENERATORS, TASKS

    for registry in (GENERATORS, TASKS, FEATURE_EXTRACTORS):
        try:
            names = registry.list()
        except ImportError:
            names = []
        print(f"{registry.kind}s: {', '.join(names) or '-'}")
        for where, err in registry.failures.items():
            print(f"  not loaded: {where}: {err}")
    return 0


def close_process_group() -> None:
    """End a distributed run on every rank together: wait until all ranks are done (rank 0 may
    still be exporting the generator), then destroy the process group. A rank that exits with the
    group alive while another still talks to it can abort in the gloo/NCCL teardown (SIGABRT)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medaug`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    # Lightning 2.6 builds torch's deprecated LeafSpec at every fit; the FutureWarning names nothing a
    # user of this command can change
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    try:
        if command in TRAINER_SUBCOMMANDS:
            # args=None lets LightningCLI read sys.argv itself (the DDP launcher re-runs it).
            MedaugCLI(args=None if argv == sys.argv[1:] else argv)
            close_process_group()
            return 0
        if command in _COMMANDS:
            module, _, function = _COMMANDS[command].partition(":")
            return getattr(importlib.import_module(module), function)(argv[1:])
        if command == "list":
            return _list()
        if command in (None, "-h", "--help", "help"):
            print(_usage())
            return 0 if command else 2
        print(f"medaug: error: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    except Exception as err:
        if os.environ.get("MEDAUG_DEBUG"):
            raise
        return report_failure(err, _MEMORY_HINTS.get(command, "use smaller batches"))


if __name__ == "__main__":
    sys.exit(main())
