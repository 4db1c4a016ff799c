"""Training data: image discovery, the held-out validation split and reproducible random crops.

Reproducibility design: the data pipeline keeps no random state of its own. The batch of step t
is a pure function of (seed, t): which images it uses (an epoch-wise permutation seeded by
(seed, epoch)) and where each crop lies and whether it is flipped (seeded by (seed, sample
position)). Resuming at step k therefore only needs k, and the data stays identical whatever the
number of DataLoader workers, since workers only run the pure crop function.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from licbench.image import ImageError, load_image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})

# Tags that keep the seed streams of different purposes independent of each other.
_PERMUTATION_STREAM = 1
_CROP_STREAM = 2
_RATE_STREAM = 3


def derived_seed(seed: int, stream: int, position: int) -> int:
    """A 63-bit seed for one purpose (``stream``) at one position, from the run's seed."""
    state = np.random.SeedSequence([seed, stream, position]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def find_images(root: str | Path) -> list[Path]:
    """Every .png/.jpg/.jpeg file under ``root`` (recursive, case-insensitive suffix), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: training data folder not found")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"{root}: no .png or .jpg images in the training data folder")
    return files


def split_holdout(files: Sequence[Path], count: int, seed: int) -> tuple[list[Path], list[Path]]:
    """(training files, ``count`` held-out validation files): a seeded choice among the sorted names."""
    files = sorted(files)
    if count < 0:
        raise ValueError(f"--val-images must be >= 0, got {count}")
    if count >= len(files):
        raise ValueError(f"--val-images {count} leaves no training image: the data has {len(files)} images")
    held_out = set(random.Random(seed).sample(range(len(files)), count))
    train = [f for i, f in enumerate(files) if i not in held_out]
    val = [f for i, f in enumerate(files) if i in held_out]
    return train, val


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(path, f"not a readable image ({exc})") from None


def usable_for_crop(files: Sequence[Path], crop: int) -> tuple[list[Path], list[Path]]:
    """(files at least ``crop`` x ``crop``, files too small for it)."""
    usable, too_small = [], []
    for path in files:
        width, height = image_size(path)
        (usable if min(width, height) >= crop else too_small).append(path)
    return usable, too_small


def rgb_tensor(pixels: np.ndarray) -> torch.Tensor:
    """8-bit H x W x 3 RGB pixels as a 3 x H x W float tensor in [0, 1]. The pixels are copied, so
    they may be a read-only or reversed view (a PIL image's array, a flipped crop)."""
    return torch.from_numpy(np.array(pixels, order="C")).permute(2, 0, 1).float().div_(255.0)


def image_tensor(path: Path) -> torch.Tensor:
    """The image as a 3 x H x W float tensor in [0, 1] (8-bit RGB per :func:`load_image`)."""
    return rgb_tensor(load_image(path))


class RandomCrops(Dataset):
    """Random ``crop`` x ``crop`` patches with random horizontal flips.

    Indexed by (image index, sample seed): the seed fixes the crop position and the flip, so an
    item is a pure function of its index (see the module doc).
    """

    def __init__(self, files: Sequence[Path], crop: int) -> None:
        self.files = list(files)
        self.crop = crop

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: tuple[int, int]) -> torch.Tensor:
        image_index, sample_seed = index
        path = self.files[image_index]
        pixels = load_image(path)
        height, width = pixels.shape[:2]
        if min(height, width) < self.crop:
            raise ImageError(path, f"{width}x{height} is smaller than the {self.crop}x{self.crop} crop")
        rng = np.random.default_rng(sample_seed)
        top = int(rng.integers(0, height - self.crop + 1))
        left = int(rng.integers(0, width - self.crop + 1))
        patch = pixels[top : top + self.crop, left : left + self.crop]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        return rgb_tensor(patch)


class StepBatches(Sampler):
    """The (image index, sample seed) lists of steps ``start_step`` .. ``end_step - 1``.

    Samples are drawn epoch by epoch without replacement: the global sample position p = step *
    batch_size + i falls in epoch p // n_images, whose image order is a permutation seeded by
    (seed, epoch).
    """

    def __init__(self, n_images: int, batch_size: int, seed: int, start_step: int, end_step: int) -> None:
        if n_images < 1:
            raise ValueError("no training images")
        self.n_images = n_images
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.end_step = end_step
        self._permutation: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if self._permutation is None or self._permutation[0] != epoch:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, _PERMUTATION_STREAM, epoch))
            self._permutation = (epoch, torch.randperm(self.n_images, generator=generator))
        return self._permutation[1]

    def batch(self, step: int) -> list[tuple[int, int]]:
        items = []
        for position in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, offset = divmod(position, self.n_images)
            image_index = int(self._epoch_order(epoch)[offset])
            items.append((image_index, derived_seed(self.seed, _CROP_STREAM, position)))
        return items

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.end_step):
            yield self.batch(step)


def ignore_interrupts_in_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C reaches the whole process group, but only the main
    process should react (finish the step, save, stop); a worker killed by it would make the main
    process fail on its next batch instead."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def rate_indices(seed: int, step: int, batch_size: int, n_rates: int) -> torch.Tensor:
    """The rate point (index into the lambdas) of each item of step ``step``'s batch, uniform."""
    generator = torch.Generator().manual_seed(derived_seed(seed, _RATE_STREAM, step))
    return torch.randint(n_rates, (batch_size,), generator=generator)
