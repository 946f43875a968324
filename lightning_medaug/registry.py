"""Name -> class registries for generators, downstream tasks and feature extractors.

Modelled on timm's ``_registry.py``: a family registers itself with one decorator and is then
reachable by name from Python, recipes and the CLI. Third-party generators plug in through the
``lightning_medaug.generators`` entry-point group without any edit to this package::

    # in the plug-in's pyproject.toml
    [project.entry-points."lightning_medaug.generators"]
    my_gan = "my_package.my_gan:MyGAN"

A module or plug-in that fails to import (a missing optional dependency) does not take the others
down: every other family still loads, and asking for an entry that is missing says which module
failed and why (:attr:`Registry.failures`), so ``medaug list`` and recipes of other families keep working.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = [
    "Registry",
    "GENERATORS",
    "TASKS",
    "FEATURE_EXTRACTORS",
    "register_generator",
    "create_generator",
    "get_generator_class",
    "list_generators",
    "register_task",
    "register_feature_extractor",
]


class Registry(Generic[T]):
    """A named collection of classes (or factories) of one kind.

    Args:
        kind: what the registry holds, used in error messages ("generator").
        builtin_module: package whose public modules are all imported on first lookup, so that
            built-in entries register themselves; lazy so that importing the registry stays cheap
            and cycle-free.
        entry_point_group: optional entry-point group scanned for third-party entries.
    """

    def __init__(self, kind: str, builtin_module: str | None = None, entry_point_group: str | None = None):
        self.kind = kind
        self._builtin_module = builtin_module
        self._entry_point_group = entry_point_group
        self._entries: dict[str, T] = {}
        self._loaded = False
        #: module (or ``entry point name = target``) -> the ImportError that kept it out
        self.failures: dict[str, ImportError] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; the name is stored on it as ``registry_name``."""
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"invalid {self.kind} name {name!r}: use letters, digits, '-' and '_'")

        def decorator(obj: T) -> T:
            existing = self._entries.get(name)
            if existing is not None and existing is not obj and _qualname(existing) != _qualname(obj):
                raise ValueError(f"{self.kind} {name!r} is already registered by {_qualname(existing)}")
            self._entries[name] = obj
            try:
                obj.registry_name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj

        return decorator

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self._builtin_module:
            package = importlib.import_module(self._builtin_module)
            # every public module of the package: a new family is one new file, no import list to edit
            for info in pkgutil.iter_modules(getattr(package, "__path__", [])):
                if not info.name.startswith("_"):
                    module = f"{self._builtin_module}.{info.name}"
                    try:
                        importlib.import_module(module)
                    except ImportError as err:  # one family's missing dependency must not hide the others
                        self.failures[module] = err
        if self._entry_point_group:
            for ep in entry_points(group=self._entry_point_group):
                if ep.name not in self._entries:
                    try:
                        self.register(ep.name)(ep.load())
                    except ImportError as err:
                        self.failures[f"{ep.name} = {ep.value}"] = err

    def _failure_hint(self) -> str:
        if not self.failures:
            return ""
        lines = "; ".join(f"{where} ({_missing(err)})" for where, err in self.failures.items())
        return f" Not loaded, so not available: {lines}."

    def get(self, name: str) -> T:
        """Return the entry registered as ``name``; raises ``ValueError`` naming close matches."""
        self._load()
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(sorted(self._entries)) or 'none'}."
                f"{self._failure_hint()}"
            )
        return self._entries[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        """Instantiate the entry registered as ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)  # type: ignore[operator]

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a shell-style ``pattern``."""
        self._load()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries

    def name_of(self, obj: Any) -> str | None:
        """The name under which ``obj`` (a class or an instance of one) is registered, if any."""
        self._load()
        cls = obj if isinstance(obj, type) else type(obj)
        for name, entry in self._entries.items():
            if entry is cls:
                return name
        return None


def _missing(err: ImportError) -> str:
    """What an ImportError lacks, in words a user can act on."""
    name = getattr(err, "name", None)
    if isinstance(err, ModuleNotFoundError) and name:
        return f"it needs the module {name.split('.')[0]!r}, which is not installed"
    return f"ImportError: {err}"


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


GENERATORS: Registry = Registry("generator", "lightning_medaug.generative", "lightning_medaug.generators")
TASKS: Registry = Registry("task", "lightning_medaug.tasks")
FEATURE_EXTRACTORS: Registry = Registry("feature extractor", "lightning_medaug.metrics")

register_generator = GENERATORS.register
get_generator_class = GENERATORS.get
create_generator = GENERATORS.create
list_generators = GENERATORS.list
register_task = TASKS.register
register_feature_extractor = FEATURE_EXTRACTORS.register
