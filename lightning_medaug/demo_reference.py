"""What the committed PneumoniaMNIST study found, for the demo to show beside its own one-seed figures.

The figures are a copy of ``benchmarks/results/study_pneumonia/results.csv`` (the real, classic and
conditional-GAN arms, test AUC mean and std over seeds) in ``demo_reference.json``, shipped inside
the package so an installed ``medaug demo`` can show them; ``tests/test_demo.py`` checks that the
copy matches the committed study.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from lightning_medaug.rendering.html import Section, Table

__all__ = ["CAVEAT", "load_reference", "reference_arm", "reference_section"]

REFERENCE_FILE = Path(__file__).with_name("demo_reference.json")

#: The sentence printed under the demo's table and written into its report.
CAVEAT = ("The demo is one seed at a small step budget: a demonstration, not evidence. The study is the "
          "evidence: every arm trained to convergence, checkpoints selected on validation, mean +- std over "
          "several seeds (benchmarks/results/study_pneumonia/).")


@cache
def load_reference() -> dict[str, Any]:
    """The committed study's figures: ``{"fractions": {"0.1": {arm: {"mean", "std", "seeds"}}}, ...}``."""
    return json.loads(REFERENCE_FILE.read_text(encoding="utf-8"))


def reference_arm(fraction: float, arm: str) -> dict[str, Any] | None:
    """The study's ``{"mean", "std", "seeds"}`` for ``arm`` at ``fraction``; ``None`` where it has none."""
    for key, arms in load_reference()["fractions"].items():
        if abs(float(key) - fraction) < 1e-9:
            return arms.get(arm)
    return None


def describe(figure: dict[str, Any] | None) -> str:
    """``0.9059 +- 0.0069 (5 seeds)``, or ``not in the study``."""
    if figure is None:
        return "not in the study"
    return f"{figure['mean']:.4f} +- {figure['std']:.4f} ({figure['seeds']} seeds)"


def reference_section(results: Sequence[dict[str, Any]], steps: int) -> Section:
    """The report's first section: each arm's demo figure beside the study's at the same fraction."""
    reference = load_reference()
    rows = []
    for result in results:
        key = f"{result['fraction']:g}"
        rows.append((key, result["arm"], f"{result['value']:.4f}",
                     describe(reference_arm(result["fraction"], result["arm"]))))
    fractions = sorted({r["fraction"] for r in results})
    epochs = ", ".join(f"{reference['classifier_epochs'].get(_key(f), '?')} epochs at fraction {f:g}"
                       for f in fractions)
    protocol = (f"The demo trains every arm for the same {steps} optimiser steps from one seed, selects each "
                f"checkpoint on validation AUC and tests it. The study trained the same classifier for {epochs} "
                "in every arm (an add-mode mixed epoch has twice the steps), about until validation AUC stopped "
                "rising, selected each checkpoint on validation, and repeated every arm over several seeds.")
    table = Table(("fraction", "arm", f"demo {reference['metric']} (1 seed)",
                   f"study {reference['metric']} (mean +- std)"), rows,
                  caption="the demo beside the committed study at the same fraction of the real training split")
    return Section("The demo beside the study", paragraphs=[protocol, CAVEAT], tables=[table])


def _key(fraction: float) -> str:
    for key in load_reference()["classifier_epochs"]:
        if abs(float(key) - fraction) < 1e-9:
            return key
    return f"{fraction:g}"
