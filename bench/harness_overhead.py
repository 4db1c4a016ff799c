"""Benchmark (not a test): the runner's own cost, and what --jobs 2 buys on this machine.

Runs the same Kodak job list twice through the real `licbench run` (fresh results store each
time), with --jobs 1 and --jobs 2, and prints:
- harness overhead at --jobs 1: wall time minus codec time (encode + decode), as a share of wall
  time, and the same with the metric computation (PSNR, MS-SSIM) counted as work rather than
  overhead. Goal: < 5 %.
- the speed-up of --jobs 2 over --jobs 1. Goal: >= 1.7x on 2 cores.

    LICBENCH_DATA=../shared/data python bench/harness_overhead.py [--codecs hevc,av1] [--images 8]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import pandas as pd

from licbench.cli import main as licbench_main


def timed_run(codecs: str, images: int, jobs: int, dataset: str) -> tuple[float, pd.DataFrame]:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.sqlite"
        argv = ["--db", str(db), "run", "--codecs", codecs, "--dataset", dataset, "--images", str(images),
                "--jobs", str(jobs), "--no-progress"]
        start = time.perf_counter()
        status = licbench_main(argv)
        wall = time.perf_counter() - start
        if status not in (0, 1):
            raise SystemExit(f"licbench run failed with status {status}")
        with sqlite3.connect(db) as conn:
            rows = pd.read_sql_query("SELECT * FROM results", conn)
    return wall, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codecs", default="hevc,av1,jpegxl,jpeg2000,webp,jpeg")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--dataset", default="kodak")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; codecs {args.codecs}; {args.images} {args.dataset} images")

    walls = {}
    for jobs in (1, 2):
        wall, rows = timed_run(args.codecs, args.images, jobs, args.dataset)
        walls[jobs] = wall
        ok = rows[rows["status"] == "ok"]
        codec_s = float((ok["encode_s"] + ok["decode_s"]).sum())
        metrics_s = float(ok["metrics_s"].sum())
        print(f"--jobs {jobs}: {len(rows)} jobs ({len(rows) - len(ok)} failed), wall {wall:.1f} s, "
              f"codec time {codec_s:.1f} s, metrics {metrics_s:.1f} s")
        if jobs == 1:
            overhead = (wall - codec_s) / wall
            overhead_excl_metrics = (wall - codec_s - metrics_s) / wall
            print(f"  harness overhead (wall - codec) / wall: {100 * overhead:.1f} %  (goal < 5 %)")
            print(f"  excluding metric computation:           {100 * overhead_excl_metrics:.1f} %")
            per_codec = ok.assign(codec_s=ok["encode_s"] + ok["decode_s"]).groupby("codec")[["codec_s", "metrics_s"]].sum()
            print(per_codec.round(2).to_string())
    print(f"speed-up of --jobs 2 over --jobs 1: {walls[1] / walls[2]:.2f}x  (goal >= 1.7x)")


if __name__ == "__main__":
    main()
