"""A study's results: per-arm mean and std over seeds as JSON and CSV, two plots and ``report.md``."""

from __future__ import annotations

import csv
import json
import platform
import statistics
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_medaug.study.runner import Study

__all__ = ["compare_arms", "summarize", "write_results"]


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (fraction, arm): mean, std (0 for one seed) and number of seeds of ``value``."""
    groups: dict[tuple[float, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(r["fraction"], r["arm"])].append(r)
    rows = []
    for (fraction, arm), cells in sorted(groups.items()):
        values = [c["value"] for c in cells]
        rows.append({"fraction": fraction, "arm": arm, "generator": cells[0]["generator"], "ratio": cells[0]["ratio"],
                     "mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                     "seeds": len(values), "minutes": sum(c["seconds"] for c in cells) / 60})
    return rows


def _plot_fraction(rows: list[dict[str, Any]], metric: str, path: Path) -> None:
    from lightning_medaug.report.plots import plt, save_figure

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
    save_figure(fig, path, dpi=120)


def _plot_ratio(rows: list[dict[str, Any]], metric: str, path: Path) -> bool:
    """Metric vs mixing ratio per generator, one panel per fraction; real-only is ratio 0."""
    generators = sorted({r["generator"] for r in rows if r["arm"].startswith("mix_")})
    if not generators:
        return False
    from lightning_medaug.report.plots import plt, save_figure

    fractions = sorted({r["fraction"] for r in rows})
    fig, axes = plt.subplots(1, len(fractions), figsize=(3.2 * len(fractions), 3.4), squeeze=False, sharey=True)
    for ax, fraction in zip(axes[0], fractions):
        real = next((r for r in rows if r["fraction"] == fraction and r["arm"] == "real"), None)
        for g in generators:
            points = sorted((r["ratio"], r["mean"], r["std"]) for r in rows
                            if r["fraction"] == fraction and r["generator"] == g and r["arm"].startswith("mix_"))
            if real is not None:
                points.insert(0, (0.0, real["mean"], real["std"]))
            if points:
                xs, ys, es = zip(*points)
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=g)
        ax.set_title(f"fraction {fraction:g}")
        ax.set_xlabel("synthetic ratio")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    axes[0][-1].legend(fontsize=7)
    save_figure(fig, path, dpi=120)
    return True


def compare_arms(results: list[dict[str, Any]], targets: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Per fraction: the best arm with synthetic data against ``real``, and the best ``classic_mix``
    arm against ``classic``, as per-seed paired differences (same subset, same seed) and their mean
    (the difference of means over the seeds both arms finished).

    The best arm is the one with the largest mean paired difference among the arms paired on the
    most seeds: an arm that has finished one lucky seed is not preferred to one measured on three.
    ``targets`` (``{"over_real": 0.03, "over_classic": 0.01}``) marks each met or missed.
    """
    by_cell = {(r["fraction"], r["arm"], r["seed"]): r["value"] for r in results}
    rows = summarize(results)
    out = []
    for fraction in sorted({r["fraction"] for r in rows}):
        here = [r for r in rows if r["fraction"] == fraction]
        for baseline, pool, key in (("real", [r for r in here if r["generator"]], "over_real"),
                                    ("classic", [r for r in here if r["arm"].startswith("classic_mix_")],
                                     "over_classic")):
            candidates = []
            for arm in (r["arm"] for r in pool):
                # over the seeds both arms finished: a seed only one of them has would shift one mean alone
                paired = {s: by_cell[(f, a, s)] - by_cell[(f, baseline, s)] for (f, a, s) in by_cell
                          if f == fraction and a == arm and (f, baseline, s) in by_cell}
                if paired:
                    mean = sum(paired.values()) / len(paired)
                    candidates.append((len(paired), mean, arm, dict(sorted(paired.items()))))
            if not candidates:
                continue
            _, delta, arm, paired = max(candidates)
            target = (targets or {}).get(key)
            out.append({"fraction": fraction, "baseline": baseline, "best_arm": arm, "delta": delta,
                        "paired": paired, "wins": sum(d > 0 for d in paired.values()), "target": target,
                        "met": None if target is None else delta >= target})
    return out


def _comparison_table(comparisons: list[dict[str, Any]]) -> str:
    if not comparisons:
        return "No arm with synthetic data has finished beside its baseline yet."
    lines = [("| fraction | best arm with synthetic data | vs | difference of means (paired seeds) | per seed | "
              "target | met |"), "|---|---|---|---|---|---|---|"]
    for c in comparisons:
        paired = ", ".join(f"s{s}: {d:+.4f}" for s, d in c["paired"].items())
        target = "-" if c["target"] is None else f">= {c['target']:+.3f}"
        met = "-" if c["met"] is None else ("yes" if c["met"] else "**no**")
        lines.append(f"| {c['fraction']:g} | {c['best_arm']} | {c['baseline']} | {c['delta']:+.4f} | {paired} | "
                     f"{target} | {met} |")
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    import lightning
    import torch

    import lightning_medaug

    return {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
            "lightning_medaug": lightning_medaug.__version__, "threads": str(torch.get_num_threads())}


def write_results(study: Study, results: list[dict[str, Any]]) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv``, the plots and ``report.md`` into ``study.out``."""
    out = study.out
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(results)
    total = len(study.cells())
    settings = {"task": study.task, "metric": study.metric, "fractions": study.fractions, "seeds": study.seeds,
                "epochs": study.epochs, "ratios": study.ratios, "generators": study.generators,
                "classic_augmentation": bool(study.classic_augmentation), "synthetic_only": study.synthetic_only,
                "bank_factor": study.bank_factor, "overrides": study.overrides,
                "classic_with_synthetic": study.classic_with_synthetic, "targets": study.targets}
    comparisons = compare_arms(results, study.targets)
    files = {"json": out / "results.json", "csv": out / "results.csv", "report": out / "report.md"}
    files["json"].write_text(json.dumps({"settings": settings, "summary": rows, "comparisons": comparisons,
                                         "cells": results,
                                         "complete": len(results) == total, "versions": _versions()},
                                        indent=2, sort_keys=True), encoding="utf-8")
    with open(files["csv"], "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["fraction", "arm", "generator", "ratio", "mean", "std", "seeds",
                                                "minutes"])
        writer.writeheader()
        writer.writerows(rows)
    if rows:
        files["fraction_plot"] = out / "metric_vs_fraction.png"
        _plot_fraction(rows, study.metric, files["fraction_plot"])
        if _plot_ratio(rows, study.metric, out / "metric_vs_ratio.png"):
            files["ratio_plot"] = out / "metric_vs_ratio.png"
    table = "\n".join(f"| {r['fraction']:g} | {r['arm']} | {r['mean']:.4f} | {r['std']:.4f} | {r['seeds']} | "
                      f"{r['minutes']:.1f} |" for r in rows)
    pictures = "\n".join(f"![{name}]({path.name})" for name, path in files.items() if name.endswith("_plot"))
    grids = []
    for g in study.generators:  # the first subset's samples: what the downstream model was given
        folder = study.generator_folder(g, study.fractions[0], study.seeds[0])
        if (folder / "samples.png").is_file():
            rel = folder.relative_to(out)
            grids.append(f"| {g} | ![real]({rel}/real.png) | ![synthetic]({rel}/samples.png) |")
    if grids:
        pictures += (f"\n\nSamples (fraction {study.fractions[0]:g}, seed {study.seeds[0]}):\n\n"
                     "| generator | real | synthetic |\n|---|---|---|\n" + "\n".join(grids))
    files["report"].write_text(f"""# Study: {study.task}, {study.metric} on the test split

{len(results)} of {total} cells done{'' if len(results) == total else ' (rerun the same command to continue)'}.
Checkpoints selected on validation; mean and std over seeds {study.seeds}; generators trained on
each cell's real subset only. Downstream epochs: {study.epochs or "the recipe's"}.

| fraction | arm | mean | std | seeds | minutes |
|---|---|---|---|---|---|
{table}

## Does synthetic data help?

Best arm with synthetic data per fraction against real-only, and best synthetic + classic
augmentation arm against classic augmentation alone (the largest mean paired difference among
the arms paired on the most seeds; with one seed the difference is one paired run, not evidence).

{_comparison_table(comparisons)}

{pictures}

Arms: `real` (real subset only), `classic` (classic augmentation), `mix_<generator>_r<ratio>`
(real + synthetic, add mode), `tstr_<generator>` (synthetic only, tested on real),
`classic_mix_<generator>_r<ratio>` (classic augmentation of real and synthetic samples).
Per-cell results, configs and logs: `cells/<arm>_f<fraction>_s<seed>/`.
""", encoding="utf-8")
    return files
