"""Whole-file digests: the one helper behind dataset checksums, image hashes and pinned weights."""

from __future__ import annotations

import hashlib
import os


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """The hex digest (lowercase) of the file's bytes; ``algorithm`` as :mod:`hashlib` names it."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()
