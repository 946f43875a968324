"""The study runner: recipe variants, the grid, resuming, results; the full pipeline runs in test_demo."""

import json
import warnings

import pytest

from lightning_medaug.cli import MedaugCLI, main
from lightning_medaug.study import (
    Study,
    load_recipe,
    summarize,
    with_classic_augmentation,
    with_mixing,
    with_subset,
    write_results,
)
from lightning_medaug.study.recipe import real_data
from lightning_medaug.study.results import compare_arms

GENERATORS = {"cgan": {"recipe": "cgan_pneumonia.yaml", "epochs": 1}}


def test_recipe_variants_parse_and_keep_the_original(tmp_path):
    base = load_recipe("classify_pneumonia.yaml")
    config = with_mixing(with_classic_augmentation(with_subset(base, 0.1, 3)), tmp_path / "bank", 0.25, seed=3)
    assert "subset" not in base["data"]["init_args"]  # copies, not edits
    assert config["data"]["class_path"].endswith("SyntheticMixDataModule")
    inner = real_data(config)
    assert inner["subset"] == 0.1 and inner["subset_seed"] == 3
    assert inner["train_transforms"]["class_path"].endswith("ClassicAugmentation")
    assert real_data(with_subset(base, 1.0, 0))["subset"] is None  # all of train
    (tmp_path / "recipe.yaml").write_text(__import__("yaml").safe_dump(with_subset(base, 0.1, 3)))
    cli = MedaugCLI(args=["--config", str(tmp_path / "recipe.yaml")], run=False)
    assert cli.datamodule.hparams.subset == 0.1 and cli.datamodule.hparams.subset_seed == 3


def test_epochs_per_fraction():
    study = Study("classify_pneumonia.yaml", fractions=[0.05, 1.0], epochs={0.05: 60, 1: 10})
    assert study.epochs_for(0.05) == 60 and study.epochs_for(1.0) == 10


def test_grid_names_and_order():
    study = Study("classify_pneumonia.yaml", fractions=[0.05, 1.0], seeds=[0, 1], generators=GENERATORS,
                  ratios=[0.25, 0.5])
    names = [c.name for c in study.cells()]
    assert len(names) == len(set(names)) == 2 * 2 * (1 + 1 + 2 + 1)
    assert names[:5] == ["real_f0.05_s0", "classic_f0.05_s0", "mix_cgan_r0.25_f0.05_s0", "mix_cgan_r0.5_f0.05_s0",
                         "tstr_cgan_f0.05_s0"]


def test_seeds_per_fraction_and_entries_on_a_slice_of_the_study(capsys):
    generators = {**GENERATORS, "cgan_big": {"weights_from": "cgan", "fractions": [0.05, 0.25], "ratios": [0.5],
                                             "synthetic_only": False}}
    study = Study("classify_pneumonia.yaml", fractions=[0.05, 1.0], seeds={0.05: [0, 1, 2], 1: [7]},
                  generators=generators, ratios=[0.5], classic_augmentation=False)
    assert study.seeds_for(0.05) == [0, 1, 2] and study.seeds_for(1.0) == [7]
    names = [c.name for c in study.cells()]
    assert {n.rsplit("_", 1)[1] for n in names if "_f1_" in n} == {"s7"}
    assert sum("_f0.05_" in n for n in names) == 3 * 4  # real, mix, tstr, the entry's one arm
    assert [n for n in names if "cgan_big" in n] == [f"mix_cgan_big_r0.5_f0.05_s{s}" for s in range(3)]
    assert "0.25" in capsys.readouterr().err  # the entry's fraction this study does not run is named
    sliced = Study("classify_pneumonia.yaml", fractions=[1.0], seeds=[0], generators=generators, ratios=[0.5],
                   classic_augmentation=False)  # a slice without the entry's fractions: no arms of it
    assert not [c for c in sliced.cells() if c.generator == "cgan_big"]


@pytest.mark.parametrize("kwargs,match", [
    ({"fractions": [0.0]}, "fractions"),
    ({"fractions": [1.5]}, "fractions"),
    ({"seeds": []}, "seeds"),
    ({"ratios": [1.0]}, "ratios"),
    ({"bank_factor": 0}, "bank_factor"),
    ({"epochs": 0}, "at least 1"),
    ({"fractions": [0.1, 0.5], "seeds": {0.1: [0]}}, "seeds has no entry for fraction 0.5"),
    ({"fractions": [0.1], "seeds": {0.1: []}}, "seeds must not be empty"),
    ({"fractions": [0.1, 0.5], "epochs": {0.1: 30}}, "no entry for fraction 0.5"),
    ({"generators": {"x": {"epochs": 3}}}, "needs a 'recipe'"),
    ({"generators": {"x": {"recipe": "cgan_pneumonia.yaml", "epoch": 3}}}, "unknown keys"),
    ({"generators": {"x": {"recipe": "no_such_recipe.yaml"}}}, "not found"),
    ({"generators": {"x": {"recipe": "cgan_pneumonia.yaml", "epochs": {0.5: 3}}}}, "generators.x.epochs"),
])
def test_bad_study_arguments(kwargs, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        Study("classify_pneumonia.yaml", **kwargs)


def test_finished_cells_are_skipped_and_broken_ones_rerun(tmp_path):
    study = Study("classify_pneumonia.yaml", out=str(tmp_path), fractions=[0.02], seeds=[0], epochs=1,
                  classic_augmentation=True, keep_checkpoints=True)
    cells = study.cells()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.run(max_cells=1)  # only the first cell
    # the run folder held only the cell's recipe: no "log files will be deleted" alarm
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]
    first = study.cell_folder(cells[0]) / "result.json"
    assert first.is_file() and not study.is_done(cells[1])
    assert list((first.parent / "run").rglob("*.ckpt"))  # kept when asked
    stamp = first.stat().st_mtime_ns
    leftover = study.cell_folder(cells[1]) / "run" / "stale.txt"  # an interrupted attempt
    leftover.parent.mkdir(parents=True)
    leftover.write_text("x")
    results = study.run()
    assert first.stat().st_mtime_ns == stamp  # not rerun
    assert not leftover.exists() and study.is_done(cells[1])
    assert {r["arm"] for r in results} == {"real", "classic"}
    saved = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert saved["complete"] and len(saved["summary"]) == 2
    assert "| 0.02 | classic |" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_cli_lists_cells(tmp_path, capsys):
    config = tmp_path / "study.yaml"
    config.write_text(f"task: classify_pneumonia.yaml\nout: {tmp_path / 'out'}\nfractions: [0.1]\nseeds: [0, 1]\n"
                      "classic_augmentation: false\n")
    assert main(["study", "--config", str(config), "--list"]) == 0
    assert capsys.readouterr().out.split() == ["todo", "real_f0.1_s0", "todo", "real_f0.1_s1"]
    assert main(["study", "--config", str(config), "--fractions", "[2]"]) == 2
    assert "fractions" in capsys.readouterr().err


def test_results_summary_and_files(tmp_path):
    study = Study("classify_pneumonia.yaml", out=str(tmp_path), fractions=[0.1, 1.0], seeds=[0, 1],
                  generators=GENERATORS, ratios=[0.5], synthetic_only=False, classic_augmentation=False)
    results = []
    for cell in study.cells():
        value = 0.8 + 0.1 * cell.fraction + (0.02 if cell.generator else 0) + 0.01 * cell.seed
        results.append({"fraction": cell.fraction, "seed": cell.seed, "arm": cell.arm, "generator": cell.generator,
                        "ratio": cell.ratio, "value": value, "seconds": 60.0,
                        "test": {"test/auc": value, "test/acc": value - 0.1, "test/loss": 1 - value}})
    rows = summarize(results)
    mixed = next(r for r in rows if r["fraction"] == 0.1 and r["arm"] == "mix_cgan_r0.5")
    assert mixed["mean"] == pytest.approx(0.835) and mixed["std"] == pytest.approx(0.00707, abs=1e-4)
    assert mixed["seeds"] == 2 and mixed["minutes"] == pytest.approx(2.0)
    assert mixed["metrics"]["test/acc"] == (pytest.approx(0.735), pytest.approx(0.00707, abs=1e-4))
    files = write_results(study, results)
    csv_lines = files["csv"].read_text(encoding="utf-8").splitlines()
    assert len(csv_lines) == 1 + 4 and csv_lines[0].endswith("test/acc mean,test/acc std,test/loss mean,test/loss std")
    assert csv_lines[-1].startswith("1.0,real,") and float(csv_lines[-1].split(",")[-4]) == pytest.approx(0.805)
    assert files["fraction_plot"].stat().st_size > 5000 and files["ratio_plot"].stat().st_size > 5000
    # the report: arms down and fractions across, the best mean per fraction starred, accuracy as well
    markdown = files["report"].read_text(encoding="utf-8")
    assert "| mix_cgan_r0.5 | 0.8350 +- 0.0071 (2) * | 0.9250 +- 0.0071 (2) * |" in markdown
    assert "| real | 0.8150 +- 0.0071 (2) | 0.9050 +- 0.0071 (2) |" in markdown
    assert "**test/acc**" in markdown and "| mix_cgan_r0.5 | 0.7350 +- 0.0071 (2) * |" in markdown
    assert "| mix_cgan_r0.5 | 0.1650 +- 0.0071 (2) * |" in markdown  # the lowest loss is the best
    assert "![test/auc vs fraction of real data](metric_vs_fraction.png)" in markdown
    html = files["html"].read_text(encoding="utf-8")
    assert files["html"].name == "report.html" and html.count("data:image/png;base64,") == 2  # both plots inlined
    assert "0.8350 +- 0.0071 (2) *" in html and "torch" in html  # versions in the subtitle


def test_segmentation_study_with_mask_conditional_pairs(tmp_path):
    small = {"data.init_args.image_size": 64, "data.init_args.batch_size": 4}
    study = Study("segment_isbi.yaml", out=str(tmp_path), metric="test/dice", fractions=[0.25], seeds=[0],
                  epochs=1, classic_augmentation=False, ratios=[0.5], synthetic_only=True, overrides=small,
                  generators={"pix2pix": {"recipe": "pix2pix_isbi.yaml", "epochs": 1, "overrides": {
                      **small, "model.init_args.image_size": 64, "model.init_args.generator_levels": 3,
                      "model.init_args.generator_channels": 8, "model.init_args.discriminator_channels": 8}}})
    results = {r["arm"]: r for r in study.run()}
    assert set(results) == {"real", "mix_pix2pix_r0.5", "tstr_pix2pix"}
    for result in results.values():  # each cell's figure is its run's test Dice
        run = json.loads((tmp_path / "cells" / result["cell"] / "run" / "metrics.json").read_text(encoding="utf-8"))
        assert result["value"] == result["test"]["test/dice"] == run["test"]["test/dice"]
    generator = tmp_path / "generators" / "pix2pix_f0.25_s0"
    bank = __import__("lightning_medaug").SyntheticBank(generator / "bank")
    assert len(bank) == 5  # 5 training images: one epoch of TSTR, and of the synthetic share at ratio 0.5
    sample = bank[0]
    assert sample["image"].shape == sample["mask"].shape == (1, 64, 64)
    assert set(sample["mask"].unique().tolist()) <= {0.0, 1.0}
    assert (generator / "samples.png").is_file()
    config = (tmp_path / "cells" / "real_f0.25_s0" / "run" / "config.yaml").read_text(encoding="utf-8")
    assert "ClassicAugmentation" not in config  # the recipe's augmentation is the 'classic' arm's, not real's
    # a later invocation at a larger ratio needs 3x the samples: a second bank, the first one untouched
    study.ratios, study.synthetic_only = [0.75], False
    assert {r["arm"] for r in study.run()} >= {"mix_pix2pix_r0.75"}
    assert len(__import__("lightning_medaug").SyntheticBank(generator / "bank_15")) == 15 and len(bank) == 5


def test_mask_layouts_are_seeded_flips_and_turns():
    from lightning_medaug.study.synthetic import mask_layouts

    masks = (__import__("torch").rand(3, 1, 8, 8) > 0.5).float()
    layouts = mask_layouts(masks, 20, seed=1)
    assert layouts.shape == (20, 1, 8, 8) and layouts.dtype == __import__("torch").uint8
    assert (layouts == mask_layouts(masks, 20, seed=1)).all()
    sums = sorted(masks.sum((1, 2, 3)).tolist())
    assert all(float(m.sum()) in sums for m in layouts)  # flips and turns keep the foreground area


def test_classic_mix_arms_and_paired_comparisons_against_targets(tmp_path):
    study = Study("classify_pneumonia.yaml", out=str(tmp_path), fractions=[0.1], seeds=[0, 1], generators=GENERATORS,
                  ratios=[0.25, 0.5], synthetic_only=False, classic_with_synthetic=[0.5],
                  targets={"over_real": 0.03, "over_classic": 0.01})
    names = [c.name for c in study.cells()]
    assert "classic_mix_cgan_r0.5_f0.1_s0" in names and "classic_mix_cgan_r0.25_f0.1_s0" not in names
    # synthetic data adds 0.04 to real-only, and only 0.005 (s0) / 0.015 (s1) on top of classic augmentation
    value = {"real": 0.80, "classic": 0.90, "mix_cgan_r0.25": 0.82, "mix_cgan_r0.5": 0.84}
    results = []
    for cell in study.cells():
        v = value.get(cell.arm, 0.905 + 0.01 * cell.seed)
        results.append({"fraction": cell.fraction, "seed": cell.seed, "arm": cell.arm, "generator": cell.generator,
                        "ratio": cell.ratio, "value": v, "seconds": 1.0, "test": {"test/auc": v}})
    over_real, over_classic = compare_arms(results, study.targets)
    # the best arm with synthetic data is the classic_mix one (0.91 mean), 0.11 above real-only
    assert over_real["best_arm"] == "classic_mix_cgan_r0.5" and over_real["met"] is True
    assert over_real["delta"] == pytest.approx(0.11) and over_real["wins"] == 2
    assert over_classic["baseline"] == "classic" and over_classic["delta"] == pytest.approx(0.01)
    assert over_classic["paired"] == {0: pytest.approx(0.005), 1: pytest.approx(0.015)} and over_classic["met"]
    report = write_results(study, results)["report"].read_text(encoding="utf-8")
    assert "Does synthetic data help?" in report and "s0: +0.0050" in report
    # a seed only the baseline finished moves its mean, not the paired difference of the seeds both have
    partial = [r for r in results if not (r["arm"] == "classic_mix_cgan_r0.5" and r["seed"] == 1)]
    partial.append({**next(r for r in results if r["arm"] == "classic"), "seed": 2, "value": 0.60})
    over_classic = compare_arms(partial, study.targets)[1]
    assert over_classic["paired"] == {0: pytest.approx(0.005)} and over_classic["delta"] == pytest.approx(0.005)
    # an arm with one lucky seed is not preferred to one measured on every seed
    lucky = [r for r in results if not (r["arm"] == "mix_cgan_r0.25" and r["seed"] == 1)]
    lucky = [{**r, "value": 0.99} if r["arm"] == "mix_cgan_r0.25" else r for r in lucky]
    over_real = compare_arms(lucky, study.targets)[0]
    assert over_real["best_arm"] == "classic_mix_cgan_r0.5" and over_real["paired"].keys() == {0, 1}
    assert compare_arms([r for r in lucky if r["seed"] == 0], study.targets)[0]["best_arm"] == "mix_cgan_r0.25"
    with pytest.raises(ValueError, match="needs classic_augmentation"):
        Study("classify_pneumonia.yaml", classic_augmentation=False, classic_with_synthetic=True)
    with pytest.raises(ValueError, match="unknown keys"):
        Study("classify_pneumonia.yaml", targets={"over_baseline": 0.01})


def test_arm_chosen_on_validation_next_to_the_best_on_test(tmp_path):
    study = Study("classify_pneumonia.yaml", out=str(tmp_path), fractions=[0.1], seeds=[0, 1], generators=GENERATORS,
                  ratios=[0.5], synthetic_only=False, classic_with_synthetic=[0.5], targets={"over_real": 0.03})
    test = {"real": 0.80, "classic": 0.90, "mix_cgan_r0.5": 0.84, "classic_mix_cgan_r0.5": 0.91}
    val = {"real": 0.95, "classic": 0.97, "mix_cgan_r0.5": 0.99, "classic_mix_cgan_r0.5": 0.98}
    results = [{"fraction": c.fraction, "seed": c.seed, "arm": c.arm, "generator": c.generator, "ratio": c.ratio,
                "value": test[c.arm], "seconds": 1.0, "test": {"test/auc": test[c.arm]},
                "selection": {"metric": "val/auc", "value": val[c.arm] - 0.01 * c.seed, "epoch": 3, "mode": "max"}}
               for c in study.cells()]
    over_real = compare_arms(results, study.targets)[0]
    # the test split prefers classic + cGAN; validation, the only split a user may look at, the cGAN mix
    assert over_real["best_arm"] == "classic_mix_cgan_r0.5" and over_real["delta"] == pytest.approx(0.11)
    chosen = over_real["chosen"]
    assert chosen["arm"] == "mix_cgan_r0.5" and chosen["validation"] == pytest.approx(0.985)
    assert chosen["delta"] == pytest.approx(0.04) and chosen["met"] and chosen["wins"] == 2
    # a loss-monitored selection: the lowest validation score wins
    as_loss = [{**r, "selection": {**r["selection"], "value": 1 - r["selection"]["value"], "mode": "min"}}
               for r in results]
    assert compare_arms(as_loss, study.targets)[0]["chosen"]["arm"] == "mix_cgan_r0.5"
    # cells that recorded no selection leave the choice out rather than guess
    assert compare_arms([{k: v for k, v in r.items() if k != "selection"} for r in results])[0]["chosen"] is None
    report = write_results(study, results)["report"].read_text(encoding="utf-8")
    assert "**arm chosen on validation (best mean validation score)**" in report
    assert "| 0.1 | mix_cgan_r0.5 | real | 0.9850 | +0.0400 |" in report


def test_finished_cells_report_their_checkpoint_selection(tmp_path):
    study = Study("classify_pneumonia.yaml", out=str(tmp_path), fractions=[0.02], seeds=[0], epochs=1,
                  classic_augmentation=False)
    (result,) = study.run()
    folder = study.cell_folder(study.cells()[0])
    assert not list(folder.rglob("*.ckpt")) and (folder / "run" / "metrics.json").is_file()  # figures kept, weights not
    selection = result["selection"]
    assert selection["metric"] == "val/auc" and selection["mode"] == "max"
    # the selected checkpoint is the epoch of highest val/auc in the run's history
    history = json.loads((folder / "run" / "metrics.json").read_text(encoding="utf-8"))["history"]
    best = max(history, key=lambda row: row["val/auc"])
    assert (selection["value"], selection["epoch"]) == (best["val/auc"], best["epoch"])
    # a result.json written before selections were recorded gets it from the run's metrics.json
    path = study.cell_folder(study.cells()[0]) / "result.json"
    path.write_text(json.dumps({k: v for k, v in result.items() if k != "selection"}), encoding="utf-8")
    assert study.result(study.cells()[0])["selection"] == selection


def test_generator_entries_narrow_their_arms_and_reuse_trained_weights():
    generators = {**GENERATORS, "cgan_big": {"weights_from": "cgan", "bank_factor": 4, "fractions": [0.05],
                                             "ratios": [], "synthetic_only": False, "classic_with_synthetic": [0.75]}}
    study = Study("classify_pneumonia.yaml", fractions=[0.05, 1.0], seeds=[0], generators=generators,
                  ratios=[0.5], classic_with_synthetic=[0.5])
    names = [c.name for c in study.cells()]
    assert [n for n in names if "cgan_big" in n] == ["classic_mix_cgan_big_r0.75_f0.05_s0"]  # 5% only, one arm
    assert "tstr_cgan_f1_s0" in names and "classic_mix_cgan_r0.5_f1_s0" in names  # the trained entry keeps the study's
    assert study.arm_settings("cgan_big")["bank_factor"] == 4 and study.arm_settings("cgan")["bank_factor"] == 1.0
    assert study.specs["cgan_big"].trained_as == "cgan" and study.specs["cgan"].trained_as == "cgan"
    # epochs only where the generator is trained: where its entry, or one reusing its weights, runs
    only_small = {"x": {"recipe": "cgan_pneumonia.yaml", "epochs": {0.05: 9}, "fractions": [0.05]}}
    Study("classify_pneumonia.yaml", fractions=[0.05, 1.0], generators=only_small)
    with pytest.raises(ValueError, match="generators.x.epochs has no entry for fraction 1"):
        Study("classify_pneumonia.yaml", fractions=[0.05, 1.0],
              generators={**only_small, "x_big": {"weights_from": "x", "fractions": [1.0]}})
    # a number in an override's key indexes a list: one callback argument, the rest of the recipe kept
    grids = {"x": {"recipe": "ddpm_pneumonia.yaml", "overrides": {"trainer.callbacks.1.init_args.every_n_epochs": 10}}}
    config = Study("classify_pneumonia.yaml", generators=grids)._generator_config("x", 0.1, 0)
    callbacks = config["trainer"]["callbacks"]
    assert callbacks[1]["class_path"].endswith("SampleGridCallback")
    assert callbacks[1]["init_args"]["every_n_epochs"] == 10
    assert callbacks[1]["init_args"]["seed"] == 0 and callbacks[2]["class_path"].endswith("ModelCheckpoint")
    grids["x"]["overrides"] = {"trainer.callbacks.9.init_args.every_n_epochs": 10}
    with pytest.raises(ValueError, match="trainer.callbacks.9"):
        Study("classify_pneumonia.yaml", generators=grids)._generator_config("x", 0.1, 0)
    with pytest.raises(ValueError, match="needs classic_augmentation"):
        Study("classify_pneumonia.yaml", classic_augmentation=False,
              generators={"x": {"recipe": "cgan_pneumonia.yaml", "classic_with_synthetic": [0.5]}})


@pytest.mark.parametrize("entry,match", [
    ({"weights_from": "nope"}, "weights_from must name another entry"),
    ({"weights_from": "cgan", "recipe": "cgan_pneumonia.yaml"}, "belong to that entry's training"),
    ({"weights_from": "cgan", "epochs": 3}, "belong to that entry's training"),
    ({"weights_from": "x"}, "weights_from must name another entry"),
    ({"recipe": "cgan_pneumonia.yaml", "fractions": [1.5]}, "non-empty values in"),
    ({"recipe": "cgan_pneumonia.yaml", "fractions": []}, "non-empty values in"),
    ({"recipe": "cgan_pneumonia.yaml", "ratios": [1.0]}, "generators.x.ratios"),
    ({"recipe": "cgan_pneumonia.yaml", "bank_factor": 0}, "generators.x.bank_factor"),
])
def test_bad_generator_entries(entry, match):
    with pytest.raises(ValueError, match=match):
        Study("classify_pneumonia.yaml", fractions=[0.1], generators={**GENERATORS, "x": entry})


def test_an_entry_with_weights_from_samples_the_trained_generator_into_its_own_bank(tmp_path):
    from lightning_medaug import SyntheticBank

    generators = {**GENERATORS, "cgan_big": {"weights_from": "cgan", "bank_factor": 3}}
    study = Study("classify_pneumonia.yaml", out=str(tmp_path), fractions=[0.02], seeds=[0], generators=generators,
                  ratios=[0.5], synthetic_only=False, classic_augmentation=False)
    big = SyntheticBank(study.bank("cgan_big", 0.02, 0))  # trains the cGAN on the way: nothing to reuse yet
    base, variant = study.generator_folder("cgan", 0.02, 0), study.generator_folder("cgan_big", 0.02, 0)
    assert (base / "run" / "generator" / "model.safetensors").is_file() and not (variant / "run").exists()
    assert not (base / "bank").exists()
    # sampled like its source, its grid is the source's: drawn once, into the source's folder
    assert (base / "samples.png").is_file() and not (variant / "samples.png").exists()
    trained = (base / "run" / "generator" / "model.safetensors").stat().st_mtime_ns
    small = SyntheticBank(study.bank("cgan", 0.02, 0))  # the trained entry's own bank: no second training
    assert (base / "run" / "generator" / "model.safetensors").stat().st_mtime_ns == trained
    assert len(big) == 3 * len(small) > 0
    record = {k: json.loads((folder / "bank" / "bank.json").read_text(encoding="utf-8"))["settings"]
              for k, folder in (("big", variant), ("small", base))}
    assert record["big"]["checkpoint_sha256"] == record["small"]["checkpoint_sha256"]  # one set of weights
    # sampled the same way as its source, its grid would repeat the source's: the report shows one
    report = write_results(study, [])["report"].read_text(encoding="utf-8")
    assert "generators/cgan_f0.02_s0/samples.png" in report and "cgan_big_f0.02_s0" not in report


@pytest.mark.parametrize("entry,match", [
    ({"recipe": "cd_pneumonia.yaml", "teacher_from": "nope"}, "teacher_from must name another entry"),
    ({"recipe": "cd_pneumonia.yaml", "teacher_from": "x"}, "teacher_from must name another entry"),
    ({"weights_from": "cgan", "teacher_from": "cgan"}, "teacher_from must name another entry"),
])
def test_bad_teacher_entries(entry, match):
    with pytest.raises(ValueError, match=match):
        Study("classify_pneumonia.yaml", fractions=[0.1], generators={**GENERATORS, "x": entry})


def test_a_student_is_distilled_from_the_teacher_trained_on_its_own_subset(tmp_path):
    import yaml

    from lightning_medaug import SyntheticBank

    tiny = {"model.init_args.channels": [8, 8, 16, 16], "model.init_args.norm_num_groups": 8,
            "model.init_args.num_train_timesteps": 100}
    generators = {
        "ddpm": {"recipe": "ddpm_pneumonia.yaml", "epochs": 1, "overrides": tiny,
                 "sample_kwargs": {"num_inference_steps": 2}},
        "cd": {"recipe": "cd_pneumonia.yaml", "teacher_from": "ddpm",
               "overrides": {"trainer.max_steps": 2, "model.init_args.num_solver_steps": 10,
                             "trainer.limit_val_batches": 1},
               "sample_kwargs": {"num_inference_steps": 1}},
    }
    study = Study("classify_pneumonia.yaml", out=str(tmp_path), fractions=[0.02], seeds=[1], generators=generators,
                  ratios=[0.5], synthetic_only=False, classic_augmentation=False)
    student_bank = SyntheticBank(study.bank("cd", 0.02, 1))  # trains the teacher first, on the same subset
    teacher = study.generator_folder("ddpm", 0.02, 1) / "run"
    student = study.generator_folder("cd", 0.02, 1) / "run"
    recipe = yaml.safe_load((student / "recipe.yaml").read_text(encoding="utf-8"))
    assert recipe["model"]["init_args"]["teacher"] == str(teacher / "generator")
    teacher_data = yaml.safe_load((teacher / "recipe.yaml").read_text(encoding="utf-8"))["data"]["init_args"]
    assert {k: recipe["data"]["init_args"][k] for k in ("subset", "subset_seed")} == \
        {k: teacher_data[k] for k in ("subset", "subset_seed")} == {"subset": 0.02, "subset_seed": 1}
    trained = (teacher / "generator" / "model.safetensors").stat().st_mtime_ns
    teacher_bank = SyntheticBank(study.bank("ddpm", 0.02, 1))  # the teacher's own arms: not trained again
    assert (teacher / "generator" / "model.safetensors").stat().st_mtime_ns == trained
    assert len(student_bank) == len(teacher_bank) > 0
    settings = {k: json.loads((study.generator_folder(k, 0.02, 1) / "bank" / "bank.json").read_text(
        encoding="utf-8"))["settings"] for k in ("ddpm", "cd")}
    assert settings["ddpm"]["checkpoint_sha256"] != settings["cd"]["checkpoint_sha256"]
