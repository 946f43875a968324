"""The evaluation report's sections, built from what ``metrics.json`` holds."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_medaug.rendering.html import Figure, Section, Table, write_report

__all__ = ["evaluation_sections", "write_evaluation_report"]

_FIDELITY_ROWS = (  # key, name, what a better value is
    ("fd", "Frechet distance", "lower"), ("kid_mean", "KID (mean)", "lower"), ("kid_std", "KID (std)", "\u2013"),
    ("precision", "precision", "higher"), ("recall", "recall", "higher"), ("density", "density", "about 1"),
    ("coverage", "coverage", "higher"),
)


def _bank_section(result: Mapping[str, Any]) -> Section:
    bank, data, extractor = result["bank"], result["data"], result["extractor"]
    sha = bank.get("checkpoint_sha256")
    rows = [
        ("bank", bank.get("path", bank.get("kind"))), ("generator", bank.get("generator")),
        ("generator class", bank.get("generator_class")), ("checkpoint SHA-256", sha[:12] if sha else None),
        ("sampler", bank.get("sampler")), ("steps", bank.get("steps")), ("guidance", bank.get("guidance")),
        ("bank seed", bank.get("seed")), ("samples", bank.get("num_samples")),
        ("samples per class", bank.get("label_counts")), ("masks", bank.get("masks")),
        ("written", bank.get("created")),
    ]
    data_rows = [("data module", data.get("class_path")), ("arguments", data.get("init_args")),
                 ("real splits", data.get("splits")), ("floor split", result["settings"]["floor_split"])]
    extractor_rows = [("features", extractor.get("name")), ("backbone", extractor.get("backbone")),
                      ("feature width", extractor.get("num_features")), ("cache entry", extractor.get("path")),
                      ("loaded from cache", extractor.get("from_cache")),
                      ("validation scores", extractor.get("val_metrics"))]
    keep = [(k, v) for k, v in rows + data_rows + extractor_rows if v not in (None, {}, "")]
    return Section("Bank, data and features", tables=[Table(("", "value"), keep)])


def _fidelity_section(fidelity: Mapping[str, Any], files: Mapping[str, str]) -> Section:
    text = (f"Each figure compares {fidelity['num_samples']} synthetic images with as many real training images, "
            f"beside the floor: {fidelity['num_samples']} held-out real images against the same training images, "
            f"in the same {fidelity['feature_dim']}-dimensional feature space. These estimators depend on the sample "
            "count and the features, so only the distance to the floor means something: a synthetic figure at the "
            "floor is as good as real data scores here.")
    rows = [(name, better, fidelity["synthetic"].get(key), fidelity["floor"].get(key))
            for key, name, better in _FIDELITY_ROWS]
    table = Table(("metric", "better", "synthetic vs real train", "real held-out vs real train (floor)"), rows,
                  caption=f"k={fidelity['k']}, KID subset size {fidelity['kid_subset_size']}, seed {fidelity['seed']}")
    figures = [Figure(Path(files["feature_pca"]).name, "real training (grey), held-out real (blue) and synthetic "
                      "(orange) features on the first two principal axes of the real training features")] \
        if "feature_pca" in files else []
    return Section("Fidelity", paragraphs=[text], tables=[table], figures=figures)


def _memorization_section(memo: Mapping[str, Any], files: Mapping[str, str]) -> Section:
    pct = memo["percentile"]
    text = (f"A synthetic sample counts as a copy when its nearest training image is at least as close as the closest "
            f"{pct:g}% of held-out real images are to theirs. Fresh samples from the training distribution score "
            f"about {pct / 100:g}; copies of training images score 1. A median ratio well below 1 means synthetic "
            "samples sit closer to the training set than unseen real images do. "
            f"({memo['num_synthetic']} synthetic, {memo['num_train']} training, {memo['num_test']} held-out images.)")
    rows = [(space, memo[space]["copy_rate"], memo[space]["threshold"], memo[space]["synthetic_nn"]["median"],
             memo[space]["test_nn"]["median"], memo[space]["median_ratio"])
            for space in ("pixel", "feature") if space in memo]
    table = Table(("space", "copy rate", "threshold", "synthetic NN median", "held-out NN median", "median ratio"),
                  rows)
    figures = [Figure(Path(files[role]).name, caption)
               for role, caption in (("nn_histogram", "distance to the nearest training sample: synthetic vs "
                                                      "held-out real, with the copy threshold"),
                                     ("closest_pairs", "closest synthetic / training pairs, pixel space"),
                                     ("closest_pairs_feature", "closest synthetic / training pairs, feature space"))
               if role in files]
    return Section("Memorization", paragraphs=[text], tables=[table], figures=figures)


def _paired_section(paired: Mapping[str, Any], files: Mapping[str, str]) -> Section:
    text = ("Synthetic images drawn from the mask of a real sample, against that real image "
            "(data range 2: images in [-1, 1]).")
    rows = [(split, v["num_pairs"], v.get("psnr"), v.get("ssim"), v.get("ms_ssim")) for split, v in paired.items()]
    figures = [Figure(Path(files["paired_examples"]).name, "real image | synthetic image from its mask")] \
        if "paired_examples" in files else []
    return Section("Paired quality", paragraphs=[text],
                   tables=[Table(("real split", "pairs", "PSNR (dB)", "SSIM", "MS-SSIM"), rows)], figures=figures)


def _privacy_section(privacy: Mapping[str, Any]) -> Section:
    keys = ("epsilon", "delta", "accountant", "noise_multiplier", "max_grad_norm", "sample_rate", "dataset_size",
            "expected_batch_size", "steps", "target_epsilon", "stopped_at_budget", "unit", "mechanism",
            "checkpoint_verified")
    text = (f"The generator was trained with differential privacy: (epsilon={privacy.get('epsilon')}, "
            f"delta={privacy.get('delta')}) per {privacy.get('unit', 'training example')}.")
    return Section("Privacy", paragraphs=[text],
                   tables=[Table(("", "value"), [(k, privacy.get(k)) for k in keys if k in privacy])])


def evaluation_sections(result: Mapping[str, Any]) -> list[Section]:
    """The report's sections, in reading order."""
    files = result["files"]
    sections = [_bank_section(result),
                Section("Samples", figures=[Figure(Path(files["real_vs_synthetic"]).name,
                                                   "real training images and synthetic images, per class")]),
                _fidelity_section(result["fidelity"], files), _memorization_section(result["memorization"], files)]
    if result.get("paired"):
        sections.append(_paired_section(result["paired"], files))
    if result.get("privacy"):
        sections.append(_privacy_section(result["privacy"]))
    if result.get("notes"):
        sections.append(Section("Not evaluated", notes=list(result["notes"])))
    return sections


def write_evaluation_report(result: Mapping[str, Any], folder: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` for ``result`` into ``folder`` (which holds its figures)."""
    bank = result["bank"]
    title = f"Synthetic bank evaluation: {bank.get('generator') or bank.get('kind')}"
    source = f" from the bank folder \u201c{bank['path']}\u201d" if bank.get("path") else ""
    subtitle = (f"{bank.get('num_samples')} synthetic samples{source}; lightning-medaug {result['library_version']}, "
                f"{result['created']}")
    return write_report(folder, title, evaluation_sections(result), subtitle=subtitle)
