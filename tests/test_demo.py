"""`medaug demo`, the README's main job, at a tiny size: generator -> bank -> two classifiers -> report."""

import csv
import json

import pytest

from lightning_medaug.cli import main

NUM_REAL = 94  # 2% of PneumoniaMNIST's 4708 training images, stratified


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--out", str(out), "--subset", "0.02", "--generator-epochs", "1", "--epochs", "1"])
    return code, out / "version_0"


def test_demo_runs_real_only_and_mixed_arms(demo_run):
    code, run = demo_run
    assert code == 0
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    assert results["complete"] is True
    arms = {cell["arm"]: cell for cell in results["cells"]}
    assert set(arms) == {"real", "mix_cgan_r0.5"}
    for cell in arms.values():
        assert 0.0 <= cell["test"]["test/auc"] <= 1.0
        folder = run / "cells" / cell["cell"] / "run"
        assert json.loads((folder / "metrics.json").read_text(encoding="utf-8"))["monitor"]["metric"] == "val/auc"
        assert (folder / "curves.png").stat().st_size > 1000
        assert list(folder.rglob("*.ckpt"))  # the demo keeps its classifiers (a study deletes them)
    # the mixed arm really trained on the bank; the real-only arm did not
    def config(cell):
        return (run / "cells" / cell / "run" / "config.yaml").read_text(encoding="utf-8")

    assert "SyntheticMixDataModule" in config("mix_cgan_r0.5_f0.02_s0")
    assert "SyntheticMixDataModule" not in config("real_f0.02_s0")


def test_demo_bank_traces_to_the_generator_trained_on_the_same_subset(demo_run):
    _, run = demo_run
    generator = run / "generators" / "cgan_f0.02_s0"
    assert (generator / "run" / "generator" / "model.safetensors").is_file()
    assert "subset: 0.02" in (generator / "run" / "config.yaml").read_text(encoding="utf-8")
    with open(generator / "bank" / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * NUM_REAL  # bank_factor 2 x one epoch's synthetic share at ratio 0.5
    labels = [int(r["label"]) for r in rows]
    assert 0.15 < labels.count(0) / len(labels) < 0.4  # the real subset's share of "normal" (26%)


def test_demo_report_has_table_plots_and_sample_grids(demo_run):
    _, run = demo_run
    text = (run / "report.md").read_text(encoding="utf-8")
    assert "| 0.02 | real |" in text and "| 0.02 | mix_cgan_r0.5 |" in text
    assert (run / "metric_vs_fraction.png").stat().st_size > 1000
    for name in ("real.png", "samples.png"):
        assert (run / "generators" / "cgan_f0.02_s0" / name).stat().st_size > 500
        assert f"generators/cgan_f0.02_s0/{name}" in text
    html = (run / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") >= 4  # plots and both sample grids inlined: no files needed


def test_demo_rejects_bad_arguments(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--ratio", "1.5"]) == 2
    assert "--ratio must be in (0, 1)" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written
