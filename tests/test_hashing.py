"""file_digest / file_digests: the one chunked file hasher, checked against hashlib on whole bytes."""

from __future__ import annotations

import hashlib
import os

import pytest

from lightning_medaug.hashing import file_digest, file_digests


def test_digests_match_hashlib_across_chunks_and_files(tmp_path):
    first, second = tmp_path / "a.bin", tmp_path / "b.bin"
    big = os.urandom((1 << 22) + 123)  # more than one chunk, and a partial last one
    first.write_bytes(big)
    second.write_bytes(b"masks")
    assert file_digest(first) == hashlib.sha256(big).hexdigest()
    assert file_digest(str(first), "md5") == hashlib.md5(big).hexdigest()
    # several files hash as their bytes one after another (a shard's images, then its masks)
    assert file_digest([first, second]) == hashlib.sha256(big + b"masks").hexdigest()
    both = file_digests(first, ("md5", "sha256"))
    assert both == {"md5": hashlib.md5(big).hexdigest(), "sha256": hashlib.sha256(big).hexdigest()}
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert file_digest(empty) == hashlib.sha256(b"").hexdigest()


def test_missing_file_and_unknown_algorithm_raise(tmp_path):
    with pytest.raises(FileNotFoundError):
        file_digest(tmp_path / "absent.bin")
    (tmp_path / "x").write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported hash type"):
        file_digest(tmp_path / "x", "no-such-hash")
