"""`medaug evaluate`: real banks of tiny generators trained on phantoms, evaluated through the CLI into
self-contained, path-free reports; copies of the training set read as copies; bad input is one line."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from lightning_medaug.bank import SyntheticBank, write_bank
from lightning_medaug.cli import main
from lightning_medaug.data import PhantomDataModule
from lightning_medaug.evaluation import evaluate_bank
from lightning_medaug.evaluation.output import staged_output
from lightning_medaug.generative.privacy import DifferentialPrivacy
from lightning_medaug.metrics import paired_image_metrics
from lightning_medaug.registry import create_generator

DATA = {"class_path": "lightning_medaug.data.PhantomDataModule",
        "init_args": {"image_size": 16, "num_train": 32, "num_val": 16, "num_test": 16, "batch_size": 16}}
FIDELITY_KEYS = {"fd", "kid_mean", "kid_std", "precision", "recall", "density", "coverage"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fit(model, steps: int, root: Path, callbacks=()) -> None:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, max_steps=steps, limit_val_batches=0, default_root_dir=root,
                        callbacks=list(callbacks))
    trainer.fit(model, datamodule=PhantomDataModule(**{**DATA["init_args"], "with_masks": False}))


@pytest.fixture(scope="module")
def dp_bank(tmp_path_factory):
    """A 40-sample bank of a tiny cVAE trained 3 DP-SGD steps on the phantoms, exported like `medaug fit`."""
    root = tmp_path_factory.mktemp("dp")
    L.seed_everything(0)
    model = create_generator("cvae", image_size=16, num_classes=2, channels=(8, 8), norm_num_groups=4,
                             latent_channels=2)
    _fit(model, 3, root / "run", [DifferentialPrivacy(noise_multiplier=1.0, max_grad_norm=1.0)])
    generator = model.save_pretrained(root / "run" / "generator")  # privacy.json is already beside it
    write_bank(generator, root / "bank", 40, shard_size=16, batch_size=16, progress=False)
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump(DATA))
    return {"root": root, "bank": root / "bank", "generator": generator, "data": data}


def _outputs_text(folder: Path) -> dict[str, str]:
    return {p.name: p.read_bytes().decode("latin-1") for p in folder.iterdir()}


def _evaluate(*args: str) -> int:
    return main(["evaluate", *args])


def test_pixel_space_report_is_complete_self_contained_and_path_free(dp_bank, tmp_path, capsys):
    out = tmp_path / "report"
    code = _evaluate("--bank", str(dp_bank["bank"]), "--data", str(dp_bank["data"]), "--extractor", "none",
                     "--privacy", str(dp_bank["generator"]), "--out", str(out))
    assert code == 0, capsys.readouterr().err
    assert {p.name for p in out.iterdir()} == {"metrics.json", "report.html", "report.md", "real_vs_synthetic.png",
                                               "closest_pairs.png", "feature_pca.png", "nn_distances.png"}
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["kind"] == "medaug-evaluate" and metrics["extractor"] == {"name": "none", "space": "pixel"}

    fidelity = metrics["fidelity"]
    assert fidelity["num_samples"] == 16 and fidelity["feature_dim"] == 16 * 16
    assert set(fidelity["synthetic"]) == set(fidelity["floor"]) == FIDELITY_KEYS  # the floor beside each figure
    for side in ("synthetic", "floor"):
        assert fidelity[side]["fd"] >= 0 and fidelity[side]["kid_std"] >= 0
    # Held-out phantoms look like training phantoms; three DP steps of a cVAE do not.
    assert fidelity["floor"]["fd"] < fidelity["synthetic"]["fd"]

    memo = metrics["memorization"]
    assert "feature" not in memo and (memo["num_synthetic"], memo["num_train"], memo["num_test"]) == (40, 32, 16)
    pixel = memo["pixel"]
    # Every sample lies far from the training set (nearest above 13 in pixel distance, held-out
    # phantoms below 5) and beyond the copy threshold: none is a copy, none falls in a real's k-NN
    # ball (precision, coverage 0) and no real in a sample's (recall 0); held-out phantoms mostly do.
    assert pixel["synthetic_nn"]["min"] > max(2 * pixel["test_nn"]["max"], pixel["threshold"])
    assert all(fidelity["synthetic"][key] == 0.0 for key in ("precision", "recall", "coverage"))
    assert all(fidelity["floor"][key] > 0.5 for key in ("precision", "recall", "coverage"))
    assert pixel["copy_rate"] == 0.0 and len(pixel["closest_pairs"]) == 16
    distances = [p["distance"] for p in memo["pixel"]["closest_pairs"]]
    assert distances == sorted(distances) and distances[0] == memo["pixel"]["synthetic_nn"]["min"]

    bank = metrics["bank"]
    weights = (dp_bank["generator"] / "model.safetensors").read_bytes()
    assert bank["checkpoint_sha256"] == hashlib.sha256(weights).hexdigest()
    assert bank["generator"] == "cvae" and bank["generator_class"].endswith("ConditionalVAE")
    assert bank["label_counts"] == {"0": 20, "1": 20} and bank["path"] == "bank"
    assert metrics["paired"] is None and metrics["privacy"]["checkpoint_verified"] is True
    assert metrics["privacy"]["epsilon"] > 0 and metrics["privacy"]["steps"] == 3

    html = (out / "report.html").read_text(encoding="utf-8")
    sources = re.findall(r'src="([^"]*)"', html)
    # samples, PCA map, nearest-neighbour histograms, closest pairs: all inlined
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "principal axes" in html and "copy threshold" in html
    assert "Privacy" in html and "real held-out vs real train (floor)" in html
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert all((out / link).is_file() for link in re.findall(r"\]\(([^)]+)\)", markdown))
    for name, text in _outputs_text(out).items():  # no path of this machine in any output
        assert str(tmp_path) not in text and str(dp_bank["root"]) not in text, name
    assert "report.html" in capsys.readouterr().out

    # An earlier report is replaced; a folder holding anything else is refused, unless --overwrite.
    assert _evaluate("--bank", str(dp_bank["bank"]), "--data", str(dp_bank["data"]), "--extractor", "none",
                     "--num-samples", "12", "--out", str(out), "--no-progress") == 0
    again = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert again["fidelity"]["num_samples"] == 12 and again["privacy"] is None and not list(tmp_path.glob(".*"))
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    argv = ["--bank", str(dp_bank["bank"]), "--data", str(dp_bank["data"]), "--extractor", "none", "--out",
            str(other), "--no-progress"]
    _fails_cleanly(capsys, argv, "is not empty")
    assert _evaluate(*argv, "--overwrite") == 0
    assert (other / "mine.txt").read_text(encoding="utf-8") == "keep me" and (other / "report.html").is_file()


def test_domain_extractor_from_a_recipe_is_trained_once_then_loaded(dp_bank, tmp_path):
    recipe = tmp_path / "recipe.yaml"  # a whole recipe: only its data: section is used
    recipe.write_text(yaml.safe_dump({"model": {"class_path": "lightning_medaug.generative.vae.ConditionalVAE"},
                                      "data": DATA, "trainer": {"max_epochs": 1}}))
    common = ["--bank", str(dp_bank["bank"]), "--data", str(recipe), "--device", "cpu", "--num-samples", "14",
              "--no-progress"]
    domain = ["--extractor-backbone", "test_resnet", "--extractor-max-steps", "2", "--extractor-cache",
              str(tmp_path / "cache"), "--absolute-paths"]
    assert _evaluate(*common, *domain, "--out", str(tmp_path / "a")) == 0
    first = json.loads((tmp_path / "a" / "metrics.json").read_text(encoding="utf-8"))
    extractor = first["extractor"]
    assert extractor["name"] == "domain" and extractor["backbone"] == "test_resnet" and not extractor["from_cache"]
    assert Path(extractor["path"]).is_relative_to(tmp_path / "cache")  # --absolute-paths asked for it
    assert first["fidelity"]["num_samples"] == 14 and first["fidelity"]["feature_dim"] == extractor["num_features"]
    assert set(first["memorization"]) >= {"pixel", "feature"}
    feature = first["memorization"]["feature"]
    # no sample is within the copy threshold of a training image in feature space either
    assert feature["synthetic_nn"]["min"] > feature["threshold"] and feature["copy_rate"] == 0.0
    assert (tmp_path / "a" / "closest_pairs_feature.png").is_file()
    assert Path(first["files"]["report_html"]) == (tmp_path / "a" / "report.html").resolve()

    assert _evaluate(*common, *domain, "--out", str(tmp_path / "b")) == 0
    second = json.loads((tmp_path / "b" / "metrics.json").read_text(encoding="utf-8"))
    assert second["extractor"]["from_cache"] and second["fidelity"] == first["fidelity"]  # same seed, same figures

    # The cached folder itself is a save_pretrained-style extractor.
    assert _evaluate(*common, "--extractor", extractor["path"], "--out", str(tmp_path / "c")) == 0
    third = json.loads((tmp_path / "c" / "metrics.json").read_text(encoding="utf-8"))
    assert third["extractor"]["name"] == "folder" and third["fidelity"] == first["fidelity"]
    assert third["extractor"]["path"] == "/".join(Path(extractor["path"]).parts[-2:])  # the cache key, no path


def test_extractor_cache_defaults_to_medaug_cache(monkeypatch, tmp_path):
    from lightning_medaug.evaluation.inputs import default_extractor_cache

    monkeypatch.setenv("MEDAUG_CACHE", str(tmp_path))
    assert default_extractor_cache() == tmp_path / "extractors"
    monkeypatch.delenv("MEDAUG_CACHE")
    assert default_extractor_cache() == Path.home() / ".cache" / "lightning_medaug" / "extractors"


def test_a_crash_while_writing_leaves_the_earlier_report_untouched(tmp_path):
    out = tmp_path / "report"
    with staged_output(out) as folder:
        (folder / "metrics.json").write_text(json.dumps({"kind": "medaug-evaluate", "run": 1}))
    with pytest.raises(RuntimeError, match="crash"), staged_output(out) as folder:
        (folder / "metrics.json").write_text(json.dumps({"kind": "medaug-evaluate", "run": 2}))
        raise RuntimeError("crash")
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["run"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no staging folder left behind


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_a_bank_of_training_images_is_all_copies(tmp_path, spatial_dims):
    size = 16 if spatial_dims == 2 else 8
    data = PhantomDataModule(**{**DATA["init_args"], "spatial_dims": spatial_dims, "image_size": size})
    train, test = data.train_dataset, data.test_dataset
    result = evaluate_bank(train, train, test, tmp_path / "copies", None, num_samples=10)
    pixel = result["memorization"]["pixel"]
    assert pixel["copy_rate"] == 1.0 and pixel["synthetic_nn"]["max"] == 0.0 and pixel["median_ratio"] == 0.0
    assert all(p["synthetic_id"] == p["train_dataset_index"] for p in pixel["closest_pairs"])
    assert result["bank"] == {"kind": "PhantomDataset", "num_samples": 32}
    assert (tmp_path / "copies" / "closest_pairs.png").is_file()


def test_mask_conditional_bank_gets_paired_metrics(tmp_path):
    L.seed_everything(0)
    model = create_generator("pix2pix", image_size=16, generator_channels=8, generator_levels=3, num_res_units=0,
                             discriminator_channels=8)
    data = PhantomDataModule(**DATA["init_args"])
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    masks = data.test_dataset.masks[:12]  # the layouts of 12 held-out real samples
    write_bank(model, tmp_path / "bank", 24, masks=masks, shard_size=24, batch_size=24, progress=False)
    out = tmp_path / "report"
    assert _evaluate("--bank", str(tmp_path / "bank"), "--data", json.dumps(DATA), "--extractor", "none",
                     "--out", str(out), "--no-progress") == 0
    paired = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["paired"]
    assert set(paired) == {"test"} and paired["test"]["num_pairs"] == 24  # every sample reuses a test mask
    # the figures of each sample against the held-out image whose mask it was drawn from
    bank = SyntheticBank(tmp_path / "bank")
    samples = [bank[i] for i in range(len(bank))]
    test = data.test_dataset
    rows = [next(j for j in range(len(test)) if torch.equal(s["mask"], test.masks[j].float())) for s in samples]
    expected = paired_image_metrics(torch.stack([s["image"] for s in samples]), test.images[rows])
    assert paired["test"]["ssim"] == pytest.approx(float(expected["ssim"]), abs=1e-6)
    assert paired["test"]["psnr"] == pytest.approx(float(expected["psnr"]), abs=1e-5)
    assert (out / "paired_examples.png").is_file()
    assert "Paired quality" in (out / "report.md").read_text(encoding="utf-8")


def _fails_cleanly(capsys, argv, match: str) -> None:
    capsys.readouterr()
    code = _evaluate(*argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err and err[-1].startswith("medaug: error: "), err
    assert match in err[-1], err[-1]
    assert not any("Traceback" in line for line in err)


def test_bad_input_is_one_line_and_exit_code_2(dp_bank, tmp_path, capsys):
    bank, data = str(dp_bank["bank"]), str(dp_bank["data"])
    common = ["--extractor", "none", "--no-progress"]
    larger = json.dumps({**DATA, "init_args": {**DATA["init_args"], "image_size": 32}})
    three = json.dumps({**DATA, "init_args": {**DATA["init_args"], "num_classes": 3}})
    cases = [
        (["--bank", bank, "--data", larger, "--out", str(tmp_path / "o1")], "shape (1, 16, 16)"),
        (["--bank", bank, "--data", three, "--out", str(tmp_path / "o2")], "2 classes, the real data 3"),
        (["--bank", str(tmp_path / "nothing"), "--data", data, "--out", str(tmp_path / "o3")], "not a synthetic bank"),
        (["--bank", bank, "--data", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o4")], "not found"),
        (["--bank", bank, "--data", json.dumps({"class_path": DATA["class_path"], "init_args": {"image_sz": 16}}),
          "--out", str(tmp_path / "o5")], "image_sz"),
        (["--bank", bank, "--data", data, "--out", str(tmp_path / "o6"), "--privacy", str(tmp_path)], "privacy.json"),
        (["--bank", bank, "--data", data, "--out", str(tmp_path / "o7"), "--num-samples", "3"], "num_samples"),
    ]
    for argv, match in cases:
        _fails_cleanly(capsys, argv + common, match)
    _fails_cleanly(capsys, ["--bank", bank, "--data", data, "--out", str(tmp_path / "o8"), "--extractor", "incepton",
                            "--no-progress"], "unknown feature extractor")
    (tmp_path / "file").write_text("")
    _fails_cleanly(capsys, ["--bank", bank, "--data", data, "--out", str(tmp_path / "file")] + common, "is a file")
    # A privacy report of another generator is refused: its weights do not hash to the bank's checkpoint.
    other = tmp_path / "other"
    create_generator("cvae", image_size=16, num_classes=2, channels=(8, 8), norm_num_groups=4,
                     latent_channels=2).save_pretrained(other)
    (other / "privacy.json").write_text((dp_bank["generator"] / "privacy.json").read_text(encoding="utf-8"))
    _fails_cleanly(capsys, ["--bank", bank, "--data", data, "--out", str(tmp_path / "o9"), "--privacy", str(other)]
                   + common, "belongs to another generator")
    assert {p.name for p in tmp_path.iterdir()} == {"file", "other"}  # no report, whole or half, was written
    with pytest.raises(ValueError, match="empty"):
        evaluate_bank([], PhantomDataModule(**DATA["init_args"]).train_dataset, [], tmp_path / "o10")


def _browser():
    import shutil

    return next((p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))), None)


@pytest.mark.skipif(_browser() is None, reason="needs a Chromium/Chrome binary (apt-get install chromium)")
def test_report_renders_in_a_headless_browser(dp_bank, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "report"
    assert _evaluate("--bank", str(dp_bank["bank"]), "--data", str(dp_bank["data"]), "--extractor", "none",
                     "--out", str(out)) == 0
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "report_screenshot.py"
    done = subprocess.run([sys.executable, str(script), str(out), "--out", str(tmp_path / "shot.png"),
                           "--height", "3000"], capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-1500:] + done.stdout[-500:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    # the page shows its tables and inlined figures: well above a blank page's share of ink
    assert record["renders"] and record["content_fraction"] > 0.05, record
