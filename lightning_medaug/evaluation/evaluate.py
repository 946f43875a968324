"""Evaluate a synthetic bank against the real data it imitates, into one report folder.

Four questions, each answered beside a reference that says what a good value is:

* **fidelity** (Frechet distance, KID, precision/recall/density/coverage): synthetic vs real
  training images, beside the floor real test vs real training images from the same extractor
  and sample counts (:func:`~lightning_medaug.metrics.fidelity_with_floor`);
* **memorization**: the share of synthetic samples closer to a training image than almost all
  real test images are, with the closest pairs drawn
  (:func:`~lightning_medaug.metrics.memorization_report`);
* **paired quality** (PSNR, SSIM, MS-SSIM) for mask-conditional banks whose masks are masks of
  real samples: each synthetic image against the real image of the same mask;
* **privacy**: the DP-SGD ``(epsilon, delta)`` spent on the generator, when given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from lightning_medaug.evaluation.inputs import (
    bank_provenance,
    describe_extractor,
    scrub_paths,
)
from lightning_medaug.evaluation.output import (
    METRICS_FILE,
    REPORT_KIND,
    check_output_folder,
    staged_output,
)
from lightning_medaug.evaluation.report import write_evaluation_report
from lightning_medaug.evaluation.samples import (
    Samples,
    load_samples,
    mask_pairs,
    save_paired_examples,
    save_real_vs_synthetic,
)

__all__ = ["FILES", "MAX_PIXEL_FEATURES", "check_compatible", "check_options", "evaluate_bank"]

#: Files of a report folder, by role.
FILES = {"metrics": METRICS_FILE, "report_html": "report.html", "report_md": "report.md",
         "real_vs_synthetic": "real_vs_synthetic.png", "closest_pairs": "closest_pairs.png",
         "closest_pairs_feature": "closest_pairs_feature.png", "paired_examples": "paired_examples.png",
         "feature_pca": "feature_pca.png", "nn_histogram": "nn_distances.png"}
#: Largest pixel count per sample for fidelity in pixel space (its covariance is D x D).
MAX_PIXEL_FEATURES = 4096


def _first_image_shape(dataset: Dataset) -> tuple[int, ...]:
    from lightning_medaug.data.batch import unpack_batch

    return tuple(unpack_batch(dataset[0]).image.shape)


def check_compatible(synthetic: Dataset, real_train: Dataset, num_classes: int | None = None) -> None:
    """Raise ``ValueError`` when synthetic and real samples differ in shape or classes.

    ``num_classes`` is the real data's class count (e.g. ``datamodule.num_classes``), checked
    against a bank's generator when both are known.
    """
    if len(synthetic) == 0:  # type: ignore[arg-type]
        raise ValueError("the synthetic bank is empty: write samples into it with `medaug generate`")
    shape = tuple(getattr(synthetic, "image_shape", None) or _first_image_shape(synthetic))
    real_shape = _first_image_shape(real_train)
    if shape[0] != real_shape[0]:
        raise ValueError(f"the bank's images have {shape[0]} channel(s), the real images {real_shape[0]}: "
                         "evaluate a bank drawn from a generator trained on this data")
    if shape != real_shape:
        raise ValueError(f"the bank's images have shape {shape}, the real images {real_shape}: evaluate a bank drawn "
                         "from a generator trained on this data (or set the data's image size to match)")
    bank_classes = getattr(synthetic, "num_classes", 0)
    if bank_classes and num_classes and bank_classes != num_classes:
        raise ValueError(f"the bank's generator has {bank_classes} classes, the real data {num_classes}: evaluate a "
                         "bank drawn from a generator trained on this data")


def check_options(num_samples: int | None, k: int, percentile: float, num_pairs: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if num_samples is not None and num_samples <= k:
        raise ValueError(f"num_samples must be larger than k={k} (precision/recall need k neighbours), "
                         f"got {num_samples}")
    if not 0.0 < percentile < 100.0:
        raise ValueError(f"percentile must be in (0, 100), got {percentile}")
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be at least 1, got {num_pairs}")


def _finite(value: Any) -> Any:
    """``value`` with NaN / infinite floats as ``None``: metrics.json stays strict JSON."""
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _memorization(synthetic: Samples, train: Samples, test: Samples, features: Mapping[str, torch.Tensor] | None,
                  device: torch.device, percentile: float, num_pairs: int, ids: Any) -> tuple[dict[str, Any], dict]:
    """The memorization report (on the fidelity step's features: nothing is extracted twice) and
    each space's nearest-training distances, for the histograms."""
    from lightning_medaug.metrics import memorization_report

    feats = None if features is None else [features[name] for name in ("synthetic", "train", "test")]
    report, neighbours = memorization_report(synthetic.images.to(device), train.images.to(device),
                                             test.images.to(device), percentile=percentile, num_pairs=num_pairs,
                                             features=feats, return_neighbours=True)
    for space in ("pixel", "feature"):
        for pair in report.get(space, {}).get("closest_pairs", []):
            row = int(synthetic.indices[pair["synthetic_index"]])
            pair["synthetic_id"] = int(ids[row]) if ids is not None else row
            pair["train_dataset_index"] = int(train.indices[pair["train_index"]])
    return report, neighbours


def _paired(synthetic: Samples, reals: Mapping[str, Samples]) -> tuple[dict[str, Any] | None, tuple | None]:
    """Paired metrics per real split whose masks some synthetic samples share, and example pairs."""
    from lightning_medaug.metrics import paired_image_metrics

    if synthetic.masks is None:
        return None, None
    results: dict[str, Any] = {}
    examples = None
    for split, real in reals.items():
        if real.masks is None:
            continue
        syn_rows, real_rows = mask_pairs(synthetic.masks, real.masks)
        if not syn_rows:
            continue
        preds, target = synthetic.images[syn_rows], real.images[real_rows]
        results[split] = {"num_pairs": len(syn_rows), **paired_image_metrics(preds, target)}
        if examples is None or split == "test":
            examples = (target, preds)
    return results or None, examples


def _notes(synthetic: Samples, paired: Any, privacy: Any) -> list[str]:
    """What the report could not evaluate, and why."""
    notes = []
    if paired is None:
        notes.append("paired metrics: the bank has no masks" if synthetic.masks is None else
                     "paired metrics: no synthetic sample was drawn from the mask of a real sample")
    if privacy is None:
        notes.append("privacy: no DP-SGD privacy report given (--privacy)")
    return notes


def _figures(folder: Path, train: Samples, synthetic: Samples, memorization: Mapping[str, Any],
             neighbours: Mapping[str, Any], examples: tuple | None, features: Mapping[str, torch.Tensor],
             space: str) -> dict[str, str]:
    """Draw the report's pictures into ``folder``; returns the report's files by role."""
    from lightning_medaug.evaluation.figures import (
        save_distance_histograms,
        save_feature_pca,
    )
    from lightning_medaug.metrics import save_closest_pairs

    files = {role: FILES[role] for role in ("metrics", "report_html", "report_md", "real_vs_synthetic",
                                            "feature_pca", "nn_histogram")}
    save_real_vs_synthetic(train, synthetic, folder / FILES["real_vs_synthetic"])
    cpu = {name: f.cpu() for name, f in features.items()}
    save_feature_pca(cpu, folder / FILES["feature_pca"])
    save_distance_histograms(neighbours[space], folder / FILES["nn_histogram"],
                             threshold=memorization[space]["threshold"], space=space)
    for pair_space, role in (("pixel", "closest_pairs"), ("feature", "closest_pairs_feature")):
        if memorization.get(pair_space, {}).get("closest_pairs"):
            save_closest_pairs(synthetic.images, train.images, memorization[pair_space]["closest_pairs"],
                               folder / FILES[role],
                               title=f"closest in {pair_space} space: synthetic (s) | nearest training image (t)")
            files[role] = FILES[role]
    if examples is not None:
        save_paired_examples(*examples, folder / FILES["paired_examples"])
        files["paired_examples"] = FILES["paired_examples"]
    return files


def evaluate_bank(synthetic: Dataset | str | Path, real_train: Dataset, real_test: Dataset, out: str | Path,
                  extractor: nn.Module | None = None, *, num_samples: int | None = None, seed: int = 0, k: int = 5,
                  percentile: float = 1.0, num_pairs: int = 16, floor_split: str = "test",
                  num_classes: int | None = None, data: Mapping[str, Any] | None = None,
                  extractor_info: Mapping[str, Any] | None = None, privacy: Mapping[str, Any] | None = None,
                  device: str | torch.device | None = None, overwrite: bool = False, absolute_paths: bool = False,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Evaluate ``synthetic`` (a bank folder, a :class:`~lightning_medaug.bank.SyntheticBank` or
    any data set of samples) against the real splits; write the report folder ``out``.

    Args:
        real_train: the generator's training data (reference of every metric, memorization set).
        real_test: held-out real data: the fidelity floor and the copy threshold.
        extractor: features for fidelity and feature-space memorization; ``None``: pixel space.
        num_samples: synthetic and held-out samples used (seeded subsets; all when ``None``);
            fidelity uses the same count for every set, memorization the whole training split.
        seed: seeds the subsets and KID; k: neighbours of precision/recall/density/coverage.
        percentile, num_pairs: copy threshold percentile and closest pairs listed (memorization).
        floor_split: name of ``real_test``'s split, for the report.
        num_classes: the real data's class count, checked against the bank's generator.
        data, extractor_info, privacy: what the report says about the data, the extractor and
            the privacy spent (see :mod:`lightning_medaug.evaluation.inputs`).
        device: where features and distances are computed (``"auto"``: a GPU when there is one).
        overwrite: allow a non-empty ``out`` that is not an earlier report (its other files stay).
        absolute_paths: record absolute paths; by default the outputs name files only.
        progress: called with the name of each stage as it starts.

    Returns:
        What ``metrics.json`` holds.
    """
    from lightning_medaug.bank import SyntheticBank
    from lightning_medaug.bank.device import resolve_device
    from lightning_medaug.metrics import extract_features, fidelity_with_floor

    stage = progress or (lambda name: None)
    check_options(num_samples, k, percentile, num_pairs)
    check_output_folder(out, overwrite)
    bank = SyntheticBank(synthetic) if isinstance(synthetic, (str, Path)) else synthetic
    check_compatible(bank, real_train, num_classes)
    image_shape = _first_image_shape(real_train)
    if extractor is None and math.prod(image_shape) > MAX_PIXEL_FEATURES:
        raise ValueError(f"fidelity in pixel space needs a {math.prod(image_shape)}^2 covariance for images of shape "
                         f"{image_shape}; use a feature extractor (--extractor domain) instead of none")
    device = resolve_device(device, torch.device("cpu"))
    extractor = None if extractor is None else extractor.to(device)

    stage("reading samples")
    syn = load_samples(bank, num_samples, seed)
    test = load_samples(real_test, num_samples, seed + 1)
    train = load_samples(real_train)

    stage("fidelity")
    features = {name: extract_features(extractor, s.images.to(device)) for name, s in
                (("synthetic", syn), ("train", train), ("test", test))}
    fidelity = fidelity_with_floor(None, features["synthetic"], features["train"], features["test"],
                                   num_samples=num_samples, seed=seed, k=k)

    stage("memorization")
    ids = getattr(bank, "ids", None)
    memorization, neighbours = _memorization(syn, train, test, None if extractor is None else features, device,
                                             percentile, num_pairs, ids)

    stage("paired metrics")
    paired, examples = _paired(syn, {floor_split: test, "train": train})

    stage("report")
    provenance = (bank_provenance(bank, absolute_paths) if isinstance(bank, SyntheticBank)
                  else {"kind": type(bank).__name__, "num_samples": len(bank)})
    result = {
        "kind": REPORT_KIND, "format": 1, "library_version": _version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {"num_samples": num_samples, "seed": seed, "k": k, "percentile": percentile,
                     "num_pairs": num_pairs, "floor_split": floor_split},
        "bank": provenance,
        "data": dict(data or {"splits": {"train": len(real_train), floor_split: len(real_test)}}),  # type: ignore
        "extractor": dict(extractor_info or describe_extractor("custom", extractor, absolute_paths)),
        "fidelity": fidelity, "memorization": memorization, "paired": paired,
        "privacy": None if privacy is None else dict(privacy), "notes": _notes(syn, paired, privacy),
    }
    with staged_output(out, overwrite) as folder:
        files = _figures(folder, train, syn, memorization, neighbours, examples, features,
                         "pixel" if extractor is None else "feature")
        if absolute_paths:
            files = {role: str(Path(out).resolve() / name) for role, name in files.items()}
        result["files"] = files
        result = _finite(result if absolute_paths else scrub_paths(result))
        write_evaluation_report(result, folder)
        (folder / METRICS_FILE).write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return result


def _version() -> str:
    from lightning_medaug import __version__

    return __version__
