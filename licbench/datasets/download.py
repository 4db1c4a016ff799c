"""Streaming downloads that never leave a partial or unverified file under the final name."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

from tqdm import tqdm

from licbench import __version__
from licbench.datasets.catalogue import Checksum
from licbench.datasets.errors import ChecksumError, DownloadError

_CHUNK_BYTES = 1 << 20


def download(url: str, dest: Path, expected: Checksum | None = None, timeout: float = 60.0) -> str:
    """Fetch ``url`` into ``dest`` and return the file's sha256 (hex).

    The bytes go to a ``.part`` file beside ``dest`` (with a progress bar on a terminal); the
    checksum is verified before the atomic rename, so ``dest`` either does not exist or holds
    the verified bytes. On any failure the ``.part`` file is removed and a
    :class:`DownloadError` or :class:`ChecksumError` explains what happened.
    ``timeout`` is per network operation, not for the whole transfer.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    digests = {"sha256": hashlib.sha256()}
    if expected is not None:
        digests.setdefault(expected.algorithm, hashlib.new(expected.algorithm))
    part_fd, part_name = tempfile.mkstemp(dir=dest.parent, prefix=f"{dest.name}.", suffix=".part")
    part = Path(part_name)
    try:
        with os.fdopen(part_fd, "wb") as out:
            _stream(url, dest.name, out, digests, timeout)
        if expected is not None:
            actual = digests[expected.algorithm].hexdigest()
            if not expected.matches(actual):
                raise ChecksumError(
                    f"{dest.name} from {url}: {expected.algorithm} mismatch "
                    f"(expected {expected.hexdigest}, got {actual}); the file was not kept"
                )
        # mkstemp makes the file private to its owner; data files are normally world-readable.
        os.chmod(part, 0o644)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return digests["sha256"].hexdigest()


def _stream(url: str, name: str, out: BinaryIO, digests: dict[str, Any], timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": f"licbench/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            content_type = response.headers.get("Content-Type", "")
            if content_type.startswith("text/html") and not name.endswith((".html", ".htm")):
                raise DownloadError(f"{url} answered with a web page instead of {name}; download it with a browser")
            length = response.headers.get("Content-Length")
            expected_bytes = int(length) if length and length.isdigit() else None
            received = 0
            with tqdm(
                total=expected_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=None
            ) as bar:
                while chunk := response.read(_CHUNK_BYTES):
                    out.write(chunk)
                    for digest in digests.values():
                        digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DownloadError(f"download of {url} failed: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"download of {url} failed: {type(exc).__name__}: {exc}") from None
    if expected_bytes is not None and received != expected_bytes:
        raise DownloadError(f"download of {url} failed: got {received} of {expected_bytes} bytes")
