"""Run codecs over a dataset: one job per image x codec x rate point, in parallel, resumable.

Workers encode, decode, time and measure; the parent process writes each finished job to the
results store as it arrives, so an interruption loses only the jobs in flight. Workers are local
processes (joblib) or the workers of a dask.distributed cluster (one task per job); either
way a worker refuses a job when its codec is not the one the run planned (other version or
settings), so one run never mixes codec builds.
"""

from __future__ import annotations

import hashlib
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from joblib.externals.loky.process_executor import BrokenProcessPool
from tqdm.auto import tqdm

from licbench.bench.metrics import image_metrics
from licbench.codecs.base import Codec, CodecError, CodecTimeout, codec_class, make_codec, parse_codec_spec
from licbench.image import ImageError, load_image
from licbench.provenance import machine
from licbench.store import OK, ResultStore, hash_settings

if TYPE_CHECKING:
    from distributed import Client


@dataclass(frozen=True)
class Job:
    image_path: str
    image: str
    codec: str  # codec spec, e.g. "vvenc" or "vvenc:preset=slow"
    rate: float
    settings_hash: str  # the plan's: a worker whose codec differs refuses the job

    @property
    def identity(self) -> dict[str, Any]:
        """The fields that name this job's row (the parent adds the run's and the codec's)."""
        return {"image": self.image, "codec": self.codec, "rate": self.rate}


@dataclass(frozen=True)
class CodecPlan:
    """One codec of a run, resolved in the parent: what identifies its rows in the store."""

    spec: str
    name: str
    rates: tuple[float, ...]
    rate_parameter: str
    version: str
    settings: dict[str, Any]
    settings_hash: str


def codec_identity(codec: Codec) -> tuple[str, dict[str, Any], str]:
    """(version, recorded settings, settings hash): what identifies a codec's rows in the store."""
    version = codec.version()
    settings = {**codec.describe(), "version": version}
    return version, settings, hash_settings(settings)


def plan_codec(spec: str, rates: tuple[float, ...] | None = None) -> CodecPlan:
    """Instantiate the codec once to check it can run and to fix its identity (settings + version)."""
    codec = make_codec(spec)
    availability = codec.availability()
    if not availability.ok:
        raise CodecError(f"codec {spec!r} is unavailable: {availability.reason}")
    version, settings, settings_hash = codec_identity(codec)
    return CodecPlan(
        spec=spec,
        name=codec.name,
        rates=tuple(float(r) for r in (rates or codec.default_rates)),
        rate_parameter=codec.rate_parameter,
        version=version,
        settings=settings,
        settings_hash=settings_hash,
    )


@dataclass(frozen=True)
class _WorkerCodec:
    codec: Codec
    version: str
    settings_hash: str


class _WorkerCaches(threading.local):
    """A worker builds each codec (and loads each model) once, not once per job. Per thread: a
    dask worker runs jobs in threads, and a codec instance is not meant to be shared by two."""

    def __init__(self) -> None:
        self.codecs: dict[str, _WorkerCodec] = {}
        self.images: dict[str, np.ndarray] = {}


_CACHES = _WorkerCaches()


def _codec_for(job: Job) -> tuple[Codec, float | None]:
    """The worker's codec instance, and its construction time on first use (model loading).

    Raises CodecError when this worker's codec is not the one the run planned: another host of a
    cluster with another build, or a binary or checkpoint replaced since the run started.
    """
    cached = _CACHES.codecs.get(job.codec)
    load_s = None
    if cached is None:
        name, settings = parse_codec_spec(job.codec)
        cls = codec_class(name)  # the registry's imports are not the codec's loading time
        start = time.perf_counter()
        codec = cls(**settings)
        codec.load()
        load_s = time.perf_counter() - start
        version, _, settings_hash = codec_identity(codec)
        cached = _CACHES.codecs[job.codec] = _WorkerCodec(codec, version, settings_hash)
    if cached.settings_hash != job.settings_hash:
        raise CodecError(
            f"{job.codec} on host {machine()['host']} is not the codec the run planned "
            f"(version {cached.version!r}, settings hash {cached.settings_hash}, planned {job.settings_hash}): "
            "install the same codec versions on every worker"
        )
    return cached.codec, load_s


def _image_for(path: str) -> np.ndarray:
    images = _CACHES.images
    if path not in images:
        if len(images) >= 8:
            images.pop(next(iter(images)))
        images[path] = load_image(Path(path))
    return images[path]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, (CodecError, ImageError)) else f"{type(exc).__name__}: {text}"


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """Run ``fn`` once (its result is kept); with repeats > 1 that run is a warm-up and the time is
    the median of ``repeats`` further runs."""
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    if repeats > 1:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        elapsed = statistics.median(times)
    return result, elapsed


def run_job(job: Job, timeout: float, repeats: int = 1) -> dict[str, Any]:
    """Encode, decode and measure one image at one rate point; never raises for a codec or input
    failure (the row records it)."""
    row: dict[str, Any] = {**job.identity, "host": machine()["host"], "timing_repeats": repeats}
    try:
        image = _image_for(job.image_path)
    except ImageError as exc:
        return {**row, "status": "bad-input", "error": _one_line(exc)}
    height, width = image.shape[:2]
    row.update(width=width, height=height, image_sha256=hashlib.sha256(image.tobytes()).hexdigest())
    try:
        codec, load_s = _codec_for(job)
        row["codec_load_s"] = load_s
        with tempfile.TemporaryDirectory(prefix="licbench-") as tmp:
            workdir = Path(tmp)
            encoded, row["encode_s"] = _timed(lambda: codec.encode(image, job.rate, workdir, timeout), repeats)
            decoded, row["decode_s"] = _timed(lambda: codec.decode(encoded.bitstream, workdir, timeout), repeats)
        nbytes = len(encoded.bitstream)
        row.update(
            bytes=nbytes,
            bpp=8.0 * nbytes / (width * height),
            bitstream_sha256=hashlib.sha256(encoded.bitstream).hexdigest(),
            info={**encoded.info, **codec.complexity(height, width)} or None,
        )
        if decoded.shape != image.shape or decoded.dtype != np.uint8:
            raise CodecError(f"decoded image is {decoded.shape} {decoded.dtype}, expected {image.shape} uint8")
        start = time.perf_counter()
        row.update(image_metrics(image, decoded))
        row["metrics_s"] = time.perf_counter() - start
        if encoded.reconstruction is not None:
            matches = bool(np.array_equal(encoded.reconstruction, decoded))
            row["decoder_matches_encoder"] = int(matches)
            if not matches:
                differing = int(np.count_nonzero(np.any(encoded.reconstruction != decoded, axis=-1)))
                return {
                    **row,
                    "status": "mismatch",
                    "error": f"decoder output differs from the encoder's reconstruction at {differing} pixels",
                }
        return {**row, "status": OK}
    except CodecTimeout as exc:
        return {**row, "status": "timeout", "error": _one_line(exc)}
    except Exception as exc:  # a codec may fail in any way; the run records it and goes on
        return {**row, "status": "error", "error": _one_line(exc)}


def pending_jobs(
    store: ResultStore,
    run: str,
    dataset: str,
    images: list[Path],
    plans: list[CodecPlan],
    retry_failed: bool = False,
) -> list[Job]:
    done = store.finished_keys(run, include_failed=not retry_failed)
    jobs = []
    for plan in plans:
        for rate in plan.rates:
            for path in images:
                if (run, dataset, path.name, plan.spec, plan.settings_hash, rate) not in done:
                    jobs.append(Job(str(path), path.name, plan.spec, rate, plan.settings_hash))
    return jobs


def connect_cluster(address: str, timeout: float = 30.0) -> Client:
    """A client of the dask.distributed scheduler at ``address``, once at least one worker is up.

    The workers need licbench, the codecs of the run and the dataset at the same path as here.
    """
    try:
        from distributed import Client
    except ImportError:
        raise RuntimeError("--scheduler needs dask.distributed: pip install 'licbench[cluster]'") from None
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except OSError as exc:
        raise OSError(f"cannot reach the dask scheduler at {address}: {_one_line(exc)}") from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        client.close()
        raise RuntimeError(f"the dask scheduler at {address} has no worker after {timeout:g} s") from None
    return client


def cluster_description(client: Client) -> dict[str, Any]:
    """Scheduler address and workers (address -> host, threads), for the run's provenance."""
    info = client.scheduler_info(n_workers=-1)
    workers = info["workers"]
    return {
        "scheduler": info["address"],
        "workers": {address: {"host": w.get("host"), "threads": w.get("nthreads")} for address, w in workers.items()},
    }


def _died(job: Job, exc: BaseException) -> dict[str, Any]:
    return {**job.identity, "status": "error", "error": f"the worker process died running this job: {_one_line(exc)}"}


def _local_rows(
    jobs: list[Job], n_jobs: int, timeout: float, repeats: int, say: Callable[[str], None]
) -> Iterator[dict[str, Any]]:
    """Rows of ``jobs`` run by joblib's local worker processes (in this process for one job), as
    they finish. A worker that dies (a crash in a codec's own process, the out-of-memory killer)
    takes every job in flight with it: each of those then runs alone in a fresh worker, so only
    the one that kills its worker again is recorded as failed, and the rest go on as usual."""
    pending = list(jobs)
    while pending:
        sent: list[Job] = []

        def send(batch: list[Job]) -> Iterator[Any]:
            for job in batch:  # joblib takes jobs from here as it dispatches them
                sent.append(job)
                yield delayed(run_job)(job, timeout, repeats)

        returned: set[tuple[Any, ...]] = set()
        try:
            for row in Parallel(n_jobs=n_jobs, return_as="generator_unordered")(send(pending)):
                returned.add(tuple(row[field] for field in ("image", "codec", "rate")))
                yield row
            return
        except BrokenProcessPool as exc:
            lost = [job for job in sent if tuple(job.identity.values()) not in returned]
            say(f"a worker process died ({_one_line(exc)}); running its {len(lost)} job(s) one at a time")
            for job in lost:
                try:  # n_jobs=2 so that the job runs in a worker process: with 1 it would run here
                    yield Parallel(n_jobs=2)([delayed(run_job)(job, timeout, repeats)])[0]
                except BrokenProcessPool as again:
                    yield _died(job, again)
            pending = pending[len(sent):]


def _cluster_rows(cluster: Client, jobs: list[Job], timeout: float, repeats: int) -> Iterator[dict[str, Any]]:
    """Rows of ``jobs`` run on a dask.distributed cluster, one task per job, as they finish.

    dask futures rather than joblib's dask backend: there, a task whose worker died never
    completes its joblib future in generator mode (joblib 1.6), and the run would hang. Here the
    scheduler fails such a task once it has killed ``distributed.scheduler.allowed-failures`` + 1
    workers (dask's setting, default 3), and only its job is recorded as failed.
    """
    from distributed import as_completed

    futures = {cluster.submit(run_job, job, timeout, repeats, pure=False): job for job in jobs}
    for future in as_completed(futures, loop=cluster.loop):
        job = futures.pop(future)
        if future.status == "error":
            yield _died(job, future.exception())
        else:
            yield future.result()
        future.release()


def execute(
    store: ResultStore,
    run: str,
    dataset: str,
    jobs: list[Job],
    plans: list[CodecPlan],
    n_jobs: int = 1,
    timeout: float = 600.0,
    repeats: int = 1,
    progress: bool = True,
    cluster: Client | None = None,
) -> int:
    """Run ``jobs`` and store each result as it finishes; returns the number of failed jobs.

    With ``cluster`` the jobs run on its workers (``n_jobs`` is then ignored: the scheduler keeps
    every worker thread busy); the results still come back here, the only writer of the store.
    """
    by_spec = {p.spec: p for p in plans}
    failed = 0
    with tqdm(total=len(jobs), unit="job", disable=not progress, dynamic_ncols=True) as bar:
        def say(text: str) -> None:
            bar.write(text, file=sys.stderr)

        rows = (
            _cluster_rows(cluster, jobs, timeout, repeats)
            if cluster is not None
            else _local_rows(jobs, n_jobs, timeout, repeats, say)
        )
        for row in rows:
            plan = by_spec[row["codec"]]
            store.add_result(
                {
                    **row,
                    "run": run,
                    "dataset": dataset,
                    "codec_name": plan.name,
                    "rate_parameter": plan.rate_parameter,
                    "codec_version": plan.version,
                    "settings": plan.settings,
                    "settings_hash": plan.settings_hash,
                }
            )
            if row["status"] != OK:
                failed += 1
                say(f"FAILED {row['codec']} {plan.rate_parameter}={row['rate']:g} {row['image']}: {row['error']}")
            bar.set_postfix_str(f"{row['codec']} {row['image']}", refresh=False)
            bar.update()
    return failed


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per codec and rate point: images done/failed, mean bpp and quality, median times."""
    if frame.empty:
        return pd.DataFrame()
    frame = frame.assign(ok=frame["status"] == OK)
    ok = frame[frame["ok"]]
    keys = ["codec", "rate_parameter", "rate"]
    stats = ok.groupby(keys).agg(
        bpp=("bpp", "mean"),
        psnr_rgb=("psnr_rgb", "mean"),
        psnr_y=("psnr_y", "mean"),
        ms_ssim=("ms_ssim", "mean"),
        encode_s=("encode_s", "median"),
        decode_s=("decode_s", "median"),
    )
    counts = frame.groupby(keys).agg(images=("ok", "sum"), failed=("ok", lambda s: int((~s).sum())))
    table = counts.join(stats).reset_index().rename(columns={"rate_parameter": "parameter"})
    return table.round({"bpp": 4, "psnr_rgb": 2, "psnr_y": 2, "ms_ssim": 4, "encode_s": 3, "decode_s": 3})
