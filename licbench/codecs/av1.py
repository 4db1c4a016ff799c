"""AV1 with libaom through ffmpeg: 4:4:4 10-bit still picture, all-intra mode, decoded by dav1d."""

from __future__ import annotations

from typing import Any

from licbench.codecs._shared import FfmpegYuvCodec
from licbench.codecs.base import register


@register
class Av1Codec(FfmpegYuvCodec):
    name = "av1"
    description = "AV1 4:4:4 10-bit still picture with libaom (all-intra) via ffmpeg, decoded by dav1d"
    rate_parameter = "cq_level"
    default_rates = (10.0, 18.0, 26.0, 34.0, 42.0, 50.0, 55.0)
    rate_decreasing = True
    default_settings = {"cpu_used": 4, "threads": 1, "matrix": "bt709", "range": "full"}
    rate_limits = (0.0, 63.0)
    encoder = "libaom-av1"
    decoder = "libdav1d"
    stream_format = "obu"  # low-overhead OBU stream: no container around the AV1 data
    suffix = "obu"
    configure_flag = "--enable-libaom --enable-libdav1d"
    version_pattern = r"\[libaom-av1 @ [^\]]*\] v(\S+)"
    bit_depth = 10
    chroma = "444"

    def encoder_options(self, rate: str) -> list[str]:
        # Constant quality (-crf with -b:v 0 is libaom's end-usage=q at cq-level=rate); aq-mode
        # and deltaq-mode 0 keep one quantiser for the picture, tune psnr optimises for MSE.
        return ["-usage", "allintra", "-still-picture", "1", "-cpu-used", str(self.settings["cpu_used"]),
                "-crf", rate, "-b:v", "0", "-aq-mode", "0", "-tune", "psnr",
                "-aom-params", "deltaq-mode=0", "-threads", str(self.settings["threads"])]  # fmt: skip

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "implementation": "libaom AV1 encoder via ffmpeg, dav1d decoder"}
