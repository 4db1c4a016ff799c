"""The runner and results store end to end, through the real command line."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import PLUGIN_DIR, licbench_cli


def rows(db: Path) -> pd.DataFrame:
    with sqlite3.connect(db) as conn:
        return pd.read_sql_query("SELECT * FROM results", conn)


def test_run_stores_every_job_and_rerun_does_no_work(tmp_path, image_folder):
    db = tmp_path / "r.sqlite"
    first = licbench_cli("run", "--codecs", "toy-quant", "--dataset", str(image_folder), "--no-progress", db=db)
    assert first.returncode == 0, first.stderr
    table = rows(db)
    assert len(table) == 3 * 4 and (table["status"] == "ok").all()
    # bpp comes from the bytes written, header included
    assert (table["bpp"] == 8 * table["bytes"] / (table["width"] * table["height"])).all()
    # a coarser step costs fewer bits and more distortion
    mean = table.groupby("rate")[["bpp", "psnr_rgb"]].mean().sort_index()
    assert mean["bpp"].is_monotonic_decreasing and mean["psnr_rgb"].is_monotonic_decreasing
    assert table["ms_ssim"].between(0, 1).all()
    assert (table["decoder_matches_encoder"] == 1).all()
    assert "step" in first.stdout and "toy-quant" in first.stdout  # the summary table

    again = licbench_cli("run", "--codecs", "toy-quant", "--dataset", str(image_folder), "--no-progress", db=db)
    assert again.returncode == 0, again.stderr
    assert "12 already done, 0 to run" in again.stderr
    after = rows(db)
    assert len(after) == 12
    assert list(after["finished_at"]) == list(table["finished_at"])


def test_killed_run_resumes_without_duplicates_or_losses(tmp_path, image_folder):
    db = tmp_path / "r.sqlite"
    env = {**os.environ, "PYTHONPATH": str(PLUGIN_DIR)}
    cmd = [sys.executable, "-m", "licbench.cli", "--db", str(db), "run", "--codecs", "toy-quant:delay=0.4",
           "--dataset", str(image_folder), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if db.exists() and 3 <= _count(db) < 12:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = rows(db)
    assert 3 <= len(done_before) < 12
    resumed = licbench_cli("run", "--codecs", "toy-quant:delay=0.4", "--dataset", str(image_folder), "--no-progress", db=db)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(done_before)} already done, {12 - len(done_before)} to run" in resumed.stderr
    after = rows(db)
    assert len(after) == 12
    assert not after.duplicated(["image", "codec", "rate"]).any()
    kept = after.set_index(["image", "rate"]).loc[done_before.set_index(["image", "rate"]).index]
    assert list(kept["finished_at"]) == list(done_before["finished_at"])  # not recomputed


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_crash_and_hang_are_recorded_and_the_run_goes_on(tmp_path, image_folder):
    db = tmp_path / "r.sqlite"
    start = time.monotonic()
    result = licbench_cli(
        "run", "--codecs", "crashing,hanging,toy-quant", "--dataset", str(image_folder), "--images", "1",
        "--rates", "crashing=8", "--rates", "hanging=8", "--timeout", "2", "--jobs", "2", "--no-progress", db=db,
    )
    assert time.monotonic() - start < 60
    assert result.returncode == 1  # failures make the exit status non-zero
    table = rows(db).set_index("codec")
    assert table.loc["crashing", "status"] == "error"
    assert "killed by signal SIGSEGV" in table.loc["crashing", "error"]
    assert table.loc["hanging", "status"] == "timeout"
    assert "timed out after 2 s" in table.loc["hanging", "error"]
    assert (rows(db).query("codec == 'toy-quant'")["status"] == "ok").sum() == 4
    assert "FAILED crashing" in result.stderr


def test_a_worker_killed_by_its_codec_fails_that_job_only(tmp_path, image_folder):
    db = tmp_path / "r.sqlite"
    result = licbench_cli(
        "run", "--codecs", "dying,toy-quant", "--rates", "dying=8", "--dataset", str(image_folder), "--jobs", "2",
        "--no-progress", db=db,
    )
    assert result.returncode == 1, result.stderr
    table = rows(db)
    assert len(table) == 3 + 12 and not table.duplicated(["image", "codec", "rate"]).any()
    dying = table[table["codec"] == "dying"]
    assert (dying["status"] == "error").all()
    assert dying["error"].str.startswith("the worker process died running this job: ").all()
    assert (table.loc[table["codec"] == "toy-quant", "status"] == "ok").all()  # the jobs beside it
    assert "a worker process died" in result.stderr
    again = licbench_cli("run", "--codecs", "dying,toy-quant", "--rates", "dying=8", "--dataset", str(image_folder),
                         "--jobs", "2", "--no-progress", db=db)  # fmt: skip
    assert "15 already done, 0 to run" in again.stderr


def test_bad_images_are_recorded_with_the_file_named(tmp_path, image_folder):
    (image_folder / "zz-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    db = tmp_path / "r.sqlite"
    result = licbench_cli("run", "--codecs", "toy-quant", "--rates", "toy-quant=8", "--dataset", str(image_folder),
                          "--no-progress", db=db)
    assert result.returncode == 1
    table = rows(db).set_index("image")
    assert table.loc["zz-corrupt.png", "status"] == "bad-input"
    assert "zz-corrupt.png" in table.loc["zz-corrupt.png", "error"]
    assert "\n" not in table.loc["zz-corrupt.png", "error"]
    assert (table.drop(index="zz-corrupt.png")["status"] == "ok").all()


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_export(tmp_path, image_folder, fmt):
    db = tmp_path / "r.sqlite"
    assert licbench_cli("run", "--codecs", "toy-quant", "--rates", "toy-quant=8,16", "--dataset", str(image_folder),
                        "--run", "exp", "--no-progress", db=db).returncode == 0
    out = tmp_path / f"rows.{fmt}"
    result = licbench_cli("export", "exp", str(out), db=db)
    assert result.returncode == 0, result.stderr
    frame = {"csv": pd.read_csv, "json": pd.read_json, "parquet": pd.read_parquet}[fmt](out)
    assert len(frame) == 6
    assert sorted(frame["rate"].unique()) == [8, 16]
    assert frame["psnr_rgb"].notna().all()


def test_export_current_keeps_the_newest_settings_and_the_invocations_that_ran_them(tmp_path, image_folder, monkeypatch):
    """A codec re-run under its name after a change (new weights, another build) leaves its old rows
    in the run; ``--current`` exports what the analyses use, with the provenance of those rows only."""
    db = tmp_path / "r.sqlite"
    run = ("run", "--rates", "toy-quant=8,16", "--dataset", str(image_folder), "--run", "exp", "--no-progress")
    assert licbench_cli(*run, "--codecs", "toy-quant", db=db).returncode == 0
    monkeypatch.setenv("TOY_QUANT_BUILD", "2")
    rebuilt = licbench_cli(*run, "--codecs", "toy-quant,toy-quant:level=1", db=db)
    assert rebuilt.returncode == 0 and "18 jobs, 0 already done" in rebuilt.stderr  # 6 + 12 (default rates)
    # a re-run that finds every job done runs the current settings but computes none of the rows
    time.sleep(1.1)  # invocations and rows are stamped to the second
    assert "18 already done, 0 to run" in licbench_cli(*run, "--codecs", "toy-quant,toy-quant:level=1", db=db).stderr

    everything, current = tmp_path / "all.csv", tmp_path / "current.csv"
    assert licbench_cli("export", "exp", str(everything), db=db).returncode == 0
    result = licbench_cli("export", "exp", str(current), "--current", db=db)
    assert result.returncode == 0, result.stderr
    assert "rows of older settings left out (toy-quant 6)" in result.stdout and "having computed none of the rows kept: 2" in result.stdout
    assert len(pd.read_csv(everything)) == 6 + 18
    rows_kept = pd.read_csv(current)
    assert len(rows_kept) == 18 and rows_kept["codec_version"].str.contains("build2").all()
    full = json.loads(Path(f"{everything}.run.json").read_text())["provenance"]
    kept = json.loads(Path(f"{current}.run.json").read_text())["provenance"]
    assert len(full["earlier_invocations"]) == 2 and kept["earlier_invocations"] == []
    assert kept["invoked_utc"] == full["earlier_invocations"][1]["invoked_utc"] and "toy-quant:level=1" in kept["codecs"]

    # the current rows are what a fresh store needs to skip the jobs already done
    fresh = tmp_path / "fresh.sqlite"
    assert licbench_cli("import", str(current), db=fresh).returncode == 0
    again = licbench_cli(*run, "--codecs", "toy-quant,toy-quant:level=1", db=fresh)
    assert again.returncode == 0 and "18 already done, 0 to run" in again.stderr


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_import_carries_another_machines_rows_and_keeps_what_is_here(tmp_path, image_folder, fmt):
    elsewhere, here = tmp_path / "elsewhere.sqlite", tmp_path / "here.sqlite"
    run = ("run", "--codecs", "toy-quant", "--rates", "toy-quant=8,16", "--dataset", str(image_folder), "--no-progress")
    assert licbench_cli(*run, "--run", "exp", db=elsewhere).returncode == 0
    out = tmp_path / f"rows.{fmt}"
    assert licbench_cli("export", "exp", str(out), db=elsewhere).returncode == 0

    # here: one of the six jobs already computed (ok), one failed; the import keeps the first
    assert licbench_cli(*run[:4], "toy-quant=8", *run[5:], "--images", "1", "--run", "exp", db=here).returncode == 0
    with sqlite3.connect(here) as conn:
        conn.execute("UPDATE results SET finished_at = 'computed here'")
        conn.execute(
            "INSERT INTO results (run, dataset, image, codec, settings_hash, rate, status, error) "
            "SELECT run, dataset, image, codec, settings_hash, 16, 'timeout', 'took too long' FROM results"
        )
    result = licbench_cli("import", str(out), db=here)
    assert result.returncode == 0, result.stderr
    assert "4 rows added, 1 failed rows replaced, 1 kept" in result.stdout
    merged, source = rows(here).sort_values(["image", "rate"]), rows(elsewhere).sort_values(["image", "rate"])
    assert len(merged) == 6 and (merged["status"] == "ok").all()
    assert (merged["finished_at"] == "computed here").sum() == 1
    columns = ["image", "codec", "settings_hash", "rate", "bytes", "bpp", "psnr_rgb", "settings", "bitstream_sha256"]
    pd.testing.assert_frame_equal(
        merged[columns].reset_index(drop=True), source[columns].reset_index(drop=True), check_exact=True
    )
    with sqlite3.connect(here) as conn:
        provenance = json.loads(conn.execute("SELECT provenance FROM runs WHERE name = 'exp'").fetchone()[0])
    assert provenance["imports"][0]["rows"] == 6 and provenance["imports"][0]["source_run"]["name"] == "exp"

    # the same settings hash: a run here treats the imported jobs as done
    again = licbench_cli(*run, "--run", "exp", db=here)
    assert again.returncode == 0 and "6 already done, 0 to run" in again.stderr
    # ...and records its invocation beside the earlier one and the import, which it keeps
    with sqlite3.connect(here) as conn:
        provenance = json.loads(conn.execute("SELECT provenance FROM runs WHERE name = 'exp'").fetchone()[0])
    assert provenance["imports"][0]["rows"] == 6 and provenance["invoked_utc"]
    (first,) = provenance["earlier_invocations"]
    assert "--images" in first["argv"] and "--images" not in provenance["argv"] and "imports" not in first
    twice = licbench_cli("import", str(out), db=here)
    assert "0 rows added, 0 failed rows replaced, 6 kept" in twice.stdout and len(rows(here)) == 6


def test_import_of_a_file_that_is_no_export_is_a_clear_error(tmp_path, image_folder):
    db = tmp_path / "r.sqlite"
    table = tmp_path / "scores.csv"
    table.write_text("run,dataset,image,quality\nx,kodak,kodim01.png,3\n")
    result = licbench_cli("import", str(table), db=db)
    assert result.returncode != 0
    assert str(table) in result.stderr and "missing result columns: codec" in result.stderr
    truncated = tmp_path / "rows.json"
    truncated.write_text('[{"run": "exp", "dataset"')
    result = licbench_cli("import", str(truncated), db=db)
    assert result.returncode != 0 and f"{truncated}: not a readable json table" in result.stderr
    with sqlite3.connect(db) as conn:  # nothing half-imported
        assert conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def test_codecs_lists_plugins_and_availability(tmp_path):
    result = licbench_cli("codecs", db=tmp_path / "r.sqlite")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert {"toy-quant", "crashing", "hanging"} <= set(lines)
    assert "yes" in lines["toy-quant"] and "step=32,16,8,4" in lines["toy-quant"]


def test_unknown_codec_setting_is_a_clear_error(tmp_path, image_folder):
    result = licbench_cli("run", "--codecs", "toy-quant:speed=3", "--dataset", str(image_folder), db=tmp_path / "r.sqlite")
    assert result.returncode == 2
    assert "unknown setting(s) ['speed']" in result.stderr


@pytest.fixture(scope="module")
def local_cluster():
    """A real dask.distributed cluster on this machine: a scheduler and one worker process (which
    sees the test codec plugin, like every worker of a real cluster sees the codecs it runs)."""
    import dask
    import distributed  # the [test] extra installs it

    sys.path.insert(0, str(PLUGIN_DIR))  # spawned workers start with this process's sys.path
    try:
        # The first worker death of a task fails it (dask's default retries it on 3 more workers),
        # and one thread per worker (as the README advises) keeps other jobs out of the way.
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}), distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster, distributed.Client(cluster) as client:
            yield cluster, client
    finally:
        sys.path.remove(str(PLUGIN_DIR))


def test_a_cluster_run_stores_every_job_here_and_resumes(tmp_path, image_folder, local_cluster):
    cluster, client = local_cluster
    db = tmp_path / "r.sqlite"
    args = ("run", "--codecs", "jpeg,webp", "--rates", "jpeg=30,80", "--rates", "webp=30,80", "--dataset",
            str(image_folder), "--scheduler", cluster.scheduler_address, "--run", "cl", "--no-progress")
    first = licbench_cli(*args, db=db)
    assert first.returncode == 0, first.stderr
    table = rows(db)
    assert len(table) == 3 * 2 * 2 and (table["status"] == "ok").all()
    assert (table["decoder_matches_encoder"].isna() | (table["decoder_matches_encoder"] == 1)).all()
    # the jobs ran in the worker process, which imported the runner to do so
    ran = client.run(lambda: "licbench.bench.runner" in sys.modules)
    assert list(ran.values()) == [True]
    with sqlite3.connect(db) as conn:
        timing = json.loads(conn.execute("SELECT provenance FROM runs").fetchone()[0])["timing"]
    assert timing["cluster"]["scheduler"] == cluster.scheduler_address
    assert timing["jobs"] == 1  # the worker's one thread
    report = licbench_cli("report", "cl", "--output", str(tmp_path / "report"), db=db)
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "report" / "index.html").read_text()
    assert f"the workers of the dask cluster at <code>{cluster.scheduler_address}</code>" in html

    again = licbench_cli(*args, db=db)
    assert again.returncode == 0, again.stderr
    assert "12 already done, 0 to run" in again.stderr
    assert list(rows(db)["finished_at"]) == list(table["finished_at"])


def test_a_cluster_worker_killed_by_its_codec_fails_that_job_only(tmp_path, image_folder, local_cluster):
    cluster, _ = local_cluster
    db = tmp_path / "r.sqlite"
    result = licbench_cli(
        "run", "--codecs", "dying,toy-quant", "--rates", "dying=8", "--rates", "toy-quant=8,16", "--images", "2",
        "--dataset", str(image_folder), "--scheduler", cluster.scheduler_address, "--no-progress", db=db,
    )
    assert result.returncode == 1, result.stderr
    table = rows(db).set_index(["codec", "image", "rate"]).sort_index()
    assert len(table) == 2 + 4
    assert table.loc["dying", "error"].str.startswith("the worker process died running this job: ").all()
    assert (table.loc["toy-quant", "status"] == "ok").all()


def test_an_unreachable_scheduler_is_a_one_line_error(tmp_path, image_folder):
    from licbench.bench.runner import connect_cluster

    start = time.monotonic()
    with pytest.raises(OSError, match=r"cannot reach the dask scheduler at tcp://127\.0\.0\.1:9: ") as error:
        connect_cluster("tcp://127.0.0.1:9", timeout=2)
    assert time.monotonic() - start < 30
    assert "\n" not in str(error.value)
    both = licbench_cli("run", "--codecs", "jpeg", "--dataset", str(image_folder), "--scheduler", "tcp://127.0.0.1:9",
                        "--jobs", "2", db=tmp_path / "r.sqlite")  # fmt: skip
    assert both.returncode == 2 and "--jobs is for local runs" in both.stderr


def test_a_worker_refuses_a_job_for_another_build_of_its_codec(image_folder):
    from licbench.bench.runner import Job, plan_codec, run_job

    image = sorted(image_folder.glob("*.png"))[0]
    planned = plan_codec("jpeg")
    assert run_job(Job(str(image), image.name, "jpeg", 50.0, planned.settings_hash), 60)["status"] == "ok"
    other = run_job(Job(str(image), image.name, "jpeg", 50.0, "0" * 16), 60)
    assert other["status"] == "error"
    assert "jpeg on host" in other["error"] and "not the codec the run planned" in other["error"]
    assert planned.version in other["error"] and "planned 0000000000000000" in other["error"]


def test_the_codec_registry_is_complete_for_every_thread(tmp_path):
    # A dask worker runs jobs in threads; each must find every codec, even while the first fills
    # the registry. A fresh interpreter, so that no registry is filled yet.
    script = """
import threading
from licbench.codecs.base import codec_class
barrier, errors = threading.Barrier(8), []
def look_up():
    barrier.wait()
    try:
        codec_class("webp")
    except KeyError as exc:
        errors.append(exc)
threads = [threading.Thread(target=look_up) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(len(errors))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_run_takes_its_workers_and_their_tools_with_it(tmp_path, image_folder, stop):
    """``kill`` (a batch system's or a user's SIGTERM) or Ctrl-C on a ``--jobs 2`` run: the run says it
    was interrupted, keeps what it finished, and leaves no worker process or codec tool behind
    (orphans would go on burning the cores, each up to its job's timeout)."""
    import psutil  # the [test] extra has it (dask's dependency; listed there too)

    db = tmp_path / "r.sqlite"
    env = {**os.environ, "PYTHONPATH": str(PLUGIN_DIR)}
    cmd = [sys.executable, "-m", "licbench.cli", "--db", str(db), "run", "--codecs", "toy-quant,hanging",
           "--rates", "hanging=8,9", "--timeout", "300", "--jobs", "2", "--dataset", str(image_folder), "--no-progress"]
    # A shell starts background commands (`cmd &`, `nohup`) with SIGINT ignored, and Python then
    # keeps ignoring Ctrl-C; the run is started here as from a terminal, where Ctrl-C reaches it.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    main = psutil.Process(proc.pid)

    def hanging_tools() -> int:
        return sum(p.name() == "sleep" for p in main.children(recursive=True))

    deadline = time.monotonic() + 120  # both workers in a hanging job, toy-quant's 12 jobs stored
    while time.monotonic() < deadline and not (hanging_tools() == 2 and _count(db) == 12):
        time.sleep(0.2)
    family = main.children(recursive=True)
    assert hanging_tools() == 2 and _count(db) == 12, "the hanging codec's tools never started"
    proc.send_signal(stop)  # to the main process only, as `kill PID` does
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted; finished results are saved" in stderr
    _, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    table = rows(db)
    assert (table["codec"] == "toy-quant").sum() == 12 and (table["status"] == "ok").all()


def test_a_codec_tool_dies_with_the_process_that_started_it(tmp_path):
    """A worker killed outright (SIGKILL: the out-of-memory killer, or a pool killing its workers
    while one of them starts its next job) takes the tool it was waiting on with it."""
    import psutil

    script = "from licbench.tools import run_tool; run_tool(['sleep', '3600'], timeout=3600)"
    worker = subprocess.Popen([sys.executable, "-c", script])
    parent = psutil.Process(worker.pid)
    # The child shows up between fork and exec with the parent's name: wait for the exec as well.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(p.name() == "sleep" for p in parent.children()):
        time.sleep(0.1)
    (tool,) = parent.children()
    assert tool.name() == "sleep"
    worker.kill()
    worker.wait()
    _, alive = psutil.wait_procs([tool], timeout=10)
    assert not alive, "the tool outlived the process that started it"
