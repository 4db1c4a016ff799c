"""licbench.datasets against a real HTTP server on 127.0.0.1, real archives and real Kodak files."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tarfile
import threading
import zipfile
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from conftest import KODAK
from licbench.datasets import (
    KNOWN_DATASETS,
    Archive,
    Checksum,
    ChecksumError,
    DatasetError,
    DatasetSource,
    DownloadError,
    UnsafeArchiveError,
    dataset_names,
    describe_all,
    fetch,
    resolve,
    verify,
)
from licbench.datasets.archive import extract_images

SHARED_DATA = KODAK.parent


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache; no outside data folder or mirror leaks in."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LICBENCH_CACHE", str(cache))
    monkeypatch.delenv("LICBENCH_DATA", raising=False)
    monkeypatch.delenv("LICBENCH_MIRROR", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    if not KODAK.is_dir():
        pytest.fail(f"{KODAK} is missing: the tests need ../shared/data/kodak beside the repository")
    return cache


@dataclass
class FileServer:
    root: Path  # served as http://127.0.0.1:PORT/
    url: str
    requests: list[str]
    cut_short: set[str]  # paths answered with a full Content-Length but only half the bytes


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    """A real HTTP server in a thread, serving a temporary folder; LICBENCH_MIRROR points at it."""
    root = tmp_path / "served"
    root.mkdir()
    requests: list[str] = []
    cut_short: set[str] = set()

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self) -> None:
            requests.append(self.path)
            if self.path not in cut_short:
                super().do_GET()
                return
            data = (root / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True

        def log_message(self, format: str, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv("LICBENCH_MIRROR", url)
    yield FileServer(root, url, requests, cut_short)
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _serve(server: FileServer, dataset: str, name: str, data: bytes) -> None:
    folder = server.root / dataset
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(data)


def _tiny_png(seed: int, size: tuple[int, int] = (3, 2)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


def _leftovers(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _copy_kodak(folder: Path, count: int) -> list[Path]:
    """Copies keeping the originals' old mtimes, so their hashes can be cached at once."""
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(KODAK / f"kodim{i:02d}.png", folder)) for i in range(1, count + 1)]


def _toy_archive_dataset(monkeypatch: pytest.MonkeyPatch, archive_bytes: bytes, count: int) -> DatasetSource:
    """A known dataset like CLIC (archive, published md5, images not known by name), whose
    archive is made by the test: the real CLIC md5 cannot match a generated zip."""
    source = DatasetSource(
        name="toyclic",
        description="test archive dataset",
        licence="test",
        homepage="",
        image_count=count,
        archive=Archive(
            filename="toy.zip",
            url="http://invalid.invalid/toy.zip",
            checksum=Checksum("md5", hashlib.md5(archive_bytes).hexdigest()),
            member_pattern="*.png",
        ),
    )
    monkeypatch.setitem(KNOWN_DATASETS, source.name, source)
    return source


# --- Kodak from the shared data folder --------------------------------------------------------


def test_kodak_from_licbench_data_is_found_and_verified(
    monkeypatch: pytest.MonkeyPatch, isolated_environment: Path
) -> None:
    monkeypatch.setenv("LICBENCH_DATA", str(SHARED_DATA))
    dataset = resolve("kodak", download=False)
    assert dataset.found_via == "LICBENCH_DATA"
    assert dataset.location == KODAK
    assert [p.name for p in dataset.files] == [f"kodim{i:02d}.png" for i in range(1, 25)]
    assert len(dataset.sha256) == 24
    assert verify(dataset) == []
    # The verification is cached by size and mtime in the cache folder, not in the data folder.
    assert (isolated_environment / "verified.json").is_file()


def test_dataset_names_and_descriptions(monkeypatch: pytest.MonkeyPatch) -> None:
    assert dataset_names() == ["clic", "kodak", "tecnick"]
    monkeypatch.setenv("LICBENCH_DATA", str(SHARED_DATA))
    rows = {row["name"]: row for row in describe_all()}
    assert rows["kodak"]["location"] == str(KODAK)
    assert rows["kodak"]["images"] == 24
    assert rows["clic"]["location"] == "not downloaded"
    assert rows["clic"]["checksum"] == "md5 of the archive (published)"
    assert rows["tecnick"]["images"] == 100
    assert "first download" in str(rows["tecnick"]["checksum"])


# --- Downloads ----------------------------------------------------------------------------------


def test_kodak_download_from_local_server(server: FileServer, isolated_environment: Path) -> None:
    for index in (1, 2, 3):
        name = f"kodim{index:02d}.png"
        _serve(server, "kodak", name, (KODAK / name).read_bytes())
    dataset = resolve("kodak", limit=3)
    assert dataset.found_via == "download"
    assert server.requests == ["/kodak/kodim01.png", "/kodak/kodim02.png", "/kodak/kodim03.png"]
    cache_folder = isolated_environment / "kodak"
    assert dataset.files == [cache_folder / f"kodim{i:02d}.png" for i in (1, 2, 3)]
    for path in dataset.files:
        assert path.read_bytes() == (KODAK / path.name).read_bytes()
    assert _leftovers(cache_folder) == dataset.files  # no .part file left
    again = resolve("kodak", limit=3)
    assert again.found_via == "cache"
    assert len(server.requests) == 3  # nothing downloaded twice


def test_altered_download_is_refused_and_not_kept(server: FileServer, isolated_environment: Path) -> None:
    data = bytearray((KODAK / "kodim01.png").read_bytes())
    data[1000] ^= 0xFF
    _serve(server, "kodak", "kodim01.png", bytes(data))
    with pytest.raises(ChecksumError) as info:
        resolve("kodak", limit=1)
    message = str(info.value)
    assert "kodim01.png" in message and "sha256 mismatch" in message and "\n" not in message
    assert _leftovers(isolated_environment / "kodak") == []


def test_http_error_is_reported_and_nothing_is_left(server: FileServer, isolated_environment: Path) -> None:
    with pytest.raises(DownloadError, match=r"kodak/kodim01\.png failed: HTTP 404"):
        resolve("kodak", limit=1)
    assert _leftovers(isolated_environment / "kodak") == []


def test_interrupted_transfer_is_reported_and_nothing_is_left(
    server: FileServer, isolated_environment: Path
) -> None:
    _serve(server, "kodak", "kodim01.png", (KODAK / "kodim01.png").read_bytes())
    server.cut_short.add("/kodak/kodim01.png")
    with pytest.raises(DownloadError, match=r"kodak/kodim01\.png failed"):
        resolve("kodak", limit=1)
    assert _leftovers(isolated_environment / "kodak") == []


def test_mirror_parameter_overrides_environment(server: FileServer, monkeypatch: pytest.MonkeyPatch) -> None:
    _serve(server, "kodak", "kodim01.png", (KODAK / "kodim01.png").read_bytes())
    monkeypatch.setenv("LICBENCH_MIRROR", "http://127.0.0.1:9/nowhere")
    dataset = resolve("kodak", limit=1, mirror=server.url)
    assert dataset.found_via == "download"


# --- Archives -----------------------------------------------------------------------------------


def test_archive_dataset_is_downloaded_verified_and_extracted(
    server: FileServer, monkeypatch: pytest.MonkeyPatch, isolated_environment: Path
) -> None:
    images = {"valid/a.png": _tiny_png(1), "valid/b.png": _tiny_png(2), "valid/sub/c.PNG": _tiny_png(3)}
    archive = _zip_bytes(
        {
            **images,
            "valid/README.txt": b"not an image",
            "__MACOSX/valid/._a.png": b"resource fork",
        }
    )
    _toy_archive_dataset(monkeypatch, archive, count=3)
    _serve(server, "toyclic", "toy.zip", archive)
    dataset = fetch("toyclic")
    folder = isolated_environment / "toyclic"
    assert dataset.found_via == "download"
    assert [p.name for p in dataset.files] == ["a.png", "b.png", "c.PNG"]
    for path, original in zip(dataset.files, images.values()):
        assert path.read_bytes() == original
    assert sorted(p.name for p in folder.iterdir()) == ["SHA256SUMS", "a.png", "b.png", "c.PNG"]
    assert not (isolated_environment / "downloads" / "toy.zip").exists()
    assert verify(dataset) == []
    # The SHA256SUMS written at extraction protects the cached copy.
    (folder / "b.png").write_bytes(_tiny_png(4))
    with pytest.raises(ChecksumError, match="b.png: sha256 mismatch"):
        resolve("toyclic")


def test_archive_with_wrong_md5_is_refused(
    server: FileServer, monkeypatch: pytest.MonkeyPatch, isolated_environment: Path
) -> None:
    archive = _zip_bytes({"a.png": _tiny_png(1)})
    _toy_archive_dataset(monkeypatch, archive, count=1)
    _serve(server, "toyclic", "toy.zip", _zip_bytes({"a.png": _tiny_png(2)}))
    with pytest.raises(ChecksumError, match="toy.zip .*md5 mismatch"):
        resolve("toyclic")
    assert _leftovers(isolated_environment) == []


def test_failed_archive_download_says_where_to_put_it(
    server: FileServer, monkeypatch: pytest.MonkeyPatch, isolated_environment: Path
) -> None:
    _toy_archive_dataset(monkeypatch, _zip_bytes({"a.png": _tiny_png(1)}), count=1)
    downloads = isolated_environment / "downloads"
    with pytest.raises(DownloadError, match=rf"HTTP 404 .*put toy\.zip in {downloads} by hand"):
        resolve("toyclic")
    assert _leftovers(isolated_environment) == []


def test_archive_put_in_downloads_by_hand_is_used_after_checking(
    monkeypatch: pytest.MonkeyPatch, isolated_environment: Path
) -> None:
    """No server here: an archive fetched in a browser is placed in the cache's downloads folder."""
    archive = _zip_bytes({"x/a.png": _tiny_png(1)})
    _toy_archive_dataset(monkeypatch, archive, count=1)
    downloads = isolated_environment / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "toy.zip").write_bytes(archive[:-1] + b"?")
    with pytest.raises(ChecksumError, match=r"toy\.zip: md5 mismatch .*delete it to download again"):
        resolve("toyclic")
    (downloads / "toy.zip").write_bytes(archive)
    dataset = resolve("toyclic")
    assert [p.name for p in dataset.files] == ["a.png"]
    assert not (downloads / "toy.zip").exists()


def test_tecnick_trusts_first_download_then_checks_later_ones(
    server: FileServer, isolated_environment: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inner = "testimages/SAMPLING/8BIT/RGB/RGB_OR_1200x1200"
    members = {f"{inner}/RGB_OR_1200x1200_{i:03d}.png": _tiny_png(i, (2, 2)) for i in range(1, 101)}
    members["testimages/SAMPLING/8BIT/RGB/RGB_R02_0600x0600/RGB_R02_0600x0600_001.png"] = _tiny_png(500)
    first_archive = _zip_bytes(members)
    _serve(server, "tecnick", "testimages.zip", first_archive)

    dataset = resolve("tecnick", limit=5)
    assert [p.name for p in dataset.files] == [f"RGB_OR_1200x1200_{i:03d}.png" for i in range(1, 6)]
    notice = capsys.readouterr().err
    assert "no checksum is published for testimages.zip" in notice
    assert hashlib.sha256(first_archive).hexdigest() in notice
    folder = isolated_environment / "tecnick"
    assert len([p for p in folder.iterdir() if p.suffix == ".png"]) == 100  # the decoy is not extracted
    record = isolated_environment / "downloads" / "testimages.zip.json"
    assert record.is_file()

    # A later download with other bytes is refused, and the copy already extracted is untouched.
    shutil.rmtree(folder)
    members[f"{inner}/RGB_OR_1200x1200_050.png"] = _tiny_png(999, (2, 2))
    _serve(server, "tecnick", "testimages.zip", _zip_bytes(members))
    with pytest.raises(ChecksumError, match="recorded at the first download"):
        resolve("tecnick")
    assert not folder.exists()
    assert sorted(p.name for p in (isolated_environment / "downloads").iterdir()) == ["testimages.zip.json"]

    _serve(server, "tecnick", "testimages.zip", first_archive)
    assert len(resolve("tecnick").files) == 100


def _unsafe_zip(path: Path, kind: str) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("images/good.png", _tiny_png(1))
        if kind == "dotdot":
            zf.writestr(zipfile.ZipInfo("../evil.png"), _tiny_png(2))
        elif kind == "absolute":
            zf.writestr(zipfile.ZipInfo(str(path.parent / "absolute.png")), _tiny_png(2))
        else:
            link = zipfile.ZipInfo("link.png")
            link.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(link, str(path.parent / "evil.png"))


@pytest.mark.parametrize(
    "kind, member, why",
    [("dotdot", "../evil.png", "leaves the extraction folder"), ("absolute", "absolute.png", "absolute path"),
     ("symlink", "link.png", "link to")],
)
def test_unsafe_zip_is_refused_before_writing(tmp_path: Path, kind: str, member: str, why: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = work / "evil.zip"
    _unsafe_zip(archive, kind)
    target = work / "target"
    with pytest.raises(UnsafeArchiveError, match=rf"unsafe path in archive evil\.zip: .*{member} \({why}"):
        extract_images(archive, target, "*.png")
    assert sorted(p.name for p in work.iterdir()) == ["evil.zip"]  # no target, nothing beside it


def test_unsafe_tar_is_refused_and_safe_tar_extracts(tmp_path: Path) -> None:
    def make_tar(path: Path, extra: tarfile.TarInfo | None) -> None:
        with tarfile.open(path, "w:gz") as tf:
            data = _tiny_png(1)
            info = tarfile.TarInfo("set/one.png")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
            if extra is not None:
                tf.addfile(extra, io.BytesIO(b""))

    symlink = tarfile.TarInfo("set/two.png")
    symlink.type = tarfile.SYMTYPE
    symlink.linkname = "/etc/passwd"
    make_tar(tmp_path / "evil.tar.gz", symlink)
    with pytest.raises(UnsafeArchiveError, match=r"evil\.tar\.gz: set/two\.png \(link to /etc/passwd\)"):
        extract_images(tmp_path / "evil.tar.gz", tmp_path / "target", "*.png")
    assert not (tmp_path / "target").exists()

    absolute = tarfile.TarInfo("/tmp/absolute.png")
    make_tar(tmp_path / "abs.tar.gz", absolute)
    with pytest.raises(UnsafeArchiveError, match="absolute path"):
        extract_images(tmp_path / "abs.tar.gz", tmp_path / "target", "*.png")

    make_tar(tmp_path / "good.tar.gz", None)
    written = extract_images(tmp_path / "good.tar.gz", tmp_path / "target", "*.png")
    assert written == [tmp_path / "target" / "one.png"]
    assert written[0].read_bytes() == _tiny_png(1)


def test_unsafe_archive_from_server_leaves_nothing(
    server: FileServer, monkeypatch: pytest.MonkeyPatch, isolated_environment: Path, tmp_path: Path
) -> None:
    archive = _zip_bytes({"a.png": _tiny_png(1), "../../evil.png": _tiny_png(2)})
    _toy_archive_dataset(monkeypatch, archive, count=1)
    _serve(server, "toyclic", "toy.zip", archive)
    with pytest.raises(UnsafeArchiveError, match=r"toy\.zip: \.\./\.\./evil\.png .*the archive was deleted"):
        resolve("toyclic")
    assert _leftovers(isolated_environment) == []
    assert not list(tmp_path.rglob("evil.png"))


def test_duplicate_names_in_archive_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "dup.zip"
    archive.write_bytes(_zip_bytes({"x/a.png": _tiny_png(1), "y/a.png": _tiny_png(2)}))
    with pytest.raises(DatasetError, match="holds a.png twice"):
        extract_images(archive, tmp_path / "target", "*.png")


# --- Lookup order and local checks ------------------------------------------------------------


def test_lookup_order_data_dir_then_environment_then_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_environment: Path
) -> None:
    explicit = tmp_path / "explicit"
    _copy_kodak(explicit / "kodak", 1)
    direct = tmp_path / "direct"
    _copy_kodak(direct, 1)
    environment = tmp_path / "environment"
    _copy_kodak(environment / "kodak", 1)
    _copy_kodak(isolated_environment / "kodak", 1)
    monkeypatch.setenv("LICBENCH_DATA", str(environment))

    found = resolve("kodak", data_dir=explicit, limit=1, download=False)
    assert (found.found_via, found.location) == ("data_dir", explicit / "kodak")
    found = resolve("kodak", data_dir=str(direct), limit=1, download=False)
    assert (found.found_via, found.location) == ("data_dir", direct)
    found = resolve("kodak", limit=1, download=False)
    assert (found.found_via, found.location) == ("LICBENCH_DATA", environment / "kodak")
    # A data folder without this dataset is passed over, not an error.
    found = resolve("kodak", data_dir=tmp_path / "environment" / "kodak" / "..", limit=1, download=False)
    assert found.found_via == "data_dir"
    monkeypatch.delenv("LICBENCH_DATA")
    found = resolve("kodak", limit=1, download=False)
    assert (found.found_via, found.location) == ("cache", isolated_environment / "kodak")
    shutil.rmtree(isolated_environment / "kodak")
    with pytest.raises(DatasetError, match="kodak is not available locally"):
        resolve("kodak", limit=1, download=False)
    with pytest.raises(DatasetError, match="does not exist"):
        resolve("kodak", data_dir=tmp_path / "typo", limit=1)


def test_incomplete_data_folder_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _copy_kodak(tmp_path / "data" / "kodak", 2)
    monkeypatch.setenv("LICBENCH_DATA", str(tmp_path / "data"))
    assert len(resolve("kodak", limit=2, download=False).files) == 2
    with pytest.raises(DatasetError, match=r"kodim03\.png and 21 more missing"):
        resolve("kodak")


def test_local_mismatch_is_refused_and_hash_cache_follows_mtime(tmp_path: Path) -> None:
    first, second = _copy_kodak(tmp_path / "data" / "kodak", 2)
    assert len(resolve("kodak", data_dir=tmp_path / "data", limit=2).files) == 2

    original_stat = second.stat()
    data = bytearray(second.read_bytes())
    data[5000] ^= 0x01
    second.write_bytes(bytes(data))
    # Same size and mtime as when it was hashed: the cached hash is trusted (that is the point
    # of the cache), and only an explicit recheck reads the bytes again.
    os.utime(second, ns=(original_stat.st_atime_ns, original_stat.st_mtime_ns))
    stale = resolve("kodak", data_dir=tmp_path / "data", limit=2)
    problems = verify(stale, recheck=True)
    assert len(problems) == 1 and problems[0].startswith(f"{second}: sha256 mismatch")

    os.utime(second, ns=(original_stat.st_atime_ns, original_stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(ChecksumError, match=r"kodim02\.png: sha256 mismatch"):
        resolve("kodak", data_dir=tmp_path / "data", limit=2)
    assert resolve("kodak", data_dir=tmp_path / "data", limit=2, check=False).files == [first, second]


def test_folder_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "my images"
    (folder / "nested").mkdir(parents=True)
    for name in ("b.png", "a.JPG", "c.webp", "nested/d.png", ".hidden.png"):
        Image.open(io.BytesIO(_tiny_png(len(name)))).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    dataset = resolve(str(folder))
    assert dataset.name == "my images"
    assert dataset.found_via == "folder"
    assert [p.name for p in dataset.files] == ["a.JPG", "b.png", "c.webp"]
    assert verify(dataset) == []
    assert [p.name for p in resolve(str(folder), limit=2).files] == ["a.JPG", "b.png"]

    (folder / "z.png").write_bytes(_tiny_png(1)[:40])
    problems = verify(resolve(str(folder)))
    assert len(problems) == 1
    assert problems[0].startswith(f"{folder / 'z.png'}: truncated or corrupt image")

    (folder / "SHA256SUMS").write_text(f"{'0' * 64}  b.png\n")
    with pytest.raises(ChecksumError, match=r"b\.png: sha256 mismatch"):
        resolve(str(folder))


def test_unknown_name_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"kodakk: not a known dataset \(clic, kodak, tecnick\)"):
        resolve("kodakk")
    with pytest.raises(DatasetError, match="no images"):
        resolve(str(tmp_path))
    with pytest.raises(DatasetError, match="at least 1"):
        resolve(str(tmp_path), limit=0)
