"""The ``licbench`` command line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from licbench import signals
from licbench.store import DEFAULT_DB

if TYPE_CHECKING:
    from distributed import Client


def _db_path(args: argparse.Namespace) -> Path:
    return Path(args.db or os.environ.get("LICBENCH_DB") or DEFAULT_DB)


def _parse_rates(values: list[str]) -> dict[str, tuple[float, ...]]:
    rates = {}
    for value in values:
        spec, sep, numbers = value.rpartition("=")
        if not sep or not spec:
            raise SystemExit(f"licbench: --rates expects CODEC=R1,R2,..., got {value!r}")
        try:
            rates[spec] = tuple(float(n) for n in numbers.split(",") if n.strip())
        except ValueError:
            raise SystemExit(f"licbench: --rates {value!r}: rate points must be numbers") from None
    return rates


def cmd_run(args: argparse.Namespace) -> int:
    if args.scheduler is None:
        return _run(args, None)
    if args.jobs is not None:
        raise ValueError("--jobs is for local runs: with --scheduler every worker thread of the cluster runs jobs")
    from licbench.bench.runner import connect_cluster

    with connect_cluster(args.scheduler) as cluster:
        return _run(args, cluster)


def _run(args: argparse.Namespace, cluster: Client | None) -> int:
    from licbench.bench.runner import cluster_description, execute, pending_jobs, plan_codec, summary_table
    from licbench.codecs.base import CodecError
    from licbench.datasets import resolve
    from licbench.provenance import provenance
    from licbench.store import ResultStore

    dataset = resolve(args.dataset, data_dir=args.data_dir, limit=args.images)
    rates = _parse_rates(args.rates)
    specs = [s.strip() for s in args.codecs.split(",") if s.strip()]
    unknown_rates = set(rates) - set(specs)
    if unknown_rates:
        raise SystemExit(f"licbench: --rates names codecs not in --codecs: {', '.join(sorted(unknown_rates))}")
    plans = []
    for spec in specs:
        try:
            plans.append(plan_codec(spec, rates.get(spec)))
        except (CodecError, KeyError, ValueError) as exc:
            print(f"licbench: skipping {spec}: {exc.args[0] if exc.args else exc}", file=sys.stderr)
    if not plans:
        print("licbench: no codec can run", file=sys.stderr)
        return 2
    run_name = args.run or dataset.name
    n_jobs = args.jobs or 1
    timing: dict[str, object] = {"repeats": args.repeats, "warm_up": args.repeats > 1, "jobs": n_jobs}
    if cluster is not None:
        described = cluster_description(cluster)
        timing.update(cluster=described, jobs=sum(w["threads"] for w in described["workers"].values()))
    with ResultStore(_db_path(args)) as store:
        store.record_invocation(
            run_name,
            dataset.name,
            provenance(
                {
                    "argv": args.command_line,
                    "dataset": {"name": dataset.name, "images": [p.name for p in dataset.files]},
                    "codecs": {p.spec: {"version": p.version, "settings": p.settings} for p in plans},
                    "timing": timing,
                }
            ),
        )
        jobs = pending_jobs(store, run_name, dataset.name, dataset.files, plans, args.retry_failed)
        total = sum(len(p.rates) for p in plans) * len(dataset.files)
        print(
            f"run {run_name!r}: {len(dataset.files)} images x {len(plans)} codecs: "
            f"{total} jobs, {total - len(jobs)} already done, {len(jobs)} to run",
            file=sys.stderr,
        )
        start = time.perf_counter()
        failed = execute(
            store, run_name, dataset.name, jobs, plans, n_jobs, args.timeout, args.repeats, not args.no_progress, cluster
        )
        elapsed = time.perf_counter() - start
        frame = store.results(run_name)
    # This run's codecs as planned: rows of a codec's older settings (other weights, another build) are not its results.
    planned = frame.set_index(["codec", "settings_hash"]).index.isin([(p.spec, p.settings_hash) for p in plans])
    frame = frame[planned]
    with _wide_pandas():
        print(summary_table(frame).to_string(index=False))
    print(
        f"{len(jobs)} jobs in {elapsed:.1f} s, {failed} failed; results in {_db_path(args)} "
        f"(run {run_name!r}); report: licbench report {run_name}",
        file=sys.stderr,
    )
    return 1 if failed else 0


def _wide_pandas():
    import pandas as pd

    return pd.option_context("display.width", 200, "display.max_columns", 50, "display.max_rows", 500)


def cmd_export(args: argparse.Namespace) -> int:
    from licbench.report.check import superseded_note
    from licbench.store import ResultStore, current_settings_rows, plain_records, provenance_of_rows

    with ResultStore(_db_path(args)) as store:
        info = store.run_info(args.run)
        frame = store.results(args.run)
    if args.current:
        frame, superseded = current_settings_rows(frame)
        info["provenance"], invocations_left_out = provenance_of_rows(info["provenance"], frame)
        note = superseded_note({"superseded_rows": superseded}) or "no rows of older settings"
        print(f"{note}; invocations left out of the provenance, having computed none of the rows kept: {invocations_left_out}")
    out = Path(args.output)
    fmt = _table_format(out, args.format)
    if fmt == "csv":
        frame.to_csv(out, index=False)
    elif fmt == "json":  # Python's float repr, which reads back exactly (pandas' to_json keeps 15 digits at most)
        out.write_text(json.dumps(plain_records(frame), indent=1) + "\n")
    else:
        frame.to_parquet(out, index=False)
    record = _run_record_path(out)
    record.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    print(f"{len(frame)} rows written to {out}, the run's provenance to {record}")
    return 0


def _table_format(path: Path, given: str | None) -> str:
    fmt = given or path.suffix.lstrip(".").lower()
    if fmt not in ("csv", "json", "parquet"):
        raise SystemExit(f"licbench: {path}: unknown table format {fmt!r} (csv, json, parquet)")
    return fmt


def _run_record_path(table: Path) -> Path:
    """Where ``export`` puts the run's record (dataset, provenance) next to the rows it writes."""
    return table.with_name(table.name + ".run.json")


def cmd_import(args: argparse.Namespace) -> int:
    import pandas as pd

    from licbench.digest import file_digest
    from licbench.store import RESULT_COLUMNS, ResultStore

    source = Path(args.input)
    if not source.is_file():
        raise SystemExit(f"licbench: {source}: no such file")
    fmt = _table_format(source, args.format)
    # text columns stay text (a settings hash of digits alone is no number), dates stay strings,
    # numbers come back as the exact floats that were written
    text = {name: str for name, kind in RESULT_COLUMNS.items() if kind.startswith("TEXT")}
    readers = {
        "csv": lambda path: pd.read_csv(path, dtype=text, float_precision="round_trip"),
        "json": lambda path: pd.read_json(path, orient="records", dtype=False, convert_dates=False, precise_float=True),
        "parquet": pd.read_parquet,
    }
    try:
        frame = readers[fmt](source)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"licbench: {source}: not a readable {fmt} table ({exc})") from None
    if "run" not in frame.columns or "dataset" not in frame.columns:
        raise SystemExit(f"licbench: {source}: not a licbench export (no run/dataset columns)")
    runs, datasets = sorted(frame["run"].astype(str).unique()), sorted(frame["dataset"].astype(str).unique())
    if len(runs) != 1 or len(datasets) != 1:
        raise SystemExit(f"licbench: {source}: expected the rows of one run on one dataset, found runs {runs}, datasets {datasets}")
    record_path = _run_record_path(source)
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    run_name = args.run or runs[0]
    frame["run"] = run_name
    with ResultStore(_db_path(args)) as store:
        try:
            existing = store.run_info(run_name)
        except KeyError:
            existing = None
        if existing is not None and existing["dataset"] != datasets[0]:
            raise SystemExit(f"licbench: {source}: run {run_name!r} here is on {existing['dataset']}, the rows on {datasets[0]}")
        try:
            counts = store.merge_rows(frame)
        except ValueError as exc:
            raise SystemExit(f"licbench: {source}: {exc}") from None
        provenance = existing["provenance"] if existing else (record or {}).get("provenance", {})
        imported = {"file": str(source), "sha256": file_digest(source), "rows": len(frame), **counts}
        if record is not None:
            imported["source_run"] = {key: record.get(key) for key in ("name", "created", "updated")}
        provenance.setdefault("imports", []).append(imported)
        store.save_run(run_name, datasets[0], provenance)
    print(
        f"{source}: {counts['added']} rows added, {counts['replaced']} failed rows replaced, "
        f"{counts['kept']} kept as they were in run {run_name!r}"
        + ("" if record is not None else f" (no {record_path.name}: the run's own provenance is not known)")
    )
    return 0


def cmd_codecs(args: argparse.Namespace) -> int:
    from licbench.codecs.base import codec_class, codec_names

    rows = []
    for name in codec_names():
        cls = codec_class(name)
        try:
            codec = cls()
            availability = codec.availability()
            version = codec.version() if availability.ok else "-"
            status = "yes" if availability.ok else f"no: {availability.reason}"
        except Exception as exc:  # an adapter that cannot even start is shown, not fatal
            version, status = "-", f"no: {exc}"
        rates = ",".join(f"{r:g}" for r in cls.default_rates)
        rows.append((name, version, f"{cls.rate_parameter}={rates}", status, cls.description))
    widths = [max(len(r[i]) for r in rows + [("codec", "version", "rates", "available", "")]) for i in range(3)]
    print(f"{'codec':<{widths[0]}}  {'version':<{widths[1]}}  {'rates':<{widths[2]}}  available")
    for name, version, rates, status, description in rows:
        print(f"{name:<{widths[0]}}  {version:<{widths[1]}}  {rates:<{widths[2]}}  {status}")
        if args.verbose and description:
            print(f"    {description}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from licbench.datasets import describe_all, fetch, resolve, verify

    if args.action == "list":
        for info in describe_all():
            print("  ".join(f"{k}={v}" for k, v in info.items()))
        return 0
    if not args.name:
        raise SystemExit(f"licbench: datasets {args.action} needs a dataset name")
    if args.action == "fetch":
        dataset = fetch(args.name)
    else:  # list every problem instead of stopping at the first checksum mismatch
        dataset = resolve(args.name, data_dir=args.data_dir, download=False, check=False)
    problems = verify(dataset, recheck=args.action == "verify")
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{dataset.name}: {len(dataset.files)} images, {'OK' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


def cmd_report(args: argparse.Namespace) -> int:
    from licbench.report.html import write_report

    out = write_report(_db_path(args), args.run, anchor=args.anchor, out_dir=args.output)
    print(f"report written to {out}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from licbench.report.check import run_check

    return run_check(_db_path(args), args)


def cmd_train(args: argparse.Namespace) -> int:
    from licbench.train import main as train_main

    return train_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="licbench", description=__doc__)
    parser.add_argument("--db", help=f"results database (default $LICBENCH_DB or {DEFAULT_DB})")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run codecs over a dataset into the results store")
    run.add_argument("--codecs", required=True, help="comma-separated codec specs: name[:key=value...]")
    run.add_argument("--dataset", required=True, help="dataset name (kodak, clic, tecnick) or an image folder")
    run.add_argument("--data-dir", type=Path, help="folder holding the dataset (before $LICBENCH_DATA)")
    run.add_argument("--images", type=int, help="use only the first N images")
    run.add_argument("--rates", action="append", default=[], metavar="CODEC=R1,R2,...", help="override rate points")
    run.add_argument("--jobs", type=int, help="parallel local jobs (default 1; not with --scheduler)")
    run.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run the jobs on a dask.distributed cluster, e.g. tcp://10.0.0.5:8786 (pip install 'licbench[cluster]'); "
        "its workers need licbench, the codecs and the dataset at the same path; results come back to --db",
    )
    run.add_argument("--timeout", type=float, default=600.0, help="seconds per encode or decode (default 600)")
    run.add_argument("--repeats", type=int, default=1, help="timing: N>1 runs a warm-up, then N timed runs, and keeps the median (default 1)")
    run.add_argument("--run", help="run name (default: the dataset name)")
    run.add_argument("--retry-failed", action="store_true", help="recompute failed rows")
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(func=cmd_run)

    report = sub.add_parser("report", help="write an HTML report of a run")
    report.add_argument("run")
    report.add_argument("--anchor", help="anchor codec for BD-rates (a codec of the run or published:ID)")
    report.add_argument("--output", type=Path, help="output folder (default reports/RUN)")
    report.set_defaults(func=cmd_report)

    check = sub.add_parser("check", help="compare a run's BD-rates with a committed baseline")
    check.add_argument("--baseline", type=Path, required=True)
    check.add_argument("--run", help="run to check (default: the baseline's run name)")
    check.add_argument("--tolerance", type=float, default=None, help="allowed BD-rate increase in percent points")
    check.add_argument("--update", action="store_true", help="rewrite the baseline from the run")
    check.add_argument(
        "--anchor",
        help="with --update: the new baseline's anchor, a codec of the run or published:ID "
        "(default: the old baseline's, else the report's default)",
    )
    check.add_argument("--history", type=Path, help="history file (default: next to the baseline)")
    check.set_defaults(func=cmd_check)

    export = sub.add_parser("export", help="export a run's rows to CSV, JSON or Parquet")
    export.add_argument("run")
    export.add_argument("output")
    export.add_argument("--format", choices=["csv", "json", "parquet"])
    export.add_argument(
        "--current",
        action="store_true",
        help="only each codec's newest settings (the rows that report, check and BD-rates use) and, in the "
        "provenance, the invocations that computed them",
    )
    export.set_defaults(func=cmd_export)

    merge = sub.add_parser(
        "import",
        help="add the rows of an export (another machine's run) to the store; results already here are kept",
    )
    merge.add_argument("input", help="a file written by licbench export (its .run.json beside it, if any)")
    merge.add_argument("--run", help="the run to add them to (default: the run they came from)")
    merge.add_argument("--format", choices=["csv", "json", "parquet"])
    merge.set_defaults(func=cmd_import)

    codecs = sub.add_parser("codecs", help="list codecs, their availability and versions")
    codecs.add_argument("-v", "--verbose", action="store_true")
    codecs.set_defaults(func=cmd_codecs)

    datasets = sub.add_parser("datasets", help="list, fetch or verify datasets")
    datasets.add_argument("action", choices=["list", "fetch", "verify"], nargs="?", default="list")
    datasets.add_argument("name", nargs="?")
    datasets.add_argument("--data-dir", type=Path, help="folder holding the dataset (before $LICBENCH_DATA)")
    datasets.set_defaults(func=cmd_datasets)

    train = sub.add_parser("train", help="train a learned codec")
    try:
        from licbench.train import add_arguments
    except ImportError:  # the trainer is optional at import time of the CLI
        add_arguments = None
    if add_arguments is not None:
        add_arguments(train)
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # What the provenance records as the command: these arguments, also when main() is called
    # from Python, where sys.argv is the caller's.
    args.command_line = ["licbench", *(sys.argv[1:] if argv is None else argv)]
    try:
        with signals.handling(signals.interrupt, (signal.SIGTERM,)):  # SIGTERM stops as Ctrl-C does
            return args.func(args)
    except KeyboardInterrupt:
        print("licbench: interrupted; finished results are saved, run again to resume", file=sys.stderr)
        return 130
    except (KeyError, ValueError, OSError, RuntimeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"licbench: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
