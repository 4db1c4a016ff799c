"""Published rate-distortion curves (results/published/*.json) for plots and BD-rates against
codecs or models that cannot be run here.

One JSON file per curve, named ``<dataset>--<curve-id>.json``::

    {"id": "vtm-18.0", "name": "...", "dataset": "kodak",
     "metrics": {"bpp": [...], "psnr_rgb": [...], "ms_ssim": [...], ...},
     "provenance": {"source": "owner/repo@commit path", "notes": "...", "licence": "...", ...}}

Points are stored sorted by increasing bpp. The files are generated from ../shared/reference by
bench/import_published.py; ``$LICBENCH_PUBLISHED`` points the loader at another folder.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import licbench
from licbench.bench.bd import ms_ssim_db

DATASETS: tuple[str, ...] = ("kodak", "clic2020-valid", "clic2021-test", "clic2022-test", "tecnick")
ENV_VAR = "LICBENCH_PUBLISHED"
CURVE_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
FILE_SEPARATOR = "--"


class PublishedError(ValueError):
    """A published curve is malformed or cannot be found."""


class PublishedCurveNotFound(PublishedError, LookupError):
    """No published curve with the requested id for the requested dataset."""


def published_dir() -> Path:
    """The folder holding the curve files: ``$LICBENCH_PUBLISHED`` or <repo root>/results/published."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override)
    return Path(licbench.__file__).resolve().parents[1] / "results" / "published"


def curve_file_name(dataset: str, curve_id: str) -> str:
    return f"{dataset}{FILE_SEPARATOR}{curve_id}.json"


@dataclass(frozen=True, eq=False)  # arrays make field-wise equality ambiguous
class PublishedCurve:
    """One published curve; every metric array has one value per rate point, bpp increasing."""

    id: str
    name: str
    dataset: str
    metrics: dict[str, np.ndarray]
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"published curve {self.dataset}{FILE_SEPARATOR}{self.id}"
        if not CURVE_ID_PATTERN.match(self.id):
            raise PublishedError(f"{where}: id must be a lower-case slug matching {CURVE_ID_PATTERN.pattern}")
        if self.dataset not in DATASETS:
            raise PublishedError(f"{where}: unknown dataset {self.dataset!r}; known: {', '.join(DATASETS)}")
        if "bpp" not in self.metrics:
            raise PublishedError(f"{where}: no 'bpp' values")
        arrays = {name: np.asarray(values, dtype=float) for name, values in self.metrics.items()}
        bpp = arrays["bpp"]
        for name, values in arrays.items():
            if values.ndim != 1 or values.size != bpp.size:
                raise PublishedError(f"{where}: metric {name!r} has {values.size} values but bpp has {bpp.size}")
            if not np.isfinite(values).all():
                raise PublishedError(f"{where}: metric {name!r} has non-finite values")
        if bpp.size < 2 or (bpp <= 0).any() or (np.diff(bpp) <= 0).any():
            raise PublishedError(f"{where}: bpp must be positive and strictly increasing, got {bpp.tolist()}")
        for values in arrays.values():
            values.flags.writeable = False  # a curve is shared reference data
        object.__setattr__(self, "metrics", arrays)

    @property
    def bpp(self) -> np.ndarray:
        return self.metrics["bpp"]

    def metric(self, name: str) -> np.ndarray:
        """Values of metric ``name``; ``ms_ssim_db`` is derived from ``ms_ssim`` when not stored."""
        if name in self.metrics:
            return self.metrics[name]
        if name == "ms_ssim_db" and "ms_ssim" in self.metrics:
            return np.asarray(ms_ssim_db(self.metrics["ms_ssim"]))
        raise PublishedError(
            f"published curve {self.dataset}{FILE_SEPARATOR}{self.id} has no metric {name!r}; "
            f"it has {', '.join(self.metrics)}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "dataset": self.dataset,
            "metrics": {name: values.tolist() for name, values in self.metrics.items()},
            "provenance": self.provenance,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PublishedCurve:
        missing = [key for key in ("id", "name", "dataset", "metrics", "provenance") if key not in data]
        if missing:
            raise PublishedError(f"missing key(s) {', '.join(missing)}")
        return cls(data["id"], data["name"], data["dataset"], data["metrics"], data["provenance"])


def write_published(curve: PublishedCurve, directory: Path) -> Path:
    """Write ``curve`` as ``<dataset>--<id>.json`` in ``directory``; return the path."""
    path = Path(directory) / curve_file_name(curve.dataset, curve.id)
    path.write_text(json.dumps(curve.to_json(), indent=1) + "\n")
    return path


def read_published(path: Path) -> PublishedCurve:
    """Read one curve file; errors name the file."""
    try:
        curve = PublishedCurve.from_json(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError, PublishedError, TypeError, ValueError) as error:
        raise PublishedError(f"{path}: {error}") from None
    expected_name = curve_file_name(curve.dataset, curve.id)
    if Path(path).name != expected_name:
        raise PublishedError(f"{path}: file name does not match its dataset and id ({expected_name})")
    return curve


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise PublishedError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")


def _curve_files(dataset: str | None) -> list[Path]:
    directory = published_dir()
    if not directory.is_dir():
        raise PublishedError(
            f"published curves folder {directory} does not exist (set ${ENV_VAR} or run bench/import_published.py)"
        )
    pattern = f"{dataset}{FILE_SEPARATOR}*.json" if dataset else f"*{FILE_SEPARATOR}*.json"
    return sorted(directory.glob(pattern))


def published_curves(dataset: str | None = None) -> list[PublishedCurve]:
    """All published curves, or those of one dataset, sorted by dataset then id."""
    if dataset is not None:
        _check_dataset(dataset)
    return [read_published(path) for path in _curve_files(dataset)]


def load_published(curve_id: str, dataset: str) -> PublishedCurve:
    """The published curve ``curve_id`` on ``dataset``; the error lists the available ids."""
    _check_dataset(dataset)
    path = published_dir() / curve_file_name(dataset, curve_id)
    if not path.is_file():
        prefix = f"{dataset}{FILE_SEPARATOR}"
        available = [p.name[len(prefix) : -len(".json")] for p in _curve_files(dataset)]
        raise PublishedCurveNotFound(
            f"no published curve {curve_id!r} for dataset {dataset!r} in {path.parent}; "
            f"available: {', '.join(available) or 'none'}"
        )
    return read_published(path)
