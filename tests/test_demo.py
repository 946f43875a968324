"""`medaug demo`, the README's main job, at a tiny size: generator -> bank -> four classifiers -> report."""

import contextlib
import csv
import io
import json
from pathlib import Path

import pytest

from lightning_medaug.cli import main
from lightning_medaug.demo_reference import CAVEAT, REFERENCE_FILE, load_reference

STUDY = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "study_pneumonia"
NUM_REAL = 236  # 5% of PneumoniaMNIST's 4708 training images, stratified
STEPS = 3
ARMS = {"real", "classic", "mix_cgan_r0.5", "classic_mix_cgan_r0.5"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["demo", "--out", str(out), "--subset", "0.05", "--generator-epochs", "1", "--steps", str(STEPS)])
    return code, out / "version_0", printed.getvalue()


def _metrics(run: Path, cell: str) -> dict:
    return json.loads((run / "cells" / cell / "run" / "metrics.json").read_text(encoding="utf-8"))


def test_demo_runs_every_arm_with_classic_augmentation_by_default(demo_run):
    code, run, _ = demo_run
    assert code == 0
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    assert results["complete"] is True
    arms = {cell["arm"]: cell for cell in results["cells"]}
    assert set(arms) == ARMS
    for cell in arms.values():
        folder = run / "cells" / cell["cell"] / "run"
        metrics = _metrics(run, cell["cell"])
        assert metrics["monitor"]["metric"] == "val/auc"
        # the cell's figure is its run's test AUC, of the checkpoint with the best val/auc
        assert cell["value"] == cell["test"]["test/auc"] == metrics["test"]["test/auc"]
        best = max(metrics["history"], key=lambda row: row["val/auc"])
        assert cell["selection"]["value"] == best["val/auc"] and cell["selection"]["epoch"] == best["epoch"]
        assert (folder / "curves.png").stat().st_size > 1000
        assert list(folder.rglob("*.ckpt"))  # the demo keeps its classifiers (a study deletes them)

    def config(cell):
        return (run / "cells" / cell / "run" / "config.yaml").read_text(encoding="utf-8")

    # the mixed arms really trained on the bank, the classic arms through the augmentation; real on neither
    for arm in ARMS:
        text = config(f"{arm}_f0.05_s0")
        assert ("SyntheticMixDataModule" in text) == ("mix" in arm), arm
        assert ("ClassicAugmentation" in text) == arm.startswith("classic"), arm


def test_every_arm_gets_the_same_optimiser_steps(demo_run):
    """An add-mode mixed epoch has twice the batches of a real one: the arms match in steps, not epochs."""
    _, run, _ = demo_run
    fits = {arm: _metrics(run, f"{arm}_f0.05_s0")["fit"] for arm in ARMS}
    assert {fit["global_step"] for fit in fits.values()} == {STEPS}
    # 236 real images in batches of 128 are 2 batches an epoch, 472 real + synthetic are 4
    assert fits["real"]["epochs"] > fits["mix_cgan_r0.5"]["epochs"]


def test_demo_bank_traces_to_the_generator_trained_on_the_same_subset(demo_run):
    _, run, _ = demo_run
    generator = run / "generators" / "cgan_f0.05_s0"
    assert (generator / "run" / "generator" / "model.safetensors").is_file()
    assert "subset: 0.05" in (generator / "run" / "config.yaml").read_text(encoding="utf-8")
    with open(generator / "bank" / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * NUM_REAL  # bank_factor 2 x one epoch's synthetic share at ratio 0.5
    labels = [int(r["label"]) for r in rows]
    assert 0.15 < labels.count(0) / len(labels) < 0.4  # the real subset's share of "normal" (26%)


def test_demo_report_has_table_plots_and_sample_grids(demo_run):
    _, run, _ = demo_run
    text = (run / "report.md").read_text(encoding="utf-8")
    assert "| 0.05 | real |" in text and "| 0.05 | classic_mix_cgan_r0.5 |" in text
    assert (run / "metric_vs_fraction.png").stat().st_size > 1000
    for name in ("real.png", "samples.png"):
        assert (run / "generators" / "cgan_f0.05_s0" / name).stat().st_size > 500
        assert f"generators/cgan_f0.05_s0/{name}" in text
    html = (run / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") >= 4  # plots and both sample grids inlined: no files needed


def test_demo_shows_the_committed_study_beside_its_own_figures(demo_run):
    _, run, printed = demo_run
    results = {c["arm"]: c for c in json.loads((run / "results.json").read_text(encoding="utf-8"))["cells"]}
    text = (run / "report.md").read_text(encoding="utf-8")
    assert text.index("The demo beside the study") < text.index("## Results")  # the report opens with it
    assert CAVEAT in text and f"same {STEPS} optimiser steps" in text
    assert f"Downstream training: {STEPS} optimiser steps per cell" in text  # not the recipe's epochs
    # the study at 5%: real 0.8420 +- 0.0322, classic 0.9317 +- 0.0083, classic + cGAN 0.9373 +- 0.0115 (5 seeds)
    for arm, study in (("real", "0.8420 +- 0.0322 (5 seeds)"), ("classic", "0.9317 +- 0.0083 (5 seeds)"),
                       ("classic_mix_cgan_r0.5", "0.9373 +- 0.0115 (5 seeds)")):
        assert f"| 0.05 | {arm} | {results[arm]['value']:.4f} | {study} |" in text
    assert " ".join(CAVEAT.split()) in " ".join(printed.split())  # the printed table comes with the sentence too
    assert "0.8420" in printed and "0.9373" in printed  # the study's real and classic + cGAN figures
    assert "classic_mix_cgan_r0.5" in printed  # arm names are never cut


def test_shipped_study_figures_match_the_committed_study():
    """``demo_reference.json`` (inside the package, so an installed demo has it) copies results.csv."""
    assert REFERENCE_FILE.parent.name == "lightning_medaug"
    reference = load_reference()
    with open(STUDY / "results.csv", newline="", encoding="utf-8") as fh:
        committed = {(float(r["fraction"]), r["arm"]): r for r in csv.DictReader(fh)}
    shipped = [(float(f), arm, figure) for f, arms in reference["fractions"].items() for arm, figure in arms.items()]
    assert len(shipped) == 28  # real, classic, 3 mix and 2 classic_mix cGAN arms at 4 fractions
    for fraction, arm, figure in shipped:
        row = committed[(fraction, arm)]
        assert figure["mean"] == round(float(row["mean"]), 4), (fraction, arm)
        assert figure["std"] == round(float(row["std"]), 4), (fraction, arm)
        assert figure["seeds"] == int(row["seeds"]), (fraction, arm)
    settings = json.loads((STUDY / "results.json").read_text(encoding="utf-8"))["settings"]
    assert reference["classifier_epochs"] == settings["epochs"]


def test_demo_rejects_bad_arguments(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--ratio", "1.5"]) == 2
    assert "--ratio must be in (0, 1)" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written
