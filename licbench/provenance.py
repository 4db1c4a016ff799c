"""Where a result came from: machine, software versions, git revision."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import licbench


@lru_cache(maxsize=1)
def git_revision() -> str:
    """The licbench checkout's commit (with "+dirty" for uncommitted changes), or "unknown"."""
    repo = Path(licbench.__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _package_versions(names: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


@lru_cache(maxsize=1)
def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "host": platform.node(),
        "os": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    try:
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


def provenance(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "licbench": licbench.__version__,
        "git_revision": git_revision(),
        "machine": machine(),
        "packages": _package_versions(
            ("numpy", "pillow", "imageio-ffmpeg", "torch", "compressai", "pytorch-msssim", "scipy", "pandas")
        ),
        **(extra or {}),
    }
