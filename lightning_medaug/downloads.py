"""The one error type of a failed download (data sets, weights), shared by every downloader.

A download that fails (offline, refused, 404, a wrong checksum) is the user's situation to fix,
not a bug: a ``ValueError``, so ``medaug`` prints it as one line with exit code 2, and a
``ConnectionError`` for code that retries on network errors.
"""

from __future__ import annotations

__all__ = ["DownloadError"]


class DownloadError(ValueError, ConnectionError):
    """A file could not be downloaded or failed its checksum; the message says how to fetch it by hand."""
