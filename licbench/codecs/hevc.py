"""HEVC (H.265) with x265 through ffmpeg: 4:4:4 10-bit, all intra (the BPG equivalent)."""

from __future__ import annotations

from typing import Any

from licbench.codecs._shared import HEVC_NAL, FfmpegYuvCodec
from licbench.codecs.base import register


@register
class HevcCodec(FfmpegYuvCodec):
    name = "hevc"
    description = "HEVC 4:4:4 10-bit intra with x265 via ffmpeg (BPG-like)"
    rate_parameter = "qp"
    default_rates = (17.0, 22.0, 27.0, 32.0, 37.0, 42.0)
    rate_decreasing = True
    default_settings = {"preset": "medium", "tune": "psnr", "threads": 1, "matrix": "bt709", "range": "full"}
    rate_limits = (0.0, 51.0)
    encoder = "libx265"
    decoder = "hevc"
    stream_format = "hevc"
    suffix = "265"
    configure_flag = "--enable-libx265"
    version_pattern = r"HEVC encoder version (\S+)"
    bit_depth = 10  # this build's libx265 takes yuv444p10le (Main 4:4:4 10 profile)
    chroma = "444"
    nal_syntax = HEVC_NAL

    def encoder_options(self, rate: str) -> list[str]:
        # keyint=1: all intra; ipratio=1: the I picture is coded at the given QP (x265 would
        # otherwise lower it by 6*log2(1.4)); aq-mode=0: no adaptive QP; info=0/hash=0: no
        # version-string or picture-hash SEI (as BPG); one thread pool of `threads` workers.
        params = (
            f"keyint=1:ipratio=1:aq-mode=0:info=0:hash=0:pools={self.settings['threads']}:frame-threads=1"
            ":log-level=error"
        )
        return ["-preset", self.settings["preset"], "-tune", self.settings["tune"], "-qp", rate,
                "-x265-params", params]  # fmt: skip

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "implementation": "x265 (HEVC Main 4:4:4 10) via ffmpeg libx265"}
