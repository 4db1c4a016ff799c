"""Errors of the dataset layer; every message is one line naming the file, URL or dataset."""

from __future__ import annotations


class DatasetError(RuntimeError):
    """A dataset cannot be found, fetched or trusted."""


class DownloadError(DatasetError):
    """A download failed (HTTP error, unreachable host, short read, web page instead of a file)."""


class ChecksumError(DatasetError):
    """A file's bytes do not match the checksum they must have."""


class UnsafeArchiveError(DatasetError):
    """An archive has a member that could write outside the extraction folder."""
