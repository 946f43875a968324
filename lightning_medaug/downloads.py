"""Downloads of data sets and weights: one streaming downloader and the one error type of a failure.

A download that fails (offline, refused, 404, a wrong checksum) is the user's situation to fix,
not a bug: a ``ValueError``, so ``medaug`` prints it as one line with exit code 2, and a
``ConnectionError`` for code that retries on network errors.
"""

from __future__ import annotations

import os
import tempfile
import urllib.request
from pathlib import Path

from lightning_medaug.hashing import file_digest

__all__ = ["DownloadError", "download_file"]

_CHUNK = 1 << 20
# Names in messages, as the sums are published (MedMNIST's "MD5", a weights index's "SHA-256").
_DISPLAY = {"md5": "MD5", "sha256": "SHA-256"}


class DownloadError(ValueError, ConnectionError):
    """A file could not be downloaded or failed its checksum; the message says how to fetch it by hand."""


def download_file(url: str, dest: str | Path, digest: str | None = None, algorithm: str = "sha256",
                  timeout: float = 60.0, advice: str = "", error: type[DownloadError] = DownloadError) -> Path:
    """Stream ``url`` (http, https or file) to ``dest`` with a progress bar, check its digest, rename atomically.

    The bytes go to a temporary file beside ``dest``, which becomes ``dest`` only when complete and,
    if ``digest`` is given, when its ``algorithm`` hex digest (``"md5"`` for MedMNIST's published
    sums, ``"sha256"`` for weights) matches. So ``dest`` never holds a partial or corrupt file,
    and concurrent downloads each rename a complete one (the last one wins).

    Args:
        url: what to download.
        dest: where the file ends up; its folder is created.
        digest: expected hex digest, or ``None`` to take the bytes unchecked.
        algorithm: a ``hashlib`` name for ``digest``.
        timeout: seconds to wait for the server at each read.
        advice: a sentence ending the error message (e.g. another way to get the file).
        error: the :class:`DownloadError` subclass to raise.

    Raises:
        DownloadError (or ``error``): one line naming the URL, the cause, and
        "fetch it by hand from <url> and save it as <dest>".
    """
    dest = Path(dest)
    manual = f"fetch it by hand from {url} and save it as {dest}" + (f", {advice}" if advice else "")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as err:
        raise error(f"cannot write into {dest.parent} ({_one_line(err)}); {manual}") from None
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                _copy_with_progress(response, out, dest.name)
        except (OSError, ValueError) as err:  # URLError, HTTPError, timeouts and refused connections are OSErrors
            raise error(f"could not download {url} ({_one_line(getattr(err, 'reason', None) or err, err)}); "
                        f"check the address and the connection, or {manual}") from None
        if digest is not None:
            got, expected = file_digest(tmp, algorithm), digest.lower()
            if got != expected:
                name = _DISPLAY.get(algorithm, algorithm)
                raise error(f"{name} mismatch for {url}: expected {expected}, got {got}; the file was deleted. "
                            f"Retry, or {manual}")
        tmp.chmod(0o644)  # mkstemp creates 0600 files; a downloaded file should be readable like any other
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _copy_with_progress(response, out, name: str) -> None:
    """Copy a response into ``out`` with a transient rich progress bar (indeterminate without a size)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    total = int(response.headers.get("Content-Length") or 0) or None
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(f"downloading {name}", total=total)
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            progress.advance(task, len(chunk))


def _one_line(reason: object, err: BaseException | None = None) -> str:
    """``"<error type>: <first line of reason>"``, cut to 160 characters."""
    lines = str(reason).strip().splitlines()
    return f"{type(err if err is not None else reason).__name__}: {lines[0][:160] if lines else ''}"
