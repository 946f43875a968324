"""``BeyondClassicStudy``: does a diffusion model add anything on top of the *best* classic augmentation?

Per training fraction and seed the study trains, in this order:

1. the arms without synthetic data that do not build on the classic baseline (e.g. ``real``);
2. every classic candidate (:data:`~lightning_medaug.study.recipe.AUGMENTATIONS` by name); the one with
   the best validation score of its selected checkpoint is that cell's ``classic_best``
   (:func:`~lightning_medaug.study.selection.choose_classic`), chosen before any synthetic arm runs;
3. the arms with synthetic data (:mod:`lightning_medaug.study.arms`), each on top of ``classic_best``:
   samples of the generator drawn from noise (``add`` mixing, or synthetic first then real), and
   diffusion edits of the cell's own real training images (``swap``: DA-Fusion, Trabucco et al. 2023;
   ``add`` towards the other class: Diff-Mix counterfactuals, Wang et al. 2024).

The generator is trained per fraction and seed on that cell's real subset only (as in
:class:`~lightning_medaug.study.runner.Study`, which this study uses for training and sample banks).
Every arm gets the same optimiser steps per fraction: ``epochs`` times the real subset's batches per
epoch, as ``max_steps`` (``add`` mixing lengthens an epoch, so those arms see fewer epochs). Finished
cells leave ``result.json`` and are skipped on a rerun.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from lightning_medaug.study.arms import CLASSIC_BEST, Arm, parse_arms
from lightning_medaug.study.recipe import (
    AUGMENTATIONS,
    run_recipe,
    with_augmentation,
    with_mixing,
    with_subset,
    with_trainer,
)
from lightning_medaug.study.runner import Cell, Study, _check_same_subset, _per_fraction, _selection
from lightning_medaug.study.selection import choose_classic

__all__ = ["BeyondClassicStudy"]

_GENERATOR_KEYS = ("recipe", "epochs", "overrides", "sample_kwargs", "inputs_from")
_STAGE_KEYS = ("recipe", "epochs", "overrides")


class BeyondClassicStudy:
    """Classic candidates, the classic baseline chosen on validation, and synthetic arms on top of it.

    Args:
        task: downstream classification recipe, e.g. ``classify_pneumonia.yaml``.
        out: study folder: ``cells/``, ``generators/`` (trained generators, banks of samples and edits),
            ``results.json``, ``results.csv``, ``report.md`` / ``report.html``.
        metric: test metric reported (key of the run's ``metrics.json["test"]``).
        fractions, seeds, epochs: as for :class:`~lightning_medaug.study.runner.Study`; ``epochs`` fixes the
            optimiser steps of every arm at a fraction (epochs x real batches per epoch).
        classic_candidates: augmentation names tried per fraction and seed; ``classic_best`` is one of them.
        selection: ``{"metric": ..., "rule": ...}``: ``metric`` must be the task's checkpoint monitor (the
            score the choice reads); ``rule`` is kept as written, for the report.
        generator: ``{"recipe", "epochs", "overrides", "sample_kwargs", "inputs_from"}`` of the diffusion
            model trained per cell (its ``sample_kwargs`` also drive the edits); ``inputs_from`` maps its
            recipe's dotted keys to ``stages``, e.g. ``{model.init_args.autoencoder_path: autoencoder}``.
        stages: ``{name: {"recipe", "epochs", "overrides"}}``: models the generator is trained on, each
            trained first on the same real subset (a latent diffusion model's autoencoder); no arms.
        arms: ``{name: entry}``, see :mod:`lightning_medaug.study.arms`.
        targets: ``{"over_classic_best": d, "min_positive_seeds": {fraction: k}}``: an arm helps at a fraction
            when its mean paired difference over ``classic_best`` is at least ``d`` and positive in at
            least ``k`` seeds.
        overrides: ``{dotted.key: value}`` applied to the task recipe in every cell.
        keep_checkpoints: keep the downstream checkpoints of finished cells.
    """

    def __init__(self, task: str, out: str = "runs/study_v2", metric: str = "test/auc",
                 fractions: Sequence[float] = (0.05, 0.1), seeds: Sequence[int] | dict[float, Sequence[int]] = (0,),
                 epochs: int | dict[float, int] | None = None,
                 classic_candidates: Sequence[str] = ("classic", "trivialaugment", "randaugment", "mixup", "cutmix"),
                 selection: dict[str, Any] | None = None, generator: dict[str, Any] | None = None,
                 stages: dict[str, dict[str, Any]] | None = None,
                 arms: dict[str, dict[str, Any] | None] | None = None, targets: dict[str, Any] | None = None,
                 overrides: dict[str, Any] | None = None, keep_checkpoints: bool = False):
        self.arms = parse_arms(arms or {"real": {"augmentation": "none"},
                                        "classic_best": {"augmentation": CLASSIC_BEST}})
        self.candidates = [str(c) for c in classic_candidates]
        bad = [c for c in self.candidates if c not in AUGMENTATIONS or c == "none"]
        if not self.candidates or bad:
            raise ValueError(f"classic_candidates must name augmentations among {', '.join(AUGMENTATIONS[1:])}, "
                             f"got {list(classic_candidates)}")
        clash = {a.name for a in self.arms} & set(self.candidates)
        if clash:
            raise ValueError(f"arms {sorted(clash)} share a name with a classic candidate; rename them")
        self.generator = dict(generator or {})
        unknown = set(self.generator) - set(_GENERATOR_KEYS)
        if unknown:
            raise ValueError(f"generator has unknown keys {sorted(unknown)}; use {', '.join(_GENERATOR_KEYS)}")
        if any(a.bank for a in self.arms) and "recipe" not in self.generator:
            raise ValueError("arms with a bank need generator.recipe (e.g. ddpm_pneumonia.yaml)")
        self.generator_name = Path(self.generator.get("recipe", "generator")).stem.split("_")[0]
        self.stages = {str(k): dict(v or {}) for k, v in (stages or {}).items()}
        for name, stage in self.stages.items():
            unknown = set(stage) - set(_STAGE_KEYS)
            if unknown or "recipe" not in stage or name == self.generator_name:
                raise ValueError(f"stage {name!r} needs a 'recipe' and takes only {', '.join(_STAGE_KEYS)} "
                                 f"under a name other than the generator's ({self.generator_name!r}), got {stage}")
        samples = [a for a in self.arms if a.bank == "samples"]
        # trains the generator per cell and writes the bank of samples, as the v1 study does
        self.base = Study(task, out=out, metric=metric, fractions=fractions, seeds=seeds, epochs=epochs,
                          classic_augmentation=False, overrides=overrides, keep_checkpoints=keep_checkpoints,
                          generators={**self.stages, self.generator_name: self.generator}
                          if "recipe" in self.generator else None,
                          ratios=sorted({a.ratio for a in samples if a.mode == "add"}),
                          synthetic_only=any(a.mode == "replace" for a in samples),
                          bank_factor=max([a.bank_factor for a in samples], default=1.0))
        self.selection = dict(selection or {})
        monitor = (self.base.task_recipe.get("summary") or {}).get("monitor")
        if self.selection.get("metric") not in (None, monitor):
            raise ValueError(f"selection.metric {self.selection['metric']!r} is not the task's checkpoint monitor "
                             f"{monitor!r}: the choice reads the score that selected each checkpoint")
        self.targets = dict(targets or {})
        unknown = set(self.targets) - {"over_classic_best", "min_positive_seeds"}
        if unknown:
            raise ValueError(f"targets has unknown keys {sorted(unknown)}; use over_classic_best, min_positive_seeds")
        self.task, self.out, self.metric = task, Path(out), metric
        self.fractions, self.seeds, self.epochs = self.base.fractions, self.base.seeds, epochs
        self.overrides, self.keep_checkpoints = dict(overrides or {}), keep_checkpoints
        self.console = Console()
        self._steps: dict[tuple[float, int], int] = {}

    # -- the grid -----------------------------------------------------------------------------
    def cells(self) -> list[Cell]:
        """Per fraction and seed (all arms of a seed before the next): the arms that need no classic
        baseline, the classic candidates, then the arms on top of ``classic_best`` in the ``arms`` order."""
        cells = []
        for fraction in self.fractions:
            for seed in self.seeds_for(fraction):
                first = [a.name for a in self.arms if not a.builds_on_classic_best and a.bank is None]
                later = [a.name for a in self.arms if a.name not in first and not self.is_virtual(a)]
                cells += [Cell(fraction, seed, name) for name in (*first, *self.candidates, *later)]
        return cells

    @staticmethod
    def is_virtual(arm: Arm) -> bool:
        """``classic_best`` alone is no run of its own: it is the chosen candidate's run."""
        return arm.builds_on_classic_best and arm.bank is None

    def arm(self, name: str) -> Arm:
        """The arm (a classic candidate is an arm with that augmentation)."""
        if name in self.candidates:
            return Arm(name, "classic candidates", name)
        return next(a for a in self.arms if a.name == name)

    def seeds_for(self, fraction: float) -> list[int]:
        return self.base.seeds_for(fraction)

    def cell_folder(self, cell: Cell) -> Path:
        return self.base.cell_folder(cell)

    def is_done(self, cell: Cell) -> bool:
        return self.base.is_done(cell)

    def result(self, cell: Cell) -> dict[str, Any]:
        return self.base.result(cell)

    def classic_best(self, fraction: float, seed: int) -> str:
        """The candidate chosen on validation for this subset and seed (every candidate must have run)."""
        missing = [c for c in self.candidates if not self.is_done(Cell(fraction, seed, c))]
        if missing:
            raise ValueError(f"classic-best at fraction {fraction:g}, seed {seed} needs the candidates {missing} first")
        return choose_classic(self.candidates, {c: self.result(Cell(fraction, seed, c)) for c in self.candidates})

    def steps_for(self, fraction: float, seed: int) -> int:
        """Optimiser steps of every arm at ``fraction``: epochs x batches of one epoch of the real subset."""
        if (fraction, seed) not in self._steps:
            from lightning_medaug.bank.data_config import load_data_module

            epochs = _per_fraction(self.epochs, fraction, "epochs")
            if epochs is None:
                raise ValueError("a beyond-classic study needs epochs (per fraction): they fix every arm's steps")
            datamodule, _ = load_data_module(with_subset(self.base.task_recipe, fraction, seed))
            datamodule.prepare_data()
            datamodule.setup("fit")
            self._steps[(fraction, seed)] = epochs * len(datamodule.train_dataloader())
        return self._steps[(fraction, seed)]

    # -- running --------------------------------------------------------------------------------
    def run(self, max_cells: int | None = None) -> list[dict[str, Any]]:
        """Run the unfinished cells (at most ``max_cells``), then write the results and the report."""
        from lightning_medaug.study.v2_report import write_v2_results

        cells = self.cells()
        todo = [c for c in cells if not self.is_done(c)]
        self.console.rule(f"[bold]medaug study[/] (beyond classic) {self.task}: {len(cells)} cells, "
                          f"{len(cells) - len(todo)} done")
        for i, cell in enumerate(todo[:max_cells] if max_cells is not None else todo, start=1):
            self.console.rule(f"cell {len(cells) - len(todo) + i}/{len(cells)}: {cell.arm}, fraction "
                              f"{cell.fraction:g}, seed {cell.seed}")
            self.run_cell(cell)
            write_v2_results(self)  # a study cut short still leaves its report of the cells so far
        return write_v2_results(self)["cells"]

    def prepare(self) -> list[Path]:
        """Train the generators and write every bank the grid's synthetic arms need, without any downstream
        run (e.g. beside the classic candidates, on another machine or process); returns the banks. The
        cells find them done. Never run it beside a study that reaches the same banks."""
        banks = []
        for fraction in self.fractions:
            for seed in self.seeds_for(fraction):
                for arm in (a for a in self.arms if a.bank is not None):
                    self.console.rule(f"bank of {arm.name}, fraction {fraction:g}, seed {seed}")
                    if arm.bank == "samples":
                        banks.append(self.base.bank(self.generator_name, fraction, seed))
                    else:
                        banks.append(self.edit_bank(arm, fraction, seed,
                                                    with_subset(self.base.task_recipe, fraction, seed)))
        return list(dict.fromkeys(banks))

    def run_cell(self, cell: Cell) -> dict[str, Any]:
        """Train and test one cell (the generator and its bank first, when it needs them)."""
        arm = self.arm(cell.arm)
        folder = self.cell_folder(cell)
        if folder.exists():
            shutil.rmtree(folder)  # an interrupted attempt: start the cell over
        start = time.perf_counter()
        augmentation = self.classic_best(cell.fraction, cell.seed) if arm.builds_on_classic_best else arm.augmentation
        epochs = _per_fraction(self.epochs, cell.fraction, "epochs")
        steps = self.steps_for(cell.fraction, cell.seed)
        config = with_subset(self.base.task_recipe, cell.fraction, cell.seed)
        dims = config["model"].get("init_args", {}).get("spatial_dims", 2)
        config = with_augmentation(config, augmentation, spatial_dims=dims)
        bank = None
        if arm.bank == "samples":
            bank = self.base.bank(self.generator_name, cell.fraction, cell.seed)
        elif arm.bank == "edits":
            bank = self.edit_bank(arm, cell.fraction, cell.seed, config)
        if bank is not None:
            extra = {}
            if arm.synthetic_until is not None:  # replace keeps the epoch length: a share of epochs is of steps
                extra["ratio_schedule"] = f"synthetic_then_real:{max(1, round(arm.synthetic_until * epochs))}"
            if arm.selection:  # only the samples the arm's rule keeps (score 1 of 0/1)
                extra["min_score"] = 1.0
                self.select(arm, bank, cell.fraction, cell.seed)
            config = with_mixing(config, bank, arm.ratio, mode=arm.mode, seed=cell.seed, **extra)
        # 'add' lengthens an epoch: the step budget, not the epochs, ends every arm's training, and every arm
        # is validated after each real epoch's worth of steps (as often as the others, and at the end)
        config = with_trainer(config, seed=cell.seed, max_steps=steps, max_epochs=-1, check_val_every_n_epoch=None,
                              val_check_interval=steps // epochs)
        run = run_recipe(config, folder / "run")
        if bank is not None:
            _check_same_subset(self.base.generator_data(self.generator_name, cell.fraction, cell.seed),
                               run["datamodule"])
        test = run["metrics"].get("test", {})
        if self.metric not in test:
            raise ValueError(f"the task's test metrics {sorted(test)} have no {self.metric!r}: set `metric`")
        result = {**asdict(cell), "cell": cell.name, "family": arm.family, "augmentation": augmentation,
                  "mode": arm.mode, "ratio": arm.ratio, "strength": arm.strength, "target_labels": arm.target_labels,
                  "bank": None if bank is None else bank.relative_to(self.out).as_posix(),
                  "selection_rule": arm.keep_rule or None,
                  "steps": int(run["model"].trainer.global_step), "step_budget": steps,
                  "value": test[self.metric], "test": test, "selection": _selection(run["metrics"]),
                  "seconds": time.perf_counter() - start}
        (folder / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True), encoding="utf-8")
        if not self.keep_checkpoints:
            for checkpoint in (folder / "run").rglob("*.ckpt"):
                checkpoint.unlink()
        return result

    def select(self, arm: Arm, bank: Path, fraction: float, seed: int) -> dict[str, Any]:
        """Score ``bank`` by ``arm.selection`` with proxies trained on the cell's plain real subset only
        (once: the scores and the rule are stored in the bank); returns the selection record."""
        from lightning_medaug.selection import SELECTION_FILE, KeepRule, score_bank

        rule, settings = KeepRule(**arm.keep_rule), dict(arm.selection)
        folds = int(settings.get("folds", 5))
        path = bank / SELECTION_FILE
        if path.is_file():
            record = json.loads(path.read_text(encoding="utf-8"))
            if record["rule"] == asdict(rule) and (record.get("proxies") or {}).get("folds", folds) == folds:
                return record
            raise ValueError(f"{bank} was scored with the rule {record['rule']}, arm {arm.name!r} asks for "
                             f"{asdict(rule)}: arms that share a bank need one selection")
        self.console.print(f"scoring {bank.relative_to(self.out).as_posix()} for {arm.name}")
        return score_bank(bank, with_subset(self.base.task_recipe, fraction, seed), rule, folds=folds, seed=seed,
                          extractor=settings.get("extractor"), proxy=dict(settings.get("proxy", ())), progress=True)

    # -- banks of edits -------------------------------------------------------------------------
    def edit_folder(self, arm: Arm, fraction: float, seed: int) -> Path:
        return (self.base.generator_folder(self.generator_name, fraction, seed) /
                f"edits_{arm.target_labels}_s{arm.strength:g}_x{arm.edits_per_image}")

    def edit_bank(self, arm: Arm, fraction: float, seed: int, config: dict[str, Any]) -> Path:
        """Edits of the cell's own real training images (``config``'s subset, in its loader's order) by the
        generator trained on them, written resumably with their provenance; returns the bank folder."""
        from lightning_medaug.bank.edits import load_training_set, write_edit_bank
        from lightning_medaug.generative import load_generator

        exported = self.base.train_generator(self.generator_name, fraction, seed)
        dataset, section = load_training_set(config)
        folder = self.edit_folder(arm, fraction, seed)
        model = load_generator(exported)
        kwargs = dict(self.generator.get("sample_kwargs") or {})
        write_edit_bank(model, folder, dataset, arm.strength, target_labels=arm.target_labels,
                        num_samples=arm.edits_per_image * len(dataset), seed=seed, sample_kwargs=kwargs,
                        checkpoint_folder=exported, source=section)
        if not (folder.parent / f"{folder.name}.png").is_file():
            _edit_grid(model, dataset, arm, folder.parent / f"{folder.name}.png", kwargs)
        return folder


def _edit_grid(model: Any, dataset: Any, arm: Arm, path: Path, sample_kwargs: dict[str, Any]) -> None:
    """Up to eight real training images of each class (one row per class; one row for data without
    classes, e.g. segmentation) above their seeded edits (a mask-conditional model edits on each image's mask)."""
    import torch

    from lightning_medaug.bank.edits import edit_targets
    from lightning_medaug.data.batch import unpack_batch
    from lightning_medaug.rendering import save_image_grid

    samples = [unpack_batch(dataset[i]) for i in range(min(len(dataset), 64))]
    labels = [-1 if s.label is None else int(s.label) for s in samples]
    rows = [[i for i, label in enumerate(labels) if label == c][:8] for c in sorted(set(labels))]
    nrow = max(len(r) for r in rows)
    rows = [r + r[:1] * (nrow - len(r)) for r in rows]  # pad a short row with its first image
    picked = [i for r in rows for i in r]
    images = torch.stack([samples[i].image for i in picked]).float()
    masks = torch.stack([samples[i].mask for i in picked]).float() if getattr(model, "requires_masks", False) else None
    sources = torch.tensor([labels[i] for i in picked])
    conditional = bool(model.num_classes)
    targets = torch.as_tensor(edit_targets(arm.target_labels, sources.numpy(), int(model.num_classes or 0), 0))
    edits = model.edit(images, arm.strength, labels=sources if conditional else None,
                       target_labels=targets if conditional else None, masks=masks,
                       generator=torch.Generator().manual_seed(0), **sample_kwargs).float().cpu()
    pairs = torch.cat([torch.cat([images[k * nrow:(k + 1) * nrow], edits[k * nrow:(k + 1) * nrow]])
                       for k in range(len(rows))])
    real_rows = "rows 1, 3" if len(rows) > 1 else "row 1"
    save_image_grid(pairs, path, nrow=nrow, scale=max(1, round(84 / images.shape[-1])),
                    title=f"real ({real_rows}) and their edits below: target {arm.target_labels}, "
                          f"strength {arm.strength:g}")
