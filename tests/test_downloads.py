"""download_file: the one streaming downloader of data sets and weights (file:// URLs, no network)."""

from __future__ import annotations

import hashlib
import stat

import pytest

from lightning_medaug.downloads import DownloadError, download_file


def test_download_checks_md5_or_sha256_and_renames_into_place(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"weights" * 1000)
    url = source.resolve().as_uri()
    dest = tmp_path / "cache" / "nested" / "file.bin"
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    assert download_file(url, dest, md5, "md5") == dest
    assert dest.read_bytes() == source.read_bytes()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    assert download_file(url, tmp_path / "again.bin", sha.upper()) == tmp_path / "again.bin"  # case-insensitive


def test_wrong_digest_leaves_nothing_and_says_how_to_fetch_by_hand(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"data")
    url = source.resolve().as_uri()
    dest = tmp_path / "out" / "file.npz"
    got = hashlib.sha256(b"data").hexdigest()
    with pytest.raises(DownloadError, match=f"SHA-256 mismatch for {url}: expected {'0' * 64}, got {got}; "
                                            f"the file was deleted. .*save it as {dest}, then run again") as info:
        download_file(url, dest, "0" * 64, advice="then run again")
    assert "\n" not in str(info.value)
    assert list(dest.parent.iterdir()) == []


def test_unreachable_url_raises_the_given_error_type(tmp_path):
    class WeightsError(DownloadError):
        pass

    missing = (tmp_path / "absent.zip").resolve().as_uri()
    with pytest.raises(WeightsError, match=f"could not download {missing} .*fetch it by hand from {missing}"):
        download_file(missing, tmp_path / "dl" / "w.zip", error=WeightsError)
    assert list((tmp_path / "dl").iterdir()) == []
