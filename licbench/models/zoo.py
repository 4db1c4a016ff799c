"""The checkpoint zoo: trained models shipped inside the package, each pinned by its sha256.

``licbench/zoo/zoo.json`` lists the shipped model files: name -> {file, sha256, bytes, model,
profile, transforms, training record}. A codec asks for a checkpoint by zoo name or by path; zoo
files are verified against their sha256 before loading, and every file is loaded with
``torch.load(..., weights_only=True)`` (no pickled code runs).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ZOO_DIR = Path(__file__).resolve().parents[1] / "zoo"
INDEX = ZOO_DIR / "zoo.json"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    path: Path
    sha256: str
    model: str
    profile: str | None
    record: dict[str, Any]


def zoo_entries() -> dict[str, ZooEntry]:
    if not INDEX.exists():
        return {}
    index = json.loads(INDEX.read_text())
    return {
        name: ZooEntry(
            name=name,
            path=ZOO_DIR / entry["file"],
            sha256=entry["sha256"],
            model=entry["model"],
            profile=entry.get("profile"),
            record=entry,
        )
        for name, entry in index["checkpoints"].items()
    }


def default_checkpoint(model: str, profile: str | None) -> ZooEntry | None:
    """The zoo's checkpoint for that model and profile (the first listed), if any is shipped."""
    for entry in zoo_entries().values():
        if entry.model == model and entry.profile == profile:
            return entry
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_checkpoint(name_or_path: str) -> tuple[Path, str]:
    """(file, sha256) of a zoo name or a checkpoint path; a zoo file whose bytes do not match its
    recorded sha256 is refused."""
    entries = zoo_entries()
    if name_or_path in entries:
        entry = entries[name_or_path]
        if not entry.path.is_file():
            raise FileNotFoundError(f"zoo checkpoint {entry.name!r}: {entry.path} is missing from the package")
        found = file_sha256(entry.path)
        if found != entry.sha256:
            raise ValueError(f"zoo checkpoint {entry.path.name}: sha256 {found[:12]}... does not match the zoo's {entry.sha256[:12]}...")
        return entry.path, found
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        known = ", ".join(sorted(entries)) or "none shipped"
        raise FileNotFoundError(f"checkpoint {name_or_path!r} is neither a file nor a zoo name (zoo: {known})")
    return path, file_sha256(path)
