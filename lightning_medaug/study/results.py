"""A study's results: per-arm mean and std over seeds as JSON and CSV, and the paired comparisons
that answer whether synthetic data helps (the report itself is :mod:`lightning_medaug.study.report`)."""

from __future__ import annotations

import csv
import json
import platform
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_medaug.rendering.html import Section
    from lightning_medaug.study.runner import Study

__all__ = ["compare_arms", "summarize", "write_results"]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (fraction, arm): mean, std (0 for one seed) and number of seeds of ``value``, and
    under ``metrics`` the ``(mean, std)`` of every test metric all its cells logged (accuracy, loss)."""
    groups: dict[tuple[float, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(r["fraction"], r["arm"])].append(r)
    rows = []
    for (fraction, arm), cells in sorted(groups.items()):
        mean, std = _mean_std([c["value"] for c in cells])
        logged = set.intersection(*(set(c.get("test") or {}) for c in cells))
        metrics = {k: _mean_std([float(c["test"][k]) for c in cells]) for k in sorted(logged)}
        rows.append({"fraction": fraction, "arm": arm, "generator": cells[0]["generator"], "ratio": cells[0]["ratio"],
                     "mean": mean, "std": std, "seeds": len(cells), "minutes": sum(c["seconds"] for c in cells) / 60,
                     "metrics": metrics})
    return rows


def _validation(results: list[dict[str, Any]]) -> tuple[float, float] | None:
    """Mean checkpoint-selection score of ``results`` and the same oriented so that larger is better;
    ``None`` if one of them recorded none."""
    selections = [r.get("selection") for r in results]
    if not all(selections):
        return None
    mean = sum(s["value"] for s in selections) / len(selections)
    return mean, (-mean if selections[0].get("mode") == "min" else mean)


def compare_arms(results: list[dict[str, Any]], targets: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Per fraction: the arms with synthetic data against ``real``, and the ``classic_mix`` arms
    against ``classic``, as per-seed paired differences (same subset, same seed) and their mean (the
    difference of means over the seeds both arms finished). Two arms are named per comparison:

    * ``best_arm``: the largest mean paired test difference among the arms paired on the most seeds
      (an arm that has finished one lucky seed is not preferred to one measured on three). It is read
      off the test split, so it is the grid's best case, not a choice a user could have made.
    * ``chosen``: the arm with the best mean validation score (the score that selected each
      checkpoint) among the arms paired on the most seeds, and its paired test differences: the
      arm a user who may not look at the test split would pick.

    ``targets`` (``{"over_real": 0.03, "over_classic": 0.01}``) marks each met or missed.
    """
    by_cell = {(r["fraction"], r["arm"], r["seed"]): r for r in results}
    out = []
    for fraction in sorted({r["fraction"] for r in results}):
        arms = sorted({r["arm"] for r in results if r["fraction"] == fraction})
        for baseline, pool, key in (("real", [a for a in arms if a not in ("real", "classic")], "over_real"),
                                    ("classic", [a for a in arms if a.startswith("classic_mix_")], "over_classic")):
            target = (targets or {}).get(key)
            candidates = []
            for arm in pool:
                # over the seeds both arms finished: a seed only one of them has would shift one mean alone
                seeds = sorted(s for (f, a, s) in by_cell if (f, a) == (fraction, arm) and (f, baseline, s) in by_cell)
                if seeds:
                    paired = {s: by_cell[(fraction, arm, s)]["value"] - by_cell[(fraction, baseline, s)]["value"]
                              for s in seeds}
                    candidates.append(_paired(arm, paired, [by_cell[(fraction, arm, s)] for s in seeds], target))
            if not candidates:
                continue
            best = max(candidates, key=lambda c: (len(c["paired"]), c["delta"]))
            scored = [c for c in candidates if c["validation"] is not None]
            chosen = max(scored, key=lambda c: (len(c["paired"]), c["oriented"])) if scored else None
            out.append({"fraction": fraction, "baseline": baseline, "best_arm": best["arm"], "delta": best["delta"],
                        "paired": best["paired"], "wins": best["wins"], "target": target, "met": best["met"],
                        "chosen": None if chosen is None else {k: v for k, v in chosen.items() if k != "oriented"}})
    return out


def _paired(arm: str, paired: dict[int, float], cells: list[dict[str, Any]], target: float | None) -> dict[str, Any]:
    """One candidate arm: its paired test differences and the mean validation score of its cells."""
    delta = sum(paired.values()) / len(paired)
    validation = _validation(cells)
    return {"arm": arm, "delta": delta, "paired": paired, "wins": sum(d > 0 for d in paired.values()),
            "met": None if target is None else delta >= target,
            "validation": None if validation is None else validation[0],
            "oriented": None if validation is None else validation[1]}


def _versions() -> dict[str, str]:
    import lightning
    import torch

    import lightning_medaug

    return {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
            "lightning_medaug": lightning_medaug.__version__, "threads": str(torch.get_num_threads())}


def write_results(study: Study, results: list[dict[str, Any]], preface: Sequence[Section] = ()) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv``, the plots, ``report.html`` and ``report.md`` into
    ``study.out`` (``preface``: sections the report opens with); returns their paths."""
    from lightning_medaug.study.report import write_study_report

    out = study.out
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(results)
    settings = {"task": study.task, "metric": study.metric, "fractions": study.fractions, "seeds": study.seeds,
                "epochs": study.epochs, "ratios": study.ratios, "generators": study.generators,
                "classic_augmentation": bool(study.classic_augmentation), "synthetic_only": study.synthetic_only,
                "bank_factor": study.bank_factor, "overrides": study.overrides,
                "classic_with_synthetic": study.classic_with_synthetic, "targets": study.targets}
    comparisons = compare_arms(results, study.targets)
    versions = _versions()
    files = {"json": out / "results.json", "csv": out / "results.csv"}
    files["json"].write_text(json.dumps({"settings": settings, "summary": rows, "comparisons": comparisons,
                                         "cells": results, "complete": len(results) == len(study.cells()),
                                         "versions": versions}, indent=2, sort_keys=True), encoding="utf-8")
    others = sorted({k for r in rows for k in r["metrics"]} - {study.metric})
    with open(files["csv"], "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["fraction", "arm", "generator", "ratio", "mean", "std", "seeds", "minutes",
                         *(f"{k} {stat}" for k in others for stat in ("mean", "std"))])
        for r in rows:
            extra = [v for k in others for v in (r["metrics"].get(k) or ("", ""))]
            writer.writerow([r["fraction"], r["arm"], r["generator"], r["ratio"], r["mean"], r["std"], r["seeds"],
                             r["minutes"], *extra])
    files.update(write_study_report(study, results, rows, comparisons, versions, preface))
    return files
