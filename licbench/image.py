"""Loading test images as 8-bit RGB arrays, refusing anything that would not be a fair input.

Every codec in licbench compresses the same H x W x 3 uint8 RGB array, so an input must become
exactly that without losing information. The policy of :func:`load_image`:

* The whole file is decoded (``Image.load()``), so a truncated or corrupt file is an error
  ("truncated or corrupt image"), never a half-grey picture.
* 8-bit RGB is returned as is. Bilevel, grayscale and palette images are expanded to RGB
  (grayscale replicated to the three channels): expansion is lossless, so it is allowed.
* An alpha channel (RGBA, LA, PA, or a tRNS colour key) is dropped only when every pixel is fully
  opaque; any transparency is an error, because licbench compares RGB codecs.
* More than 8 bits per sample (16-bit grayscale, 48/64-bit RGB(A) PNG, 16-bit TIFF, 32-bit
  integer or float images) is an error: Pillow silently reduces 16-bit RGB PNGs to 8 bits, so the
  bit depth is read from the PNG header (and from the decoder's raw mode for other formats)
  rather than trusted from the opened image.
* CMYK and other colour spaces without a lossless RGB mapping are errors.
* Animated images (more than one frame) are errors.
* Zero-width or zero-height images and empty files are errors.
* Any size from 1x1 up, odd sizes included, loads: each codec decides what it supports.
* EXIF orientation and ICC profiles are ignored: the stored pixel grid is what gets compressed.

Every error is an :class:`ImageError` whose message is one line: the file, a colon, the problem.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Signature (8), IHDR length and type (8), width, height (4 + 4), bit depth (1), colour type (1).
_PNG_HEADER_SIZE = 26
# Modes that become RGB without losing anything.
_EXPANDABLE_MODES = {"1", "L", "P"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
# What Pillow raises on undecodable data, depending on the format plugin and where it fails.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


class ImageError(ValueError):
    """An input image cannot be used; the message is one line naming the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = " ".join(str(problem).split())  # keep the message on one line
        super().__init__(f"{path}: {self.problem}")


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode ``path`` to an H x W x 3 uint8 RGB array, following the policy in the module doc."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(_PNG_HEADER_SIZE)
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except OSError as exc:
        raise ImageError(path, f"cannot read file ({exc.strerror})") from None
    if not head:
        raise ImageError(path, "empty file")
    png_header = _png_header(head)
    if png_header is not None:
        _refuse_size_or_depth(path, *png_header)
    try:
        with Image.open(path) as img:
            if png_header is None:
                _refuse_size_or_depth(path, img.width, img.height, _bits_per_sample(img))
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                raise ImageError(path, f"animated image with {frames} frames; only still images are supported")
            img.load()
            return _to_rgb(path, img)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(path, f"too many pixels for a test image ({exc})") from None
    except Image.UnidentifiedImageError:
        if png_header is not None:  # Pillow reports a PNG cut inside its first chunks this way
            raise ImageError(path, "truncated or corrupt image (unreadable data after the PNG header)") from None
        raise ImageError(path, "not a recognised image format") from None
    except _DECODE_ERRORS as exc:
        raise ImageError(path, f"truncated or corrupt image ({exc})") from None


def _png_header(head: bytes) -> tuple[int, int, int] | None:
    """(width, height, bits per sample) from a PNG's IHDR chunk, or None for other formats.

    Read from the file because Pillow opens 48/64-bit PNGs as 8-bit RGB(A) without saying so,
    and refuses zero-size PNGs as "unidentified" instead of naming the problem.
    """
    if len(head) < _PNG_HEADER_SIZE or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    width, height, bit_depth = struct.unpack(">IIB", head[16:25])
    return width, height, bit_depth


def _bits_per_sample(img: Image.Image) -> int:
    """The bit depth of a non-PNG file, from Pillow's mode or the decoder's raw mode."""
    if img.mode in ("I", "F"):
        return 32
    if img.mode.startswith("I;16"):
        return 16
    rawmodes = [tile.args[0] if isinstance(tile.args, tuple) else tile.args for tile in img.tile]
    if any(isinstance(raw, str) and ";16" in raw for raw in rawmodes):
        return 16
    return 8


def _refuse_size_or_depth(path: Path, width: int, height: int, bits_per_sample: int) -> None:
    if width == 0 or height == 0:
        raise ImageError(path, f"zero-size image ({width}x{height})")
    if bits_per_sample > 8:
        raise ImageError(path, f"{bits_per_sample}-bit; only 8-bit images are supported: convert it first")


def _to_rgb(path: Path, img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"))
        if rgba[..., 3].min() < 255:
            raise ImageError(path, "has transparency; licbench compares RGB codecs")
        return np.ascontiguousarray(rgba[..., :3])
    if mode == "RGB":
        return np.asarray(img).copy()
    if mode in _EXPANDABLE_MODES:
        return np.asarray(img.convert("RGB"))
    raise ImageError(path, f"colour mode {mode} has no lossless RGB equivalent: convert it to RGB first")
