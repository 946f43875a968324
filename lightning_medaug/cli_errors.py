"""How the ``medaug`` command reports a failure: a user's mistake, running out of memory, or a bug.

* A mistake in what the user passed prints one line, ``medaug: error: ...``, and exits with code 2:
  a bad configuration (jsonargparse / LightningCLI argument errors, ``MisconfigurationException``),
  a missing or unusable path (``FileNotFoundError``, ``NotADirectoryError``, ``IsADirectoryError``,
  ``PermissionError``), a checkpoint refused by ``torch.load(weights_only=True)``, and a ``ValueError``
  raised by lightning-medaug's checks, by the configuration's parsers (jsonargparse, argparse,
  Lightning) or by the user's own code that a recipe names.
* Running out of memory (GPU or host) prints one line with what to lower and exits with code 1.
* Anything else is a bug: a ``TypeError``, ``KeyError``, ``AttributeError``, ``IndexError`` or
  ``RuntimeError`` anywhere, and a ``ValueError`` raised inside another installed package (torch,
  numpy, timm, ...), which lightning-medaug's checks should have caught first. The full traceback is
  printed, then one line saying where to report it with the versions, and the exit code is 1.

An error re-raised in the main process for a ``DataLoader`` worker is judged by where the worker
raised it (the original traceback it carries).
"""

from __future__ import annotations

import pickle
import re
import site
import sys
import sysconfig
import traceback
from functools import cache
from pathlib import Path

import torch
from jsonargparse import ArgumentError  # argparse's own class, which jsonargparse and LightningCLI raise
from lightning.fabric.utilities.exceptions import MisconfigurationException

__all__ = ["USER_ERRORS", "bug_line", "is_user_error", "one_line", "out_of_memory", "raised_by", "report_failure"]

#: Always the user's to fix, whoever raised them.
USER_ERRORS = (ArgumentError, MisconfigurationException, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError)
#: Packages whose ``ValueError`` says what was wrong with the user's input (``None``: the user's own code);
#: ``argparse`` runs inside jsonargparse's and LightningCLI's parsers.
VALIDATING_PACKAGES = (None, "lightning_medaug", "jsonargparse", "argparse", "lightning", "lightning_fabric",
                       "pytorch_lightning")
ISSUES_FALLBACK = "https://github.com/lightning-medaug/lightning-medaug/issues"

_OWN_PACKAGE = Path(__file__).resolve().parent
# the DataLoader's ExceptionWrapper puts the worker's traceback into the message it re-raises with
_WORKER_FILE = re.compile(r'^\s*File "(?P<path>[^"]+)", line (?P<line>\d+)', re.MULTILINE)


def report_failure(err: BaseException, memory_hint: str) -> int:
    """Print what the user should know about ``err`` (one line, or the traceback and a bug line) to
    stderr; returns the exit code."""
    what = out_of_memory(err)  # first: jsonargparse re-raises a constructor's error as a ValueError
    if what is not None:
        print(f"medaug: error: out of memory ({what}); {memory_hint}", file=sys.stderr)
        return 1
    if isinstance(err, pickle.UnpicklingError):  # torch.load(weights_only=True) refused a checkpoint
        found = re.search(r"Unsupported global: GLOBAL [\w.]+", str(err))
        print(f"medaug: error: refused to load a checkpoint that is not plain weights "
              f"({found.group(0) if found else one_line(err)[:200]}); medaug only loads checkpoints with "
              "torch.load(weights_only=True)", file=sys.stderr)
        return 2
    if is_user_error(err):
        print(f"medaug: error: {one_line(_worker_message(err) or err)}", file=sys.stderr)
        return 2
    traceback.print_exception(err, file=sys.stderr)
    print(bug_line(err), file=sys.stderr)
    return 1


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` says what was wrong with the user's input (see the module's docstring)."""
    if isinstance(err, USER_ERRORS):
        return True
    return isinstance(err, ValueError) and raised_by(err)[0] in VALIDATING_PACKAGES


def raised_by(err: BaseException) -> tuple[str | None, str]:
    """The package that raised ``err`` (``None`` for code outside any installed package: the user's)
    and ``file:line``; for an error re-raised from a ``DataLoader`` worker, where the worker raised it."""
    found = list(_WORKER_FILE.finditer(str(err))) if "DataLoader worker" in str(err) else []
    if found:
        path, line = found[-1]["path"], found[-1]["line"]
    else:
        tb = err.__traceback__
        if tb is None:
            return None, "?"
        while tb.tb_next is not None:
            tb = tb.tb_next
        path, line = tb.tb_frame.f_code.co_filename, str(tb.tb_lineno)
    return package_of(path), f"{path}:{line}"


def package_of(path: str | Path) -> str | None:
    """The top-level package (or standard-library module) a source file belongs to; ``None`` when it
    lies outside lightning-medaug, the installed packages and the standard library."""
    if str(path).startswith("<"):  # "<frozen importlib._bootstrap>", "<string>": the interpreter's own code
        return "python"
    path = Path(path).resolve()
    if path.is_relative_to(_OWN_PACKAGE):
        return "lightning_medaug"
    for root in _install_roots():
        if path.is_relative_to(root):
            parts = path.relative_to(root).parts
            return parts[0].removesuffix(".py") if parts else None
    return None


@cache
def _install_roots() -> tuple[Path, ...]:
    """site-packages folders before the standard library's (which may contain one of them)."""
    paths = sysconfig.get_paths()
    roots = [paths["purelib"], paths["platlib"], *site.getsitepackages(), site.getusersitepackages(),
             paths["stdlib"], paths["platstdlib"]]
    unique = dict.fromkeys(Path(r).resolve() for r in roots if r)
    return tuple(sorted(unique, key=lambda p: len(p.parts), reverse=True))


def bug_line(err: BaseException) -> str:
    """The line printed after a bug's traceback: what it is, where to report it, the versions."""
    package, where = raised_by(err)
    yours = (" (the traceback ends in code outside lightning-medaug and its dependencies: if that is your own "
             "code, look there first)") if package is None else ""
    return (f"medaug: internal error: {type(err).__name__} at {where} is a bug in lightning-medaug or a dependency, "
            f"not a mistake in what you passed{yours}; please report it with the traceback above at {_issues()} "
            f"({versions()})")


def versions() -> str:
    """``lightning-medaug X, torch Y, lightning Z``."""
    import lightning

    import lightning_medaug

    return (f"lightning-medaug {lightning_medaug.__version__}, torch {torch.__version__}, "
            f"lightning {lightning.__version__}")


@cache
def _issues() -> str:
    """The issue tracker: the project's Homepage URL (``[project.urls]`` in pyproject.toml) + ``/issues``."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        urls = metadata("lightning-medaug").get_all("Project-URL") or []
    except PackageNotFoundError:  # run from a source tree that was never installed
        return ISSUES_FALLBACK
    home = next((u.split(",", 1)[1].strip() for u in urls if u.lower().startswith("homepage,")), None)
    return f"{home.rstrip('/')}/issues" if home else ISSUES_FALLBACK


def _worker_message(err: BaseException) -> str | None:
    """The last line of the traceback a ``DataLoader`` worker's error carries (its own message)."""
    text = str(err)
    if "DataLoader worker" not in text or not _WORKER_FILE.search(text):
        return None
    last = [line for line in text.splitlines() if line.strip()][-1]
    return last.split(": ", 1)[1] if ": " in last else last


def out_of_memory(err: BaseException) -> str | None:
    """The gist of an out-of-memory error from CUDA's allocator, the CPU allocator or NumPy (also when
    another rank's is re-raised here); ``None`` for any other error."""
    text = one_line(err)
    cpu = re.search(r"can't allocate memory: you tried to allocate (\d+) bytes", text)
    if cpu:  # the CPU allocator states a byte count behind an "[enforce fail at ...]" prefix
        return f"the host could not allocate {_bytes(int(cpu.group(1)))}"
    if not isinstance(err, (torch.OutOfMemoryError, MemoryError)) and "out of memory" not in text.lower():
        return None
    # CUDA's message goes on about fragmentation and the allocator's settings; its first three
    # sentences say what was asked for and what was free
    sentences = re.split(r"(?<=\.) (?=[A-Z])", text)
    return " ".join(sentences[:3]).rstrip(".") or type(err).__name__


def _bytes(count: int) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    power = min((max(count, 1).bit_length() - 1) // 10, len(units) - 1)  # exact at powers of 1024
    return f"{count / 1024**power:.1f} {units[power]}"


# Lines of jsonargparse's union-type explanations that say nothing about the actual mistake.
_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "- Expected a <class 'NoneType'>",
          "Given value type:", "Given value:", "tip: For details")


def one_line(err: BaseException | str) -> str:
    """Condense an exception message into the one line the CLI prints."""
    text = err if isinstance(err, str) else (str(err).strip() or type(err).__name__)
    if isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    lines = [line.strip().removeprefix("- ").strip() for line in text.splitlines()]  # bullets, not "--option"
    kept = [line for line in lines if line and not any(line.startswith(n.removeprefix("- ")) for n in _NOISE)]
    return " ".join(kept) if kept else lines[0]
