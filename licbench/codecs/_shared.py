"""Pieces shared by the traditional codec adapters (not a codec itself: modules starting with
``_`` are not auto-discovered).

- input checks and rate formatting,
- edge padding for the HEVC/VVC encoders, with the true picture size recorded in a standard
  user-data-unregistered SEI message so that the decoder side can crop it away,
- reading the YUV4MPEG2 (Y4M) files the decoders write (they carry the decoded size and format),
- the ffmpeg flow for YCbCr codecs (raw planes in, elementary stream out, Y4M back),
- the Pillow flow for the still-image codecs.
"""

from __future__ import annotations

import io
import re
from abc import abstractmethod
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import PIL
from PIL import Image, features

from licbench.codecs.base import Availability, Codec, CodecError, CodecUnavailable, Encoded
from licbench.colour import ColourPipeline
from licbench.tools import ffmpeg_exe, ffmpeg_has_encoder, ffmpeg_version, run_tool

# ----------------------------------------------------------------------------------------------
# Inputs and rates


def require_available(codec: Codec) -> None:
    """Raise CodecUnavailable with the codec's own reason when it cannot run here."""
    available = codec.availability()
    if not available.ok:
        raise CodecUnavailable(f"{codec.name}: {available.reason}")


def check_rgb(image: np.ndarray, codec: str) -> None:
    """Raise CodecError unless ``image`` is a non-empty uint8 H x W x 3 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        what = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise CodecError(f"{codec}: input must be a uint8 H x W x 3 RGB array, got a {what}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise CodecError(f"{codec}: input image is empty ({image.shape[1]}x{image.shape[0]})")


def format_rate(codec: str, parameter: str, rate: float, low: float, high: float, integer: bool) -> str:
    """The rate as the command-line string, after checking it is in [low, high] (and whole)."""
    if not low <= rate <= high:
        raise CodecError(f"{codec}: {parameter} must be in [{low:g}, {high:g}], got {rate:g}")
    if integer:
        if rate != int(rate):
            raise CodecError(f"{codec}: {parameter} must be a whole number, got {rate:g}")
        return str(int(rate))
    return f"{rate:g}"


# ----------------------------------------------------------------------------------------------
# Edge padding, recorded in a user-data SEI (HEVC and VVC Annex B streams)

# Fixed UUID marking licbench's "true picture size" user_data_unregistered SEI payload.
SIZE_SEI_UUID = bytes.fromhex("6c6963620e6e63687061645f73697a65")
_START_CODE = b"\x00\x00\x01"
_SEI_PAYLOAD_TYPE_USER_DATA_UNREGISTERED = 5


@dataclass(frozen=True)
class NalSyntax:
    """Where the NAL unit type sits in the 2-byte NAL unit header, and which NAL unit types may
    precede an SEI in an access unit (access unit delimiter, parameter sets)."""

    name: str
    type_byte: int  # header byte holding nal_unit_type
    type_shift: int
    type_mask: int
    prefix_sei_type: int
    leading_types: frozenset[int]

    def nal_type(self, header: bytes) -> int:
        return (header[self.type_byte] >> self.type_shift) & self.type_mask

    def header(self, nal_type: int) -> bytes:
        """A NAL unit header for layer 0, temporal id 0 (TemporalId + 1 = 1 in the last bits)."""
        header = bytearray([0, 1])
        header[self.type_byte] |= nal_type << self.type_shift
        return bytes(header)


# HEVC: forbidden(1) type(6) layer(6) tid+1(3). VVC: forbidden(1) reserved(1) layer(6) type(5) tid+1(3).
HEVC_NAL = NalSyntax("HEVC", 0, 1, 0x3F, prefix_sei_type=39, leading_types=frozenset({32, 33, 34, 35}))
VVC_NAL = NalSyntax("VVC", 1, 3, 0x1F, prefix_sei_type=23, leading_types=frozenset({12, 13, 14, 15, 16, 20}))


def pad_edges(image: np.ndarray, multiple: int, minimum: int) -> np.ndarray:
    """Replicate the last row/column so that both sides are multiples of ``multiple`` and at
    least ``minimum``."""
    height, width = image.shape[:2]
    padded_h = max(minimum, -(-height // multiple) * multiple)
    padded_w = max(minimum, -(-width // multiple) * multiple)
    return np.pad(image, ((0, padded_h - height), (0, padded_w - width), (0, 0)), mode="edge")


def _nal_spans(stream: bytes) -> list[tuple[int, int, int]]:
    """(start code offset, NAL unit offset, NAL unit end) of each NAL unit in an Annex B stream."""
    starts = []
    pos = stream.find(_START_CODE)
    while pos >= 0:
        starts.append(pos)
        pos = stream.find(_START_CODE, pos + 3)
    spans = []
    for i, pos in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(stream)
        # A zero byte before the next start code belongs to its 4-byte form (zero_byte).
        while end > pos + 3 and stream[end - 1] == 0 and i + 1 < len(starts):
            end -= 1
        code_start = pos - 1 if pos > 0 and stream[pos - 1] == 0 else pos
        spans.append((code_start, pos + 3, end))
    return spans


def _escape(rbsp: bytes) -> bytes:
    """Insert emulation prevention bytes (00 00 0x -> 00 00 03 0x for x <= 3)."""
    out = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _unescape(payload: bytes) -> bytes:
    return re.sub(b"\x00\x00\x03", b"\x00\x00", payload)


def add_size_sei(stream: bytes, syntax: NalSyntax, width: int, height: int) -> bytes:
    """Insert a prefix SEI recording the true picture size before the first NAL unit that is
    not an access unit delimiter or parameter set."""
    message = bytes([_SEI_PAYLOAD_TYPE_USER_DATA_UNREGISTERED, len(SIZE_SEI_UUID) + 4])
    message += SIZE_SEI_UUID + width.to_bytes(2, "big") + height.to_bytes(2, "big")
    nal = syntax.header(syntax.prefix_sei_type) + _escape(message + b"\x80")
    for code_start, nal_start, _ in _nal_spans(stream):
        if syntax.nal_type(stream[nal_start : nal_start + 2]) not in syntax.leading_types:
            return stream[:code_start] + b"\x00\x00\x00\x01" + nal + stream[code_start:]
    raise CodecError(f"{syntax.name} stream has no picture data to put the size SEI in front of")


def recorded_size(stream: bytes, syntax: NalSyntax) -> tuple[int, int] | None:
    """(width, height) from the size SEI written by :func:`add_size_sei`, or None."""
    prefix = bytes([_SEI_PAYLOAD_TYPE_USER_DATA_UNREGISTERED, len(SIZE_SEI_UUID) + 4]) + SIZE_SEI_UUID
    for _, nal_start, end in _nal_spans(stream):
        if end - nal_start < 2 or syntax.nal_type(stream[nal_start : nal_start + 2]) != syntax.prefix_sei_type:
            continue
        rbsp = _unescape(stream[nal_start + 2 : end])
        if rbsp.startswith(prefix) and len(rbsp) >= len(prefix) + 4:
            size = rbsp[len(prefix) : len(prefix) + 4]
            return int.from_bytes(size[:2], "big"), int.from_bytes(size[2:], "big")
    return None


def crop_to(image: np.ndarray, size: tuple[int, int] | None, codec: str) -> np.ndarray:
    """Crop the decoded (padded) image to the recorded (width, height)."""
    if size is None:
        return image
    width, height = size
    if width == 0 or height == 0 or width > image.shape[1] or height > image.shape[0]:
        raise CodecError(
            f"{codec}: recorded picture size {width}x{height} does not fit the decoded "
            f"{image.shape[1]}x{image.shape[0]} picture"
        )
    return image[:height, :width]


# ----------------------------------------------------------------------------------------------
# YUV4MPEG2 (the decoders' output: it carries size, chroma format and bit depth)

_Y4M_COLOUR = re.compile(r"^(420|422|444|mono)(?:p(\d+)|jpeg|mpeg2|paldv)?$")


@dataclass(frozen=True)
class Y4mFrame:
    width: int
    height: int
    chroma: str  # "420", "422", "444" or "mono"
    bit_depth: int
    data: bytes  # the planes of the first frame, planar, little-endian when > 8 bits


def read_y4m(data: bytes, source: str) -> Y4mFrame:
    """The first frame of a Y4M file; CodecError when the file is not a complete Y4M frame."""
    header_end = data.find(b"\n")
    if not data.startswith(b"YUV4MPEG2 ") or header_end < 0:
        raise CodecError(f"{source}: not a YUV4MPEG2 file")
    fields = {tok[:1]: tok[1:] for tok in data[10:header_end].decode("ascii", "replace").split()}
    try:
        width, height = int(fields["W"]), int(fields["H"])
    except (KeyError, ValueError):
        raise CodecError(f"{source}: Y4M header without a valid W/H: {data[:header_end]!r}") from None
    match = _Y4M_COLOUR.match(fields.get("C", "420"))
    if match is None:
        raise CodecError(f"{source}: unsupported Y4M colour space C{fields['C']}")
    chroma, bit_depth = match.group(1), int(match.group(2) or 8)
    frame_end = data.find(b"\n", header_end + 1)
    if not data.startswith(b"FRAME", header_end + 1) or frame_end < 0:
        raise CodecError(f"{source}: Y4M file holds no frame")
    bytes_per_sample = 2 if bit_depth > 8 else 1
    chroma_samples = {
        "420": 2 * ((width + 1) // 2) * ((height + 1) // 2),
        "422": 2 * ((width + 1) // 2) * height,
        "444": 2 * width * height,
        "mono": 0,
    }[chroma]
    size = (width * height + chroma_samples) * bytes_per_sample
    frame = data[frame_end + 1 : frame_end + 1 + size]
    if len(frame) != size:
        raise CodecError(
            f"{source}: Y4M frame has {len(frame)} bytes, expected {size} for {width}x{height} "
            f"{chroma} {bit_depth}-bit"
        )
    return Y4mFrame(width, height, chroma, bit_depth, frame)


def y4m_to_rgb(frame: Y4mFrame, pipeline: ColourPipeline, source: str) -> np.ndarray:
    """Convert decoded planes back to RGB with the encoder's pipeline (format must match)."""
    if (frame.chroma, frame.bit_depth) != (pipeline.chroma, pipeline.bit_depth):
        raise CodecError(
            f"{source}: decoded picture is {frame.chroma} {frame.bit_depth}-bit, expected "
            f"{pipeline.chroma} {pipeline.bit_depth}-bit"
        )
    return pipeline.from_raw(frame.data, frame.height, frame.width)


# ----------------------------------------------------------------------------------------------
# ffmpeg


def ffmpeg_command(*args: str | Path) -> list[str]:
    """ffmpeg quiet, non-interactive, overwriting outputs."""
    return [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *map(str, args)]


@lru_cache(maxsize=None)
def ffmpeg_has_decoder(decoder: str) -> bool:
    out = run_tool([ffmpeg_exe(), "-hide_banner", "-decoders"], timeout=30).stdout.decode()
    return any(line.split()[1:2] == [decoder] for line in out.splitlines() if line.startswith(" "))


def ffmpeg_availability(encoder: str, decoder: str, configure_flag: str) -> Availability:
    try:
        exe = ffmpeg_exe()
        missing = [f"encoder {encoder}"] if not ffmpeg_has_encoder(encoder) else []
        missing += [f"decoder {decoder}"] if not ffmpeg_has_decoder(decoder) else []
    except CodecError as exc:
        return Availability(False, f"ffmpeg cannot run: {exc}; pip install imageio-ffmpeg")
    if missing:
        return Availability(
            False,
            f"ffmpeg {exe} lacks the {' and '.join(missing)}; use an ffmpeg built with "
            f"{configure_flag} (set IMAGEIO_FFMPEG_EXE to it)",
        )
    return Availability(True)


@lru_cache(maxsize=None)
def ffmpeg_library_version(encoder: str, pattern: str) -> str:
    """The encoder library's version as it logs it while encoding a small grey frame."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "verbose", "-f", "lavfi", "-i",
           "color=c=gray:s=64x64:r=1", "-frames:v", "1", "-c:v", encoder, "-f", "null", "-"]
    log = run_tool(cmd, timeout=60).stderr.decode(errors="replace")
    match = re.search(pattern, log)
    return match.group(1) if match else "unknown"


def run_ffmpeg(cmd: Sequence[str], output: Path, timeout: float, what: str) -> bytes:
    """Run an ffmpeg command that must write ``output``; its bytes, or CodecError if it wrote
    nothing (ffmpeg exits 0 when an encoder produced no packet)."""
    proc = run_tool(cmd, timeout=timeout)
    data = output.read_bytes() if output.exists() else b""
    if not data:
        lines = [ln for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
        detail = f": {lines[-1].strip()}" if lines else ""
        raise CodecError(f"{what}: ffmpeg wrote no output{detail}")
    return data


class FfmpegYuvCodec(Codec):
    """A codec fed with the raw YCbCr planes of a :class:`ColourPipeline` through ffmpeg, writing
    an elementary stream and decoded by ffmpeg to Y4M, converted back with the same pipeline.

    With ``nal_syntax`` set (HEVC, VVC), the image is first padded by edge replication to a
    multiple of 8 and at least ``minimum_side`` pixels, and when padding was needed the true
    size is recorded in a user-data SEI that decode() reads to crop.
    """

    encoder: ClassVar[str]
    decoder: ClassVar[str]
    stream_format: ClassVar[str]  # ffmpeg muxer and demuxer of the elementary stream
    suffix: ClassVar[str]
    configure_flag: ClassVar[str]
    version_pattern: ClassVar[str]
    bit_depth: ClassVar[int]
    chroma: ClassVar[str]
    nal_syntax: ClassVar[NalSyntax | None] = None
    minimum_side: ClassVar[int] = 32
    rate_limits: ClassVar[tuple[float, float]]
    rate_is_integer: ClassVar[bool] = True

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        # Derived from the settings once, so that a bad matrix/range fails at construction.
        self.pipeline = ColourPipeline(self.settings["matrix"], self.settings["range"], self.bit_depth, self.chroma)

    @abstractmethod
    def encoder_options(self, rate: str) -> list[str]:
        """Options after ``-c:v <encoder>``, for the formatted rate value."""

    def availability(self) -> Availability:
        return ffmpeg_availability(self.encoder, self.decoder, self.configure_flag)

    def version(self) -> str:
        require_available(self)
        library = ffmpeg_library_version(self.encoder, self.version_pattern)
        return f"{self.encoder} {library} (ffmpeg {ffmpeg_version()})"

    def _colour_tags(self) -> list[str]:
        """Tag the raw input with the pipeline's range and matrix so the stream signals them."""
        matrix = {"bt709": "bt709", "bt601": "smpte170m"}[self.pipeline.matrix]
        return ["-color_range", "pc" if self.pipeline.range == "full" else "tv", "-colorspace", matrix]

    def encode_command(self, raw: Path, out: Path, width: int | str, height: int | str, rate: str) -> list[str]:
        return ffmpeg_command(
            "-f", "rawvideo", "-pix_fmt", self.pipeline.ffmpeg_pix_fmt, "-s", f"{width}x{height}",
            "-r", "1", *self._colour_tags(), "-i", raw,
            "-frames:v", "1", "-c:v", self.encoder, *self.encoder_options(rate),
            "-f", self.stream_format, out,
        )  # fmt: skip

    def decode_command(self, stream: Path, out: Path) -> list[str]:
        return ffmpeg_command(
            "-threads", str(self.settings["threads"]), "-c:v", self.decoder,
            "-f", self.stream_format, "-i", stream, "-frames:v", "1",
            "-f", "yuv4mpegpipe", "-strict", "-1", out,
        )  # fmt: skip

    def describe(self) -> dict[str, Any]:
        padding = (
            f"edge replication to a multiple of 8 and at least {self.minimum_side}x{self.minimum_side}; "
            "when padded, the true size is sent in a user-data-unregistered SEI (counted in the bytes) "
            "and the decoded picture is cropped"
            if self.nal_syntax
            else "none (the codec signals any picture size)"
        )
        return {
            **self.settings,
            "colour": self.pipeline.describe(),
            "padding": padding,
            "encode_command": " ".join(self.encode_command(Path(f"in.{self.pipeline.ffmpeg_pix_fmt}"),
                                                           Path(f"out.{self.suffix}"), "{width}", "{height}",
                                                           f"{{{self.rate_parameter}}}")),
            "decode_command": " ".join(self.decode_command(Path(f"in.{self.suffix}"), Path("out.y4m"))),
        }

    def encode(self, image: np.ndarray, rate: float, workdir: Path, timeout: float) -> Encoded:
        check_rgb(image, self.name)
        require_available(self)
        rate_text = format_rate(self.name, self.rate_parameter, rate, *self.rate_limits, self.rate_is_integer)
        height, width = image.shape[:2]
        coded = pad_edges(image, 8, self.minimum_side) if self.nal_syntax else image
        raw = workdir / f"in.{self.pipeline.ffmpeg_pix_fmt}"
        raw.write_bytes(self.pipeline.to_raw(coded))
        out = workdir / f"out.{self.suffix}"
        cmd = self.encode_command(raw, out, coded.shape[1], coded.shape[0], rate_text)
        what = f"{self.name} encode ({width}x{height}, {self.rate_parameter} {rate_text})"
        stream = run_ffmpeg(cmd, out, timeout, what)
        if self.nal_syntax and coded.shape != image.shape:
            stream = add_size_sei(stream, self.nal_syntax, width, height)
        return Encoded(bitstream=stream)

    def decode(self, bitstream: bytes, workdir: Path, timeout: float) -> np.ndarray:
        require_available(self)
        if not bitstream:
            raise CodecError(f"{self.name}: empty bitstream")
        stream = workdir / f"dec.{self.suffix}"
        stream.write_bytes(bitstream)
        out = workdir / "dec.y4m"
        y4m = run_ffmpeg(self.decode_command(stream, out), out, timeout, f"{self.name} decode")
        source = f"{self.name} decoder output"
        rgb = y4m_to_rgb(read_y4m(y4m, source), self.pipeline, source)
        if self.nal_syntax:
            rgb = crop_to(rgb, recorded_size(bitstream, self.nal_syntax), self.name)
        return rgb


# ----------------------------------------------------------------------------------------------
# Pillow


class PillowCodec(Codec):
    """A still-image codec run in-process by Pillow: the bytes are the file Pillow writes.
    These libraries are fast and do not hang, so the timeout is not enforced."""

    pillow_format: ClassVar[str]
    pillow_feature: ClassVar[str]  # name for PIL.features
    rate_limits: ClassVar[tuple[float, float]]
    rate_is_integer: ClassVar[bool] = True

    @abstractmethod
    def save_options(self, rate: float | str, size: tuple[int, int] | None = None) -> dict[str, Any]:
        """Keyword arguments for ``Image.save`` for an image of (width, height) ``size``; in
        describe() ``rate`` is a placeholder string and ``size`` is None."""

    def availability(self) -> Availability:
        if not features.check(self.pillow_feature):
            return Availability(
                False, f"Pillow was built without {self.pillow_format} support; install a Pillow wheel from PyPI"
            )
        return Availability(True)

    def version(self) -> str:
        return f"{self.pillow_feature} {features.version(self.pillow_feature)} (Pillow {PIL.__version__})"

    def describe(self) -> dict[str, Any]:
        options = self.save_options(f"{{{self.rate_parameter}}}")
        return {
            **self.settings,
            "colour": "8-bit RGB handed to the library, which does its own colour transform",
            "save_call": f"PIL.Image.save(file, format={self.pillow_format!r}, **{options})",
        }

    def encode(self, image: np.ndarray, rate: float, workdir: Path, timeout: float) -> Encoded:
        check_rgb(image, self.name)
        format_rate(self.name, self.rate_parameter, rate, *self.rate_limits, self.rate_is_integer)
        buffer = io.BytesIO()
        height, width = image.shape[:2]
        try:
            options = self.save_options(rate, (width, height))
            Image.fromarray(image, "RGB").save(buffer, format=self.pillow_format, **options)
        except (OSError, ValueError) as exc:
            raise CodecError(
                f"{self.name}: cannot encode a {width}x{height} image at {self.rate_parameter} {rate:g}: {exc}"
            ) from None
        return Encoded(bitstream=buffer.getvalue())

    def decode(self, bitstream: bytes, workdir: Path, timeout: float) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(bitstream), formats=[self.pillow_format]) as img:
                img.load()
                if img.mode != "RGB":
                    raise CodecError(f"{self.name}: decoded image has mode {img.mode}, expected RGB")
                return np.asarray(img)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
            raise CodecError(f"{self.name}: cannot decode the {len(bitstream)}-byte bitstream: {exc}") from None
