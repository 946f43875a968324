"""Share trained generators: load them from a folder, a zip, a URL or a name; package them as zips.

:func:`load_pretrained` accepts

* a folder written by :meth:`~lightning_medaug.generative.base.GenerativeModule.save_pretrained`;
* a local ``.zip`` of such a folder (as written by :func:`package_pretrained`);
* an ``http(s)://`` or ``file://`` URL of such a zip, downloaded once into the cache folder
  (:func:`~lightning_medaug.cache.cache_folder`: ``$MEDAUG_CACHE``, else
  ``~/.cache/lightning_medaug``) and verified when a SHA-256 is known;
* a name from the index of named weights, ``lightning_medaug/pretrained_index.json``
  (:func:`list_pretrained`).

:func:`load_generator_checkpoint` rebuilds a generator from a Lightning checkpoint (``.ckpt``,
what ``medaug fit`` leaves in a run folder), read with ``torch.load(weights_only=True)``, which
builds only tensors and plain containers.

Only ``config.json``, ``model.safetensors``, ``MODEL_CARD.md``, for a model trained with
differential privacy ``privacy.json`` and for a federated one ``federation.json`` are ever taken out
of a zip, and weights are read with safetensors, so loading never runs code from the file.

Adding a named weight:

1. ``python benchmarks/pretrained_weights.py <recipe>`` trains the recipe, evaluates a bank of
   its generator, writes the model card and packages the folder (``package_pretrained``) into a
   zip, printing its SHA-256;
2. ship the zip: small ones (a few MB) go into ``lightning_medaug/pretrained/`` and the entry
   names it with ``"file"`` (relative to the index); larger ones are published at a stable URL
   (e.g. a release asset) and named with ``"url"``;
3. add an entry to ``pretrained_index.json`` under ``"weights"``::

       "cvae-pneumoniamnist-28": {"file": "pretrained/cvae-pneumoniamnist-28.zip", "sha256": "<sha>",
                                  "generator": "cvae", "card": "one line: data, size, what it is for"}

   ``generator`` must be the registered name in the zip's ``config.json``; an entry without
   ``sha256`` loads with a warning and no verification.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from lightning_medaug.cache import CACHE_ENV_VAR, cache_folder
from lightning_medaug.downloads import DownloadError, download_file
from lightning_medaug.federated.record import FEDERATION_RECORD
from lightning_medaug.generative.base import (
    CHECKPOINT_KEY,
    CONFIG_NAME,
    WEIGHTS_NAME,
    GenerativeModule,
    build_generator,
    load_generator,
)
from lightning_medaug.generative.privacy import PRIVACY_REPORT
from lightning_medaug.hashing import file_digest
from lightning_medaug.registry import GENERATORS

__all__ = ["CACHE_ENV_VAR", "CARD_NAME", "INDEX_FILE", "PretrainedDownloadError", "download_pretrained",
           "extract_pretrained", "file_sha256", "list_pretrained", "load_generator_checkpoint", "load_pretrained",
           "package_pretrained",
           "pretrained_index", "resolve_pretrained"]

#: The model card written by :func:`lightning_medaug.model_card.write_model_card`.
CARD_NAME = "MODEL_CARD.md"
#: The shipped index of named weights.
INDEX_FILE = Path(__file__).with_name("pretrained_index.json")
#: The only files ever taken out of a zip.
#: What a weights zip may hold: the privacy record travels with a DP-trained model, as its guarantee, and the
#: federation's record with a federated one, as its provenance.
PRETRAINED_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, PRIVACY_REPORT, FEDERATION_RECORD)
_URL_SCHEMES = ("http://", "https://", "file://")
# A fixed timestamp (the zip format's earliest) makes package_pretrained byte-reproducible.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class PretrainedDownloadError(DownloadError):
    """A URL of weights could not be read (offline, refused, 404): the shared
    :class:`~lightning_medaug.downloads.DownloadError`, named for weights."""


# -- hashes, index ---------------------------------------------------------------------
#: Hex SHA-256 of a file: :func:`lightning_medaug.hashing.file_digest`, under the name this module always exported.
file_sha256 = file_digest


def pretrained_index(index: str | Path | Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The named weights: name -> ``{"url", "sha256", "generator", "card"}``.

    ``index`` is a JSON file or an already-read mapping of the same layout; ``None`` reads the
    shipped :data:`INDEX_FILE`.
    """
    where = "the index" if isinstance(index, Mapping) else str(index or INDEX_FILE)
    # "file" entries are relative to the index file (to the working folder for a mapping)
    folder = Path.cwd() if isinstance(index, Mapping) else Path(where).parent
    if not isinstance(index, Mapping):
        try:
            index = json.loads(Path(index or INDEX_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read the index of named weights {where} ({err})") from None
    weights = index.get("weights") if isinstance(index, Mapping) else None
    if not isinstance(weights, Mapping):
        raise ValueError(f"{where} has no \"weights\" mapping; see lightning_medaug/hub.py for the layout")
    resolved = {}
    for name, entry in weights.items():
        if not isinstance(entry, Mapping) or "generator" not in entry or not ({"url", "file"} & set(entry)):
            raise ValueError(f"{where}: entry {name!r} needs \"generator\" and a \"url\" or a \"file\"")
        resolved[name] = dict(entry)
        if "file" in entry:  # a zip shipped beside the index (inside the package), no download
            resolved[name]["file"] = str(folder / entry["file"])
    return resolved


def list_pretrained(index: str | Path | Mapping[str, Any] | None = None) -> list[str]:
    """Sorted names of the named weights."""
    return sorted(pretrained_index(index))


# -- download ---------------------------------------------------------------------------------
def _check_sha256(path: Path, expected: str | None, what: str, delete: bool) -> None:
    if expected is None:
        return
    got = file_sha256(path)
    if got != expected.lower():
        if delete:
            path.unlink(missing_ok=True)
        removed = "; the file was deleted, download it again" if delete else ""
        raise ValueError(f"SHA-256 mismatch for {what}: expected {expected.lower()}, got {got}{removed}")


def download_pretrained(url: str, cache_dir: str | Path | None = None, sha256: str | None = None,
                        timeout: float = 60.0) -> Path:
    """The zip at ``url`` in the cache (``<cache>/downloads/<hash of url>.zip``), downloaded once.

    Streamed by :func:`~lightning_medaug.downloads.download_file`, so the cache never holds a
    partial or unverified file. A cached file that fails ``sha256`` is deleted and fetched again once.
    """
    if not url.startswith(_URL_SCHEMES):
        raise ValueError(f"{url!r} is not an http(s):// or file:// URL")
    dest = cache_folder(cache_dir) / "downloads" / (hashlib.sha256(url.encode()).hexdigest()[:32] + ".zip")
    if dest.is_file():
        try:
            _check_sha256(dest, sha256, f"the cached copy of {url}", delete=True)
            return dest
        except ValueError:
            pass  # deleted: fetch it again below
    return download_file(url, dest, sha256, "sha256", timeout, error=PretrainedDownloadError,
                         advice="or pass a local folder or .zip of the weights instead")


# -- zips -------------------------------------------------------------------------------------
def _safe_member(name: str, zip_path: Path) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")) or ".." in path.parts:
        raise ValueError(f"{zip_path} holds the entry {name!r}, which points outside the folder it is extracted "
                         "to (absolute path or '..'); refusing to extract it. Package weights with "
                         "package_pretrained()")
    return path


def _pretrained_members(zf: zipfile.ZipFile, zip_path: Path) -> dict[str, zipfile.ZipInfo]:
    """The zip's config/weights/card entries, at its root or in one folder; refuses unsafe names."""
    paths = {info.filename: _safe_member(info.filename, zip_path) for info in zf.infolist()}
    configs = [p for p in paths.values() if p.name == CONFIG_NAME]
    if len(configs) != 1:
        found = "no" if not configs else f"{len(configs)}"
        raise ValueError(f"{zip_path} holds {found} {CONFIG_NAME} file(s); expected one folder written by "
                         "save_pretrained() (zip it with package_pretrained())")
    root = configs[0].parent
    members = {paths[i.filename].name: i for i in zf.infolist()
               if paths[i.filename].parent == root and paths[i.filename].name in PRETRAINED_FILES and not i.is_dir()}
    if WEIGHTS_NAME not in members:
        raise ValueError(f"{zip_path} has no {WEIGHTS_NAME} beside its {CONFIG_NAME}")
    return members


def extract_pretrained(zip_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Extract a weights zip once into ``<cache>/extracted/<sha256 of the zip>/``; returns that folder.

    Only the :data:`PRETRAINED_FILES` are written; a zip with an
    absolute or ``..`` entry name is refused as a whole (zip-slip).
    """
    zip_path = Path(zip_path)
    if not zipfile.is_zipfile(zip_path):
        raise ValueError(f"{zip_path} is not a zip file; pass a folder written by save_pretrained() or its zip")
    dest = cache_folder(cache_dir) / "extracted" / file_sha256(zip_path)[:32]
    if (dest / CONFIG_NAME).is_file() and (dest / WEIGHTS_NAME).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent))
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for name, info in _pretrained_members(zf, zip_path).items():
                with zf.open(info) as src, open(staging / name, "wb") as out:  # our own name, never the entry's
                    shutil.copyfileobj(src, out, 1 << 20)
        try:
            os.replace(staging, dest)
        except OSError:  # another process extracted the same zip first
            if not (dest / WEIGHTS_NAME).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def package_pretrained(folder: str | Path, out_zip: str | Path) -> str:
    """Zip a ``save_pretrained`` folder reproducibly; returns the zip's SHA-256.

    Entries are the folder's :data:`PRETRAINED_FILES` that exist (``config.json``,
    ``model.safetensors``, ``MODEL_CARD.md``, ``privacy.json``, ``federation.json``), sorted, at the
    zip's root, with a fixed timestamp and mode: the same folder always gives the same bytes, so the hash identifies
    the weights.
    """
    folder, out_zip = Path(folder), Path(out_zip)
    for required in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / required).is_file():
            raise FileNotFoundError(f"{folder / required} not found: pass a folder written by save_pretrained()")
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_zip.with_name(out_zip.name + ".part")
    try:
        with zipfile.ZipFile(tmp, "w") as zf:
            for name in sorted(n for n in PRETRAINED_FILES if (folder / n).is_file()):
                info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                info.create_system = 3  # unix, whatever the packaging machine
                with open(folder / name, "rb") as src, zf.open(info, "w") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, out_zip)
    finally:
        tmp.unlink(missing_ok=True)
    return file_sha256(out_zip)


# -- loading ----------------------------------------------------------------------------------
def resolve_pretrained(source: str | Path, *, sha256: str | None = None, cache_dir: str | Path | None = None,
                       index: str | Path | Mapping[str, Any] | None = None) -> Path:
    """The local ``save_pretrained`` folder that ``source`` names, downloading and extracting as needed.

    ``sha256`` verifies a zip (local or downloaded); for a named weight the index's hash is used
    unless one is given.
    """
    text = str(source)
    if text.startswith(_URL_SCHEMES):
        return extract_pretrained(download_pretrained(text, cache_dir, sha256), cache_dir)
    if "://" in text:
        raise ValueError(f"{text!r}: only http://, https:// and file:// URLs are supported")
    path = Path(text).expanduser()
    if path.is_dir():
        if sha256 is not None:
            raise ValueError(f"sha256 verifies a zip, but {path} is a folder: package it with package_pretrained() "
                             "and load the zip, or drop sha256")
        return path
    if path.is_file():
        _check_sha256(path, sha256, str(path), delete=False)
        return extract_pretrained(path, cache_dir)
    weights = pretrained_index(index)
    if text in weights:
        entry = weights[text]
        expected = sha256 or entry.get("sha256")
        if expected is None:
            warnings.warn(f"named weights {text!r} have no sha256 in the index yet: loading without verification",
                          UserWarning, stacklevel=3)
        if "file" in entry:
            _check_sha256(Path(entry["file"]), expected, text, delete=False)
            return extract_pretrained(Path(entry["file"]), cache_dir)
        return extract_pretrained(download_pretrained(entry["url"], cache_dir, expected), cache_dir)
    if "/" in text or os.sep in text or text.endswith(".zip"):
        raise FileNotFoundError(f"{text} not found: pass a folder written by save_pretrained() (`medaug fit` exports "
                                "one to <run folder>/generator), its .zip, a URL or a named weight")
    close = difflib.get_close_matches(text, weights, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise FileNotFoundError(f"{text!r} is not a folder, a .zip file, an http(s)/file URL or a named weight.{hint} "
                            f"Named weights: {', '.join(sorted(weights)) or 'none'}")


def load_pretrained(source: str | Path, *, sha256: str | None = None, cache_dir: str | Path | None = None,
                    map_location: str | torch.device = "cpu",
                    index: str | Path | Mapping[str, Any] | None = None) -> GenerativeModule:
    """Load a generator from a folder, a zip, a URL of a zip or a named weight (see the module doc).

    Args:
        source: what to load (see :func:`resolve_pretrained`).
        sha256: expected SHA-256 of the zip; a mismatch raises ``ValueError`` (a downloaded file is
            deleted).
        cache_dir: where downloads and extracted zips are kept (default: :func:`cache_folder`).
        map_location: device the weights are loaded onto.
        index: another index of named weights (a JSON file or a mapping); default: the shipped one.

    Returns:
        The generator in eval mode, ready for ``sample``.
    """
    folder = resolve_pretrained(source, sha256=sha256, cache_dir=cache_dir, index=index)
    model = load_generator(folder, map_location=map_location)
    text = str(source)
    if not Path(text).expanduser().exists() and not text.startswith(_URL_SCHEMES):  # a named weight
        expected = pretrained_index(index)[text]["generator"]
        if GENERATORS.name_of(model) != expected:
            raise ValueError(f"named weights {text!r} should hold a {expected!r} generator but hold "
                             f"{GENERATORS.name_of(model)!r}: the index entry is wrong")
    return model


def load_generator_checkpoint(path: str | Path, *, sha256: str | None = None) -> GenerativeModule:
    """The generator a Lightning checkpoint holds, on the CPU, in eval mode.

    Its family and init args come from the record every registered generator writes into its
    checkpoints, or, in a checkpoint of ``medaug fit`` without one, from LightningCLI's
    ``_class_path`` and the ``hyper_parameters``. ``sha256`` verifies the file first.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: pass a .ckpt file written by ModelCheckpoint")
    _check_sha256(path, sha256, str(path), delete=False)
    try:  # a pickle that would build any other object is refused (pickle.UnpicklingError) before it runs
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable checkpoint ({str(err).splitlines()[0][:120]}); pass a .ckpt "
                         "file written by ModelCheckpoint") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"{path} is not a Lightning checkpoint (it has no state_dict); pass a .ckpt file written "
                         "by ModelCheckpoint")
    name, init_args = _checkpoint_generator(checkpoint, path)
    return build_generator(name, init_args, checkpoint["state_dict"],
                           f"the state_dict of {path} does not match a {name} built from its hyper_parameters",
                           "pass a checkpoint this generator's training wrote")


def _checkpoint_generator(checkpoint: Mapping[str, Any], path: Path) -> tuple[str, dict[str, Any]]:
    """The registered name and init args of the generator ``checkpoint`` holds."""
    record = checkpoint.get(CHECKPOINT_KEY)
    if isinstance(record, Mapping) and "generator" in record:
        return str(record["generator"]), dict(record.get("init_args") or {})
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    class_path = hparams.get("_class_path")
    if not isinstance(class_path, str):
        raise ValueError(f"{path} does not say which model it holds (no {CHECKPOINT_KEY!r} record, no _class_path "
                         "in its hyper_parameters): load it into its model in your own code and save_pretrained() it")
    module, _, class_name = class_path.rpartition(".")
    # compared by name, never imported: the path comes from the file (and may name a re-export)
    for name in GENERATORS.list():
        cls = GENERATORS.get(name)
        if cls.__name__ == class_name and cls.__module__.split(".")[0] == module.split(".")[0]:
            return name, {k: v for k, v in hparams.items() if not k.startswith("_")}
    raise ValueError(f"{path} holds a {class_path}, which is not a registered generator: pass the checkpoint of a "
                     f"generator ({', '.join(GENERATORS.list())})")
