"""licbench.image: what loads, what is converted, and what is refused with a one-line error."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import KODAK
from licbench.digest import file_digest
from licbench.image import ImageError, load_image


@pytest.fixture
def kodim01() -> Path:
    path = KODAK / "kodim01.png"
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests need ../shared/data/kodak beside the repository")
    return path


def _random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _write_raw_png(path: Path, width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> None:
    """A PNG written byte by byte: Pillow cannot write 48-bit RGB PNGs."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def _refusal(path: Path) -> str:
    with pytest.raises(ImageError) as info:
        load_image(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


def test_kodak_png_loads_as_rgb_uint8(kodim01: Path) -> None:
    image = load_image(kodim01)
    assert image.shape == (512, 768, 3)
    assert image.dtype == np.uint8
    with Image.open(kodim01) as reference:
        assert np.array_equal(image, np.asarray(reference))


def test_image_sha256_matches_published_sum(kodim01: Path) -> None:
    sums = dict(line.split()[::-1] for line in (KODAK / "SHA256SUMS").read_text().splitlines())
    assert file_digest(kodim01) == sums["kodim01.png"]


def test_truncated_png_is_refused(kodim01: Path, tmp_path: Path) -> None:
    data = kodim01.read_bytes()
    cut = tmp_path / "kodim01.png"
    cut.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt image" in _refusal(cut)


def test_corrupt_bytes_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(np.random.default_rng(1).bytes(4096))
    assert "not a recognised image format" in _refusal(junk)


def test_corrupt_png_data_is_refused(kodim01: Path, tmp_path: Path) -> None:
    data = bytearray(kodim01.read_bytes())
    # Overwrite compressed pixel data in the middle of the file; the header stays valid.
    middle = len(data) // 2
    data[middle : middle + 2000] = bytes(2000)
    broken = tmp_path / "broken.png"
    broken.write_bytes(bytes(data))
    assert "truncated or corrupt image" in _refusal(broken)


def test_empty_and_missing_files_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert "empty file" in _refusal(empty)
    assert "file not found" in _refusal(tmp_path / "missing.png")


def test_grayscale_is_replicated_to_rgb(tmp_path: Path) -> None:
    gray = np.random.default_rng(2).integers(0, 256, (9, 7), dtype=np.uint8)
    path = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(path)
    image = load_image(path)
    assert image.shape == (9, 7, 3)
    for channel in range(3):
        assert np.array_equal(image[..., channel], gray)


def test_palette_is_expanded_to_rgb(tmp_path: Path) -> None:
    rgb = _random_rgb(6, 10, seed=3)
    palette_image = Image.fromarray(rgb).quantize(colors=16)
    path = tmp_path / "palette.png"
    palette_image.save(path)
    assert np.array_equal(load_image(path), np.asarray(palette_image.convert("RGB")))


def test_opaque_rgba_drops_alpha(tmp_path: Path) -> None:
    rgb = _random_rgb(5, 8, seed=4)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    path = tmp_path / "opaque.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    assert np.array_equal(load_image(path), rgb)


def test_transparent_rgba_is_refused(tmp_path: Path) -> None:
    rgba = np.dstack([_random_rgb(5, 8, seed=5), np.full((5, 8), 255, np.uint8)])
    rgba[2, 3, 3] = 254  # a single, barely transparent pixel is enough
    path = tmp_path / "transparent.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    assert "has transparency; licbench compares RGB codecs" in _refusal(path)


def test_transparent_gray_alpha_and_palette_key_are_refused(tmp_path: Path) -> None:
    la = np.dstack([np.full((4, 4), 100, np.uint8), np.full((4, 4), 255, np.uint8)])
    la[0, 0, 1] = 0
    la_path = tmp_path / "la.png"
    Image.fromarray(la, mode="LA").save(la_path)
    assert "has transparency" in _refusal(la_path)

    palette_image = Image.fromarray(_random_rgb(4, 4, seed=6)).quantize(colors=4)
    keyed_path = tmp_path / "keyed.png"
    palette_image.save(keyed_path, transparency=int(np.asarray(palette_image)[0, 0]))
    assert "has transparency" in _refusal(keyed_path)


def test_16bit_grayscale_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gray16.png"
    Image.fromarray(np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).save(path)
    assert "16-bit; only 8-bit images are supported: convert it first" in _refusal(path)


def test_48bit_rgb_png_is_refused_although_pillow_reduces_it(tmp_path: Path) -> None:
    width, height = 4, 3
    samples = np.random.default_rng(7).integers(0, 65536, (height, width, 3)).astype(">u2")
    rows = b"".join(b"\x00" + samples[y].tobytes() for y in range(height))
    path = tmp_path / "rgb48.png"
    _write_raw_png(path, width, height, bit_depth=16, colour_type=2, rows=rows)
    with Image.open(path) as opened:
        assert opened.mode == "RGB"  # the silent reduction the header check guards against
    assert "16-bit; only 8-bit images are supported: convert it first" in _refusal(path)


def test_zero_size_png_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "zero.png"
    _write_raw_png(path, width=0, height=3, bit_depth=8, colour_type=2, rows=b"")
    assert "zero-size image (0x3)" in _refusal(path)


def test_cmyk_and_animated_images_are_refused(tmp_path: Path) -> None:
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(_random_rgb(8, 8, seed=8)).convert("CMYK").save(cmyk)
    assert "colour mode CMYK" in _refusal(cmyk)

    frames = [Image.fromarray(_random_rgb(4, 4, seed=s)) for s in (9, 10)]
    animated = tmp_path / "animated.png"
    frames[0].save(animated, save_all=True, append_images=frames[1:])
    assert "animated image with 2 frames" in _refusal(animated)


@pytest.mark.parametrize("height, width", [(1, 1), (5, 7), (3, 1)])
def test_tiny_and_odd_sizes_load_exactly(tmp_path: Path, height: int, width: int) -> None:
    rgb = _random_rgb(height, width, seed=height * 100 + width)
    path = tmp_path / f"{width}x{height}.png"
    Image.fromarray(rgb).save(path)
    assert np.array_equal(load_image(path), rgb)


def test_8bit_rgb_written_by_hand_loads(tmp_path: Path) -> None:
    """The raw PNG writer used for the 48-bit case produces valid files: the refusal is about depth."""
    rgb = _random_rgb(3, 4, seed=11)
    rows = b"".join(b"\x00" + rgb[y].tobytes() for y in range(3))
    path = tmp_path / "rgb24.png"
    _write_raw_png(path, width=4, height=3, bit_depth=8, colour_type=2, rows=rows)
    assert np.array_equal(load_image(path), rgb)
