"""JPEG (baseline, Huffman-optimised) with Pillow's libjpeg-turbo."""

from __future__ import annotations

from typing import Any

from licbench.codecs._shared import PillowCodec
from licbench.codecs.base import register

SUBSAMPLINGS = ("4:4:4", "4:2:2", "4:2:0")


@register
class JpegCodec(PillowCodec):
    name = "jpeg"
    description = "JPEG with libjpeg-turbo (Pillow), standard quant tables scaled by quality, optimised Huffman"
    rate_parameter = "quality"
    default_rates = (5.0, 10.0, 25.0, 50.0, 75.0, 90.0)
    rate_decreasing = False
    # subsampling "4:2:0" is what Pillow calls subsampling=2.
    default_settings = {"subsampling": "4:2:0", "optimize": True, "progressive": False}
    rate_limits = (1.0, 100.0)
    pillow_format = "JPEG"
    pillow_feature = "libjpeg_turbo"

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        if self.settings["subsampling"] not in SUBSAMPLINGS:
            raise ValueError(f"jpeg: subsampling must be one of {SUBSAMPLINGS}, not {self.settings['subsampling']!r}")

    def save_options(self, rate: float | str, size: tuple[int, int] | None = None) -> dict[str, Any]:
        return {"quality": rate if isinstance(rate, str) else int(rate), **self.settings}
