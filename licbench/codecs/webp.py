"""Lossy WebP (VP8 intra) with Pillow's libwebp."""

from __future__ import annotations

from typing import Any

from licbench.codecs._shared import PillowCodec
from licbench.codecs.base import register


@register
class WebpCodec(PillowCodec):
    name = "webp"
    description = "lossy WebP (libwebp via Pillow), RIFF .webp file"
    rate_parameter = "quality"
    default_rates = (0.0, 5.0, 20.0, 50.0, 80.0, 92.0)
    rate_decreasing = False
    default_settings = {"method": 6}
    rate_limits = (0.0, 100.0)
    pillow_format = "WEBP"
    pillow_feature = "webp"

    def save_options(self, rate: float | str, size: tuple[int, int] | None = None) -> dict[str, Any]:
        quality = rate if isinstance(rate, str) else int(rate)
        return {"quality": quality, "method": self.settings["method"], "lossless": False}
