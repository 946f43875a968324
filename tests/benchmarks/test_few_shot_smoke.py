"""Smoke test of ``benchmarks/few_shot.py``: the whole study cell (phantom source, 20 and 50
images, scratch and finetune, generate, evaluate) runs at ``--tiny`` size in a fresh process,
prints one JSON line with every figure, and a second run resumes from the cells' files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
FINETUNE = "lightning_medaug.finetune.FineTuneFrom"


def run_tiny(out: Path, *extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCH / "few_shot.py"), "--tiny", "--out", str(out), *extra],
                          check=False, capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-1000:]
    lines = done.stdout.splitlines()  # stdout carries the JSON line only; Lightning's output goes to stderr
    assert len(lines) == 1, done.stdout
    return json.loads(lines[0])


def callbacks(run: Path) -> list[dict]:
    return yaml.safe_load((run / "recipe.yaml").read_text(encoding="utf-8"))["trainer"]["callbacks"]


@pytest.mark.slow  # ~20 s: two fresh Python processes, five tiny GAN trainings, four evaluations
def test_few_shot_tiny_covers_both_sizes_and_arms_and_resumes(tmp_path):
    out = tmp_path / "few_shot"
    record = run_tiny(out)
    assert record["benchmark"] == "few_shot" and record["tiny"] is True and "error" not in record
    assert record["steps"] == 4 and record["extractor"] == "none"
    assert record["source"]["data"] == "PhantomDataModule" and record["source"]["train_seconds"] > 0
    assert record["freeze"] == ["discriminator.features.0.*"]
    assert set(record["results"]) == {"20", "50"}
    for n, cells in record["results"].items():
        assert set(cells) == {"scratch", "finetune", "fd_ratio"}
        for arm in ("scratch", "finetune"):
            cell = cells[arm]
            assert cell["train_seconds"] > 0 and cell["fd"] > 0 and cell["kid_mean"] is not None
            assert set(cell["floor"]) == {"fd", "kid_mean", "precision", "recall"} and cell["floor"]["fd"] > 0
            assert (out / f"n{n}" / arm / "cell.json").is_file()
            # the line carries the cell's `medaug evaluate` figures: synthetic and floor, pixel and feature
            report = json.loads((out / f"n{n}" / arm / "evaluation" / "metrics.json").read_text(encoding="utf-8"))
            fidelity, memo = report["fidelity"], report["memorization"]
            assert {k: cell[k] for k in cell["floor"]} == {k: fidelity["synthetic"][k] for k in cell["floor"]}
            assert cell["floor"] == {k: fidelity["floor"][k] for k in cell["floor"]}
            assert cell["copy_rate"] == {"pixel": memo["pixel"]["copy_rate"], "feature": None}  # --extractor none
        assert cells["fd_ratio"] == pytest.approx(cells["finetune"]["fd"] / cells["scratch"]["fd"], rel=1e-3)
        # The arms differ only by the transfer: finetune loads the source with the recipe's freeze, scratch does not.
        scratch, finetune = (callbacks(out / f"n{n}" / arm / "run") for arm in ("scratch", "finetune"))
        assert FINETUNE not in [c["class_path"] for c in scratch]
        assert finetune[:-1] == scratch and finetune[-1]["class_path"] == FINETUNE
        assert finetune[-1]["init_args"]["source"] == str(out / "source" / "generator")
        subset = yaml.safe_load((out / f"n{n}" / "finetune" / "run" / "recipe.yaml").read_text(encoding="utf-8"))
        assert subset["data"]["init_args"]["subset"] == int(n) // 2

    # Resumed: finished cells are read back, not retrained or re-evaluated (files untouched, same figures).
    written = [out / "source" / "generator" / "model.safetensors", out / "n20" / "scratch" / "cell.json",
               out / "n20" / "finetune" / "run" / "generator" / "model.safetensors"]
    stamps = [path.stat().st_mtime_ns for path in written]
    again = run_tiny(out, "--images", "20")
    assert [path.stat().st_mtime_ns for path in written] == stamps
    assert set(again["results"]) == {"20"}
    assert again["results"]["20"] == record["results"]["20"]
    assert again["source"] == record["source"]
