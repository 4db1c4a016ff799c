"""Re-create results/published/ (one JSON file per curve) from ../shared/reference.

Usage: python bench/import_published.py [--reference DIR] [--out DIR]

Each source format is read by its own function below; origins (repository@commit and path) are
those listed in ../shared/reference/README.md and are kept in every curve's provenance.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Collection

import numpy as np

from licbench.published import PublishedCurve, curve_file_name, published_dir, write_published

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = REPO_ROOT.parent / "shared" / "reference"

LOSSY_VAE = "duanzhiihao/lossy-vae@005c3c22"
COMPRESSAI = "InterDigitalInc/CompressAI@869a9f5d"
C3 = "google-deepmind/c3_neural_compression@e63e7519"
ELIC = "JiangWeibeta/ELIC@b659f729a6b9ce56f9f3712da35d05b38bd9f965"
NO_LICENCE = "not stated (no licence file in the repository); numbers cited as reference data with attribution"

VTM18_DATASETS = {"kodak": "kodak", "tecnick-rgb-1200": "tecnick", "clic2022-test": "clic2022-test"}
VTM18_NOTES = (
    "VTM 18.0 all-intra, RGB->YCbCr 4:4:4 8-bit, 36 QPs (15..50), PSNR on RGB per image then "
    "averaged over the images"
)
TECNICK_NOTES = (
    "Tecnick: 100 images 1200x1200 (TESTIMAGES RGB_OR_1200x1200); the images are CC BY-NC-SA 3.0 "
    "and are not redistributed"
)

COMPRESSAI_METRICS = {"bpp": "bpp", "psnr-rgb": "psnr_rgb", "ms-ssim-rgb": "ms_ssim", "ms-ssim-db-rgb": "ms_ssim_db"}
COMPRESSAI_TIMINGS = {"encoding_time", "decoding_time"}
COMPRESSAI_NOTES = {
    "vtm.json": (
        "VTM 8.2 or 9.1, 4:4:4, QP 47..12; known to be optimistic: PSNR was measured before the "
        "RGB round trip"
    ),
}
COMPRESSAI_RESULTS_URL = "InterDigitalInc/CompressAI/blob/master/results/image/kodak/"
# Two paper curves whose rates agree to this relative tolerance come from the same models.
SAME_MODELS_BPP_TOLERANCE = 0.02

C3_FILES = {  # file in shared/reference/clic2020-c3 -> (dataset, upstream file)
    "kodak.json": ("kodak", "baselines/kodak.py"),
    "clic2020-professional-valid.json": ("clic2020-valid", "baselines/clic2020.py"),
}
C3_METRICS = {"bpp": "bpp", "psnr": "psnr_rgb", "psnr_of_mean_mse": "psnr_rgb_of_mean_mse"}

ELIC_DATASETS = {"kodak": "kodak", "clic2021_test": "clic2021-test"}


def slug(text: str) -> str:
    """Lower-case id: '+' spelled out (MLIC+ and MLIC stay distinct), other symbols become '-'."""
    spelled = text.lower().replace("+", "-plus")
    return re.sub(r"[^a-z0-9.]+", "-", spelled).strip("-")


def _provenance(
    reference: Path, path: Path, source: str, notes: list[str], licence: str, **extra: Any
) -> dict[str, Any]:
    return {
        "source": source,
        "notes": "; ".join(n for n in notes if n),
        "licence": licence,
        "reference_file": path.relative_to(reference).as_posix(),
        "reference_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        **extra,
    }


def _metrics(
    values: dict[str, Any], names: dict[str, str], path: Path, ignored: Collection[str] = ()
) -> dict[str, np.ndarray]:
    """Rename the source's metric keys and sort every metric by increasing bpp."""
    unknown = set(values) - set(names) - set(ignored)
    if unknown:
        raise ValueError(f"{path}: unknown metric key(s) {', '.join(sorted(unknown))}")
    metrics = {names[key]: np.asarray(column, dtype=float) for key, column in values.items() if key in names}
    order = np.argsort(metrics["bpp"], kind="stable")
    bpp_first = ["bpp", *(name for name in metrics if name != "bpp")]
    return {name: metrics[name][order] for name in bpp_first}


def import_vtm18(reference: Path) -> list[PublishedCurve]:
    curves = []
    for path in sorted((reference / "vtm18").glob("*-vtm18.0.json")):
        prefix = path.name.removesuffix("-vtm18.0.json")
        dataset = VTM18_DATASETS[prefix]
        data = json.loads(path.read_text())
        values = data.get("results", data)  # the Kodak file has no "results" wrapper
        notes = [VTM18_NOTES, TECNICK_NOTES if dataset == "tecnick" else ""]
        curves.append(
            PublishedCurve(
                id="vtm-18.0",
                name="VTM 18.0 intra (lossy-vae results)",
                dataset=dataset,
                metrics=_metrics(values, {"bpp": "bpp", "psnr": "psnr_rgb"}, path),
                provenance=_provenance(reference, path, f"{LOSSY_VAE} results/{prefix}/{path.name}", notes, NO_LICENCE),
            )
        )
    return curves


def compressai_id(file_name: str) -> str:
    stem = slug(Path(file_name).stem)
    return stem if stem.startswith("compressai-") else f"compressai-{stem}"


def _compressai_name_and_notes(stem: str, data: dict[str, Any]) -> tuple[str, list[str]]:
    description = data.get("description", "")
    meta = data.get("meta", {})
    if stem.startswith("compressai-"):
        model, trained_for, device = stem.removeprefix("compressai-").split("_")
        return (
            f"CompressAI {model} ({trained_for}, {device})",
            [f"CompressAI pretrained {model} trained for {trained_for}, evaluated on {device} ({description})"],
        )
    if stem.startswith("paper-"):
        model = data["name"].removeprefix("official ")
        trained_for = meta.get("opt_metric", "").removesuffix("-rgb")
        label = f"paper, {trained_for}" if trained_for else "paper"
        return f"{model} ({label}, via CompressAI)", [f"{description}", meta.get("url", "")]
    if stem.endswith("-vbr-ans"):
        return f"CompressAI {data['name']} (variable rate)", [f"variable-rate model, {description}"]
    return f"{data['name']} (CompressAI)", [description]


def _same_models_as_mse_sibling(path: Path, bpp: np.ndarray) -> bool:
    """True when an MS-SSIM 'paper' curve sits at the rates of its MSE sibling, i.e. it reports
    the MS-SSIM of the MSE-trained models rather than of MS-SSIM-trained ones."""
    sibling = path.with_name(path.name.replace("_ms-ssim.json", "_mse.json"))
    if sibling == path or not sibling.is_file():
        return False
    sibling_bpp = np.sort(np.asarray(json.loads(sibling.read_text())["results"]["bpp"], dtype=float))
    return sibling_bpp.size == bpp.size and bool(np.all(np.abs(sibling_bpp / bpp - 1) < SAME_MODELS_BPP_TOLERANCE))


def import_compressai(reference: Path) -> list[PublishedCurve]:
    curves = []
    for path in sorted((reference / "kodak-compressai").glob("*.json")):
        data = json.loads(path.read_text())
        metrics = _metrics(data["results"], COMPRESSAI_METRICS, path, COMPRESSAI_TIMINGS)
        name, notes = _compressai_name_and_notes(path.stem, data)
        notes.append(COMPRESSAI_NOTES.get(path.name, ""))
        if COMPRESSAI_TIMINGS & set(data["results"]):
            notes.append("the source's encoding/decoding times are omitted (hardware not documented)")
        if _same_models_as_mse_sibling(path, metrics["bpp"]):
            notes.append(
                f"caveat: labelled ms-ssim-optimised, but its rates match {path.name.replace('_ms-ssim', '_mse')} "
                f"within {SAME_MODELS_BPP_TOLERANCE:.0%}: these look like the MSE-trained models measured in MS-SSIM"
            )
        curves.append(
            PublishedCurve(
                id=compressai_id(path.name),
                name=name,
                dataset="kodak",
                metrics=metrics,
                provenance=_provenance(
                    reference, path, f"{COMPRESSAI} results/image/kodak/{path.name}", notes, "BSD-3-Clause-Clear"
                ),
            )
        )
    return curves


def import_c3(reference: Path) -> list[PublishedCurve]:
    curves = []
    for file_name, (dataset, upstream_path) in C3_FILES.items():
        path = reference / "clic2020-c3" / file_name
        for label, entry in json.loads(path.read_text()).items():
            meta = entry["meta"]
            values = {key: column for key, column in entry.items() if key != "meta"}
            notes = [f"{meta.get('reference', '')}", f"upstream source: {meta.get('source', '')}"]
            if "psnr_of_mean_mse" in values:
                notes.append("psnr_rgb is the mean of per-image PSNRs, psnr_rgb_of_mean_mse the PSNR of the mean MSE")
            if COMPRESSAI_RESULTS_URL in meta.get("source", ""):
                compressai_file = meta["source"].split(COMPRESSAI_RESULTS_URL)[1].split()[0]
                notes.append(f"same data as curve {compressai_id(compressai_file)}")
                notes.append(COMPRESSAI_NOTES.get(compressai_file, ""))
            curves.append(
                PublishedCurve(
                    id=f"c3-{slug(label)}",
                    name=f"C3 baselines: {label}",
                    dataset=dataset,
                    metrics=_metrics(values, C3_METRICS, path),
                    provenance=_provenance(
                        reference, path, f"{C3} {upstream_path} (converted to JSON)", notes, "Apache-2.0",
                        upstream_meta=meta,
                    ),
                )
            )
    return curves


def import_elic(reference: Path) -> list[PublishedCurve]:
    """The CSV has '# ...' lines: the first names the columns, then '# dataset=NAME (FILE)...'
    opens each dataset's rows."""
    path = reference / "elic" / "elic-official.csv"
    lines = path.read_text().splitlines()
    columns_match = re.search(r"columns:\s*([\w, ]+?)\s*\(", lines[0])
    if not columns_match:
        raise ValueError(f"{path}: first line does not name the columns")
    columns = [c.strip() for c in columns_match.group(1).split(",")]
    sections: list[tuple[str, str, list[list[float]]]] = []
    for line in lines[1:]:
        header = re.match(r"#\s*dataset=(\w+)\s*\(([^)]+)\)(.*)", line)
        if header:
            sections.append((header.group(1), header.group(2), []))
        elif line.strip():
            sections[-1][2].append([float(v) for v in line.split(",")])
    curves = []
    for dataset_name, upstream_file, rows in sections:
        dataset = ELIC_DATASETS[dataset_name]
        notes = [
            "ELIC official results; the upstream CSV has no header, the columns "
            f"({', '.join(columns)}) are inferred; the PSNR values match the paper's MSE-trained curve, so "
            "ms_ssim is that of the MSE-trained models",
            "upstream README: the ELIC paper's 'CLIC Professional Valid' results are CLIC 2021 test"
            if dataset == "clic2021-test"
            else "",
        ]
        curves.append(
            PublishedCurve(
                id="elic-official",
                name="ELIC (official results)",
                dataset=dataset,
                metrics=_metrics(dict(zip(columns, np.array(rows).T)), {c: c for c in columns}, path),
                provenance=_provenance(reference, path, f"{ELIC} results/{upstream_file}", notes, NO_LICENCE),
            )
        )
    return curves


def import_all(reference: Path) -> list[PublishedCurve]:
    curves = import_vtm18(reference) + import_compressai(reference) + import_c3(reference) + import_elic(reference)
    names = [curve_file_name(c.dataset, c.id) for c in curves]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"two curves map to the same file: {', '.join(duplicates)}")
    return curves


def write_all(curves: list[PublishedCurve], out: Path) -> list[Path]:
    """Write every curve into ``out`` and remove curve files there that are no longer produced."""
    out.mkdir(parents=True, exist_ok=True)
    written = [write_published(curve, out) for curve in curves]
    for stale in set(out.glob("*--*.json")) - set(written):
        stale.unlink()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="shared/reference folder")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: results/published)")
    args = parser.parse_args(argv)
    if not (args.reference / "README.md").is_file():
        parser.error(f"{args.reference}: not a reference folder (no README.md)")
    written = write_all(import_all(args.reference), args.out or published_dir())
    print(f"wrote {len(written)} curves to {written[0].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
