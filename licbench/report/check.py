"""BD-rates of a run against its anchor, and ``licbench check``: a CI regression gate on them.

The report and the check compute BD-rates with the same functions (:func:`resolve_anchor`,
:func:`bd_rates`), so a number in a baseline file is the number the report shows.

A baseline (``results/baseline/NAME.json``) records one run's BD-rates::

    {"run": "ci-kodak", "dataset": "kodak", "anchor": "jpeg", "metric": "psnr_rgb",
     "method": "pchip", "aggregation": "average-curve", "tolerance": 0.5,
     "bd_rate": {"webp": -12.3, ...}, "created": "...", "git_revision": "..."}

Every check appends one JSON line to a history file (``NAME.history.jsonl`` beside the baseline by
default), which the report draws as BD-rate over time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from licbench.bench.bd import bd_table
from licbench.codecs.base import parse_codec_spec
from licbench.datasets.catalogue import KNOWN_DATASETS
from licbench.provenance import git_revision
from licbench.published import DATASETS, PublishedCurve, PublishedError, load_published
from licbench.store import OK, ResultStore, current_settings_rows

PUBLISHED_PREFIX = "published:"
PREVIOUS_PREFIX = "prev-"  # load_run(previous=True): the settings a codec had before its newest
# VTM 18.0 all-intra 4:4:4 is the reference "VVC" anchor wherever a published curve exists.
DEFAULT_PUBLISHED_ANCHOR = "vtm-18.0"
DEFAULT_METRIC = "psnr_rgb"
DEFAULT_METHOD = "pchip"
DEFAULT_AGGREGATION = "average-curve"
DEFAULT_TOLERANCE = 0.5  # percent points of BD-rate
# Keys under which learned codecs report their size and complexity (in ``info`` or settings).
LEARNED_CODEC_KEYS = ("parameters", "kmac_per_pixel", "sequential_passes")


class CheckError(ValueError):
    """The check cannot run: missing or malformed baseline, run or anchor."""


@dataclass(frozen=True)
class Anchor:
    """What BD-rates are measured against: a codec label of the run or a published curve."""

    label: str  # "jpeg", "vvenc:preset=slow" or "published:vtm-18.0"
    curve: PublishedCurve | None = None

    @property
    def is_published(self) -> bool:
        return self.curve is not None

    def describe(self) -> str:
        if self.curve is None:
            return "a codec of this run"
        source = self.curve.provenance.get("source", "source not recorded")
        return f"the published curve {self.curve.name}, source {source}"


def published_for_dataset(dataset: str, curve_id: str) -> PublishedCurve | None:
    """The published curve ``curve_id`` of ``dataset``, or None when there is none (an image folder
    is not a published dataset)."""
    if dataset not in DATASETS:
        return None
    try:
        return load_published(curve_id, dataset)
    except PublishedError:
        return None


def is_learned(frame: pd.DataFrame, codec: str) -> bool:
    """A learned codec reports its parameter count or kMAC/pixel with its results."""
    rows = frame[frame["codec"] == codec]
    return any(key in record for record in json_records(rows) for key in LEARNED_CODEC_KEYS)


def json_records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """The ``info`` and ``settings`` JSON objects of some result rows (the distinct ones)."""
    records = []
    for column in ("info", "settings"):
        for text in rows[column].dropna().unique():
            value = json.loads(text)
            if isinstance(value, dict):
                records.append(value)
    return records


def resolve_anchor(frame: pd.DataFrame, dataset: str, requested: str | None) -> Anchor:
    """The anchor named by ``requested`` (a codec label of the run or ``published:ID``), or the
    default: published VTM 18.0 for the dataset when it exists, else the run's first traditional
    codec with successful results (label order)."""
    codecs = sorted(frame["codec"].unique())
    if requested is None:
        default = published_for_dataset(dataset, DEFAULT_PUBLISHED_ANCHOR)
        if default is not None:
            return Anchor(PUBLISHED_PREFIX + DEFAULT_PUBLISHED_ANCHOR, default)
        working = set(frame.loc[frame["status"] == OK, "codec"])
        traditional = [c for c in codecs if c in working and not is_learned(frame, c)]
        if not traditional:
            raise CheckError(
                f"no anchor: dataset {dataset!r} has no published {DEFAULT_PUBLISHED_ANCHOR} curve and the run "
                f"has no traditional codec with results; name one with --anchor (codecs: {', '.join(codecs)})"
            )
        return Anchor(traditional[0])
    if requested.startswith(PUBLISHED_PREFIX):
        curve_id = requested[len(PUBLISHED_PREFIX) :]
        try:
            return Anchor(requested, load_published(curve_id, dataset))
        except PublishedError as error:
            raise CheckError(f"anchor {requested!r}: {error}") from None
    if requested not in codecs:
        raise CheckError(
            f"anchor {requested!r} is not a codec of the run (codecs: {', '.join(codecs)}) "
            f"and not {PUBLISHED_PREFIX}ID"
        )
    return Anchor(requested)


def bd_rates(
    frame: pd.DataFrame,
    anchor: Anchor,
    metric: str = DEFAULT_METRIC,
    method: str = DEFAULT_METHOD,
    aggregation: str = DEFAULT_AGGREGATION,
) -> pd.DataFrame:
    """BD-rate table (licbench.bench.bd.bd_table columns) of every codec of the run but the anchor.

    Only successful rows enter the curves; a codec without any gets a row with NaN values and the
    reason in ``note``, so that a codec that stopped working shows up instead of vanishing.
    """
    ok = frame[frame["status"] == OK]
    if anchor.curve is not None:
        if aggregation != "average-curve":
            raise CheckError(
                f"{aggregation} needs per-image anchor results; the anchor {anchor.label} is a published average curve"
            )
        try:
            anchor_curve = (anchor.curve.bpp, anchor.curve.metric(metric))
        except PublishedError as error:
            return _empty_rows(sorted(frame["codec"].unique()), anchor, metric, method, aggregation, str(error))
        table = bd_table(ok, anchor.label, metric, method, aggregation, anchor_curve=anchor_curve) if len(ok) else None
        if table is not None:
            _flag_image_subsets(table, anchor.curve)
    elif anchor.label in set(ok["codec"]):
        table = bd_table(ok, anchor.label, metric, method, aggregation)
    else:
        return _empty_rows(
            sorted(set(frame["codec"]) - {anchor.label}), anchor, metric, method, aggregation,
            f"the anchor {anchor.label} has no successful results",
        )
    done = set() if table is None else set(table["codec"])
    missing = sorted(set(frame["codec"]) - done - {anchor.label})
    extra = _empty_rows(missing, anchor, metric, method, aggregation, "no successful results")
    if table is None:
        return extra
    return pd.concat([table, extra], ignore_index=True) if len(extra) else table


def dataset_size_if_partial(dataset: str, n_images: int) -> int | None:
    """The number of images of ``dataset`` (what its published curves average) when ``n_images`` of
    them are only part of it; None when they are all of it or the dataset is not a known one."""
    source = KNOWN_DATASETS.get(dataset)
    return source.image_count if source is not None and 0 < n_images < source.image_count else None


def _flag_image_subsets(table: pd.DataFrame, curve: PublishedCurve) -> None:
    """Note, in place, every codec whose curve averages fewer images than the published curve, which
    averages its whole dataset: such a BD-rate compares different images and is indicative only."""
    for index in table.index:
        total = dataset_size_if_partial(curve.dataset, int(table.at[index, "n_images"]))
        if total is not None:
            subset = (
                f"{table.at[index, 'n_images']} of the {total} {curve.dataset} images against the "
                f"published average of all {total}: indicative only"
            )
            table.at[index, "note"] = "; ".join(filter(None, [table.at[index, "note"], subset]))


def _empty_rows(
    codecs: list[str], anchor: Anchor, metric: str, method: str, aggregation: str, note: str
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "codec": codecs,
            "anchor": anchor.label,
            "metric": metric,
            "bd_rate": np.nan,
            "bd_quality": np.nan,
            "n_points": 0,
            "n_anchor_points": 0,
            "n_images": 0,
            "overlap_fraction": np.nan,
            "aggregation": aggregation,
            "method": method,
            "note": note,
        }
    )


# --- licbench check ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    codec: str
    regression: bool
    message: str


def _finite_or_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 4)


def _format_percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f} %"


def load_baseline(path: Path) -> dict[str, Any]:
    try:
        baseline = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckError(
            f"baseline {path} does not exist; create it with: licbench check --update --baseline {path} --run RUN"
        ) from None
    except (OSError, json.JSONDecodeError) as error:
        raise CheckError(f"baseline {path}: cannot read it: {error}") from None
    if not isinstance(baseline, dict):
        raise CheckError(f"baseline {path}: expected a JSON object")
    missing = [key for key in ("run", "dataset", "anchor", "bd_rate") if key not in baseline]
    if missing:
        raise CheckError(f"baseline {path}: missing key(s) {', '.join(missing)}")
    if not isinstance(baseline["bd_rate"], dict):
        raise CheckError(f"baseline {path}: 'bd_rate' must map codec labels to BD-rates")
    return baseline


def _run_codec_for(baseline_codec: str, run_codecs: set[str], baseline_codecs: set[str]) -> str | None:
    """The run's codec to compare with a baseline codec: the same label, or else the only codec of
    the run with the same adapter whose label is not in the baseline (its settings changed)."""
    if baseline_codec in run_codecs:
        return baseline_codec
    adapter = parse_codec_spec(baseline_codec)[0]
    candidates = [c for c in run_codecs - baseline_codecs if parse_codec_spec(c)[0] == adapter]
    return candidates[0] if len(candidates) == 1 else None


def compare(
    baseline: dict[str, Any], current: dict[str, float | None], failures: dict[str, str], tolerance: float
) -> list[Verdict]:
    """One verdict per baseline codec (regression when worse by more than ``tolerance`` points,
    missing, without a BD-rate, or with failed rows), plus one per codec new to the run."""
    verdicts = []
    baseline_codecs = set(baseline["bd_rate"])
    matched = set()
    for codec in sorted(baseline_codecs):
        expected = baseline["bd_rate"][codec]
        run_codec = _run_codec_for(codec, set(current), baseline_codecs)
        if run_codec is None:
            verdicts.append(Verdict(codec, True, f"REGRESSION {codec}: not in the run (baseline {_format_percent(expected)})"))
            continue
        matched.add(run_codec)
        name = codec if run_codec == codec else f"{codec} (run as {run_codec})"
        value = current[run_codec]
        if run_codec in failures:
            verdicts.append(Verdict(codec, True, f"REGRESSION {name}: {failures[run_codec]}"))
        elif value is None:
            verdicts.append(Verdict(codec, True, f"REGRESSION {name}: no BD-rate (baseline {_format_percent(expected)})"))
        elif expected is None:
            verdicts.append(Verdict(codec, False, f"OK {name}: BD-rate {_format_percent(value)} (baseline had none)"))
        elif value - expected > tolerance:
            verdicts.append(
                Verdict(
                    codec,
                    True,
                    f"REGRESSION {name}: BD-rate {_format_percent(value)} vs baseline {_format_percent(expected)} "
                    f"(tolerance {tolerance:g})",
                )
            )
        else:
            verdicts.append(
                Verdict(codec, False, f"OK {name}: BD-rate {_format_percent(value)} vs baseline {_format_percent(expected)}")
            )
    for codec in sorted(set(current) - matched):
        verdicts.append(Verdict(codec, False, f"NEW {codec}: BD-rate {_format_percent(current[codec])} (not in the baseline)"))
    return verdicts


def failed_rows(frame: pd.DataFrame) -> dict[str, str]:
    """Per codec with failed rows: how many, and the first error."""
    failed = frame[frame["status"] != OK]
    summary = {}
    for codec, rows in failed.groupby("codec"):
        first = rows.iloc[0]
        summary[codec] = f"{len(rows)} failed row(s), e.g. {first['image']} at rate {first['rate']:g}: {first['error']}"
    return summary


def history_path(baseline: Path, override: Path | None) -> Path:
    return override if override is not None else baseline.with_name(f"{baseline.stem}.history.jsonl")


def read_history(path: Path) -> list[dict[str, Any]]:
    """The entries of a history file; a malformed line is an error naming the file and line."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise CheckError(f"history {path} line {number}: not JSON ({error.msg})") from None
        if not isinstance(entry, dict) or not {"time", "run", "bd_rate"} <= set(entry):
            raise CheckError(f"history {path} line {number}: expected an object with time, run and bd_rate")
        entries.append(entry)
    return entries


def _append_history(path: Path, entry: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_run(db_path: str | Path, run: str, previous: bool = False) -> tuple[dict, pd.DataFrame]:
    """(run info, result rows) of ``run``, each codec's newest settings only
    (:func:`current_settings_rows`; ``info["superseded_rows"]`` counts the rows left out per codec);
    a clear CheckError when the database or rows are missing.

    With ``previous``, also each codec's settings before its newest, as ``prev-CODEC``: a store that
    holds the exported results of the shipped weights and a re-run with new ones has both under one
    name, and this sets the replaced ones beside the new.
    """
    if not Path(db_path).is_file():
        raise CheckError(f"results database {db_path} does not exist")
    with ResultStore(db_path) as store:
        info = store.run_info(run)
        frame = store.results(run)
    if frame.empty:
        raise CheckError(f"run {run!r} in {db_path} has no results")
    current, superseded = current_settings_rows(frame)
    if previous:
        earlier, superseded = current_settings_rows(frame.drop(current.index))
        current = pd.concat([current, earlier.assign(codec=PREVIOUS_PREFIX + earlier["codec"])], ignore_index=True)
    return {**info, "superseded_rows": superseded}, current


def superseded_note(info: dict[str, Any]) -> str | None:
    """What :func:`load_run` left out, in words, or None."""
    rows = info.get("superseded_rows") or {}
    if not rows:
        return None
    counts = ", ".join(f"{codec} {count}" for codec, count in sorted(rows.items()))
    return (
        f"rows of older settings left out ({counts}): the codec changed behind its name (new weights, "
        "another build) and was run again; each codec's newest settings are used"
    )


def run_check(db_path: Path, args: argparse.Namespace) -> int:
    """``licbench check``: 0 when no codec regressed against the baseline, 1 otherwise.

    With ``--update`` the baseline is (re)written from the run, keeping an existing baseline's
    anchor (unless ``--anchor``), metric and tolerance unless overridden.
    """
    baseline_path = Path(args.baseline)
    previous = load_baseline(baseline_path) if baseline_path.exists() or not args.update else None
    run = args.run or (previous or {}).get("run")
    if run is None:
        raise CheckError(f"baseline {baseline_path} does not exist yet: name the run to create it from with --run")
    if args.anchor is not None and not args.update:
        raise CheckError("--anchor goes with --update: a check measures against its baseline's own anchor")
    info, frame = load_run(db_path, run)
    dataset = info["dataset"]
    if previous is not None and previous["dataset"] != dataset and not args.update:
        raise CheckError(
            f"run {run!r} is on dataset {dataset!r} but baseline {baseline_path} was made on {previous['dataset']!r}"
        )
    # An update onto another dataset starts afresh: the old anchor may not exist there.
    settings = previous if previous is not None and previous["dataset"] == dataset else {}
    metric = settings.get("metric", DEFAULT_METRIC)
    method = settings.get("method", DEFAULT_METHOD)
    aggregation = settings.get("aggregation", DEFAULT_AGGREGATION)
    tolerance = args.tolerance if args.tolerance is not None else float(settings.get("tolerance", DEFAULT_TOLERANCE))
    anchor = resolve_anchor(frame, dataset, args.anchor or settings.get("anchor"))
    table = bd_rates(frame, anchor, metric, method, aggregation)
    current = {row.codec: _finite_or_none(row.bd_rate) for row in table.itertuples()}
    revision = info["provenance"].get("git_revision") or git_revision()
    entry = {
        "time": _now(),
        "git_revision": revision,
        "run": run,
        "dataset": dataset,
        "baseline": str(baseline_path),
        "anchor": anchor.label,
        "metric": metric,
        "method": method,
        "tolerance": tolerance,
        "bd_rate": current,
    }
    history = history_path(baseline_path, args.history)
    print(f"run {run!r} ({dataset}), anchor {anchor.label}, BD-rate on {metric} ({method}, {aggregation})")
    if note := superseded_note(info):
        print(f"NOTE {note}")

    if args.update:
        baseline = {
            "run": run,
            "dataset": dataset,
            "anchor": anchor.label,
            "metric": metric,
            "method": method,
            "aggregation": aggregation,
            "tolerance": tolerance,
            "bd_rate": current,
            "created": _now(),
            "git_revision": revision,
        }
        baseline_path.parent.mkdir(parents=True, exist_ok=True)
        baseline_path.write_text(json.dumps(baseline, indent=1, sort_keys=True) + "\n")
        for codec, value in current.items():
            print(f"BASELINE {codec}: BD-rate {_format_percent(value)}")
        for codec, problem in failed_rows(frame).items():
            print(f"WARNING {codec}: {problem}; every check will flag it until it is fixed")
        print(f"baseline written to {baseline_path}")
        _append_history(history, {**entry, "passed": True, "regressions": [], "updated": True})
        return 0

    verdicts = compare(previous, current, failed_rows(frame), tolerance)
    regressions = [v.codec for v in verdicts if v.regression]
    for verdict in verdicts:
        print(verdict.message)
    _append_history(history, {**entry, "passed": not regressions, "regressions": regressions, "updated": False})
    if regressions:
        print(f"FAILED: {len(regressions)} regression(s) against {baseline_path}", file=sys.stderr)
        return 1
    print(f"OK: no regression against {baseline_path} (history: {history})")
    return 0
