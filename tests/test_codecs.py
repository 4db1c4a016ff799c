"""The traditional codec adapters, run for real on small crops of kodim01."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from licbench.codecs._shared import (
    HEVC_NAL,
    VVC_NAL,
    add_size_sei,
    crop_to,
    pad_edges,
    read_y4m,
    recorded_size,
    y4m_to_rgb,
)
from licbench.codecs.base import Codec, CodecError, CodecTimeout, codec_class, codec_names
from licbench.colour import ColourPipeline
from licbench.tools import ffmpeg_exe

KODAK = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kodak"
TRADITIONAL = ["av1", "hevc", "jpeg", "jpeg2000", "jpegxl", "vtm", "vvenc", "webp"]
# The ones that run here without external binaries (vtm has its own tests in test_vtm.py).
BUNDLED = [name for name in TRADITIONAL if name != "vtm"]


@pytest.fixture(scope="module")
def kodim01() -> np.ndarray:
    return np.asarray(Image.open(KODAK / "kodim01.png").convert("RGB"))


@pytest.fixture(scope="module")
def odd_crop(kodim01: np.ndarray) -> np.ndarray:
    """97 wide x 131 high: odd sides, not multiples of 8."""
    return np.ascontiguousarray(kodim01[200:331, 300:397])


@pytest.fixture(scope="module")
def small_crop(kodim01: np.ndarray) -> np.ndarray:
    """64 wide x 48 high."""
    return np.ascontiguousarray(kodim01[100:148, 400:464])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def make(name: str) -> Codec:
    codec = codec_class(name)()
    available = codec.availability()
    if not available.ok:
        pytest.skip(f"{name} unavailable: {available.reason}")
    return codec


def rates_by_bits(codec: Codec) -> list[float]:
    """Lowest, middle and highest default rate, ordered from fewest to most bits."""
    rates = sorted(codec.default_rates, reverse=codec.rate_decreasing)
    return [rates[0], rates[len(rates) // 2], rates[-1]]


def test_all_adapters_registered() -> None:
    assert set(TRADITIONAL) <= set(codec_names())


@pytest.mark.parametrize("name", TRADITIONAL)
def test_metadata(name: str) -> None:
    codec = codec_class(name)()
    assert len(codec.default_rates) >= 6
    assert codec.rate_parameter and codec.description
    described = codec.describe()
    for key, value in codec.default_settings.items():
        assert described[key] == value
    if "colour" in described and isinstance(described["colour"], dict):
        assert {"matrix", "range", "bit_depth", "chroma", "rounding"} <= set(described["colour"])


@pytest.mark.parametrize("name", BUNDLED)
def test_round_trip_rate_order_and_determinism(name: str, odd_crop: np.ndarray, tmp_path: Path) -> None:
    codec = make(name)
    sizes, qualities = [], []
    for rate in rates_by_bits(codec):
        encoded = codec.encode(odd_crop, rate, tmp_path, timeout=120)
        decoded = codec.decode(encoded.bitstream, tmp_path, timeout=120)
        assert decoded.shape == odd_crop.shape and decoded.dtype == np.uint8
        assert len(encoded.bitstream) > 0
        again = codec.encode(odd_crop, rate, tmp_path, timeout=120)
        assert again.bitstream == encoded.bitstream, f"{name} is not deterministic at {rate}"
        assert np.array_equal(codec.decode(again.bitstream, tmp_path, timeout=120), decoded)
        sizes.append(len(encoded.bitstream))
        qualities.append(psnr(decoded, odd_crop))
    assert sizes[0] < sizes[1] < sizes[2], sizes
    assert qualities[0] < qualities[1] < qualities[2], qualities
    # At its highest default rate every codec is far from a broken colour pipeline.
    assert qualities[2] > 28, qualities


@pytest.mark.parametrize("name", BUNDLED)
@pytest.mark.parametrize("size", [(1, 1), (2, 2), (8, 8)])
def test_tiny_images(name: str, size: tuple[int, int], kodim01: np.ndarray, tmp_path: Path) -> None:
    codec = make(name)
    image = np.ascontiguousarray(kodim01[300 : 300 + size[0], 200 : 200 + size[1]])
    best = rates_by_bits(codec)[-1]
    decoded = codec.decode(codec.encode(image, best, tmp_path, timeout=60).bitstream, tmp_path, timeout=60)
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    # Headers dominate such pictures, so rate control cannot hold quality: only require a
    # picture close to the input (a wrong one is off by ~50 grey levels on average).
    assert np.abs(decoded.astype(int) - image).mean() < 20


@pytest.mark.parametrize("name", BUNDLED)
def test_corrupt_bitstreams(name: str, small_crop: np.ndarray, tmp_path: Path) -> None:
    codec = make(name)
    good = codec.encode(small_crop, codec.default_rates[len(codec.default_rates) // 2], tmp_path, 60).bitstream
    garbage = np.random.default_rng(1).integers(0, 256, len(good), dtype=np.uint8).tobytes()
    # ffmpeg's libjxl decoder waits forever for the missing bytes of a truncated codestream:
    # those cases end in CodecTimeout (a CodecError) after the short timeout given here.
    for broken in (b"", good[:16], garbage):
        with pytest.raises(CodecError):
            codec.decode(broken, tmp_path, timeout=3)
    half = good[: len(good) // 2]
    if name == "hevc":
        # HEVC slice data has no integrity check (x265 writes no picture hash, as BPG) and
        # ffmpeg's decoder conceals the missing part: the picture still has the right size.
        assert codec.decode(half, tmp_path, timeout=30).shape == small_crop.shape
    else:
        with pytest.raises(CodecTimeout if name == "jpegxl" else CodecError):
            codec.decode(half, tmp_path, timeout=3)
    # A flipped byte mid-stream may or may not be detectable; it must not hang or crash.
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    try:
        assert codec.decode(bytes(flipped), tmp_path, timeout=30).shape == small_crop.shape
    except CodecError:
        pass


@pytest.mark.parametrize("name", BUNDLED)
def test_bad_input(name: str, small_crop: np.ndarray, tmp_path: Path) -> None:
    codec = make(name)
    rate = codec.default_rates[0]
    with pytest.raises(CodecError, match="uint8 H x W x 3"):
        codec.encode(small_crop.astype(np.float32), rate, tmp_path, 30)
    with pytest.raises(CodecError, match="uint8 H x W x 3"):
        codec.encode(small_crop[..., 0], rate, tmp_path, 30)
    with pytest.raises(CodecError, match=codec.rate_parameter):
        codec.encode(small_crop, 1e6, tmp_path, 30)


@pytest.mark.parametrize("name", ["vvenc", "hevc", "av1"])
def test_qp_like_rates_must_be_whole(name: str, small_crop: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(CodecError, match="whole number"):
        make(name).encode(small_crop, 32.5, tmp_path, 30)


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown setting"):
        codec_class("vvenc")(qpa="1")
    with pytest.raises(ValueError, match="preset"):
        codec_class("vvenc")(preset="placebo")
    with pytest.raises(ValueError, match="subsampling"):
        codec_class("jpeg")(subsampling="4:1:1")
    with pytest.raises(ValueError, match="unknown matrix"):
        codec_class("hevc")(matrix="bt2020")


def test_vvenc_describe_says_what_it_is() -> None:
    described = codec_class("vvenc")().describe()
    assert described["implementation"].startswith("VVenC 4:2:0 10-bit via ffmpeg")
    assert described["colour"]["bit_depth"] == 10 and described["colour"]["chroma"] == "420"
    command = described["encode_command"]
    assert "-c:v libvvenc" in command and "-qpa 0" in command and "-preset medium" in command
    assert "-pix_fmt yuv420p10le" in command and command.endswith("-f vvc out.266")


def test_encoder_timeout(kodim01: np.ndarray, tmp_path: Path) -> None:
    codec = make("vvenc")
    with pytest.raises(CodecTimeout):
        codec.encode(kodim01, 32, tmp_path, timeout=0.3)


# ---------------------------------------------------------------------------------------------
# Padding, size SEI and Y4M pieces


def test_pad_edges_replicates() -> None:
    image = np.arange(5 * 3 * 3, dtype=np.uint8).reshape(5, 3, 3)
    padded = pad_edges(image, 8, 32)
    assert padded.shape == (32, 32, 3)
    assert np.array_equal(padded[:5, :3], image)
    assert np.array_equal(padded[31, 31], image[4, 2]) and np.array_equal(padded[2, 20], image[2, 2])
    assert pad_edges(np.zeros((40, 48, 3), np.uint8), 8, 32).shape == (40, 48, 3)


@pytest.mark.parametrize("name", ["vvenc", "hevc"])
def test_padded_streams_record_their_size(
    name: str, odd_crop: np.ndarray, small_crop: np.ndarray, tmp_path: Path
) -> None:
    codec = make(name)
    syntax = VVC_NAL if name == "vvenc" else HEVC_NAL
    padded = codec.encode(odd_crop, 32, tmp_path, 60).bitstream
    assert recorded_size(padded, syntax) == (97, 131)
    # 64x48 needs no padding: the stream is the encoder's output as is.
    assert recorded_size(codec.encode(small_crop, 32, tmp_path, 60).bitstream, syntax) is None


def test_size_sei_with_emulation_prevention_is_a_valid_stream(small_crop: np.ndarray, tmp_path: Path) -> None:
    codec = make("hevc")
    stream = codec.encode(small_crop, 32, tmp_path, 60).bitstream
    # 256 x 3 -> payload bytes 01 00 00 03 need an emulation prevention byte.
    tagged = add_size_sei(stream, HEVC_NAL, 256, 3)
    assert b"\x01\x00\x00\x03\x03" in tagged
    assert recorded_size(tagged, HEVC_NAL) == (256, 3)
    # ffmpeg's strict decoder accepts the SEI and decodes the same picture.
    path = tmp_path / "tagged.265"
    path.write_bytes(tagged)
    out = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-err_detect", "explode", "-f", "hevc", "-i", str(path), "-f", "rawvideo",
         "-pix_fmt", "yuv444p10le", "-"], capture_output=True, check=True,
    )  # fmt: skip
    assert out.stderr == b""
    assert len(out.stdout) == 64 * 48 * 3 * 2


def test_decoded_size_mismatch_is_an_error(small_crop: np.ndarray, tmp_path: Path) -> None:
    codec = make("hevc")
    stream = codec.encode(small_crop, 32, tmp_path, 60).bitstream
    with pytest.raises(CodecError, match="does not fit"):
        codec.decode(add_size_sei(stream, HEVC_NAL, 200, 200), tmp_path, 30)
    with pytest.raises(CodecError, match="does not fit"):
        crop_to(np.zeros((8, 8, 3), np.uint8), (9, 8), "test")


def test_y4m_reading_checks_size_and_format() -> None:
    pipeline = ColourPipeline("bt709", "full", 10, "444")
    image = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    raw = pipeline.to_raw(image)
    good = b"YUV4MPEG2 W7 H5 F1:1 Ip A0:0 C444p10 XYSCSS=444P10\nFRAME\n" + raw
    frame = read_y4m(good, "test")
    assert (frame.width, frame.height, frame.chroma, frame.bit_depth) == (7, 5, "444", 10)
    assert np.array_equal(y4m_to_rgb(frame, pipeline, "test"), pipeline.from_raw(raw, 5, 7))
    with pytest.raises(CodecError, match="expected"):
        read_y4m(good[:-1], "test")
    with pytest.raises(CodecError, match="not a YUV4MPEG2"):
        read_y4m(raw, "test")
    with pytest.raises(CodecError, match="expected 420 10-bit"):
        y4m_to_rgb(frame, ColourPipeline("bt709", "full", 10, "420"), "test")


@pytest.mark.parametrize(("subsampling", "pillow_code"), [("4:2:0", 2), ("4:4:4", 0)])
def test_jpeg_subsampling_setting_is_used(subsampling: str, pillow_code: int, small_crop: np.ndarray) -> None:
    from PIL import JpegImagePlugin

    stream = codec_class("jpeg")(subsampling=subsampling).encode(small_crop, 75, Path("."), 10).bitstream
    with Image.open(io.BytesIO(stream)) as img:
        assert JpegImagePlugin.get_sampling(img) == pillow_code
