"""A study's ``generators`` entries: what to train on each subset, how to sample it, and which arms mix it.

An entry either trains a generator (``recipe``, ``epochs``, ``overrides``) or reuses the weights another
entry trained on the same subset (``weights_from``) and only samples them differently: a larger bank,
other sampler settings. Sampling is a choice made after training, so comparing such choices should not
train the generator again. An entry with ``inputs_from: {dotted.recipe.key: <other entry>}`` trains its
own recipe with each key set to that entry's generator trained on the same subset (trained first): a
latent diffusion model on the autoencoder of its own subset (``model.init_args.autoencoder_path``).
``teacher_from: <other entry>`` is short for ``inputs_from: {model.init_args.teacher: <other entry>}``:
a distilled student (``consistency``) beside its teacher, each with its own arms. Per-entry ``fractions``,
``ratios``, ``synthetic_only``, ``classic_with_synthetic`` and ``bank_factor`` narrow or change the
study's arms for that entry alone; left out, the study's own settings apply. An entry's ``fractions``
are where it runs: a study run on a slice (``--fractions [0.1]``) runs it at the fractions the two have
in common.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ARM_SETTINGS", "GeneratorSpec", "parse_generators"]

_TRAINING = ("recipe", "epochs", "overrides")
# the settings an entry may give for its own arms; left out, the study's apply
ARM_SETTINGS = ("fractions", "ratios", "synthetic_only", "classic_with_synthetic", "bank_factor")
_KEYS = (*_TRAINING, "sample_kwargs", "weights_from", "teacher_from", "inputs_from", *ARM_SETTINGS)
_TEACHER_KEY = "model.init_args.teacher"


@dataclass(frozen=True)
class GeneratorSpec:
    """One ``generators`` entry. ``None`` in an arm setting means "the study's"."""

    name: str
    recipe: str | None = None
    epochs: int | dict[float, int] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    sample_kwargs: dict[str, Any] = field(default_factory=dict)
    weights_from: str | None = None
    teacher_from: str | None = None
    inputs_from: dict[str, str] = field(default_factory=dict)
    fractions: list[float] | None = None
    ratios: list[float] | None = None
    synthetic_only: bool | None = None
    classic_with_synthetic: list[float] | None = None
    bank_factor: float | None = None

    @property
    def trained_as(self) -> str:
        """The entry whose training run holds the weights this one samples."""
        return self.weights_from or self.name

    def grid_source(self, specs: dict[str, GeneratorSpec]) -> str:
        """The entry whose sample grid shows this one's samples: its weights' source when it samples
        them the same way (the grid would repeat the source's image for image), else itself."""
        if self.weights_from and self.sample_kwargs == specs[self.weights_from].sample_kwargs:
            return self.weights_from
        return self.name


def _ratios(value: Any, what: str) -> list[float]:
    ratios = [float(r) for r in value]
    if any(not 0 < r < 1 for r in ratios):
        raise ValueError(f"{what} must lie in (0, 1) for 'add' mixing, got {ratios}")
    return ratios


def parse_generators(generators: dict[str, dict[str, Any]] | None,
                     classic_augmentation: bool) -> dict[str, GeneratorSpec]:
    """Check every entry (unknown keys, a recipe or a trained entry to reuse, arm settings) and return
    them as :class:`GeneratorSpec`; recipes are checked by the caller, which knows how to load them."""
    specs: dict[str, GeneratorSpec] = {}
    for name, spec in (generators or {}).items():
        if not isinstance(spec, dict):
            raise ValueError(f"generator {name!r} must be a mapping with a 'recipe', got {spec!r}")
        unknown = set(spec) - set(_KEYS)
        if unknown:
            raise ValueError(f"generator {name!r} has unknown keys {sorted(unknown)}; use {', '.join(_KEYS)}")
        source = spec.get("weights_from")
        if source is None and "recipe" not in spec:
            raise ValueError(f"generator {name!r} needs a 'recipe' (e.g. cgan_pneumonia.yaml) or "
                             "'weights_from' (another entry whose trained weights it samples)")
        if source is not None:
            given = sorted(set(spec) & set(_TRAINING))
            if given:
                raise ValueError(f"generator {name!r} reuses the weights of {source!r}: {given} belong to that "
                                 "entry's training, not to this one")
            base = (generators or {}).get(source)
            if not isinstance(base, dict) or "weights_from" in base or source == name:
                raise ValueError(f"generator {name!r}: weights_from must name another entry that trains its own "
                                 f"generator, got {source!r}")
        teacher = spec.get("teacher_from")
        inputs = _inputs(name, spec, generators or {})
        own_fractions = spec.get("fractions")
        if own_fractions is not None:
            own_fractions = [float(f) for f in own_fractions]
            if not own_fractions or any(not 0 < f <= 1 for f in own_fractions):
                raise ValueError(f"generator {name!r}: fractions must be non-empty values in (0, 1], "
                                 f"got {own_fractions}")
        combined = spec.get("classic_with_synthetic")
        if combined is not None:
            combined = _ratios(combined, f"generators.{name}.classic_with_synthetic")
            if combined and not classic_augmentation:
                raise ValueError(f"generator {name!r}: classic_with_synthetic needs classic_augmentation")
        factor = spec.get("bank_factor")
        if factor is not None and float(factor) <= 0:
            raise ValueError(f"generators.{name}.bank_factor must be positive, got {factor}")
        specs[name] = GeneratorSpec(
            name=name, recipe=spec.get("recipe"), epochs=spec.get("epochs"),
            overrides=dict(spec.get("overrides") or {}),
            sample_kwargs=dict(spec.get("sample_kwargs") or {}), weights_from=source, teacher_from=teacher,
            inputs_from=inputs,
            fractions=own_fractions,
            ratios=None if spec.get("ratios") is None else _ratios(spec["ratios"], f"generators.{name}.ratios"),
            synthetic_only=None if spec.get("synthetic_only") is None else bool(spec["synthetic_only"]),
            classic_with_synthetic=combined, bank_factor=None if factor is None else float(factor))
    _check_acyclic(specs)
    return specs


def _inputs(name: str, spec: dict[str, Any], generators: dict[str, Any]) -> dict[str, str]:
    """``inputs_from`` (with ``teacher_from`` folded in) checked: dotted recipe keys, each naming another entry
    that trains its own recipe, given to an entry that trains too."""
    raw = spec.get("inputs_from") or {}
    if not isinstance(raw, dict):
        raise ValueError(f"generator {name!r}: inputs_from must map recipe keys to entries, e.g. "
                         f"{{model.init_args.autoencoder_path: autoencoder}}, got {raw!r}")
    named = {str(key): (entry, f"inputs_from.{key}") for key, entry in raw.items()}
    if spec.get("teacher_from") is not None:
        if _TEACHER_KEY in named:
            raise ValueError(f"generator {name!r}: give the teacher once, as teacher_from or in inputs_from")
        named[_TEACHER_KEY] = (spec["teacher_from"], "teacher_from")
    for entry, what in named.values():
        base = generators.get(entry)
        if spec.get("weights_from") is not None or entry == name or not isinstance(base, dict) or "recipe" not in base:
            raise ValueError(f"generator {name!r}: {what} must name another entry that trains its own generator "
                             f"(with a 'recipe'), and the entry must train too, got {entry!r}")
    return {key: str(entry) for key, (entry, _) in named.items()}


def _check_acyclic(specs: dict[str, GeneratorSpec]) -> None:
    """Entries trained on other entries' generators must not need themselves (that would never end)."""
    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise ValueError(f"generators need each other in a cycle: {' -> '.join((*path, name))}")
        for entry in specs[name].inputs_from.values():
            visit(entry, (*path, name))

    for name in specs:
        visit(name, ())
