"""`medaug demo`, the README's main job, at a tiny size: it must leave a complete run folder."""

import json

from lightning_medaug.cli import main


def test_demo_writes_metrics_config_and_plot(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--max-epochs", "1", "--subset", "0.02"]) == 0
    folder = out / "version_0"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["test/auc"] <= 1.0
    assert metrics["monitor"]["metric"] == "val/auc"
    assert (folder / "config.yaml").read_text().count("subset: 0.02") == 1
    assert (folder / "curves.png").stat().st_size > 1000
    assert "run folder" in capsys.readouterr().out
