"""JPEG XL with libjxl through ffmpeg, fed 8-bit sRGB (libjxl converts to XYB internally)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from licbench.codecs._shared import (
    check_rgb,
    ffmpeg_availability,
    ffmpeg_command,
    format_rate,
    require_available,
    run_ffmpeg,
)
from licbench.codecs.base import Availability, Codec, CodecError, Encoded, register
from licbench.tools import ffmpeg_version


@register
class JpegXlCodec(Codec):
    name = "jpegxl"
    description = "JPEG XL (libjxl via ffmpeg), lossy VarDCT on XYB, raw .jxl codestream"
    rate_parameter = "distance"
    # distance 15 (ffmpeg's maximum) gives ~0.2 bpp on Kodak: lower rates are out of reach.
    default_rates = (0.8, 1.4, 2.5, 4.0, 8.0, 15.0)
    rate_decreasing = True
    default_settings = {"effort": 7, "threads": 1}

    def availability(self) -> Availability:
        return ffmpeg_availability("libjxl", "libjxl", "--enable-libjxl")

    def version(self) -> str:
        require_available(self)
        # ffmpeg does not log libjxl's version.
        return f"libjxl (version not reported) in ffmpeg {ffmpeg_version()}"

    def encode_command(self, raw: Path, out: Path, width: int | str, height: int | str, distance: str) -> list[str]:
        # The input is tagged sRGB so libjxl records that colour encoding instead of guessing it.
        return ffmpeg_command(
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", "1",
            "-color_primaries", "bt709", "-color_trc", "iec61966-2-1", "-i", raw,
            "-frames:v", "1", "-c:v", "libjxl", "-distance", distance, "-effort", str(self.settings["effort"]),
            "-threads", str(self.settings["threads"]), "-f", "image2pipe", out,
        )  # fmt: skip

    def decode_command(self, stream: Path, out: Path) -> list[str]:
        return ffmpeg_command(
            "-threads", str(self.settings["threads"]), "-c:v", "libjxl", "-f", "jpegxl_pipe", "-i", stream,
            "-frames:v", "1", "-pix_fmt", "rgb24", "-c:v", "ppm", "-f", "image2pipe", out,
        )  # fmt: skip

    def describe(self) -> dict[str, Any]:
        return {
            **self.settings,
            "colour": "8-bit sRGB handed to libjxl, which converts to XYB internally; decoded to 8-bit sRGB",
            "encode_command": " ".join(
                self.encode_command(Path("in.rgb24"), Path("out.jxl"), "{width}", "{height}", "{distance}")
            ),
            "decode_command": " ".join(self.decode_command(Path("in.jxl"), Path("out.ppm"))),
        }

    def encode(self, image: np.ndarray, rate: float, workdir: Path, timeout: float) -> Encoded:
        check_rgb(image, self.name)
        require_available(self)
        distance = format_rate(self.name, self.rate_parameter, rate, 0.01, 15.0, integer=False)
        raw, out = workdir / "in.rgb24", workdir / "out.jxl"
        raw.write_bytes(np.ascontiguousarray(image).tobytes())
        height, width = image.shape[:2]
        cmd = self.encode_command(raw, out, width, height, distance)
        what = f"{self.name} encode ({width}x{height}, distance {distance})"
        return Encoded(bitstream=run_ffmpeg(cmd, out, timeout, what))

    def decode(self, bitstream: bytes, workdir: Path, timeout: float) -> np.ndarray:
        require_available(self)
        if not bitstream:
            raise CodecError(f"{self.name}: empty bitstream")
        stream, out = workdir / "dec.jxl", workdir / "dec.ppm"
        stream.write_bytes(bitstream)
        ppm = run_ffmpeg(self.decode_command(stream, out), out, timeout, f"{self.name} decode")
        try:
            with Image.open(io.BytesIO(ppm), formats=["PPM"]) as img:
                img.load()
                if img.mode != "RGB":
                    raise CodecError(f"{self.name}: decoder wrote a {img.mode} image, expected RGB")
                return np.asarray(img)
        except (OSError, SyntaxError, ValueError) as exc:
            raise CodecError(f"{self.name}: unreadable decoder output: {exc}") from None
