"""A study's report: the plots (metric vs data fraction, metric vs mixing ratio) and ``report.html``
(self-contained) with ``report.md`` beside it, both rendered from the same sections."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_medaug.rendering.html import Figure, Section, Table, write_report

if TYPE_CHECKING:
    from lightning_medaug.study.runner import Study

__all__ = ["arm_order", "study_sections", "write_study_report"]

_ARMS = ("Arms: real (the real subset only); classic (classic augmentation); mix_<generator>_r<ratio> (real + "
         "synthetic, add mode); tstr_<generator> (synthetic only, tested on real); classic_mix_<generator>_r<ratio> "
         "(classic augmentation of real and synthetic samples). Per-cell results, configs and logs are in "
         "cells/<arm>_f<fraction>_s<seed>/.")


def arm_order(arm: str) -> tuple[int, str]:
    """Sort key: baselines first, then real + synthetic, synthetic only and synthetic + classic arms."""
    if arm in ("real", "classic"):
        return (0 if arm == "real" else 1), arm
    for rank, prefix in ((2, "mix_"), (3, "tstr_"), (4, "classic_mix_")):
        if arm.startswith(prefix):
            return rank, arm
    return 5, arm


def plot_fraction(rows: Sequence[dict[str, Any]], metric: str, path: Path) -> Path:
    """Mean +- std of ``metric`` against the fraction of real data, one line per arm."""
    from lightning_medaug.rendering.plots import plt, save_figure

    arms = sorted({r["arm"] for r in rows}, key=lambda a: (a.startswith("mix"), a))
    # a full grid has a dozen arms: tab10 would give two arms one colour
    colours = plt.get_cmap("tab10" if len(arms) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(8.4, 4.2))
    for i, arm in enumerate(arms):
        points = sorted((r["fraction"], r["mean"], r["std"]) for r in rows if r["arm"] == arm)
        xs, ys, es = zip(*points)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=arm, color=colours(i),
                    linestyle="--" if arm.startswith("mix") else "-")
    ax.set_xscale("log")
    ax.set_xlabel("fraction of the real training split")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs real data (mean +- std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the curves, not over them
    return save_figure(fig, path, dpi=120)


def plot_ratio(rows: Sequence[dict[str, Any]], metric: str, path: Path) -> Path | None:
    """Metric vs mixing ratio per generator, one panel per fraction: real + synthetic (ratio 0 is
    real-only) and, dashed, classic augmentation of real + synthetic (ratio 0 is classic alone).
    ``None`` when no mixed arm has finished."""
    generators = sorted({r["generator"] for r in rows if r["arm"].startswith(("mix_", "classic_mix_"))})
    if not generators:
        return None
    from lightning_medaug.rendering.plots import plt, save_figure

    fractions = sorted({r["fraction"] for r in rows})
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(fractions), figsize=(3.4 * len(fractions), 3.6), squeeze=False, sharex=True,
                             sharey=True)
    for ax, fraction in zip(axes[0], fractions):
        here = [r for r in rows if r["fraction"] == fraction]
        for i, g in enumerate(generators):
            for prefix, baseline, label, style in (("mix_", "real", g, "-"),
                                                   ("classic_mix_", "classic", f"classic + {g}", "--")):
                points = sorted((r["ratio"], r["mean"], r["std"]) for r in here
                                if r["generator"] == g and r["arm"].startswith(prefix))
                if not points:
                    continue
                points += [(0.0, r["mean"], r["std"]) for r in here if r["arm"] == baseline]
                xs, ys, es = zip(*sorted(points))
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label, color=colours(i % 10),
                            linestyle=style)
        ax.set_title(f"fraction {fraction:g}")
        ax.set_xlabel("synthetic ratio")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    axes[0][-1].legend(fontsize=7)
    return save_figure(fig, path, dpi=120)


def _pivot(rows: Sequence[dict[str, Any]], stat: Any, caption: str, lower_is_better: bool = False) -> Table:
    """Arms down, fractions across; ``stat(row)`` gives ``(mean, std)``. The best mean per fraction is
    marked with ``*``."""
    pick = min if lower_is_better else max
    fractions = sorted({r["fraction"] for r in rows})
    arms = sorted({r["arm"] for r in rows}, key=arm_order)
    cells = {(r["arm"], r["fraction"]): (*value, r["seeds"]) for r in rows if (value := stat(r)) is not None}
    best = {f: pick((v[0] for (a, g), v in cells.items() if g == f), default=None) for f in fractions}
    table = []
    for arm in arms:
        line: list[Any] = [arm]
        for f in fractions:
            if (arm, f) not in cells:
                line.append(None)
                continue
            mean, std, seeds = cells[(arm, f)]
            line.append(f"{mean:.4f} +- {std:.4f} ({seeds}){' *' if mean == best[f] else ''}")
        table.append(line)
    return Table(("arm", *(f"fraction {f:g}" for f in fractions)), table, caption=caption)


def _comparison_tables(comparisons: Sequence[dict[str, Any]]) -> list[Table]:
    """The arm chosen on validation first (what a user could pick), then the best arm on test."""
    def line(c: dict[str, Any], arm: dict[str, Any], validation: bool) -> tuple[Any, ...]:
        return (f"{c['fraction']:g}", arm["arm"], c["baseline"],
                *((f"{arm['validation']:.4f}",) if validation else ()), f"{arm['delta']:+.4f}",
                ", ".join(f"s{s}: {d:+.4f}" for s, d in arm["paired"].items()),
                None if c["target"] is None else f">= {c['target']:+.3f}",
                None if arm["met"] is None else ("yes" if arm["met"] else "NO"))

    header = ("fraction", "arm with synthetic data", "vs", "difference of means (paired seeds)", "per seed", "target",
              "met")
    tables = []
    chosen = [(c, c["chosen"]) for c in comparisons if c.get("chosen")]
    if chosen:
        tables.append(Table((*header[:3], "validation score", *header[3:]), [line(c, a, True) for c, a in chosen],
                            caption="arm chosen on validation (best mean validation score)"))
    best = [(c, {"arm": c["best_arm"], **c}) for c in comparisons]
    tables.append(Table(header, [line(c, a, False) for c, a in best],
                        caption="best arm on the test split (the grid's best case: read off the test split)"))
    return tables


def _budget(study: Study) -> str:
    """How long each downstream run trained: a step budget set through ``overrides``, or epochs."""
    steps = study.overrides.get("trainer.max_steps")
    if steps is not None and steps > 0:
        return f"Downstream training: {steps} optimiser steps per cell, whatever its epoch length"
    return f"Downstream epochs: {study.epochs or 'the recipe' + chr(39) + 's'}"


def study_sections(study: Study, results: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]],
                   comparisons: Sequence[dict[str, Any]], figures: dict[str, Path]) -> list[Section]:
    """The report's sections, in reading order."""
    total = len(study.cells())
    status = (f"{len(results)} of {total} cells done" +
              ("." if len(results) == total else " (rerun the same command to continue)."))
    seeds = (study.seeds if isinstance(study.seeds, list)
             else ", ".join(f"{s} at fraction {f:g}" for f, s in study.seeds.items()))
    protocol = (f"Checkpoints selected on validation; mean +- std over seeds {seeds} (number of seeds in "
                "brackets, * marks the best mean per fraction); generators trained on each cell's real subset "
                f"only. {_budget(study)}.")
    main = _pivot(rows, lambda r: (r["mean"], r["std"]), f"{study.metric} on the test split")
    fraction_figure = ([Figure(figures["fraction_plot"].name, f"{study.metric} vs fraction of real data")]
                       if "fraction_plot" in figures else [])
    sections = [Section("Results", paragraphs=[status, protocol], tables=[main], figures=fraction_figure)]
    if comparisons:
        help_text = ("Per fraction, the arms with synthetic data against real-only, and the synthetic + classic "
                     "augmentation arms against classic augmentation alone, as paired differences of the test "
                     "metric (same subset, same seed), among the arms paired on the most seeds. The first table "
                     "takes the arm with the best mean validation score (the score that selected each checkpoint): "
                     "the choice a user could make without the test split. The second takes the arm with the "
                     "largest test difference, which is the grid's best case and optimistic. With one seed a "
                     "difference is one paired run, not evidence.")
        tables = _comparison_tables(comparisons)
    else:
        help_text, tables = "No arm with synthetic data has finished beside its baseline yet.", []
    ratio_figure = ([Figure(figures["ratio_plot"].name, f"{study.metric} vs mixing ratio: real + synthetic (ratio 0: "
                                                        "real only) and, dashed, classic augmentation of both "
                                                        "(ratio 0: classic alone)")]
                    if "ratio_plot" in figures else [])
    sections.append(Section("Does synthetic data help?", paragraphs=[help_text], tables=tables,
                            figures=ratio_figure))
    others = sorted({k for r in rows for k in r.get("metrics", {})} - {study.metric})
    if others:
        sections.append(Section("Other test metrics", tables=[
            _pivot(rows, lambda r, k=k: r.get("metrics", {}).get(k), k, lower_is_better="loss" in k)
            for k in others]))
    samples, first_seed = [], study.seeds_for(study.fractions[0])[0]
    for g, spec in study.specs.items():  # the first subset's samples: what the downstream model was given
        if spec.grid_source(study.specs) != g:
            continue  # the same weights sampled the same way: its grid is its source's
        folder = study.generator_folder(g, study.fractions[0], first_seed)
        rel = folder.relative_to(study.out).as_posix()
        samples += [Figure(f"{rel}/{name}.png", f"{g}: {what}") for name, what in
                    (("real", "real training images"), ("samples", "synthetic samples"))
                    if (folder / f"{name}.png").is_file()]
    if samples:
        where = f"fraction {study.fractions[0]:g}, seed {first_seed}"
        sections.append(Section("Samples", paragraphs=[f"Real and synthetic images of the first subset ({where})."],
                                figures=samples))
    detail = Table(("fraction", "arm", "mean", "std", "seeds", "minutes"),
                   [(f"{r['fraction']:g}", r["arm"], f"{r['mean']:.4f}", f"{r['std']:.4f}", r["seeds"],
                     f"{r['minutes']:.1f}") for r in rows])
    sections.append(Section("Every arm", paragraphs=[_ARMS], tables=[detail]))
    return sections


def write_study_report(study: Study, results: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]],
                       comparisons: Sequence[dict[str, Any]], versions: dict[str, str],
                       preface: Sequence[Section] = ()) -> dict[str, Path]:
    """Write the plots, ``report.html`` and ``report.md`` into ``study.out`` (``preface``: sections
    before the study's own); returns their paths."""
    files: dict[str, Path] = {}
    if rows:
        files["fraction_plot"] = plot_fraction(rows, study.metric, study.out / "metric_vs_fraction.png")
        ratio = plot_ratio(rows, study.metric, study.out / "metric_vs_ratio.png")
        if ratio is not None:
            files["ratio_plot"] = ratio
    subtitle = ", ".join(f"{k} {v}" for k, v in versions.items())
    html, md = write_report(study.out, f"Study: {study.task}, {study.metric} on the test split",
                            [*preface, *study_sections(study, results, rows, comparisons, files)], subtitle=subtitle)
    return {**files, "html": html, "report": md}
