"""The vvenc adapter against a hand-written ffmpeg command: same bytes, same decoded picture."""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from licbench.codecs.base import codec_class
from licbench.colour import ColourPipeline

KODAK = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kodak"


def psnr_rgb(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def test_adapter_matches_direct_ffmpeg_command(tmp_path: Path) -> None:
    codec = codec_class("vvenc")()
    if not codec.availability().ok:
        pytest.skip(codec.availability().reason)
    image = np.asarray(Image.open(KODAK / "kodim01.png").convert("RGB"))
    assert image.shape == (512, 768, 3)

    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    encoded = codec.encode(image, 32, adapter_dir, timeout=300)
    decoded = codec.decode(encoded.bitstream, adapter_dir, timeout=300)

    pipeline = ColourPipeline("bt709", "full", 10, "420")
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    (tmp_path / "kodim01.yuv").write_bytes(pipeline.to_raw(image))
    subprocess.run(
        [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
         "-f", "rawvideo", "-pix_fmt", "yuv420p10le", "-s", "768x512", "-r", "1",
         "-color_range", "pc", "-colorspace", "bt709", "-i", "kodim01.yuv",
         "-frames:v", "1", "-c:v", "libvvenc", "-preset", "medium", "-qp", "32", "-qpa", "0", "-g", "1",
         "-threads", "1", "-f", "vvc", "kodim01.266"],
        cwd=tmp_path, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    direct = (tmp_path / "kodim01.266").read_bytes()
    assert encoded.bitstream == direct

    subprocess.run(
        [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-c:v", "vvc", "-f", "vvc",
         "-i", "kodim01.266", "-f", "rawvideo", "-pix_fmt", "yuv420p10le", "decoded.yuv"],
        cwd=tmp_path, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    direct_rgb = pipeline.from_raw((tmp_path / "decoded.yuv").read_bytes(), 512, 768)
    assert np.array_equal(decoded, direct_rgb)
    assert psnr_rgb(decoded, image) == psnr_rgb(direct_rgb, image)
    # Sanity of the operating point: VVC intra at QP 32 on kodim01 is well below 1 bpp, ~30 dB.
    bpp = 8 * len(direct) / (768 * 512)
    assert 0.3 < bpp < 1.5 and 27 < psnr_rgb(direct_rgb, image) < 35
