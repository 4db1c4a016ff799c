"""The checkpoint zoo: trained models shipped inside the package, each pinned by its sha256.

``licbench/zoo/zoo.json`` lists the shipped model files: name -> {file, sha256, bytes, model,
profile, transforms, training record}. A codec asks for a checkpoint by zoo name or by path; zoo
files are verified against their sha256 before loading, and every file is loaded with
``torch.load(..., weights_only=True)`` (no pickled code runs).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from licbench.digest import file_digest

ZOO_DIR = Path(__file__).resolve().parents[1] / "zoo"
INDEX = ZOO_DIR / "zoo.json"
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def zoo_file(name: str) -> Path:
    """The package file of zoo checkpoint ``name`` (a plain file name, never a path)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"{name!r}: a zoo name is letters, digits, '.', '_' and '-', not starting with '.'")
    return ZOO_DIR / f"{name}.pt"


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


def training_summary(payload: dict[str, Any]) -> dict[str, Any]:
    """The zoo's training record of a model file's payload: data, steps, lambdas, time, and where
    each session ran (device, threads, CPU, versions), with the last held-out validation and its step."""
    training = payload["training"]
    data = training["data"]
    last_validation = payload["history"][-1] if payload["history"] else None
    return {
        "steps": payload["step"],
        "elapsed_s": round(float(training["elapsed_s"]), 1),
        "data": f"{Path(data['folder']).name}/ ({data['train_images']} training images; "
        f"{len(data['val_files'])} held out: {', '.join(Path(f).name for f in data['val_files'])})",
        "settings": {
            key: training["settings"][key]
            for key in ("model", "profile", "transforms", "metric", "lambdas", "crop", "batch_size",
                        "lr", "steps", "seed", "init", "freeze_transforms", "init_whole", "init_probability",
                        "train_synthesis_only", "model_options")
            if key in training["settings"]
        },
        "init_sha256": training.get("init_sha256", {}),
        "sessions": [
            {
                "steps": f"{session['start_step']}..{session.get('end_step')}",
                "elapsed_s": round(float(session.get("elapsed_s", 0.0)), 1),
                "device": session["device"],
                "threads": session.get("threads"),
                "cpu": f"{session['machine']['cpu']} ({session['machine']['cpu_count']} cores)",
                "git_revision": session["versions"].get("git_revision"),
                "torch": session["versions"].get("torch"),
            }
            for session in training["sessions"]
        ],
        # The last validation may predate the final step (a run stopped between validations).
        "held_out_validation_step": last_validation["step"] if last_validation else None,
        "held_out_validation": last_validation["val"] if last_validation else None,
    }


def record_in_zoo(
    name: str, exported: dict[str, Any], payload: dict[str, Any], status: str, index: Path | None = None
) -> dict[str, Any]:
    """Add (or replace) the zoo entry ``name`` in the zoo index (default: the package's) for the
    model file that ``export_checkpoint`` wrote (``exported``: its path, sha256 and size; ``payload``:
    the file's contents). The file must sit next to the index. Returns the entry."""
    index = INDEX if index is None else Path(index)
    model_file = Path(exported["path"]).resolve()
    if model_file.parent != index.resolve().parent:
        raise ValueError(f"zoo entry {name!r}: {model_file} must be in the zoo folder {index.parent}")
    entries = json.loads(index.read_text()) if index.exists() else {"checkpoints": {}}
    config = payload["model"]
    entry = {
        "file": model_file.name,
        "sha256": exported["sha256"],
        "bytes": exported["bytes"],
        "model": config["model"],
        "profile": config.get("profile"),
        "transforms": config.get("transforms"),
        "status": status,
        "training": training_summary(payload),
    }
    entries["checkpoints"][name] = entry
    index.write_text(json.dumps(entries, indent=1) + "\n")
    return entry


def resolve_checkpoint(name_or_path: str) -> tuple[Path, str]:
    """(file, sha256) of a zoo name or a checkpoint path; a zoo file whose bytes do not match its
    recorded sha256 is refused."""
    entries = zoo_entries()
    if name_or_path in entries:
        entry = entries[name_or_path]
        if not entry.path.is_file():
            raise FileNotFoundError(f"zoo checkpoint {entry.name!r}: {entry.path} is missing from the package")
        found = file_digest(entry.path)
        if found != entry.sha256:
            raise ValueError(f"zoo checkpoint {entry.path.name}: sha256 {found[:12]}... does not match the zoo's {entry.sha256[:12]}...")
        return entry.path, found
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        known = ", ".join(sorted(entries)) or "none shipped"
        raise FileNotFoundError(f"checkpoint {name_or_path!r} is neither a file nor a zoo name (zoo: {known})")
    return path, file_digest(path)
