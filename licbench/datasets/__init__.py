"""Test image datasets: known ones by name (kodak, clic, tecnick) or any folder of images.

Known datasets are found locally (``data_dir``, ``$LICBENCH_DATA/<name>``, the cache) or
downloaded into the cache with their checksums verified; archives are extracted safely.
See :func:`resolve` for the lookup order.
"""

from licbench.datasets.catalogue import KNOWN_DATASETS, Archive, Checksum, DatasetSource
from licbench.datasets.core import (
    IMAGE_SUFFIXES,
    Dataset,
    cache_root,
    dataset_names,
    describe_all,
    fetch,
    resolve,
    verify,
)
from licbench.datasets.errors import ChecksumError, DatasetError, DownloadError, UnsafeArchiveError

__all__ = [
    "IMAGE_SUFFIXES",
    "KNOWN_DATASETS",
    "Archive",
    "Checksum",
    "ChecksumError",
    "Dataset",
    "DatasetError",
    "DatasetSource",
    "DownloadError",
    "UnsafeArchiveError",
    "cache_root",
    "dataset_names",
    "describe_all",
    "fetch",
    "resolve",
    "verify",
]
