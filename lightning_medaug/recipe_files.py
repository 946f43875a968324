"""Where recipes live and how they name the mixer: shared by evaluation, studies and the demo.

A recipe is a LightningCLI config (``class_path`` / ``init_args``) in ``recipes/``. Reading one
needs nothing of the package, so this module sits below every part that reads recipes.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MIX_CLASS", "find_recipe"]

#: The ``class_path`` by which a recipe wraps its real data in the synthetic mixer.
MIX_CLASS = "lightning_medaug.mixing.SyntheticMixDataModule"


def find_recipe(name: str | Path) -> Path:
    """Resolve a recipe given as a path, or as a file name in ``./recipes`` or the source tree's ``recipes/``."""
    name = Path(name)
    candidates = [name, Path("recipes") / name, Path(__file__).resolve().parents[1] / "recipes" / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"recipe {str(name)!r} not found (looked in ./, ./recipes and the source tree's recipes/)")
