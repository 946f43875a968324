"""``MODEL_CARD.md`` for a shared generator: what it is, what it saw, how good it is, what not to do.

Sections follow Mitchell et al., "Model Cards for Model Reporting" (FAT* 2019): model details,
training data, training (and the federation, for a generator trained by sites that did not pool
their images), evaluation, intended use and limitations, licence, and how to load it.
Figures come only from files the library wrote (``config.json``, ``federation.json``, the run's
``metrics.json`` and ``config.yaml``, and the ``metrics.json`` of ``medaug evaluate``); anything not recorded is
written as "not recorded" or "not evaluated", never guessed.

From the command line: ``medaug card`` (:mod:`lightning_medaug.model_card.command`).
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from lightning_medaug.evaluation.output import REPORT_KIND
from lightning_medaug.generative.base import CONFIG_NAME, load_generator
from lightning_medaug.generative.privacy import PRIVACY_REPORT, load_privacy_report
from lightning_medaug.hub import CARD_NAME
from lightning_medaug.model_card.federation import federation_context

__all__ = ["DEFAULT_INTENDED_USE", "read_evaluation", "training_environment", "write_model_card"]

DEFAULT_INTENDED_USE = (
    "Research on synthetic data augmentation for medical image analysis: drawing synthetic images to add to, "
    "or pre-train on before, the real training images of a downstream model, and studying such augmentation."
)
NOT_RECORDED = "not recorded"
_FIDELITY_ROWS = (("fd", "Frechet distance", "lower"), ("kid_mean", "KID (mean)", "lower"),
                  ("kid_std", "KID (std)", "-"), ("precision", "precision", "higher"),
                  ("recall", "recall", "higher"), ("density", "density", "about 1"),
                  ("coverage", "coverage", "higher"))
_VERSIONED = ("lightning_medaug", "torch", "lightning", "monai", "diffusers", "numpy")

_TEMPLATE = """\
# Model card: {{ title }}

A `{{ generator }}` generator of lightning-medaug ({{ class_path }}), saved with `save_pretrained`.

## Model

| | |
|---|---|
| generator | `{{ generator }}` |
| class | `{{ class_path }}` |
| parameters | {{ num_parameters }} |
| saved by lightning-medaug | {{ library_version }} |

Init arguments (`config.json`):

| argument | value |
|---|---|
{% for key, value in init_args %}| `{{ key }}` | {{ value }} |
{% endfor %}
## Data

| | |
|---|---|
{% for key, value in data %}| {{ key }} | {{ value }} |
{% endfor %}
## Training

| | |
|---|---|
{% for key, value in training %}| {{ key }} | {{ value }} |
{% endfor %}
{% if federation %}## Federated training

Trained with Flower by {{ federation.num_sites }} sites that did not pool their images: each round every site trained the generator on its own images and sent back {% if federation.secure %}its update masked by secure aggregation, so the server only ever held the sum of the sites' updates, which it turned into{% else %}only its weights, which the server combined into{% endif %} the global generator released here.

| | |
|---|---|
{% for key, value in federation.rows %}| {{ key }} | {{ value }} |
{% endfor %}
| site | training images | epsilon | delta |
|---|---|---|---|
{% for row in federation.sites %}| {{ row | join(" | ") }} |
{% endfor %}
{% if federation.epsilon %}Every site trained with DP-SGD, its accountant composed over the rounds: the global generator is as private as its least private site (epsilon {{ federation.epsilon }} at delta {{ federation.delta }}).

{% endif %}{% endif %}## Evaluation

{% if evaluation %}From `medaug evaluate` ({{ evaluation.created }}): {{ evaluation.num_samples }} synthetic images \
against as many real training images, in the {{ evaluation.features }} feature space \
({{ evaluation.feature_dim }} dimensions). Only the distance to the floor (held-out real images against the same \
training images) means something.

| metric | better | synthetic vs real train | real held-out vs real train (floor) |
|---|---|---|---|
{% for row in evaluation.fidelity %}| {{ row | join(" | ") }} |
{% endfor %}
Memorization: a synthetic image counts as a copy when its nearest training image is at least as close as the \
closest {{ evaluation.percentile }}% of held-out real images are to theirs (fresh samples score about \
{{ evaluation.fresh_rate }}, copies 1).

| space | copy rate | median ratio (synthetic / held-out NN distance) |
|---|---|---|
{% for row in evaluation.memorization %}| {{ row | join(" | ") }} |
{% endfor %}{% else %}Not evaluated: no `medaug evaluate` report was given. Run `medaug evaluate` on a bank drawn from \
this generator and write this card again before relying on it.
{% endif %}
## Privacy

{% if privacy %}Trained with differential privacy ({{ privacy.mechanism }}): the released weights are **({{ privacy.epsilon }}, {{ privacy.delta }})-differentially private** with respect to {{ privacy.unit }} of the training data.

| | |
|---|---|
{% for key, value in privacy.rows %}| {{ key }} | {{ value }} |
{% endfor %}{% else %}Trained without differential privacy: the weights carry no formal privacy guarantee, and the copy rate of the evaluation is the only evidence about memorization.
{% endif %}
## Intended use and limitations

{{ intended_use }}

* Not for diagnosis, treatment or any clinical decision, and not a substitute for real patient images in \
validation or testing.
* Synthetic images may reproduce training images. {{ copy_sentence }}
* Generators trained on small sets can collapse to a few images per class; check diversity (precision/recall \
above) before using samples.
* Samples inherit the biases and the acquisition protocol of the training data described above.

## Licence

Weights: {{ license }}. Check that the training data's own licence allows sharing a model trained on it \
({{ data_attribution }}).

## How to load

```python
import torch
from lightning_medaug.hub import load_pretrained

model = load_pretrained("{{ load_source }}")  # a folder, its .zip, a URL of the zip or a named weight
images = model.sample(16{{ sample_args }}, generator=torch.Generator().manual_seed(0))  # in [-1, 1]
```
"""


# -- what the card reads ----------------------------------------------------------------------
def _fmt(value: Any, missing: str = NOT_RECORDED) -> str:
    """A table cell: floats to 4 significant digits, mappings inline, ``|`` escaped."""
    if value is None or value == "":
        return missing
    if isinstance(value, float):
        text = f"{value:.4g}" if math.isfinite(value) else str(value)
    elif isinstance(value, Mapping):
        text = ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        text = ", ".join(_fmt(v) for v in value)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def training_environment() -> dict[str, Any]:
    """This machine's CPU model, GPU name and library versions, for a card written where it trained."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    versions = {"python": platform.python_version()}
    for package in _VERSIONED:
        try:
            versions[package] = version(package.replace("_", "-"))
        except PackageNotFoundError:
            continue
    versions["torch"] = torch.__version__  # names the CUDA build, which the package metadata may not
    if torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    return {"hardware": {"cpu": cpu, "gpu": gpu or "none"}, "versions": versions}


def read_evaluation(evaluation: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """The ``metrics.json`` of ``medaug evaluate`` (a mapping, the file, or its folder)."""
    if not isinstance(evaluation, Mapping):
        path = Path(evaluation)
        path = path / "metrics.json" if path.is_dir() else path
        try:
            evaluation = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read the evaluation {path} ({err}); pass the metrics.json of `medaug evaluate`") \
                from None
    if not isinstance(evaluation, Mapping) or evaluation.get("kind") != REPORT_KIND:
        raise ValueError("the evaluation is not a metrics.json written by `medaug evaluate` (its \"kind\" is not "
                         f"{REPORT_KIND!r}); a run's own metrics.json goes to --training-log")
    return dict(evaluation)


def _evaluation_context(result: Mapping[str, Any]) -> dict[str, Any]:
    fidelity, memo = result.get("fidelity") or {}, result.get("memorization") or {}
    rows = [(name, better, _fmt(fidelity.get("synthetic", {}).get(key)), _fmt(fidelity.get("floor", {}).get(key)))
            for key, name, better in _FIDELITY_ROWS]
    memo_rows = [(space, _percent(memo[space].get("copy_rate")), _fmt(memo[space].get("median_ratio")))
                 for space in ("pixel", "feature") if space in memo]
    percentile = memo.get("percentile", NOT_RECORDED)
    return {
        "created": result.get("created", NOT_RECORDED), "num_samples": fidelity.get("num_samples", NOT_RECORDED),
        "features": str((result.get("extractor") or {}).get("name") or "none").replace("none", "pixel"),
        "feature_dim": fidelity.get("feature_dim", NOT_RECORDED), "fidelity": rows, "memorization": memo_rows,
        "percentile": _fmt(percentile), "fresh_rate": _fmt(percentile / 100) if isinstance(percentile, float | int)
        else NOT_RECORDED,
    }


def _privacy_context(folder: Path, result: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The DP-SGD record: ``privacy.json`` beside the weights (written by the ``DifferentialPrivacy``
    callback), else the one the evaluation was given; ``None`` for a model trained without DP."""
    privacy = (load_privacy_report(folder) if (folder / PRIVACY_REPORT).is_file()
               else (result or {}).get("privacy"))
    if not privacy:
        return None
    if "epsilon" not in privacy or "delta" not in privacy:
        raise ValueError(f"the privacy record needs 'epsilon' and 'delta', got keys {sorted(privacy)}")
    shown = ("accountant", "noise_multiplier", "max_grad_norm", "sample_rate", "steps", "dataset_size",
             "target_epsilon", "stopped_at_budget", "opacus_version")
    return {"epsilon": f"{privacy['epsilon']:.3g}", "delta": f"{privacy['delta']:g}",
            "mechanism": privacy.get("mechanism", "DP-SGD"), "unit": privacy.get("unit", "one training example"),
            "rows": [(k, _fmt(privacy[k])) for k in shown if k in privacy]}


def _percent(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, float | int) else NOT_RECORDED


def _copy_sentence(result: Mapping[str, Any] | None) -> str:
    if result is None:
        return ("The copy rate was not measured: run `medaug evaluate` on a bank of this generator before sharing "
                "its samples.")
    memo = result.get("memorization") or {}
    parts = [f"{memo[s]['copy_rate']:.1%} in {s} space" for s in ("pixel", "feature")
             if isinstance((memo.get(s) or {}).get("copy_rate"), float | int)]
    if not parts:
        return "The evaluation holds no copy rate."
    return (f"In the evaluation, the copy rate of {memo.get('num_synthetic', 'the')} synthetic images was "
            f"{' and '.join(parts)} (fresh samples score about {memo.get('percentile', 1.0) / 100:g}); inspect the "
            "closest pairs of the evaluation report before sharing samples.")


# -- the card ---------------------------------------------------------------------------------
def write_model_card(folder: str | Path, *, data: Mapping[str, Any], training: Mapping[str, Any],
                     evaluation: Mapping[str, Any] | str | Path | None = None,
                     intended_use: str = DEFAULT_INTENDED_USE, license: str = "Apache-2.0",
                     load_source: str | None = None) -> Path:
    """Write ``MODEL_CARD.md`` into a ``save_pretrained`` folder; returns its path.

    Args:
        folder: the generator folder (``config.json`` + ``model.safetensors``).
        data: at least ``name``; also ``split``, ``size``, ``subset``, ``attribution`` and any
            other facts, shown as given.
        training: ``epochs``, ``steps``, ``wall_time_s``, ``hardware`` (e.g. from
            :func:`training_environment`), ``precision``, ``versions`` and any other facts.
        evaluation: the ``metrics.json`` of ``medaug evaluate`` (mapping, file or folder);
            ``None`` writes "not evaluated".
        intended_use: the intended use paragraph; the limitations are always written.
        license: the weights' licence.
        load_source: what the loading example passes to ``load_pretrained`` (default: the folder).
    """
    folder = Path(folder)
    if not data.get("name"):
        raise ValueError("data needs a 'name' (the training data set, e.g. 'pneumoniamnist')")
    model = load_generator(folder)  # validates the folder and counts the parameters of what was saved
    config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    result = read_evaluation(evaluation) if evaluation is not None else None
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    data_rows = [(k, _fmt(data.get(k))) for k in ("name", "split", "size", "subset", "attribution")]
    data_rows += [(str(k), _fmt(v)) for k, v in data.items() if k not in dict(data_rows)]
    wall = training.get("wall_time_s")
    train_rows = [("epochs", _fmt(training.get("epochs"))), ("optimizer steps", _fmt(training.get("steps"))),
                  ("wall time", f"{wall / 60:.1f} min" if isinstance(wall, float | int) else NOT_RECORDED),
                  ("hardware", _fmt(training.get("hardware"))), ("precision", _fmt(training.get("precision"))),
                  ("library versions", _fmt(training.get("versions")))]
    known = {"epochs", "steps", "wall_time_s", "hardware", "precision", "versions"}
    train_rows += [(str(k), _fmt(v)) for k, v in training.items() if k not in known]
    num_classes = config["init_args"].get("num_classes", 0)
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
    text = env.from_string(_TEMPLATE).render(
        title=f"{config['generator']} on {data['name']}", generator=config["generator"],
        class_path=f"{type(model).__module__}.{type(model).__qualname__}",
        num_parameters=f"{total:,} ({trainable:,} trainable; EMA copies are not trained)"
        if total != trainable else f"{total:,}",
        library_version=config.get("library_version", NOT_RECORDED),
        init_args=[(k, _fmt(v, missing="None")) for k, v in sorted(config["init_args"].items())], data=data_rows,
        training=train_rows, federation=federation_context(folder), evaluation=_evaluation_context(result) if result else None,
        privacy=_privacy_context(folder, result),
        intended_use=intended_use.strip(), copy_sentence=_copy_sentence(result), license=license,
        data_attribution=_fmt(data.get("attribution")) if data.get("attribution") else "attribution not recorded",
        load_source=load_source or folder.as_posix(),
        sample_args=", labels=torch.tensor([0, 1] * 8)" if num_classes >= 2 else "",
    )
    path = folder / CARD_NAME
    tmp = path.with_name(CARD_NAME + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
