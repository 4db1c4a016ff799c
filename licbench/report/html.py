"""``licbench report``: one self-contained HTML page per run (plots as data URIs, inline CSS and JS).

The page holds the RD curves of the run's dataset-average curves with the relevant published
curves dashed, BD-rate tables against the anchor for each metric and aggregation, complexity,
a sortable per-image table with failed rows, provenance, and the BD-rate history of
``licbench check`` when there is one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import jinja2
import pandas as pd

from licbench.bench.bd import average_curve
from licbench.published import PublishedCurve, PublishedError
from licbench.report.check import (
    DEFAULT_METRIC,
    DEFAULT_PUBLISHED_ANCHOR,
    LEARNED_CODEC_KEYS,
    Anchor,
    bd_rates,
    dataset_size_if_partial,
    is_learned,
    json_records,
    load_run,
    published_for_dataset,
    read_history,
    resolve_anchor,
    superseded_note,
)
from licbench.report.plots import PUBLISHED_COLOURS, Series, colour_map, history_plot, rd_plot
from licbench.store import OK, run_invocations

TEMPLATES = Path(__file__).resolve().parent / "templates"
# Metric column -> how the report names it; all three are in dB (MS-SSIM as -10 log10(1 - MS-SSIM)).
METRICS: dict[str, str] = {"psnr_rgb": "PSNR-RGB", "psnr_y": "PSNR-Y", "ms_ssim_db": "MS-SSIM"}
AGGREGATION_TITLES = {
    "average-curve": "BD of the dataset-average curves",
    "per-image-mean": "mean of per-image BD values",
}


@dataclass(frozen=True)
class Cell:
    """A table cell. ``sort`` is the numeric sort key of a number cell ("" when the value is
    missing, so that it sorts last); None for a text cell, which sorts by its text."""

    text: str
    sort: str | None = None
    css: str = ""


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    row_css: list[str] = field(default_factory=list)

    def add(self, cells: list[Cell], css: str = "") -> None:
        self.rows.append(cells)
        self.row_css.append(css)


MISSING = Cell("–", sort="")


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and not math.isfinite(value))


def number(value: Any, digits: int = 2, signed: bool = False) -> Cell:
    if _missing(value):
        return MISSING
    value = float(value)
    return Cell(f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}", sort=repr(value))


def rate(value: Any) -> Cell:
    """A rate parameter as the user gave it: QP 32, quality 75, ratio 12.5."""
    return MISSING if _missing(value) else Cell(f"{float(value):g}", sort=repr(float(value)))


def percent(fraction: Any) -> Cell:
    return MISSING if _missing(fraction) else Cell(f"{float(fraction):.0%}", sort=repr(float(fraction)))


def integer(value: Any) -> Cell:
    return MISSING if _missing(value) else Cell(f"{int(value):,}", sort=str(int(value)))


def text(value: Any, css: str = "") -> Cell:
    return Cell("" if _missing(value) else str(value), css=css)


# --- data --------------------------------------------------------------------------------------


def _colour_pipeline(settings: Any) -> dict[str, Any] | None:
    """The ColourPipeline.describe() dict inside a codec's settings, wherever the adapter put it."""
    if isinstance(settings, dict):
        if {"matrix", "chroma"} <= set(settings):
            return settings
        for value in settings.values():
            found = _colour_pipeline(value)
            if found is not None:
                return found
    return None


def _codec_settings(frame: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """Per codec label, its distinct settings objects (one, unless a resumed run changed them)."""
    return {
        codec: [json.loads(t) for t in rows["settings"].dropna().unique()]
        for codec, rows in frame.groupby("codec", sort=True)
    }


def _vvenc_420(frame: pd.DataFrame, settings: dict[str, list[dict[str, Any]]]) -> list[str]:
    labels = []
    for codec, rows in frame.groupby("codec"):
        if (rows["codec_name"] == "vvenc").any():
            chroma = {str((_colour_pipeline(s) or {}).get("chroma", "420")) for s in settings.get(codec, [{}])}
            if "420" in chroma:
                labels.append(codec)
    return labels


def _subset_warning(dataset: str, n_images: int, published: Sequence[PublishedCurve]) -> str | None:
    """Published curves average a whole dataset; a run over part of it is not like-for-like."""
    total = dataset_size_if_partial(dataset, n_images)
    if not published or total is None:
        return None
    return (
        f"This run covers {n_images} of the {total} {dataset} images, while the published curves "
        f"average all {total}: comparisons with them are indicative only."
    )


def _published_series(anchor: Anchor, dataset: str) -> list[PublishedCurve]:
    """The published curves drawn in the plots: the anchor's, and VTM 18.0 where it exists."""
    curves = [anchor.curve] if anchor.curve is not None else []
    vtm = published_for_dataset(dataset, DEFAULT_PUBLISHED_ANCHOR)
    if vtm is not None and all(c.id != vtm.id for c in curves):
        curves.append(vtm)
    return curves


def _short_source(curve: PublishedCurve) -> str:
    source = str(curve.provenance.get("source", "")).split()
    return source[0] if source else "source not recorded"


def _rd_plots(
    ok: pd.DataFrame, published: Sequence[PublishedCurve], colours: dict[str, str]
) -> list[dict[str, str]]:
    published_colours = colour_map([c.id for c in published], PUBLISHED_COLOURS)
    plots = []
    for metric, label in METRICS.items():
        curves = average_curve(ok, metric) if len(ok) else pd.DataFrame(columns=["codec", "bpp", metric])
        series = [
            Series(codec, rows["bpp"].to_numpy(), rows[metric].to_numpy(), colours[codec])
            for codec, rows in curves.groupby("codec", sort=True)
        ]
        for curve in published:
            try:
                values = curve.metric(metric)
            except PublishedError:
                continue  # e.g. no PSNR-Y published: nothing to draw on that plot
            series.append(
                Series(f"published: {curve.name} ({_short_source(curve)})", curve.bpp, values,
                       published_colours[curve.id], published=True)
            )
        plots.append({"metric": label, "uri": rd_plot(series, f"{label} (dB)", f"{label}, average over images")})
    return plots


def _bd_sections(frame: pd.DataFrame, anchor: Anchor) -> list[dict[str, Any]]:
    sections = []
    for metric, label in METRICS.items():
        tables = []
        if anchor.curve is not None:
            try:
                anchor.curve.metric(metric)
            except PublishedError as error:
                sections.append({"metric": label, "tables": [{"title": "", "unavailable": f"no BD on {label}: {error}"}]})
                continue
        for aggregation, title in AGGREGATION_TITLES.items():
            if aggregation == "per-image-mean" and anchor.is_published:
                tables.append({"title": title, "unavailable": "not computed: the anchor is a published average curve, with no per-image results"})
                continue
            bd = bd_rates(frame, anchor, metric, aggregation=aggregation)
            table = Table(["codec", "BD-rate (%)", f"BD-{label} (dB)", "points", "anchor points",
                           "images", "overlap", "warnings / errors"])
            for row in bd.itertuples():
                table.add(
                    [
                        text(row.codec),
                        number(row.bd_rate, 2, signed=True),
                        number(row.bd_quality, 3, signed=True),
                        integer(row.n_points),
                        integer(row.n_anchor_points),
                        integer(row.n_images),
                        percent(row.overlap_fraction),
                        text(row.note, css="note"),
                    ],
                    css="warn" if row.note else "",
                )
            tables.append({"title": title, "table": table})
        sections.append({"metric": label, "tables": tables})
    return sections


def _learned_figures(rows: pd.DataFrame) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for record in json_records(rows):
        for key in LEARNED_CODEC_KEYS:
            if key in record and key not in found:
                found[key] = record[key]
    return found


def _complexity(frame: pd.DataFrame, ok: pd.DataFrame) -> tuple[Table, Table]:
    per_codec = Table(["codec", "kind", "images", "rate points", "median encode s / image", "median decode s / image",
                       "model / codec load s", "parameters", "kMAC / pixel", "sequential passes"])
    for codec, rows in ok.groupby("codec", sort=True):
        learned = _learned_figures(frame[frame["codec"] == codec])
        per_codec.add(
            [
                text(codec),
                text("learned" if is_learned(frame, codec) else "traditional"),
                integer(rows["image"].nunique()),
                integer(rows["rate"].nunique()),
                number(rows["encode_s"].median(), 4),
                number(rows["decode_s"].median(), 4),
                number(rows["codec_load_s"].dropna().median(), 3),
                integer(learned.get("parameters")),
                number(learned.get("kmac_per_pixel"), 1),
                integer(learned.get("sequential_passes")),
            ]
        )
    per_rate = Table(["codec", "rate parameter", "rate", "images", "mean bpp", "median encode s", "median decode s"])
    for (codec, rate_value), rows in ok.groupby(["codec", "rate"], sort=True):
        per_rate.add(
            [
                text(codec),
                text(rows["rate_parameter"].iloc[0]),
                rate(rate_value),
                integer(rows["image"].nunique()),
                number(rows["bpp"].mean(), 4),
                number(rows["encode_s"].median(), 4),
                number(rows["decode_s"].median(), 4),
            ]
        )
    return per_codec, per_rate


def _job_hosts(ok: pd.DataFrame) -> list[tuple[str, int]]:
    """Which hosts measured the run's timings, and how many jobs each (a cluster, or a resumed run)."""
    if "host" not in ok:
        return []
    return [(str(host), int(count)) for host, count in ok["host"].fillna("unknown").value_counts().items()]


def _per_image(frame: pd.DataFrame) -> Table:
    table = Table(["image", "codec", "rate", "bytes", "bpp", "PSNR-RGB", "PSNR-Y", "MS-SSIM", "enc s", "dec s", "status"])
    for row in frame.sort_values(["image", "codec", "rate"]).itertuples():
        failed = row.status != OK
        table.add(
            [
                text(row.image),
                text(row.codec),
                rate(row.rate),
                integer(row.bytes),
                number(row.bpp, 4),
                number(row.psnr_rgb, 2),
                number(row.psnr_y, 2),
                number(row.ms_ssim, 4),
                number(row.encode_s, 3),
                number(row.decode_s, 3),
                text(f"{row.status}: {row.error}" if failed else row.status, css="note" if failed else ""),
            ],
            css="failed" if failed else "",
        )
    return table


def _machine_text(machine: dict[str, Any]) -> str:
    parts = [
        str(machine.get("cpu", "unknown CPU")),
        f"{machine['cpu_count']} logical CPUs" if machine.get("cpu_count") else "",
        f"{machine['memory_gib']} GiB" if machine.get("memory_gib") else "",
        str(machine.get("os", "")),
        f"host {machine['host']}" if machine.get("host") else "",
    ]
    return ", ".join(p for p in parts if p)


def _codec_provenance(frame: pd.DataFrame, settings: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    codecs = []
    for codec, rows in frame.groupby("codec", sort=True):
        objects = settings.get(codec, [])
        # Adapters record their colour handling under "colour": a ColourPipeline description, or a
        # sentence for codecs that take RGB and convert inside the library.
        colours = [s.get("colour") or _colour_pipeline(s) for s in objects]
        colour = next((c for c in colours if c), None)
        codecs.append(
            {
                "label": codec,
                "name": rows["codec_name"].iloc[0],
                "versions": ", ".join(str(v) for v in rows["codec_version"].dropna().unique()),
                "settings": [json.dumps(s, indent=2, sort_keys=True) for s in objects],
                "colour": json.dumps(colour, indent=2, sort_keys=True) if isinstance(colour, dict) else colour,
            }
        )
    return codecs


def history_entries(run: str, files: Iterable[Path]) -> tuple[list[dict[str, Any]], list[Path]]:
    """The history entries of ``run`` found in ``files`` (oldest first), and the files they came from."""
    entries, sources = [], []
    for path in files:
        if not path.is_file():
            continue
        mine = [e for e in read_history(path) if e["run"] == run]
        if mine:
            entries.extend(mine)
            sources.append(path)
    return sorted(entries, key=lambda e: e["time"]), sources


def default_history_files(db_path: Path) -> list[Path]:
    """Where ``licbench check`` keeps histories by default: beside the baselines in
    <results folder>/baseline/ (the results folder being the database's)."""
    return sorted((Path(db_path).parent / "baseline").glob("*.history.jsonl"))


def _history(run: str, files: list[Path], colours: dict[str, str]) -> dict[str, Any] | None:
    entries, sources = history_entries(run, files)
    if not entries:
        return None
    # Only the checks comparable with the latest one (same anchor and metric) go on one plot.
    latest = entries[-1]
    comparable = [e for e in entries if (e.get("anchor"), e.get("metric")) == (latest.get("anchor"), latest.get("metric"))]
    metric = latest.get("metric", DEFAULT_METRIC)
    return {
        "uri": history_plot(comparable, metric, colours),
        "count": len(comparable),
        "anchor": latest.get("anchor"),
        "metric": metric,
        "sources": [str(s) for s in sources],
        "last": latest,
    }


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _invocations(provenance: dict[str, Any]) -> list[dict[str, str]]:
    """Every ``licbench run`` that computed rows of the run, oldest first: when, which revision,
    on which host, and the command (runs recorded before invocations were kept list the last only)."""
    return [
        {
            "when": invocation.get("invoked_utc", "not recorded"),
            "git_revision": invocation.get("git_revision", "unknown"),
            "host": invocation.get("machine", {}).get("host", "unknown"),
            "argv": " ".join(str(a) for a in invocation.get("argv", [])),
        }
        for invocation in run_invocations(provenance)
    ]


def render_report(
    frame: pd.DataFrame, info: dict[str, Any], anchor_request: str | None, history_files: Sequence[Path] = ()
) -> str:
    """The HTML text of the report of one run (``frame``: its result rows; ``info``: run_info)."""
    dataset = info["dataset"]
    anchor = resolve_anchor(frame, dataset, anchor_request)
    ok = frame[frame["status"] == OK]
    codecs = sorted(frame["codec"].unique())
    colours = colour_map(codecs)
    settings = _codec_settings(frame)
    published = _published_series(anchor, dataset)
    provenance = info["provenance"]
    machine = provenance.get("machine", {})
    per_codec, per_rate = _complexity(frame, ok)
    failed = frame[frame["status"] != OK]
    context = {
        "run": info["name"],
        "dataset": dataset,
        "n_images": frame["image"].nunique(),
        "n_rows": len(frame),
        "n_failed": len(failed),
        "codecs": codecs,
        "created": info.get("created"),
        "updated": info.get("updated"),
        "machine": _machine_text(machine),
        "timing": provenance.get("timing", {}),
        "anchor": anchor,
        "anchor_is_default": anchor_request is None,
        "vvenc_420": _vvenc_420(frame, settings),
        "subset_warning": _subset_warning(dataset, frame["image"].nunique(), published),
        "superseded_note": superseded_note(info),
        "published": [
            {"name": c.name, "id": c.id, "source": c.provenance.get("source", "not recorded"),
             "notes": c.provenance.get("notes", "")}
            for c in published
        ],
        "plots": _rd_plots(ok, published, colours),
        "bd_sections": _bd_sections(frame, anchor),
        "complexity": per_codec,
        "complexity_per_rate": per_rate,
        "job_hosts": _job_hosts(ok),
        "per_image": _per_image(frame),
        "codec_provenance": _codec_provenance(frame, settings),
        "machine_json": json.dumps(machine, indent=2, sort_keys=True),
        "packages_json": json.dumps(provenance.get("packages", {}), indent=2, sort_keys=True),
        "invocations": _invocations(provenance),
        "imports": [imported["file"] for imported in provenance.get("imports", [])],
        "licbench_version": provenance.get("licbench", "unknown"),
        "history": _history(info["name"], list(history_files), colours),
    }
    return _environment().get_template("report.html").render(**context)


def write_report(
    db_path: Path,
    run: str,
    anchor: str | None = None,
    out_dir: Path | None = None,
    history_files: Sequence[Path] | None = None,
) -> Path:
    """Write ``<out_dir>/index.html`` (default ``reports/<run>/``) for ``run`` of the results
    database ``db_path``; returns its path. ``history_files`` default to the check histories
    beside the baselines (see :func:`default_history_files`)."""
    db_path = Path(db_path)
    info, frame = load_run(db_path, run)
    html = render_report(frame, info, anchor, default_history_files(db_path) if history_files is None else history_files)
    out = Path(out_dir) if out_dir is not None else Path("reports") / run
    out.mkdir(parents=True, exist_ok=True)
    index = out / "index.html"
    index.write_text(html, encoding="utf-8")
    return index
