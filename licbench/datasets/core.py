"""Finding a dataset's images locally or downloading them, and checking their bytes."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from licbench.datasets.archive import extract_images
from licbench.datasets.catalogue import KNOWN_DATASETS, Checksum, DatasetSource
from licbench.datasets.download import download as download_file
from licbench.datasets.errors import ChecksumError, DatasetError, DownloadError
from licbench.digest import file_digest
from licbench.image import ImageError, load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".tif", ".tiff", ".webp")
SUMS_FILE = "SHA256SUMS"  # per-file checksums in a dataset folder, in `sha256sum` format
_HASH_CACHE_FILE = "verified.json"
_DOWNLOADS = "downloads"
_RACY_MARGIN_NS = 2_000_000_000


@dataclass
class Dataset:
    """A list of image files, with where they were found and the checksums they must have."""

    name: str
    description: str
    files: list[Path]
    licence: str
    location: Path | None = None
    found_via: str = ""  # "data_dir", "LICBENCH_DATA", "cache", "download" or "folder"
    sha256: dict[str, str] = field(default_factory=dict)  # file name -> expected sha256
    expected_count: int | None = None  # for the whole dataset; None when unknown or limited


def dataset_names() -> list[str]:
    return sorted(KNOWN_DATASETS)


def cache_root() -> Path:
    """``$LICBENCH_CACHE``, else ``$XDG_CACHE_HOME/licbench``, else ``~/.cache/licbench``."""
    if os.environ.get("LICBENCH_CACHE"):
        return Path(os.environ["LICBENCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "licbench"


def resolve(
    name_or_path: str,
    data_dir: Path | str | None = None,
    download: bool = True,
    limit: int | None = None,
    check: bool = True,
    mirror: str | None = None,
) -> Dataset:
    """The dataset called ``name_or_path``, or the images in the folder of that path.

    A known name (see :func:`dataset_names`) is looked up, first match wins, in: ``data_dir``
    (``<data_dir>/<name>/`` or ``data_dir`` itself holding the images), ``$LICBENCH_DATA/<name>``,
    the cache (:func:`cache_root` ``/<name>``), and finally downloaded into the cache when
    ``download`` is true. A known name wins over a folder of the same name: write ``./kodak``
    for the folder. Any other existing folder is a dataset of its images (top level only,
    sorted by name; suffixes in :data:`IMAGE_SUFFIXES`).

    ``limit`` keeps the first N images (for Kodak only those are downloaded). With ``check``,
    files with a known sha256 (built in, or a ``SHA256SUMS`` in their folder) are verified,
    caching each file's hash by size and mtime, and a mismatch raises :class:`ChecksumError`
    naming the file. ``mirror`` (default ``$LICBENCH_MIRROR``) replaces the download hosts:
    files are fetched from ``<mirror>/<name>/<file name>``.
    """
    if limit is not None and limit < 1:
        raise DatasetError(f"image limit must be at least 1, not {limit}")
    source = KNOWN_DATASETS.get(name_or_path)
    if source is not None:
        dataset = _resolve_known(source, _as_path(data_dir), download, limit, mirror)
    else:
        dataset = _folder_dataset(Path(name_or_path), limit)
    if check:
        problems = _checksum_problems(dataset, recheck=False)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ChecksumError(problems[0] + more)
    return dataset


def fetch(name: str, mirror: str | None = None) -> Dataset:
    """Make a dataset available locally (downloading what is missing) and return all of it."""
    return resolve(name, download=True, mirror=mirror)


def verify(dataset: Dataset, recheck: bool = False) -> list[str]:
    """Everything wrong with the dataset's files, one line each (empty when all is well).

    Files with a known sha256 are checked against it (hashes cached by size and mtime unless
    ``recheck``); files without one are decoded with :func:`licbench.image.load_image`. A
    complete known dataset with another number of images than it should have is reported too.
    """
    problems = [f"{path}: file is missing" for path in dataset.files if not path.is_file()]
    present = [path for path in dataset.files if path.is_file()]
    problems += _checksum_problems(replace(dataset, files=present), recheck)
    for path in present:
        if path.name not in dataset.sha256:
            try:
                load_image(path)
            except ImageError as exc:
                problems.append(str(exc))
    if dataset.expected_count is not None and len(dataset.files) != dataset.expected_count:
        problems.append(
            f"{dataset.name} in {dataset.location}: {len(dataset.files)} images, expected {dataset.expected_count}"
        )
    return problems


def describe_all() -> list[dict[str, str | int]]:
    """One row per known dataset: name, images, location (or "not downloaded"), source,
    checksum kind and licence. Nothing is downloaded or hashed."""
    rows = []
    for source in KNOWN_DATASETS.values():
        try:
            found = _locate(source, data_dir=None, limit=None, download=False)
            location = str(found[0]) if found else "not downloaded"
        except DatasetError as exc:
            location = f"incomplete: {exc}"
        rows.append(
            {
                "name": source.name,
                "images": source.image_count,
                "location": location,
                "source": source.source_url,
                "checksum": source.checksum_kind,
                "licence": source.licence,
            }
        )
    return rows


def _as_path(value: Path | str | None) -> Path | None:
    return None if value is None else Path(value)


def _mirror_url(source: DatasetSource, file_name: str, official: str, mirror: str | None) -> str:
    mirror = mirror or os.environ.get("LICBENCH_MIRROR")
    return f"{mirror.rstrip('/')}/{source.name}/{file_name}" if mirror else official


def _resolve_known(
    source: DatasetSource, data_dir: Path | None, download: bool, limit: int | None, mirror: str | None
) -> Dataset:
    found = _locate(source, data_dir, limit, download)
    if found is None:
        if not download:
            raise DatasetError(
                f"{source.name} is not available locally (looked in {', '.join(_searched(source, data_dir))}); "
                f"fetch it with `licbench datasets fetch {source.name}` or set LICBENCH_DATA"
            )
        found = _download_into_cache(source, limit, mirror), "download"
    folder, found_via = found
    files = _dataset_files(source, folder, limit)
    assert files is not None  # _locate and the download both produce a folder holding them
    return Dataset(
        name=source.name,
        description=source.description,
        files=files,
        licence=source.licence,
        location=folder,
        found_via=found_via,
        sha256={**_read_sums(folder), **source.file_sha256},
        expected_count=None if limit else source.image_count,
    )


def _searched(source: DatasetSource, data_dir: Path | None) -> list[str]:
    places = [str(data_dir)] if data_dir else []
    if os.environ.get("LICBENCH_DATA"):
        places.append(str(Path(os.environ["LICBENCH_DATA"]) / source.name))
    return places + [str(cache_root() / source.name)]


def _locate(
    source: DatasetSource, data_dir: Path | None, limit: int | None, download: bool
) -> tuple[Path, str] | None:
    """The first folder holding the dataset, with how it was found, or None to download it.

    A folder that holds part of a named dataset is an error, except the cache when downloading
    is allowed: the download completes it.
    """
    candidates: list[tuple[Path, str]] = []
    if data_dir is not None:
        if not data_dir.is_dir():
            raise DatasetError(f"data folder {data_dir} does not exist")
        candidates += [(data_dir / source.name, "data_dir"), (data_dir, "data_dir")]
    if os.environ.get("LICBENCH_DATA"):
        candidates.append((Path(os.environ["LICBENCH_DATA"]) / source.name, "LICBENCH_DATA"))
    candidates.append((cache_root() / source.name, "cache"))
    for folder, found_via in candidates:
        if not folder.is_dir():
            continue
        try:
            if _dataset_files(source, folder, limit) is not None:
                return folder, found_via
        except DatasetError:
            if found_via == "cache" and download:
                return None
            raise
    return None


def _dataset_files(source: DatasetSource, folder: Path, limit: int | None) -> list[Path] | None:
    """The dataset's images in ``folder`` (the first ``limit``), or None if it holds none of them.

    Raises DatasetError when the folder holds some of a named dataset's images but not all.
    """
    if not source.file_names:
        images = _list_images(folder)
        return images[:limit] if images else None
    wanted = source.file_names[:limit]
    if not any((folder / name).is_file() for name in source.file_names):
        return None
    missing = [name for name in wanted if not (folder / name).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DatasetError(f"{source.name} in {folder}: {missing[0]}{more} missing")
    return [folder / name for name in wanted]


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.iterdir()
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()
    )


def _folder_dataset(folder: Path, limit: int | None) -> Dataset:
    if not folder.is_dir():
        known = ", ".join(dataset_names())
        raise DatasetError(f"{folder}: not a known dataset ({known}) nor an existing folder")
    images = _list_images(folder)
    if not images:
        raise DatasetError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return Dataset(
        name=folder.resolve().name,
        description=f"images in {folder}",
        files=images[:limit],
        licence="unknown (local folder)",
        location=folder,
        found_via="folder",
        sha256=_read_sums(folder),
    )


def _read_sums(folder: Path) -> dict[str, str]:
    """``SHA256SUMS`` of a folder as {file name: sha256}; empty when there is none."""
    sums_path = folder / SUMS_FILE
    if not sums_path.is_file():
        return {}
    sums = {}
    for number, line in enumerate(sums_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.strip().partition(" ")
        name = name.strip().lstrip("*")  # "*" marks binary mode in sha256sum output
        if len(digest) != 64 or not name:
            raise DatasetError(f"{sums_path}:{number}: expected '<sha256>  <file name>'")
        sums[name] = digest.lower()
    return sums


def _write_sums(folder: Path, sums: dict[str, str]) -> None:
    (folder / SUMS_FILE).write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items())))


def _checksum_problems(dataset: Dataset, recheck: bool) -> list[str]:
    checked = [path for path in dataset.files if path.name in dataset.sha256]
    actual = _cached_sha256(checked, recheck)
    return [
        f"{path}: sha256 mismatch (expected {dataset.sha256[path.name]}, got {actual[path]}); "
        "the file is damaged or not the right image: replace or delete it"
        for path in checked
        if actual[path] != dataset.sha256[path.name]
    ]


def _cached_sha256(files: list[Path], recheck: bool) -> dict[Path, str]:
    """sha256 of each file, reusing the hash stored for the same path, size and mtime.

    The cache is a JSON file in the cache root, so read-only data folders can be checked once
    and then trusted cheaply; when the cache cannot be written the hashes are simply recomputed
    next time. As in git's "racy" check, a hash is reused only if the file's mtime was well
    before the hashing: file systems with coarse timestamps can give a file rewritten just
    after hashing the same mtime.
    """
    if not files:
        return {}
    cache_file = cache_root() / _HASH_CACHE_FILE
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    result, changed = {}, False
    for path in files:
        stat = path.stat()
        key = str(path.resolve())
        entry = cache.get(key)
        if (
            not recheck
            and isinstance(entry, list)
            and len(entry) == 4
            and entry[:2] == [stat.st_size, stat.st_mtime_ns]
            and stat.st_mtime_ns < entry[3] - _RACY_MARGIN_NS
        ):
            result[path] = entry[2]
            continue
        hashed_at = time.time_ns()
        result[path] = file_digest(path)
        cache[key] = [stat.st_size, stat.st_mtime_ns, result[path], hashed_at]
        changed = True
    if changed:
        try:
            _write_atomically(cache_file, json.dumps(cache, sort_keys=True))
        except OSError:
            pass
    return result


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as tmp:
            tmp.write(text)
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def _download_into_cache(source: DatasetSource, limit: int | None, mirror: str | None) -> Path:
    folder = cache_root() / source.name
    if source.archive is None:
        for name in source.file_names[:limit]:
            target = folder / name
            if not target.is_file():
                url = _mirror_url(source, name, source.file_base_url + name, mirror)
                download_file(url, target, Checksum("sha256", source.file_sha256[name]))
        return folder
    return _fetch_archive(source, mirror)


def _fetch_archive(source: DatasetSource, mirror: str | None) -> Path:
    """Download (or reuse) the dataset's archive, extract its images into the cache, drop it.

    The archive is checked against its published checksum or, without one, against the sha256
    recorded at the first download ("trust on first use"); the record stays in the cache after
    the archive is deleted. Images are extracted into a temporary folder that replaces the
    dataset folder only once complete, with a ``SHA256SUMS`` for later verification.
    """
    assert source.archive is not None
    archive_info = source.archive
    downloads = cache_root() / _DOWNLOADS
    archive = downloads / archive_info.filename
    record = downloads / f"{archive_info.filename}.json"
    expected = archive_info.checksum or _recorded_checksum(record)
    trusted_on_first_use = archive_info.checksum is None and expected is not None
    try:
        if archive.is_file():  # left over from an interrupted run, or put there by hand
            sha256 = _check_existing_archive(archive, expected)
        else:
            url = _mirror_url(source, archive_info.filename, archive_info.url, mirror)
            sha256 = download_file(url, archive, expected)
    except DownloadError as exc:
        raise DownloadError(f"{exc}; or put {archive_info.filename} in {downloads} by hand") from None
    except ChecksumError as exc:
        if trusted_on_first_use:
            raise ChecksumError(
                f"{exc}; the expected sha256 was recorded at the first download in {record}: "
                "delete that record to trust the new file"
            ) from None
        raise
    folder = cache_root() / source.name
    with tempfile.TemporaryDirectory(dir=cache_root(), prefix=f".{source.name}-extract-") as tmp:
        staging = Path(tmp) / source.name
        try:
            extracted = extract_images(archive, staging, archive_info.member_pattern)
            _check_extracted(source, archive, staging, extracted)
        except DatasetError as exc:
            # Reusing this archive could only fail the same way; a fresh download may not.
            archive.unlink()
            raise type(exc)(f"{exc}; the archive was deleted") from None
        _write_sums(staging, {path.name: file_digest(path) for path in extracted})
        if folder.exists():  # an incomplete earlier copy
            shutil.rmtree(folder)
        os.replace(staging, folder)
    if expected is None:
        _record_first_download(source, archive, sha256, record)
    archive.unlink()
    return folder


def _recorded_checksum(record: Path) -> Checksum | None:
    if not record.is_file():
        return None
    try:
        return Checksum("sha256", json.loads(record.read_text())["sha256"])
    except (ValueError, KeyError, TypeError):
        raise DatasetError(f"{record}: unreadable checksum record; delete it to trust a new download") from None


def _check_existing_archive(archive: Path, expected: Checksum | None) -> str:
    """Verify an archive found in the downloads folder; returns its sha256."""
    if expected is not None:
        actual = file_digest(archive, expected.algorithm)
        if not expected.matches(actual):
            raise ChecksumError(
                f"{archive}: {expected.algorithm} mismatch (expected {expected.hexdigest}, got {actual}); "
                "delete it to download again"
            )
    return file_digest(archive)


def _check_extracted(source: DatasetSource, archive: Path, staging: Path, extracted: list[Path]) -> None:
    if source.file_names:
        missing = [name for name in source.file_names if not (staging / name).is_file()]
        if missing:
            raise DatasetError(f"archive {archive.name} lacks {len(missing)} {source.name} images, e.g. {missing[0]}")
    elif len(extracted) != source.image_count:
        raise DatasetError(
            f"archive {archive.name} holds {len(extracted)} images, expected {source.image_count} for {source.name}"
        )


def _record_first_download(source: DatasetSource, archive: Path, sha256: str, record: Path) -> None:
    _write_atomically(
        record,
        json.dumps(
            {
                "dataset": source.name,
                "file": archive.name,
                "sha256": sha256,
                "bytes": archive.stat().st_size,
                "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
            indent=2,
        ),
    )
    print(
        f"licbench: {source.name}: no checksum is published for {archive.name}; trusting this first download "
        f"and recording its sha256 {sha256} in {record}; later downloads must match it",
        file=sys.stderr,
    )
