"""``Study``: does synthetic data help a downstream task, and when? A resumable grid of training runs.

For every training fraction and seed, the study trains the downstream recipe in several arms:

* ``real``: the real subset only (the recipe's ``train_transforms``, if any, are dropped);
* ``classic``: the same with :class:`~lightning_medaug.data.ClassicAugmentation`;
* ``mix_<generator>_r<ratio>``: real + synthetic at each ratio (``add`` mode), the bank drawn from a
  generator trained **only on that cell's real subset** (never on data the classifier may not see);
* ``tstr_<generator>``: synthetic only (train on synthetic, test on real; ``replace`` mode, ratio 1);
* ``classic_mix_<generator>_r<ratio>``: classic augmentation *and* synthetic mixing (the synthetic
  samples pass through the same augmentation), the arm that answers whether synthetic data adds
  anything on top of classic augmentation.

Checkpoints are selected on validation, figures are on the test split. Every finished cell leaves
``result.json``; a rerun skips it, so a long study runs across several invocations. An interrupted
cell is started again from scratch (its folder is removed first).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from lightning_medaug.study.generators import ARM_SETTINGS, GeneratorSpec, parse_generators
from lightning_medaug.study.recipe import (
    load_recipe,
    real_data,
    run_recipe,
    with_classic_augmentation,
    with_mixing,
    with_subset,
    with_trainer,
)
from lightning_medaug.study.synthetic import (
    bank_size,
    mask_layouts,
    sample_grids,
    train_labels,
    train_masks,
)
from lightning_medaug.weights_folder import WEIGHTS_NAME

__all__ = ["Cell", "Study"]


@dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    fraction: float
    seed: int
    arm: str
    generator: str | None = None
    ratio: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.arm}_f{self.fraction:g}_s{self.seed}"


def _set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    """``config["a"]["b"]["c"] = value`` for ``key="a.b.c"``; a number indexes a list, so one argument of
    a recipe's callback can change without copying the list (``trainer.callbacks.1.init_args.x``)."""
    *parents, last = key.split(".")
    try:
        for part in parents:
            config = config[int(part)] if isinstance(config, list) else config.setdefault(part, {})
        if isinstance(config, list):
            config[int(last)] = value
        else:
            config[last] = value
    except (ValueError, IndexError) as err:
        raise ValueError(f"override {key!r} does not fit the recipe: {err}") from None


class Study:
    """A grid of downstream runs: fractions x seeds x arms (see the module docstring).

    Args:
        task: downstream recipe (classification or segmentation), e.g. ``classify_pneumonia.yaml``.
        out: study folder: ``generators/``, ``cells/``, ``results.json``, ``results.csv``,
            plots and ``report.md``.
        metric: test metric reported and plotted (key of the run's ``metrics.json["test"]``).
        fractions: stratified, seeded fractions of the real training split.
        seeds: seeds per fraction (subset, models, banks), or ``{fraction: seeds}`` so that the small,
            noisy subsets can get more seeds than the costly large ones.
        epochs: downstream epochs per cell (``None`` keeps the recipe's), or ``{fraction: epochs}``
            so that small subsets get as many optimiser steps as they need.
        classic_augmentation: add the ``classic`` arm; a dict gives ``ClassicAugmentation`` arguments.
        generators: ``{name: {"recipe": ..., "epochs": n or {fraction: n}, "overrides": {dotted.key: value},
            "sample_kwargs": {...}}}``; each is trained per fraction and seed on that subset. An entry
            with ``weights_from: <other entry>`` samples that entry's trained weights instead of
            training its own (other ``sample_kwargs`` or ``bank_factor``); ``fractions``, ``ratios``,
            ``synthetic_only``, ``classic_with_synthetic`` and ``bank_factor`` in an entry replace the
            study's for its arms (see :mod:`lightning_medaug.study.generators`).
        ratios: synthetic fractions of the ``mix`` arms (``add`` mode).
        synthetic_only: add the ``tstr`` arm per generator.
        classic_with_synthetic: add the ``classic_mix`` arms (needs ``classic_augmentation``); at
            ``ratios`` given here, or at every ratio when ``True``.
        targets: ``{"over_real": d, "over_classic": d}``: the report marks whether the best arm with
            synthetic data beats real-only (and the best ``classic_mix`` arm beats ``classic``) by
            at least ``d`` in the mean of ``metric``.
        bank_factor: bank size as a multiple of the synthetic samples one epoch of the largest
            ratio draws (1 = every synthetic sample of an epoch is distinct).
        overrides: ``{dotted.key: value}`` applied to the task recipe in every cell, e.g.
            ``{"data.init_args.image_size": 64}`` (for the real data inside mixing too). A number in a
            key indexes a list: ``trainer.callbacks.1.init_args.every_n_epochs``.
        keep_checkpoints: keep a finished cell's downstream checkpoints. By default they are deleted once
            its ``result.json`` is written: the figures are the study's product, and a classifier's
            checkpoints per cell add up to tens of GB over a full grid. Generators are always kept.
    """

    def __init__(self, task: str, out: str = "runs/study", metric: str = "test/auc",
                 fractions: Sequence[float] = (0.05, 0.1, 0.25, 1.0),
                 seeds: Sequence[int] | dict[float, Sequence[int]] = (0, 1, 2),
                 epochs: int | dict[float, int] | None = None, classic_augmentation: bool | dict[str, Any] = True,
                 generators: dict[str, dict[str, Any]] | None = None, ratios: Sequence[float] = (0.25, 0.5, 0.75),
                 synthetic_only: bool = True, bank_factor: float = 1.0, overrides: dict[str, Any] | None = None,
                 classic_with_synthetic: bool | Sequence[float] = False, targets: dict[str, float] | None = None,
                 keep_checkpoints: bool = False):
        if not fractions or any(not 0 < f <= 1 for f in fractions):
            raise ValueError(f"fractions must be non-empty values in (0, 1], got {list(fractions)}")
        if any(not 0 < r < 1 for r in ratios):
            raise ValueError(f"ratios must lie in (0, 1) for 'add' mixing, got {list(ratios)}")
        if bank_factor <= 0:
            raise ValueError(f"bank_factor must be positive, got {bank_factor}")
        if classic_with_synthetic and not classic_augmentation:
            raise ValueError("classic_with_synthetic needs classic_augmentation (the augmentation it adds)")
        combined = list(ratios) if classic_with_synthetic is True else list(classic_with_synthetic or [])
        if any(not 0 < r < 1 for r in combined):
            raise ValueError(f"classic_with_synthetic ratios must lie in (0, 1), got {combined}")
        for fraction in fractions:
            _per_fraction(epochs, fraction, "epochs")
            if not _fraction_entry(seeds, fraction, "seeds"):
                raise ValueError(f"seeds must not be empty (fraction {fraction:g})")
        self.generators = dict(generators or {})
        self.specs: dict[str, GeneratorSpec] = parse_generators(self.generators, bool(classic_augmentation))
        for spec in self.specs.values():
            if spec.recipe is None:
                continue
            load_recipe(spec.recipe)  # fail now, not after hours of other cells
        self.task_recipe = load_recipe(task)
        self.overrides = dict(overrides or {})
        for key, value in self.overrides.items():
            _set_dotted(self.task_recipe, key, value)
        # arms differ only in what they add: the baseline trains on the plain real subset
        real_data(self.task_recipe).pop("train_transforms", None)
        self.task, self.out, self.metric = task, Path(out), metric
        self.fractions = [float(f) for f in fractions]
        self.seeds: list[int] | dict[float, list[int]] = (
            {float(k): [int(s) for s in v] for k, v in seeds.items()} if isinstance(seeds, dict)
            else [int(s) for s in seeds])
        self.epochs, self.classic_augmentation = epochs, classic_augmentation
        self.ratios, self.synthetic_only, self.bank_factor = [float(r) for r in ratios], synthetic_only, bank_factor
        self.classic_with_synthetic = [float(r) for r in combined]
        unknown = set(targets or {}) - {"over_real", "over_classic"}
        if unknown:
            raise ValueError(f"targets has unknown keys {sorted(unknown)}; use over_real, over_classic")
        self.targets = {k: float(v) for k, v in (targets or {}).items()}
        self.keep_checkpoints = keep_checkpoints
        self.console = Console()
        for name, spec in self.specs.items():
            # epochs are needed where the generator is trained: where it, or an entry reusing it, runs
            trained_at = {f for other, o in self.specs.items() if o.trained_as == name for f in self.runs_at(other)}
            for fraction in sorted(trained_at):
                _per_fraction(spec.epochs, fraction, f"generators.{name}.epochs")
        for name, spec in self.specs.items():  # a slice of the study, or a typo: say which arms will not run
            skipped = sorted(set(spec.fractions or ()) - set(self.fractions))
            if skipped:
                Console(stderr=True).print(f"generator {name!r}: no arms at fractions {skipped}, which this "
                                           f"study does not run (its fractions: {self.fractions})")

    # -- the grid -----------------------------------------------------------------------------
    def cells(self) -> list[Cell]:
        """Every cell, in run order: per fraction and seed, the cheap arms first."""
        cells = []
        for fraction in self.fractions:
            for seed in self.seeds_for(fraction):
                cells.append(Cell(fraction, seed, "real"))
                if self.classic_augmentation:
                    cells.append(Cell(fraction, seed, "classic"))
                for g in self.generators:
                    if fraction not in self.runs_at(g):
                        continue
                    arms = self.arm_settings(g)
                    cells += [Cell(fraction, seed, f"mix_{g}_r{r:g}", g, r) for r in arms["ratios"]]
                    if arms["synthetic_only"]:
                        cells.append(Cell(fraction, seed, f"tstr_{g}", g, 1.0))
                    cells += [Cell(fraction, seed, f"classic_mix_{g}_r{r:g}", g, r)
                              for r in arms["classic_with_synthetic"]]
        return cells

    def arm_settings(self, name: str) -> dict[str, Any]:
        """Generator ``name``'s ``fractions``, ``ratios``, ``synthetic_only``, ``classic_with_synthetic``
        and ``bank_factor``: its own where its entry gives them, else the study's."""
        spec = self.specs[name]
        return {k: getattr(self, k) if getattr(spec, k) is None else getattr(spec, k) for k in ARM_SETTINGS}

    def runs_at(self, name: str) -> list[float]:
        """The study's fractions at which generator entry ``name`` has arms."""
        return [f for f in self.fractions if f in self.arm_settings(name)["fractions"]]

    def seeds_for(self, fraction: float) -> list[int]:
        """The seeds run at ``fraction``."""
        return list(_fraction_entry(self.seeds, fraction, "seeds"))

    def epochs_for(self, fraction: float) -> int | None:
        """Downstream epochs at ``fraction`` (``None``: the recipe's)."""
        return _per_fraction(self.epochs, fraction, "epochs")

    def cell_folder(self, cell: Cell) -> Path:
        return self.out / "cells" / cell.name

    def generator_folder(self, name: str, fraction: float, seed: int) -> Path:
        return self.out / "generators" / f"{name}_f{fraction:g}_s{seed}"

    def is_done(self, cell: Cell) -> bool:
        return (self.cell_folder(cell) / "result.json").is_file()

    # -- running --------------------------------------------------------------------------------
    def run(self, max_cells: int | None = None) -> list[dict[str, Any]]:
        """Run the unfinished cells (at most ``max_cells``), then aggregate; returns every cell's result."""
        from lightning_medaug.study.results import write_results

        cells = self.cells()
        todo = [c for c in cells if not self.is_done(c)]
        self.console.rule(f"[bold]medaug study[/] {self.task}: {len(cells)} cells, {len(cells) - len(todo)} done")
        for i, cell in enumerate(todo[:max_cells] if max_cells is not None else todo, start=1):
            self.console.rule(f"cell {len(cells) - len(todo) + i}/{len(cells)}: {cell.arm}, "
                              f"fraction {cell.fraction:g}, seed {cell.seed}")
            self.run_cell(cell)
        results = [self.result(c) for c in cells if self.is_done(c)]
        write_results(self, results)
        return results

    def run_cell(self, cell: Cell) -> dict[str, Any]:
        """Train and test one cell (its generator and bank first, when it needs them)."""
        folder = self.cell_folder(cell)
        if folder.exists():
            shutil.rmtree(folder)  # an interrupted attempt: start the cell over
        start = time.perf_counter()
        epochs = self.epochs_for(cell.fraction)
        config = with_trainer(with_subset(self.task_recipe, cell.fraction, cell.seed), seed=cell.seed,
                              **({"max_epochs": epochs} if epochs else {}))
        if cell.arm.startswith("classic"):
            spec = self.classic_augmentation if isinstance(self.classic_augmentation, dict) else {}
            dims = config["model"].get("init_args", {}).get("spatial_dims", 2)
            config = with_classic_augmentation(config, **{"spatial_dims": dims, **spec})
        if cell.generator is not None:
            bank = self.bank(cell.generator, cell.fraction, cell.seed)
            mode = "replace" if cell.arm.startswith("tstr_") else "add"
            config = with_mixing(config, bank, cell.ratio, mode=mode, seed=cell.seed)
        run = run_recipe(config, folder / "run")
        if cell.generator is not None:
            _check_same_subset(self.generator_data(cell.generator, cell.fraction, cell.seed), run["datamodule"])
        test = run["metrics"].get("test", {})
        if self.metric not in test:
            raise ValueError(f"the task's test metrics {sorted(test)} have no {self.metric!r}: set `metric`")
        result = {**asdict(cell), "cell": cell.name, "value": test[self.metric], "test": test,
                  "selection": _selection(run["metrics"]), "seconds": time.perf_counter() - start}
        (folder / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True), encoding="utf-8")
        if not self.keep_checkpoints:  # only after result.json: a cell killed before it reruns anyway
            for checkpoint in (folder / "run").rglob("*.ckpt"):
                checkpoint.unlink()
        return result

    def result(self, cell: Cell) -> dict[str, Any]:
        """A finished cell's ``result.json``. Cells written before results recorded the checkpoint
        selection get it from their run's ``metrics.json``."""
        folder = self.cell_folder(cell)
        result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
        if "selection" not in result and (folder / "run" / "metrics.json").is_file():
            result["selection"] = _selection(json.loads((folder / "run" / "metrics.json").read_text(encoding="utf-8")))
        return result

    # -- generators and banks ---------------------------------------------------------------------
    def _generator_config(self, name: str, fraction: float, seed: int) -> dict[str, Any]:
        spec = self.specs[name]
        epochs = _per_fraction(spec.epochs, fraction, f"generators.{name}.epochs")
        config = with_trainer(with_subset(load_recipe(spec.recipe), fraction, seed), seed=seed,
                              **({"max_epochs": epochs} if epochs else {}))
        for key, value in spec.overrides.items():
            _set_dotted(config, key, value)
        for key, entry in spec.inputs_from.items():  # trained on this very subset, first if it is not yet
            _set_dotted(config, key, str(self.train_generator(entry, fraction, seed)))
        return config

    def generator_data(self, name: str, fraction: float, seed: int) -> Any:
        """The generator's (real) data module, set up, as its recipe builds it."""
        from lightning_medaug.trainer_cli import MedaugCLI

        folder = self.generator_folder(self.specs[name].trained_as, fraction, seed)
        cli = MedaugCLI(args=["--config", str(folder / "run" / "recipe.yaml")], run=False)
        cli.datamodule.setup("fit")
        return cli.datamodule

    def train_generator(self, name: str, fraction: float, seed: int) -> Path:
        """Train entry ``name``'s generator (its ``weights_from`` entry's) on this subset once; returns its export."""
        trained_as = self.specs[name].trained_as
        trained = self.generator_folder(trained_as, fraction, seed)
        exported = trained / "run" / "generator"
        if not (exported / WEIGHTS_NAME).is_file():
            if trained.exists():
                shutil.rmtree(trained)
            self.console.print(f"training generator {trained_as} on fraction {fraction:g}, seed {seed}")
            run_recipe(self._generator_config(trained_as, fraction, seed), trained / "run", test=False)
        return exported

    def bank(self, name: str, fraction: float, seed: int) -> Path:
        """Write entry ``name``'s bank (resumably) from its generator trained on this subset; returns the folder."""
        from lightning_medaug.bank import write_bank
        from lightning_medaug.generative import load_generator

        spec = self.specs[name]
        exported = self.train_generator(name, fraction, seed)
        folder = self.generator_folder(name, fraction, seed)  # this entry's banks
        real = self.generator_data(name, fraction, seed)
        model = load_generator(exported)
        masks = train_masks(real) if model.requires_masks else None
        if model.requires_masks and masks is None:
            raise ValueError(f"generator {name!r} is mask-conditional but its data has no masks")
        shown = spec.grid_source(self.specs)  # one grid per way of sampling the weights, not per entry
        grids = self.generator_folder(shown, fraction, seed)
        if not (grids / "samples.png").is_file():
            sample_grids(model, real, grids, shown, masks, sample_kwargs=spec.sample_kwargs)
        labels = train_labels(real)
        num_real = len(real.train_dataset)
        arms = self.arm_settings(name)
        size = bank_size(num_real, [*arms["ratios"], *arms["classic_with_synthetic"]], arms["synthetic_only"],
                         arms["bank_factor"])
        plan: dict[str, Any] = {}
        if model.num_classes:
            if labels is None:
                raise ValueError(f"generator {name!r} is class-conditional but its data has no labels")
            plan = {"labels": "proportional", "proportions": {c: labels.count(c) / num_real for c in set(labels)}}
        if masks is not None:  # new layouts of the subset's own masks: never masks of unseen patients
            plan["masks"] = mask_layouts(masks, size, seed)
        bank = _bank_folder(folder, size)
        write_bank(model, bank, size, seed=seed, sample_kwargs=spec.sample_kwargs,
                   checkpoint_folder=exported, **plan)
        return bank


def _bank_folder(generator_folder: Path, size: int) -> Path:
    """``bank/``, unless it holds a bank of another size: then ``bank_<size>/``. The size follows the
    ratios of the invocation (a larger synthetic share needs more samples) and a bank never changes
    its settings, so running more ratios later writes a second bank beside the first."""
    bank = generator_folder / "bank"
    record = bank / "bank.json"
    if record.is_file() and json.loads(record.read_text(encoding="utf-8"))["settings"]["num_samples"] != size:
        return generator_folder / f"bank_{size}"
    return bank


def _selection(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The validation score that selected the tested checkpoint: ``{"metric", "value", "epoch"}``
    (``None`` when the run monitored nothing)."""
    monitor = metrics.get("monitor") or {}
    best, metric = monitor.get("best") or {}, monitor.get("metric")
    if metric not in best:
        return None
    return {"metric": metric, "value": best[metric], "epoch": best.get("epoch"), "mode": monitor.get("mode", "max")}


def _fraction_entry(value: Any, fraction: float, what: str) -> Any:
    """``value`` itself, or its entry for ``fraction`` when it is a ``{fraction: value}`` dict."""
    if not isinstance(value, dict):
        return value
    table = {float(k): v for k, v in value.items()}
    if float(fraction) not in table:
        raise ValueError(f"{what} has no entry for fraction {fraction:g}: give one per fraction or a single value")
    return table[float(fraction)]


def _per_fraction(epochs: int | dict[float, int] | None, fraction: float, what: str) -> int | None:
    """``epochs`` itself, or its entry for ``fraction`` when it is a ``{fraction: epochs}`` dict."""
    epochs = _fraction_entry(epochs, fraction, what)
    if epochs is not None and int(epochs) < 1:
        raise ValueError(f"{what} must be at least 1, got {epochs}")
    return None if epochs is None else int(epochs)


def _check_same_subset(generator_data: Any, task_data: Any) -> None:
    """The generator must have seen exactly the real images the downstream model trains on."""
    import numpy as np

    while hasattr(task_data, "datamodule"):
        task_data = task_data.datamodule
    a, b = getattr(generator_data, "subset_indices", None), getattr(task_data, "subset_indices", None)
    if (a is None) != (b is None) or (a is not None and not np.array_equal(a, b)):
        raise ValueError("the generator and the downstream model trained on different real subsets: give both "
                         "recipes the same data set, and do not set subset/subset_seed in generator overrides")
