"""The results of a "beyond classic" study: ``classic_best`` per subset and seed, every arm's mean and std,
each synthetic arm family against ``classic_best`` (the variant chosen on validation, paired per-seed
differences with a bootstrap interval, the pre-registered target met or missed), the missing cells, and
``results.json`` / ``results.csv`` / ``report.md`` / ``report.html``."""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_medaug.rendering.html import Figure, Section, Table, write_report
from lightning_medaug.study.bootstrap import bootstrap_interval
from lightning_medaug.study.report import _pivot
from lightning_medaug.study.results import _versions, summarize
from lightning_medaug.study.runner import Cell, _fraction_entry
from lightning_medaug.study.selection import choose_classic, choose_variant, validation_score

if TYPE_CHECKING:
    from lightning_medaug.study.v2 import BeyondClassicStudy

__all__ = ["compare_to_classic_best", "with_classic_best", "write_v2_results"]

BASELINE = "classic_best"


def with_classic_best(study: BeyondClassicStudy, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``results`` plus one ``classic_best`` result per subset and seed whose candidates all finished:
    the chosen candidate's run, relabelled (it is not trained twice)."""
    done = {(r["fraction"], r["seed"], r["arm"]): r for r in results}
    out = list(results)
    for fraction in study.fractions:
        for seed in study.seeds_for(fraction):
            runs = {c: done[(fraction, seed, c)] for c in study.candidates if (fraction, seed, c) in done}
            if len(runs) == len(study.candidates):
                chosen = choose_classic(study.candidates, runs)
                out.append({**runs[chosen], "arm": BASELINE, "family": BASELINE, "augmentation": chosen,
                            "cell": Cell(fraction, seed, BASELINE).name})
    return out


def _seeds_needed(study: BeyondClassicStudy, fraction: float) -> int | None:
    """The targets' least number of seeds with a positive difference at ``fraction`` (``None``: no target)."""
    table = study.targets.get("min_positive_seeds")
    if table is None:
        return None
    try:
        return int(_fraction_entry(table, fraction, "targets.min_positive_seeds"))
    except ValueError:  # the targets speak of other fractions only
        return None


def _target(study: BeyondClassicStudy, fraction: float, delta: float, wins: int, seeds: int) -> str | None:
    """``met``, ``missed``, ``open`` (not every seed has finished yet) or ``None`` (no target here)."""
    need, margin = _seeds_needed(study, fraction), study.targets.get("over_classic_best")
    if need is None or margin is None:
        return None
    if delta >= float(margin) and wins >= need:
        return "met"
    return "missed" if seeds >= len(study.seeds_for(fraction)) else "open"


def compare_to_classic_best(study: BeyondClassicStudy, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per synthetic arm family and fraction: every variant's paired test differences against
    ``classic_best`` (mean, 95% bootstrap interval, positive seeds, target) and which variant the
    family's mean validation score picks (``chosen``)."""
    by_cell = {(r["fraction"], r["seed"], r["arm"]): r for r in results}
    families: dict[str, list[str]] = defaultdict(list)
    for arm in study.arms:
        if arm.bank is not None:
            families[arm.family].append(arm.name)
    out = []
    for family, variants in families.items():
        for fraction in study.fractions:
            rows, cells = [], {}
            for name in variants:
                seeds = [s for s in study.seeds_for(fraction)
                         if (fraction, s, name) in by_cell and (fraction, s, BASELINE) in by_cell]
                cells[name] = [by_cell[(fraction, s, name)] for s in seeds]
                if not seeds:
                    continue
                paired = {s: by_cell[(fraction, s, name)]["value"] - by_cell[(fraction, s, BASELINE)]["value"]
                          for s in seeds}
                delta = statistics.fmean(paired.values())
                wins = sum(d > 0 for d in paired.values())
                low, high = bootstrap_interval(list(paired.values()), seed=0)
                rows.append({"arm": name, "paired": paired, "delta": delta, "interval": [low, high], "wins": wins,
                             "validation": statistics.fmean(validation_score(c) for c in cells[name]),
                             "target": _target(study, fraction, delta, wins, len(seeds))})
            if rows:
                out.append({"family": family, "fraction": fraction, "variants": rows,
                            "chosen": choose_variant(cells)})
    return out


def _missing(study: BeyondClassicStudy) -> list[str]:
    """One line per fraction and seed with unfinished cells, naming them."""
    todo: dict[tuple[float, int], list[str]] = defaultdict(list)
    for cell in study.cells():
        if not study.is_done(cell):
            todo[(cell.fraction, cell.seed)].append(cell.arm)
    return [f"fraction {f:g}, seed {s}: {', '.join(arms)}" for (f, s), arms in todo.items()]


def _sections(study: BeyondClassicStudy, results: list[dict[str, Any]], rows: list[dict[str, Any]],
              comparisons: list[dict[str, Any]]) -> list[Section]:
    total, finished = len(study.cells()), sum(r["arm"] != BASELINE for r in results)
    missing = _missing(study)
    status = [f"{finished} of {total} cells done." + (" Missing cells (not run; no figure below stands for "
                                                       "them):" if missing else "")]
    rule = study.selection.get("rule")
    protocol = ("classic_best per fraction and seed is the classic candidate with the best validation score of its "
                f"selected checkpoint ({', '.join(study.candidates)}; ties to 3 decimals go to the earlier name)."
                + (f" Pre-registered rule: {' '.join(str(rule).split()).rstrip('.')}." if rule else "") +
                " Every arm of a fraction trains for the same optimiser steps; test figures are never used to "
                "choose. Mean +- std over seeds (number of seeds in brackets, * marks the best mean per fraction).")
    main = _pivot(rows, lambda r: (r["mean"], r["std"]), f"{study.metric} on the test split")
    sections = [Section("Status", paragraphs=[*status, *missing]),
                Section("Results", paragraphs=[protocol], tables=[main])]
    picks = [(r["fraction"], r["seed"], r["augmentation"], r["selection"]["value"], r["value"])
             for r in results if r["arm"] == BASELINE]
    sections.append(Section("classic_best, chosen on validation", tables=[Table(
        ("fraction", "seed", "chosen", "validation score", study.metric),
        [(f"{f:g}", s, c, f"{v:.4f}", f"{t:.4f}") for f, s, c, v, t in sorted(picks)])]))
    chosen, every = [], []
    for c in comparisons:
        for v in c["variants"]:
            line = (c["family"], f"{c['fraction']:g}", v["arm"], f"{v['validation']:.4f}", f"{v['delta']:+.4f}",
                    f"[{v['interval'][0]:+.4f}, {v['interval'][1]:+.4f}]", f"{v['wins']}/{len(v['paired'])}",
                    ", ".join(f"s{s}: {d:+.4f}" for s, d in v["paired"].items()), v["target"] or "-")
            every.append(line)
            if v["arm"] == c["chosen"]:
                chosen.append(line)
    header = ("family", "fraction", "variant", "validation score", "difference of means", "95% bootstrap interval",
              "positive seeds", "per seed", "target")
    margin, need = study.targets.get("over_classic_best"), study.targets.get("min_positive_seeds") or {}
    need = ", ".join(f"{k} at fraction {float(f):g}" for f, k in need.items()) if isinstance(need, dict) else need
    text = (f"Paired per-seed differences of {study.metric} against classic_best (same subset, same seed), with a "
            "percentile bootstrap interval over seeds (10,000 resamples, seed 0). Target (pre-registered): mean "
            f"difference >= {margin} and positive in at least as many seeds as given ({need}); 'open' while seeds are "
            "missing. "
            "The first table quotes per family the variant (strength or ratio) with the best mean validation "
            "score; the second lists every variant.")
    if not comparisons:
        text, tables = "No synthetic arm has finished beside classic_best yet.", []
    else:
        tables = [Table(header, chosen, caption="variant chosen on validation"),
                  Table(header, every, caption="every variant")]
    sections.append(Section("Beyond classic: synthetic arms against classic_best", paragraphs=[text], tables=tables))
    overall = []
    for fraction in study.fractions:
        # over the seeds on which every arm finished: an arm with more finished seeds is not preferred for that
        arms = [BASELINE, *(a.name for a in study.arms if not study.is_virtual(a))]
        done = {(r["seed"], r["arm"]): r for r in results if r["fraction"] == fraction}
        seeds = [s for s in study.seeds_for(fraction) if all((s, a) in done for a in arms)]
        groups = {a: [done[(s, a)] for s in seeds] for a in arms}
        pick = choose_variant(groups)
        if pick:
            overall.append((f"{fraction:g}", pick, ", ".join(map(str, seeds)),
                            f"{statistics.fmean(validation_score(c) for c in groups[pick]):.4f}",
                            f"{statistics.fmean(c['value'] for c in groups[pick]):.4f}"))
    if overall:
        sections.append(Section("Arm chosen on validation", tables=[Table(
            ("fraction", "arm", "seeds", "mean validation score", f"mean {study.metric}"), overall,
            caption="among every arm, over the seeds on which all of them finished")]))
    steps = sorted({(r["fraction"], r["arm"], r.get("steps"), r.get("step_budget")) for r in results
                    if r["arm"] != BASELINE})
    sections.append(Section("Optimiser steps per cell", tables=[Table(
        ("fraction", "arm", "steps", "budget"), [(f"{f:g}", a, s, b) for f, a, s, b in steps])]))
    figures = []
    grids = ((f, s) for f in study.fractions for s in study.seeds_for(f))
    for fraction, seed in grids:  # the first subset whose generator has drawn its grids
        folder = study.base.generator_folder(study.generator_name, fraction, seed)
        figures = [Figure(png.relative_to(study.out).as_posix(), f"fraction {fraction:g}, seed {seed}: {png.stem}")
                   for png in sorted(folder.glob("*.png"))]
        if figures:
            break
    if figures:
        sections.append(Section("Samples and edits", figures=figures))
    return sections


def write_v2_results(study: BeyondClassicStudy) -> dict[str, Any]:
    """Write the results and the report of the finished cells; returns the files and the results."""
    cells = study.cells()
    results = with_classic_best(study, [study.result(c) for c in cells if study.is_done(c)])
    rows = summarize(results)
    comparisons = compare_to_classic_best(study, results)
    out = Path(study.out)
    out.mkdir(parents=True, exist_ok=True)
    versions = _versions()
    settings = {"task": study.task, "metric": study.metric, "fractions": study.fractions, "seeds": study.seeds,
                "epochs": study.epochs, "classic_candidates": study.candidates, "selection": study.selection,
                "generator": study.generator, "arms": [a.__dict__ for a in study.arms], "targets": study.targets,
                "overrides": study.overrides}
    files = {"json": out / "results.json", "csv": out / "results.csv"}
    files["json"].write_text(json.dumps({"settings": settings, "summary": rows, "comparisons": comparisons,
                                         "cells": results, "missing": _missing(study),
                                         "complete": all(study.is_done(c) for c in cells), "versions": versions},
                                        indent=2, sort_keys=True, default=str), encoding="utf-8")
    with open(files["csv"], "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["fraction", "arm", "mean", "std", "seeds", "minutes"])
        writer.writerows([r["fraction"], r["arm"], r["mean"], r["std"], r["seeds"], r["minutes"]] for r in rows)
    subtitle = ", ".join(f"{k} {v}" for k, v in versions.items())
    html, md = write_report(out, f"Study (beyond classic): {study.task}, {study.metric} on the test split",
                            _sections(study, results, rows, comparisons), subtitle=subtitle)
    return {**files, "html": html, "report": md, "cells": results}
