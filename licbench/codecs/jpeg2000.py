"""JPEG 2000 with OpenJPEG (through Pillow): 9/7 wavelet, the codec's own colour transform,
rate control by target compression ratio, raw .j2k codestream."""

from __future__ import annotations

from typing import Any

from licbench.codecs._shared import PillowCodec
from licbench.codecs.base import register


@register
class Jpeg2000Codec(PillowCodec):
    name = "jpeg2000"
    description = "JPEG 2000 (OpenJPEG via Pillow), irreversible 9/7 + ICT, one quality layer at a compression ratio"
    # Compression ratio against the 24-bit RGB input: bpp is at most 24 / ratio.
    rate_parameter = "ratio"
    default_rates = (12.0, 20.0, 30.0, 60.0, 120.0, 240.0)
    rate_decreasing = True
    # num_resolutions is lowered to 1 + floor(log2(shorter side)) for images too small for it.
    default_settings = {"irreversible": True, "num_resolutions": 6, "codeblock_size": "64x64", "progression": "LRCP"}
    rate_limits = (1.0, 10000.0)
    rate_is_integer = False
    pillow_format = "JPEG2000"
    pillow_feature = "jpg_2000"

    def save_options(self, rate: float | str, size: tuple[int, int] | None = None) -> dict[str, Any]:
        block_w, _, block_h = self.settings["codeblock_size"].partition("x")
        resolutions = self.settings["num_resolutions"]
        if size is not None:
            # OpenJPEG needs the lowest resolution level to keep at least one pixel per side.
            resolutions = min(resolutions, min(size).bit_length())
        return {
            "quality_mode": "rates",
            "quality_layers": [rate],
            "irreversible": self.settings["irreversible"],
            "mct": 1,  # the standard's RGB -> YCbCr (ICT with 9/7, RCT with 5/3)
            "num_resolutions": resolutions,
            "codeblock_size": (int(block_w), int(block_h)),
            "progression": self.settings["progression"],
            "no_jp2": True,  # raw codestream, no JP2 boxes
        }
