"""The results store: SQLite, one row per run x dataset image x codec settings x rate point.

Each finished job is written in its own transaction, so an interrupted run loses at most the jobs
in flight and a re-run skips what is already there (the UNIQUE key makes duplicates impossible).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

DEFAULT_DB = Path("results") / "licbench.sqlite"

# Result statuses. "ok" rows carry metrics; the others carry the one-line error text.
OK = "ok"
FAILED_STATUSES = ("error", "timeout", "mismatch", "bad-input")

RESULT_COLUMNS: dict[str, str] = {
    "run": "TEXT NOT NULL",
    "dataset": "TEXT NOT NULL",
    "image": "TEXT NOT NULL",
    "codec": "TEXT NOT NULL",  # the codec spec as the user wrote it: "vvenc" or "vvenc:preset=slow"
    "settings_hash": "TEXT NOT NULL",
    "rate": "REAL NOT NULL",
    "codec_name": "TEXT",
    "rate_parameter": "TEXT",
    "codec_version": "TEXT",
    "settings": "TEXT",  # JSON: the codec's describe(), colour pipeline included
    "image_sha256": "TEXT",
    "width": "INTEGER",
    "height": "INTEGER",
    "status": "TEXT NOT NULL",
    "error": "TEXT",
    "bytes": "INTEGER",
    "bpp": "REAL",
    "psnr_rgb": "REAL",
    "psnr_y": "REAL",
    "ms_ssim": "REAL",
    "ms_ssim_db": "REAL",
    "encode_s": "REAL",
    "decode_s": "REAL",
    "timing_repeats": "INTEGER",
    "codec_load_s": "REAL",
    "metrics_s": "REAL",
    "bitstream_sha256": "TEXT",
    "decoder_matches_encoder": "INTEGER",
    "info": "TEXT",  # JSON: codec-specific extras (passes, padding, ...)
    "host": "TEXT",
    "finished_at": "TEXT",
}
KEY = ("run", "dataset", "image", "codec", "settings_hash", "rate")


def hash_settings(settings: dict[str, Any]) -> str:
    """The hash of a codec's recorded settings (its version included) that keys its rows: the same
    for the settings as a run's provenance records them (JSON), so that an invocation can be matched
    with the rows it computed."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def current_settings_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The rows of each codec's newest settings, and per codec how many rows of older ones it drops.

    A codec spec ("msp") keeps its name when what stands behind it changes (new shipped weights,
    another encoder build): its settings hash changes, so a re-run computes it afresh, and the old
    rows stay in the run beside the new ones. Averaging both would describe neither, so analyses
    take, per codec, the settings whose latest row finished last.
    """
    if frame.empty:
        return frame, {}
    newest = frame.groupby(["codec", "settings_hash"])["finished_at"].max().reset_index()
    newest = newest.sort_values("finished_at").drop_duplicates("codec", keep="last")
    keep = frame.set_index(["codec", "settings_hash"]).index.isin(newest.set_index(["codec", "settings_hash"]).index)
    dropped = frame.loc[~keep, "codec"].value_counts()
    return frame[keep], {str(codec): int(count) for codec, count in dropped.items()}


def run_invocations(provenance: dict[str, Any]) -> list[dict[str, Any]]:
    """Every ``licbench run`` of a run's provenance, oldest first, each without the nesting that
    ``record_invocation`` keeps them in (``earlier_invocations``, ``imports``). A run whose rows were
    all imported has none (stores written by earlier versions may hold it as an empty earlier
    invocation, which is dropped here)."""
    latest = {key: value for key, value in provenance.items() if key not in ("earlier_invocations", "imports")}
    return [invocation for invocation in (*provenance.get("earlier_invocations", []), latest) if invocation]


def plain_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as plain Python values, None where pandas has NaN (how it reads an empty CSV/JSON
    cell; the store's NULL)."""
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def provenance_of_rows(provenance: dict[str, Any], rows: pd.DataFrame) -> tuple[dict[str, Any], int]:
    """A run's provenance cut down to the invocations that may have computed some of ``rows`` (shaped
    as ``record_invocation`` keeps them: the newest, with the others as ``earlier_invocations``), and
    how many invocations it left out.

    A run keeps every invocation because each one's rows stay in it; once rows are left out
    (``current_settings_rows``), an invocation that computed only those describes nothing that is
    there. An invocation computed a row when it ran the row's codec settings and started no later
    than the row finished: a re-run that found a codec's rows already done (imported, or computed
    by an earlier invocation) ran its settings but computed none of them. An invocation without a
    record of its codecs cannot be matched and is kept, one without a start time (written by an
    earlier version) is matched on its settings alone, and the run's imports are kept."""
    # ISO 8601 UTC stamps, all written by _now(), so they compare as strings
    last_finished = rows.groupby(["codec", "settings_hash"])["finished_at"].max().to_dict()
    invocations = run_invocations(provenance)

    def computed_some_of_rows(invocation: dict[str, Any]) -> bool:
        codecs = invocation.get("codecs")
        if codecs is None:
            return True
        started = invocation.get("invoked_utc", "")
        finished = (last_finished.get((spec, hash_settings(codec["settings"]))) for spec, codec in codecs.items())
        return any(stamp is not None and stamp >= started for stamp in finished)

    kept = [invocation for invocation in invocations if computed_some_of_rows(invocation)]
    result = {**kept[-1], "earlier_invocations": kept[:-1]} if kept else {}
    if provenance.get("imports"):
        result["imports"] = provenance["imports"]
    return result, len(invocations) - len(kept)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ResultStore:
    def __init__(self, path: Path | str = DEFAULT_DB) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=60)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        columns = ",\n  ".join(f"{name} {kind}" for name, kind in RESULT_COLUMNS.items())
        with self._conn:
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS runs (name TEXT PRIMARY KEY, created TEXT, updated TEXT,"
                " dataset TEXT, provenance TEXT)"
            )
            self._conn.execute(
                f"CREATE TABLE IF NOT EXISTS results (\n  {columns},\n  UNIQUE ({', '.join(KEY)}))"
            )

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def save_run(self, name: str, dataset: str, provenance: dict[str, Any]) -> None:
        """Create the run or replace its provenance as given (``record_invocation`` adds a ``licbench
        run`` to what is there)."""
        now = _now()
        with self._conn:
            self._conn.execute(
                "INSERT INTO runs (name, created, updated, dataset, provenance) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET updated=excluded.updated, dataset=excluded.dataset,"
                " provenance=excluded.provenance",
                (name, now, now, dataset, json.dumps(provenance, sort_keys=True, default=str)),
            )

    def record_invocation(self, name: str, dataset: str, invocation: dict[str, Any]) -> None:
        """Record one ``licbench run`` of ``name``: ``invocation`` (its provenance), stamped with the
        time (``invoked_utc``), becomes the run's, which keeps the provenance of every earlier
        invocation (``earlier_invocations``, oldest first) and the run's imports, because the rows
        each of them computed stay in the run."""
        invocation = {**invocation, "invoked_utc": _now()}
        try:
            earlier = self.run_info(name)["provenance"]
        except KeyError:
            earlier = None
        if earlier is not None:
            imports = earlier.get("imports")
            invocation["earlier_invocations"] = run_invocations(earlier)
            if imports:
                invocation["imports"] = imports
        self.save_run(name, dataset, invocation)

    def run_info(self, name: str) -> dict[str, Any]:
        row = self._conn.execute(
            "SELECT name, created, updated, dataset, provenance FROM runs WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            known = ", ".join(self.run_names()) or "none"
            raise KeyError(f"no run named {name!r} in {self.path} (runs: {known})")
        return {
            "name": row[0],
            "created": row[1],
            "updated": row[2],
            "dataset": row[3],
            "provenance": json.loads(row[4]),
        }

    def run_names(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT name FROM runs ORDER BY created")]

    def finished_keys(self, run: str, include_failed: bool = True) -> set[tuple]:
        """Keys of the rows already computed for ``run`` (failed ones too unless asked not to)."""
        query = f"SELECT {', '.join(KEY)} FROM results WHERE run = ?"
        if not include_failed:
            query += " AND status = 'ok'"
        return {tuple(r) for r in self._conn.execute(query, (run,))}

    def add_result(self, row: dict[str, Any]) -> None:
        """Write one job's result atomically (replacing a failed attempt with the same key)."""
        row = dict(row)
        for key in ("settings", "info"):
            if isinstance(row.get(key), dict):
                row[key] = json.dumps(row[key], sort_keys=True, default=str)
        unknown = set(row) - set(RESULT_COLUMNS)
        if unknown:
            raise ValueError(f"unknown result columns: {sorted(unknown)}")
        with self._conn:
            self._insert(row)

    def _insert(self, row: dict[str, Any]) -> None:
        row = {**row, "finished_at": row.get("finished_at") or _now()}
        names = list(row)
        self._conn.execute(
            f"INSERT OR REPLACE INTO results ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",
            [row[n] for n in names],
        )

    def merge_rows(self, frame: pd.DataFrame) -> dict[str, int]:
        """Add result rows computed elsewhere (an export of another store), never losing a result
        this store already has: a row whose key is here already is skipped unless the row here
        failed and the incoming one is ok. Returns the counts "added", "replaced" and "kept"."""
        missing = [name for name in (*KEY, "status") if name not in frame.columns]
        if missing:
            raise ValueError(f"missing result columns: {', '.join(missing)}")
        unknown = set(frame.columns) - set(RESULT_COLUMNS)
        if unknown:
            raise ValueError(f"unknown result columns: {sorted(unknown)}")
        records = plain_records(frame)
        runs = {row["run"] for row in records}
        here = set().union(*(self.finished_keys(run) for run in runs))
        here_ok = set().union(*(self.finished_keys(run, include_failed=False) for run in runs))
        counts = {"added": 0, "replaced": 0, "kept": 0}
        with self._conn:  # one transaction: a failed import leaves the store as it was
            for row in records:
                key = tuple(row[n] for n in KEY)
                if key not in here:
                    counts["added"] += 1
                elif key not in here_ok and row["status"] == OK:
                    counts["replaced"] += 1
                else:
                    counts["kept"] += 1
                    continue
                self._insert(row)
        return counts

    def results(self, run: str | None = None, statuses: Iterable[str] | None = None) -> pd.DataFrame:
        query, params = "SELECT * FROM results WHERE 1=1", []
        if run is not None:
            query += " AND run = ?"
            params.append(run)
        if statuses is not None:
            statuses = list(statuses)
            query += f" AND status IN ({', '.join('?' for _ in statuses)})"
            params.extend(statuses)
        return pd.read_sql_query(query + " ORDER BY codec, rate, image", self._conn, params=params)
