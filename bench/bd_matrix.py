"""Benchmark table (not a test): the RD points of a run and the BD-rate of every codec against
several anchors at once, as Markdown (for README / TRAINING.md / closing notes).

    python bench/bd_matrix.py --db runs/kodak.sqlite --run kodak \\
        --anchors webp,hevc,vvenc,published:vtm-18.0 --codecs msp,msp-extra,checkerboard,autoregressive,hyperprior

BD-rate: average-curve aggregation (the curves averaged over the images of the run), pchip, on
PSNR-RGB unless --metric says otherwise; negative = fewer bits than the anchor for the same
quality. A cell is "n/a" when the curves do not overlap, and its value is starred when they overlap
on only part of their range; the reason and the interval are printed below the table.

To compare new weights with the ones they replace: import the exported results of the old ones
(`licbench import results/runs/kodak.csv`), run the codecs again (their settings record the zoo
file's sha256, so they are computed afresh under the same names), then `--previous --anchors
prev-msp,...`: each codec's settings before its newest are its `prev-` rows.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from licbench.bench.bd import average_curve
from licbench.report.check import OK, CheckError, bd_rates, load_run, resolve_anchor, superseded_note


def rd_table(frame: pd.DataFrame, codecs: list[str], metric: str) -> str:
    """Markdown: per codec, its rate points as bpp / quality averaged over the images."""
    curves = average_curve(frame[frame["status"] == OK], metric)
    lines = [f"| codec | images | rate points: mean bpp / mean {metric} |", "|---|---|---|"]
    for codec in codecs:
        points = curves[curves["codec"] == codec]
        cells = ", ".join(f"{row.bpp:.3f} / {getattr(row, metric):.2f}" for row in points.itertuples())
        images = int(points["n_images"].max()) if len(points) else 0
        lines.append(f"| {codec} | {images} | {cells or 'no complete rate point'} |")
    return "\n".join(lines)


def bd_matrix(frame: pd.DataFrame, dataset: str, codecs: list[str], anchors: list[str], metric: str) -> tuple[str, list[str]]:
    """Markdown: BD-rate (%) of each codec (rows) against each anchor (columns), and the notes."""
    cells: dict[tuple[str, str], str] = {}
    notes = []
    for requested in anchors:
        anchor = resolve_anchor(frame, dataset, requested)
        table = bd_rates(frame, anchor, metric).set_index("codec")
        for codec in codecs:
            if codec == anchor.label or codec not in table.index:
                cells[codec, requested] = "-"
                continue
            value, note = table.loc[codec, "bd_rate"], table.loc[codec, "note"]
            # A value with a note was integrated over a partial overlap: mark it so that a reader
            # of the table alone does not take it for a whole-range figure.
            cells[codec, requested] = "n/a" if math.isnan(value) else f"{value:+.1f} %" + (" *" if note else "")
            if note:
                notes.append(f"{codec} vs {anchor.label}: {note}")
    lines = ["| codec | " + " | ".join(f"vs {a}" for a in anchors) + " |", "|---" * (len(anchors) + 1) + "|"]
    lines += [f"| {c} | " + " | ".join(cells[c, a] for a in anchors) + " |" for c in codecs]
    return "\n".join(lines), notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--anchors", required=True, help="comma-separated codecs of the run or published:ID")
    parser.add_argument("--codecs", help="comma-separated rows (default: every codec of the run)")
    parser.add_argument("--metric", default="psnr_rgb")
    parser.add_argument(
        "--images", type=int, metavar="N",
        help="only the run's first N images by name (to compare a codec run on fewer images with the others on the same ones)",
    )
    parser.add_argument(
        "--previous", action="store_true",
        help="also each codec's settings before its newest, as prev-CODEC (new weights against the ones they replace)",
    )
    args = parser.parse_args()
    if args.images is not None and args.images < 1:
        parser.error("--images must be >= 1")
    try:
        print_matrix(args)
    except CheckError as error:  # a missing store, run or anchor: one line, no traceback
        parser.exit(2, f"{parser.prog}: error: {error}\n")


def print_matrix(args: argparse.Namespace) -> None:
    info, frame = load_run(args.db, args.run, previous=args.previous)
    if args.images is not None:
        frame = frame[frame["image"].isin(sorted(frame["image"].unique())[: args.images])]
    codecs = args.codecs.split(",") if args.codecs else sorted(frame["codec"].unique())
    anchors = args.anchors.split(",")
    # computed before anything is printed, so that a bad anchor leaves no half table behind
    matrix, notes = bd_matrix(frame, info["dataset"], codecs, anchors, args.metric)
    print(f"run {args.run!r}, dataset {info['dataset']}, {frame['image'].nunique()} images, metric {args.metric}\n")
    if note := superseded_note(info):
        print(f"Note: {note}.\n")
    run_anchors = [a for a in anchors if a in set(frame["codec"]) and a not in codecs]
    print(rd_table(frame, codecs + run_anchors, args.metric))
    print()
    print(matrix)
    if notes:
        print("\n\\* over a partial overlap only (interval below); n/a: no overlap\n")
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
