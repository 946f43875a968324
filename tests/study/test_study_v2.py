"""The beyond-classic study: classic_best chosen on validation, arms, the bootstrap, the targets, and a tiny
grid with an edit arm run end to end through ``medaug study``."""

import json

import numpy as np
import pytest
import yaml

from lightning_medaug.cli import main
from lightning_medaug.study.arms import parse_arms
from lightning_medaug.study.bootstrap import bootstrap_interval
from lightning_medaug.study.runner import Cell
from lightning_medaug.study.selection import choose_classic, choose_variant
from lightning_medaug.study.v2 import BeyondClassicStudy
from lightning_medaug.study.v2_report import write_v2_results

TINY = {"model.init_args.backbone": "test_resnet"}
EDIT_ARM = {"augmentation": "classic-best", "mixing": {"mode": "swap", "swap_probability": 0.5},
            "bank": {"kind": "edits", "target_labels": "same", "strengths": [0.5], "edits_per_image": 1}}


def _result(val: float, test: float, **extra) -> dict:
    return {"value": test, "selection": {"metric": "val/auc", "value": val, "mode": "max"}, **extra}


def test_classic_best_is_chosen_on_validation_only():
    candidates = ["classic", "trivialaugment", "mixup"]
    # mixup is best on test, trivialaugment on validation: validation decides
    runs = {"classic": _result(0.90, 0.93), "trivialaugment": _result(0.95, 0.91), "mixup": _result(0.94, 0.99)}
    assert choose_classic(candidates, runs) == "trivialaugment"
    # equal to 3 decimals: the earlier name
    runs["classic"] = _result(0.9504, 0.5)
    assert choose_classic(candidates, runs) == "classic"
    with pytest.raises(ValueError, match="missing"):
        choose_classic(candidates, {"classic": runs["classic"]})
    # a variant is chosen among those finished on the most seeds, by mean validation score
    variants = {"s0.25": [_result(0.99, 0.5)], "s0.5": [_result(0.9, 0.9), _result(0.92, 0.9)], "s0.75": []}
    assert choose_variant(variants) == "s0.5"


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    diffs = [0.01, 0.02, -0.005, 0.015, 0.03]
    low, high = bootstrap_interval(diffs, seed=0)
    assert low < np.mean(diffs) < high and (low, high) == bootstrap_interval(diffs, seed=0)
    assert low >= min(diffs) and high <= max(diffs)
    wide = bootstrap_interval([0.1, -0.1, 0.1, -0.1, 0.1], seed=0)
    assert wide[1] - wide[0] > high - low
    assert bootstrap_interval([0.02]) == (pytest.approx(0.02), pytest.approx(0.02))
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval([])


def test_arms_expand_into_variants_and_refuse_what_cannot_run():
    arms = parse_arms({"real": {"augmentation": "none"}, "classic_best": {"augmentation": "classic-best"},
                       "scratch": {"augmentation": "classic-best", "bank": {"kind": "samples"},
                                   "mixing": {"mode": "add", "ratios": [0.25, 0.5]}},
                       "swap": {**EDIT_ARM, "bank": {**EDIT_ARM["bank"], "strengths": [0.25, 0.5]}},
                       "curriculum": {"augmentation": "classic-best", "bank": {"kind": "samples"},
                                      "schedule": {"synthetic_only_until": 0.3, "then": "real"}}})
    assert [a.name for a in arms] == ["real", "classic_best", "scratch_r0.25", "scratch_r0.5", "swap_s0.25",
                                      "swap_s0.5", "curriculum"]
    assert arms[4].mode == "swap" and arms[4].ratio == 0.5 and arms[-1].mode == "replace"
    for bad, match in [({"augmentation": "autoaugment"}, "augmentation"),
                       ({**EDIT_ARM, "mixing": {"mode": "swap", "swap_probability": 0.5}, "bank": {"kind": "samples"}},
                        "bank of edits"),
                       ({**EDIT_ARM, "labels": "soft"}, "soft labels"),
                       ({**EDIT_ARM, "bank": {**EDIT_ARM["bank"], "strengths": [1.5]}}, "strengths")]:
        with pytest.raises(ValueError, match=match):
            parse_arms({"x": bad})


def test_the_report_marks_targets_met_missed_and_open(tmp_path):
    arms = {"real": {"augmentation": "none"}, "classic_best": {"augmentation": "classic-best"},
            "swap": EDIT_ARM, "other": {**EDIT_ARM, "bank": {**EDIT_ARM["bank"], "target_labels": "other"}}}
    study = BeyondClassicStudy("classify_pneumonia.yaml", out=str(tmp_path), fractions=[0.05, 0.1],
                               seeds={0.05: [0, 1, 2, 3, 4], 0.1: [0, 1, 2, 3, 4]}, epochs=1,
                               classic_candidates=["classic", "mixup"], generator={"recipe": "ddpm_pneumonia.yaml"},
                               arms=arms, targets={"over_classic_best": 0.01, "min_positive_seeds": {0.05: 4, 0.1: 4}})
    gains = {"swap": [0.02, 0.03, 0.01, 0.02, -0.01], "other": [0.03, -0.01, -0.02, 0.04, 0.02]}
    for fraction, seeds in ((0.05, range(5)), (0.1, range(3))):  # 0.1 is unfinished: its target stays open
        for seed in seeds:
            base = 0.90 + 0.01 * seed
            values = {"real": base - 0.05, "classic": base, "mixup": base - 0.01,
                      **{arm: base + gains[arm][seed] for arm in gains}}
            for arm, value in values.items():
                cell = Cell(fraction, seed, arm)
                study.cell_folder(cell).mkdir(parents=True)
                (study.cell_folder(cell) / "result.json").write_text(json.dumps(
                    {"fraction": fraction, "seed": seed, "arm": arm, "generator": None, "ratio": 0.5, "cell": cell.name,
                     "value": value, "test": {"test/auc": value}, "seconds": 1.0, "steps": 4, "step_budget": 4,
                     "augmentation": arm, "selection": {"metric": "val/auc", "value": value, "mode": "max"}}))
    results = json.loads(write_v2_results(study)["json"].read_text())
    marks = {(c["family"], c["fraction"]): c["variants"][0]["target"] for c in results["comparisons"]}
    assert marks == {("swap", 0.05): "met", ("other", 0.05): "missed", ("swap", 0.1): "open", ("other", 0.1): "open"}
    swap = next(c for c in results["comparisons"] if c["family"] == "swap" and c["fraction"] == 0.05)["variants"][0]
    assert swap["delta"] == pytest.approx(np.mean(gains["swap"])) and swap["wins"] == 4
    assert all(r["augmentation"] == "classic" for r in results["cells"] if r["arm"] == "classic_best")
    report = (tmp_path / "report.md").read_text()
    assert "fraction 0.1, seed 3: real, classic, mixup, swap, other" in report  # missing cells are named


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_grid_with_an_edit_arm_runs_end_to_end(tmp_path, capsys):
    config = {"task": "classify_pneumonia.yaml", "out": str(tmp_path / "study"), "fractions": [0.02], "seeds": [0],
              "epochs": 1, "classic_candidates": ["classic", "mixup"], "overrides": TINY,
              "selection": {"metric": "val/auc"},
              "generator": {"recipe": "ddpm_pneumonia.yaml", "epochs": 1,
                            "overrides": {"trainer.callbacks.1.init_args.every_n_epochs": 10},
                            "sample_kwargs": {"num_inference_steps": 2}},
              "arms": {"real": {"augmentation": "none"}, "classic_best": {"augmentation": "classic-best"},
                       "dafusion_swap": EDIT_ARM,
                       "dafusion_selected": {**EDIT_ARM, "selection": {  # the same bank, half of it kept
                           "keep_fraction": 0.5, "folds": 2, "proxy": {"backbone": "test_resnet", "epochs": 1}}}}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["study", "--config", str(path), "--prepare"]) == 0  # the generator and its bank, no cell
    assert "bank: " in capsys.readouterr().out and not (tmp_path / "study" / "cells").exists()
    assert main(["study", "--config", str(path)]) == 0
    results = json.loads((tmp_path / "study" / "results.json").read_text())
    cells = {r["arm"]: r for r in results["cells"]}
    assert set(cells) == {"real", "classic", "mixup", "classic_best", "dafusion_swap", "dafusion_selected"}
    assert results["complete"]
    chosen = max(("classic", "mixup"), key=lambda c: round(cells[c]["selection"]["value"], 3))  # earlier on ties
    assert cells["classic_best"]["augmentation"] == cells["dafusion_swap"]["augmentation"] == chosen
    assert len({r["steps"] for r in results["cells"]}) == 1  # every arm the same optimiser steps
    bank = tmp_path / "study" / cells["dafusion_swap"]["bank"]
    record = json.loads((bank / "bank.json").read_text())
    assert record["settings"]["edit"]["strength"] == 0.5 and record["settings"]["edit"]["target_labels"] == "same"
    assert (bank.parent / f"{bank.name}.png").is_file()
    # the selected arm scored the shared bank once and read only the kept half of it
    assert cells["dafusion_selected"]["bank"] == cells["dafusion_swap"]["bank"]
    assert cells["dafusion_selected"]["selection_rule"]["keep_fraction"] == 0.5
    assert cells["dafusion_swap"]["selection_rule"] is None
    scored = json.loads((bank / "selection.json").read_text())
    assert scored["rule"]["keep_fraction"] == 0.5 and scored["proxies"]["folds"] == 2
    assert 0 < scored["kept"] < scored["num_samples"]
    recipes = {arm: yaml.safe_load((tmp_path / "study" / "cells" / f"{arm}_f0.02_s0" / "run" / "recipe.yaml")
                                   .read_text())["data"]["init_args"] for arm in ("dafusion_swap", "dafusion_selected")}
    assert recipes["dafusion_selected"]["min_score"] == 1.0 and recipes["dafusion_swap"].get("min_score") is None
    assert sorted(c["family"] for c in results["comparisons"]) == ["dafusion_selected", "dafusion_swap"]
    capsys.readouterr()
    assert main(["study", "--config", str(path), "--list"]) == 0  # a rerun skips every finished cell
    assert capsys.readouterr().out.split()[::2] == ["done"] * 5


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_segmentation_grid_edits_images_and_keeps_their_masks(tmp_path):
    from lightning_medaug.bank import SyntheticBank
    from lightning_medaug.bank.edits import load_training_set

    small = {"data.init_args.image_size": 64, "data.init_args.batch_size": 4}
    study = BeyondClassicStudy(
        "segment_isbi.yaml", out=str(tmp_path), metric="test/dice", fractions=[0.25], seeds=[0], epochs=1,
        classic_candidates=["classic", "classic_distort"], selection={"metric": "val/dice"}, overrides=small,
        generator={"recipe": "ddpm_isbi_mask.yaml", "epochs": 1, "sample_kwargs": {"num_inference_steps": 2},
                   "overrides": {**small, "model.init_args.image_size": 64, "model.init_args.channels": [8, 8],
                                 "model.init_args.norm_num_groups": 8,
                                 "trainer.callbacks.1.init_args.every_n_epochs": 10}},
        arms={"real": {"augmentation": "none"}, "classic_best": {"augmentation": "classic-best"},
              "dafusion_swap": EDIT_ARM})
    results = {r["arm"]: r for r in study.run()}
    assert set(results) == {"real", "classic", "classic_distort", "classic_best", "dafusion_swap"}
    assert results["dafusion_swap"]["augmentation"] in ("classic", "classic_distort")
    assert len({r["steps"] for r in results.values()}) == 1
    config = (tmp_path / "cells" / "classic_distort_f0.25_s0" / "run" / "config.yaml").read_text(encoding="utf-8")
    assert "distort_prob: 0.5" in config
    bank = SyntheticBank(tmp_path / results["dafusion_swap"]["bank"])
    parents, _ = load_training_set(tmp_path / "cells" / "real_f0.25_s0" / "run" / "recipe.yaml")  # its subset
    assert len(bank) == len(parents) == 5 and bank.has_masks
    for i in range(len(bank)):  # the edit keeps its parent's mask, and its image is a new one
        parent = parents[int(bank.column("parent_index")[i])]
        assert torch_equal(bank[i]["mask"], parent["mask"].float())
        assert (bank[i]["image"] - parent["image"]).abs().mean() > 1e-3
    folder = tmp_path / results["dafusion_swap"]["bank"]
    assert (folder.parent / f"{folder.name}.png").is_file()


def torch_equal(a, b) -> bool:
    return bool((a.reshape(b.shape) == b).all())


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_latent_diffusion_generator_is_trained_on_the_autoencoder_of_its_own_subset(tmp_path):
    import yaml

    from lightning_medaug.bank import SyntheticBank
    from lightning_medaug.bank.edits import load_training_set

    small = {"data.init_args.image_size": 32, "data.init_args.batch_size": 4}
    tiny = {"model.init_args.channels": [8, 8], "model.init_args.norm_num_groups": 8}
    study = BeyondClassicStudy(
        "segment_isbi.yaml", out=str(tmp_path), metric="test/dice", fractions=[0.25], seeds=[1], epochs=1,
        classic_candidates=["classic"], selection={"metric": "val/dice"}, overrides=small,
        stages={"autoencoder": {"recipe": "autoencoder_isbi_256.yaml", "epochs": 1, "overrides": {
            **small, **tiny, "model.init_args.image_size": 32, "model.init_args.patch_size": 16}}},
        generator={"recipe": "ldm_isbi_256.yaml", "epochs": 1, "sample_kwargs": {"num_inference_steps": 2},
                   "inputs_from": {"model.init_args.autoencoder_path": "autoencoder"},
                   "overrides": {**small, **tiny, "trainer.callbacks.1.init_args.every_n_epochs": 10}},
        arms={"classic_best": {"augmentation": "classic-best"},
              "pairs": {**EDIT_ARM, "bank": {"kind": "edits", "target_labels": "same", "strengths": [1.0],
                                             "edits_per_image": 1}}})
    [folder] = study.prepare()
    runs = {name: study.base.generator_folder(name, 0.25, 1) / "run" for name in ("autoencoder", "ldm")}
    recipes = {name: yaml.safe_load((run / "recipe.yaml").read_text(encoding="utf-8")) for name, run in runs.items()}
    assert recipes["ldm"]["model"]["init_args"]["autoencoder_path"] == str(runs["autoencoder"] / "generator")
    subsets = [{k: r["data"]["init_args"][k] for k in ("subset", "subset_seed")} for r in recipes.values()]
    assert subsets[0] == subsets[1] == {"subset": 0.25, "subset_seed": 1}
    bank, (parents, _) = SyntheticBank(folder), load_training_set(runs["ldm"] / "recipe.yaml")
    assert len(bank) == len(parents) == 5 and bank.has_masks  # one image drawn for each real mask
    for i in range(len(bank)):
        assert torch_equal(bank[i]["mask"], parents[int(bank.column("parent_index")[i])]["mask"].float())
        assert bank[i]["image"].shape == (1, 32, 32)


@pytest.mark.parametrize("generators,match", [
    ({"ldm": {"recipe": "ldm_isbi_256.yaml", "inputs_from": {"model.init_args.autoencoder_path": "ae"}}},
     "inputs_from.model.init_args.autoencoder_path must name another entry"),
    ({"ldm": {"recipe": "ldm_isbi_256.yaml", "inputs_from": ["ae"]}}, "inputs_from must map recipe keys"),
    ({"a": {"recipe": "ldm_isbi_256.yaml", "inputs_from": {"model.init_args.autoencoder_path": "b"}},
      "b": {"recipe": "autoencoder_isbi_256.yaml", "inputs_from": {"model.init_args.x": "a"}}},
     "generators need each other in a cycle: a -> b -> a"),
])
def test_bad_inputs_from_entries_are_refused(generators, match):
    from lightning_medaug.study.generators import parse_generators

    with pytest.raises(ValueError, match=match):
        parse_generators(generators, classic_augmentation=False)


def test_a_stage_needs_a_recipe():
    with pytest.raises(ValueError, match="stage 'autoencoder' needs a 'recipe'"):
        BeyondClassicStudy("segment_isbi.yaml", metric="test/dice", classic_candidates=["classic"],
                           stages={"autoencoder": {"epochs": 1}}, generator={"recipe": "ldm_isbi_256.yaml"})
