"""VVC (H.266) with the VVenC library through ffmpeg: 4:2:0 10-bit, all intra, PSNR-tuned."""

from __future__ import annotations

from typing import Any

from licbench.codecs._shared import VVC_NAL, FfmpegYuvCodec
from licbench.codecs.base import register

PRESETS = ("faster", "fast", "medium", "slow", "slower")


@register
class VvencCodec(FfmpegYuvCodec):
    name = "vvenc"
    description = "VVenC 4:2:0 10-bit via ffmpeg (VVC intra, perceptual QP adaptation off); not VTM"
    rate_parameter = "qp"
    default_rates = (20.0, 24.0, 28.0, 32.0, 36.0, 40.0, 44.0)
    rate_decreasing = True
    default_settings = {"preset": "medium", "threads": 1, "matrix": "bt709", "range": "full"}
    rate_limits = (0.0, 63.0)
    encoder = "libvvenc"
    decoder = "vvc"
    stream_format = "vvc"
    suffix = "266"
    configure_flag = "--enable-libvvenc"
    version_pattern = r"libvvenc version: (\S+)"
    bit_depth = 10  # libvvenc only takes yuv420p10le
    chroma = "420"
    nal_syntax = VVC_NAL

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        if self.settings["preset"] not in PRESETS:
            raise ValueError(f"vvenc: preset must be one of {PRESETS}, not {self.settings['preset']!r}")

    def encoder_options(self, rate: str) -> list[str]:
        # -g 1: every picture intra (one picture here); -qpa 0: no perceptual QP adaptation, so
        # the QP is the coded QP and the encoder optimises for MSE.
        return ["-preset", self.settings["preset"], "-qp", rate, "-qpa", "0", "-g", "1",
                "-threads", str(self.settings["threads"])]  # fmt: skip

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "implementation": "VVenC 4:2:0 10-bit via ffmpeg (libvvenc), not VTM"}
