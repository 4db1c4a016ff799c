"""Extracting a dataset's images from zip and tar archives without trusting member paths."""

from __future__ import annotations

import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterator

from licbench.datasets.errors import DatasetError, UnsafeArchiveError

_CORRUPT_ERRORS = (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError)
_DRIVE_PREFIX = re.compile(r"^[A-Za-z]:")
# Many archivers store permission bits only (file type 0): those members are regular files.
_SPECIAL_FILE_TYPES = {stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK}


@dataclass(frozen=True)
class _Member:
    name: str
    kind: str  # "file", "dir", "link" or "special"
    link_target: str
    handle: Any  # the ZipInfo or TarInfo, to read the member


def extract_images(archive: Path, target: Path, pattern: str) -> list[Path]:
    """Extract the regular files whose base name matches ``pattern`` (a glob, case-insensitive)
    into ``target``, flattened: folders inside the archive are dropped. Returns the written paths.

    The whole archive is refused before anything is written if any member (selected or not)
    has an absolute path or a ``..`` component, or is a link or a device file. macOS resource
    forks (``__MACOSX/``, ``._*``) are never selected. Two selected members with the same base
    name are an error rather than one silently replacing the other.
    """
    try:
        with _open(archive) as (members, read):
            for member in members:
                _refuse_unsafe(archive, member)
            selected: dict[str, _Member] = {}
            for member in members:
                if member.kind != "file" or not _wanted(member.name, pattern):
                    continue
                base = PurePosixPath(member.name).name
                if base in selected:
                    raise DatasetError(
                        f"archive {archive.name} holds {base} twice ({selected[base].name} and {member.name})"
                    )
                selected[base] = member
            target.mkdir(parents=True, exist_ok=True)
            written = []
            for base, member in sorted(selected.items()):
                out = target / base
                # "x": never write through a file or link that already exists in the target.
                with read(member) as source, open(out, "xb") as sink:
                    shutil.copyfileobj(source, sink)
                written.append(out)
    except _CORRUPT_ERRORS as exc:
        raise DatasetError(f"archive {archive}: corrupt ({exc})") from None
    return written


@contextmanager
def _open(archive: Path) -> Iterator[tuple[list[_Member], Any]]:
    """The members of a zip or tar archive and a function opening one of them for reading."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            yield [_zip_member(zf, info) for info in zf.infolist()], lambda m: zf.open(m.handle)
        return
    try:
        tf = tarfile.open(archive, "r:*")
    except tarfile.ReadError:
        raise DatasetError(f"{archive}: not a zip or tar archive") from None
    with tf:
        yield [_tar_member(info) for info in tf.getmembers()], lambda m: _tar_read(tf, m)


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Member:
    mode = info.external_attr >> 16  # Unix mode bits, when the archiver stored them
    if info.is_dir():
        kind, target = "dir", ""
    elif stat.S_ISLNK(mode):
        kind, target = "link", zf.read(info).decode(errors="replace")
    elif stat.S_IFMT(mode) in _SPECIAL_FILE_TYPES:
        kind, target = "special", ""
    else:
        kind, target = "file", ""
    return _Member(info.filename, kind, target, info)


def _tar_member(info: tarfile.TarInfo) -> _Member:
    if info.isreg():
        kind = "file"
    elif info.isdir():
        kind = "dir"
    elif info.issym() or info.islnk():
        kind = "link"
    else:
        kind = "special"
    return _Member(info.name, kind, info.linkname, info)


def _tar_read(tf: tarfile.TarFile, member: _Member) -> IO[bytes]:
    source = tf.extractfile(member.handle)
    assert source is not None  # regular files always have data
    return source


def _refuse_unsafe(archive: Path, member: _Member) -> None:
    name = member.name.replace("\\", "/")
    why = ""
    if name.startswith("/") or _DRIVE_PREFIX.match(name):
        why = " (absolute path)"
    elif ".." in PurePosixPath(name).parts:
        why = " (leaves the extraction folder)"
    elif member.kind == "link":
        why = f" (link to {member.link_target})"
    elif member.kind == "special":
        why = " (device or special file)"
    if why:
        raise UnsafeArchiveError(f"unsafe path in archive {archive.name}: {member.name}{why}")


def _wanted(name: str, pattern: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    if "__MACOSX" in path.parts or path.name.startswith("._"):
        return False
    return fnmatchcase(path.name.lower(), pattern.lower())
