"""Shared test fixtures: the data in ../shared beside the repository, small test images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
KODAK = SHARED / "data" / "kodak"
PLUGIN_DIR = Path(__file__).resolve().parent / "plugin"


def kodak_image(index: int = 1) -> np.ndarray:
    path = KODAK / f"kodim{index:02d}.png"
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests need ../shared/data/kodak beside the repository")
    return np.asarray(Image.open(path).convert("RGB"))


def damaged_copies(bitstream: bytes) -> list[bytes]:
    """Every truncation of a bitstream, one byte appended, and every single-bit flip (one per
    byte, a different bit each): what a decoder must reject with a one-line error."""
    damaged = [bitstream[:length] for length in range(len(bitstream))] + [bitstream + b"\x00"]
    for position in range(len(bitstream)):
        flipped = bytearray(bitstream)
        flipped[position] ^= 1 << (position % 8)
        damaged.append(bytes(flipped))
    return damaged


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Three small crops of Kodak images (big enough for MS-SSIM), as a folder dataset."""
    folder = tmp_path / "images"
    folder.mkdir()
    for index in (1, 5, 23):
        Image.fromarray(kodak_image(index)[:176, :192]).save(folder / f"crop{index:02d}.png")
    return folder


def licbench_cli(*args: str, db: Path, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    """Run the real ``licbench`` command line in a child process, with the test codec plugin
    discoverable through its entry point (as an installed third-party package would be)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGIN_DIR), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", "licbench.cli", "--db", str(db), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **popen,
    )


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (request it with ``pytestmark``): the small models of
    the tests gain nothing from more threads on 2 shared cores and lose much to oversubscription.
    The previous count is restored for the other modules."""
    import torch  # here, not at the top: most test modules never import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
