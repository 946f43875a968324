"""Every recipe in recipes/ parses into real classes (a typo in a recipe fails here, not for a user)."""

from pathlib import Path

import pytest
import yaml

from lightning_medaug.cli import main

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
TRAINER_RECIPES = [r for r in RECIPES if "trainer" in yaml.safe_load(r.read_text(encoding="utf-8"))]


def test_there_are_recipes():
    names = {r.stem for r in RECIPES}
    assert {"classify_pneumonia", "segment_isbi", "classify_phantom3d"} <= names


@pytest.mark.parametrize("recipe", TRAINER_RECIPES, ids=lambda p: p.stem)
def test_recipe_parses(recipe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(recipe), "--print_config"])
    assert exit_info.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["class_path"].startswith("lightning_medaug.")
    assert resolved["data"]["class_path"].startswith("lightning_medaug.")


@pytest.mark.parametrize("name, overrides", [
    ("segment_isbi", ["--data.init_args.image_size", "64", "--data.init_args.batch_size", "2"]),
    ("classify_phantom3d", ["--data.init_args.image_size", "16", "--data.init_args.num_train", "8",
                            "--data.init_args.num_val", "4", "--data.init_args.num_test", "4"]),
])
def test_task_recipe_runs_one_batch(name, overrides, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = Path(__file__).resolve().parents[1] / "recipes" / f"{name}.yaml"
    assert main(["fit", "--config", str(recipe), "--trainer.fast_dev_run", "1", *overrides]) == 0


STUDY_RECIPES = [r for r in RECIPES if r.stem.startswith("study_")]


def _beyond_classic_cells(config):
    """Runs per fraction and seed: every classic candidate and every strength x ratio of every arm, except
    classic_best alone (the chosen candidate's own run)."""
    cells = len(config["classic_candidates"])
    for entry in config["arms"].values():
        bank, mixing = entry.get("bank") or {}, entry.get("mixing") or {}
        if not bank:
            cells += entry["augmentation"] != "classic-best"
            continue
        ratios = mixing.get("ratios") or [mixing.get("swap_probability", 1)]
        cells += len(bank.get("strengths") or [None]) * len(ratios)
    return cells


@pytest.mark.parametrize("recipe", STUDY_RECIPES, ids=lambda p: p.stem)
def test_study_recipe_builds_its_grid(recipe, capsys):
    assert main(["study", "--config", str(recipe), "--list"]) == 0
    cells = capsys.readouterr().out.split()[1::2]
    config = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    combined = config.get("classic_with_synthetic") or []
    combined = config.get("ratios", []) if combined is True else combined
    seeds = config["seeds"]
    expected = 0
    for fraction in config["fractions"]:
        if "arms" in config:  # a beyond-classic study: the candidates, then every variant of every arm
            expected += len(seeds[fraction] if isinstance(seeds, dict) else seeds) * _beyond_classic_cells(config)
            continue
        per_seed = 1 + bool(config.get("classic_augmentation"))
        for entry in config.get("generators", {}).values():  # an entry's own arm settings replace the study's
            own = {k: entry.get(k, default) for k, default in (("fractions", config["fractions"]),
                   ("ratios", config.get("ratios", [])), ("synthetic_only", config.get("synthetic_only")),
                   ("classic_with_synthetic", combined))}
            if fraction in own["fractions"]:
                per_seed += len(own["ratios"]) + bool(own["synthetic_only"]) + len(own["classic_with_synthetic"])
        expected += len(seeds[fraction] if isinstance(seeds, dict) else seeds) * per_seed
    assert len(cells) == expected
    # a slice of the study (one fraction) lists exactly that fraction's part of the grid
    for fraction in config["fractions"]:
        assert main(["study", "--config", str(recipe), "--fractions", f"[{fraction}]", "--list"]) == 0
        sliced = capsys.readouterr().out.split()[1::2]
        assert sliced == [c for c in cells if f"_f{fraction:g}_" in c]


@pytest.mark.parametrize("recipe", TRAINER_RECIPES, ids=lambda p: p.stem)
def test_checkpointing_recipes_can_resume(recipe):
    """save_last only copies a checkpoint that was saved: with save_top_k=0 no last.ckpt is ever written."""
    for callback in yaml.safe_load(recipe.read_text(encoding="utf-8"))["trainer"].get("callbacks") or []:
        if callback["class_path"].endswith("ModelCheckpoint"):
            args = callback.get("init_args") or {}
            assert args.get("save_top_k", 1) != 0, f"{recipe.name}: save_top_k=0 saves nothing to resume from"
