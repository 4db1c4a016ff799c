"""Pack what a lent GPU machine needs to train MSP: run here, before the device call.

The device machine (``device`` tool, TRAINING.md "Next" 1) has Python 3.12 with PyTorch but
no compressai or pytorch-msssim, cannot download anything, and receives only the checkout (at
most 64 MiB in all, ``../shared`` excluded). This script fills the ignored folder ``.gpu-kit/``:

- ``whl/``: cp312 manylinux wheels of the packages the trainer needs that the machine lacks;
- ``train/``: as many training images (at least --crop on both sides) as the size budget leaves,
  an equal share of bytes per corpus folder, each in name order, copied byte for byte;
- ``MANIFEST.json``: every file with its sha256 and where it came from.

Then one device call, ``bash bench/gpu_train.sh MINUTES`` with ``carry=[".gpu-kit"]``, trains.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from collections import Counter
from itertools import chain
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
# The trainer's imports that the device image lacks (its package list: the device tool's KINDS.md).
WHEELS = ("compressai==1.2.8", "pytorch-msssim==1.0.0")
PLATFORMS = ("manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
TRAVEL_LIMIT = 64 * 2**20


def travelling_bytes() -> int:
    """Bytes of what a device call sends: tracked files and untracked files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    files = (REPO / name for name in listed if name)
    return sum(f.stat().st_size for f in files if f.is_file())


def download_wheels(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    platforms = list(chain.from_iterable(("--platform", p) for p in PLATFORMS))
    for requirement in WHEELS:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
             "3.12", "--implementation", "cp", *platforms, "-d", str(folder), requirement],
            check=True,
        )  # fmt: skip
    return sorted(folder.glob("*.whl"))


def usable_images(corpus: Path, crop: int) -> list[Path]:
    """The corpus's images of at least crop x crop, in name order."""
    usable = []
    for path in sorted(corpus.rglob("*")):
        if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            with Image.open(path) as image:
                if min(image.size) >= crop:
                    usable.append(path)
    return usable


def share_budget(data: Path, crop: int, budget: int) -> list[Path]:
    """Equal byte shares per corpus folder (a corpus that needs less leaves the rest to the
    others), each filled in name order: big-image corpora would otherwise take the whole budget
    for a few dozen images."""
    corpora = [usable_images(c, crop) for c in sorted(p for p in data.iterdir() if p.is_dir())]
    corpora.sort(key=lambda files: sum(f.stat().st_size for f in files))
    chosen: list[Path] = []
    for index, files in enumerate(corpora):
        share = budget // (len(corpora) - index)
        used = 0
        for path in files:
            size = path.stat().st_size
            if used + size <= share:
                chosen.append(path)
                used += size
        budget -= used
    return chosen


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "train")
    parser.add_argument("--out", type=Path, default=REPO / ".gpu-kit")
    parser.add_argument("--crop", type=int, default=256, help="the device run's crop (default 256)")
    parser.add_argument("--margin-mib", type=float, default=2.0, help="left free under the 64 MiB limit")
    args = parser.parse_args()

    out = args.out.resolve()
    if REPO not in out.parents:
        parser.error(f"--out {out} must be inside the checkout {REPO}: only the checkout travels")
    if subprocess.run(["git", "check-ignore", "-q", str(out / "MANIFEST.json")], cwd=REPO).returncode != 0:
        parser.error(f"--out {out} is not ignored by git: add it to .gitignore first")
    if out.exists():
        shutil.rmtree(out)
    wheels = download_wheels(out / "whl")
    fixed = travelling_bytes() + sum(w.stat().st_size for w in wheels)  # what travels besides the images
    budget = TRAVEL_LIMIT - int(args.margin_mib * 2**20) - fixed
    copied: list[dict[str, str | int]] = []
    for source in share_budget(args.data, args.crop, budget):
        target = out / "train" / source.relative_to(args.data)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        copied.append({"file": str(target.relative_to(out)), "source": str(source), "bytes": source.stat().st_size,
                       "sha256": sha256(target)})
    used = sum(int(c["bytes"]) for c in copied)
    manifest = {
        "crop": args.crop,
        "wheels": [{"file": f"whl/{w.name}", "bytes": w.stat().st_size, "sha256": sha256(w)} for w in wheels],
        "train": copied,
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    counts = dict(sorted(Counter(Path(str(c["file"])).parts[1] for c in copied).items()))
    total = fixed + used
    print(f"{out}: {len(wheels)} wheels, {len(copied)} training images ({used / 2**20:.1f} MiB: {counts})")
    print(f"the device call sends {total / 2**20:.1f} MiB of {TRAVEL_LIMIT / 2**20:.0f}")
    print('next: device run, command "bash bench/gpu_train.sh 6.5", carry [".gpu-kit"], timeout_s 600')
    return 0


if __name__ == "__main__":
    sys.exit(main())
