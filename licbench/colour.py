"""Explicit RGB <-> YCbCr conversion shared by every YCbCr codec adapter.

Codecs see the same planes whichever engine encodes them, so differences in the results come
from the codecs and not from an implicit conversion inside a tool. The pipeline is recorded
with every result (:meth:`ColourPipeline.describe`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# Luma coefficients (Kr, Kb) of the standard matrices.
MATRICES: dict[str, tuple[float, float]] = {
    "bt709": (0.2126, 0.0722),
    "bt601": (0.299, 0.114),
}


@dataclass(frozen=True)
class ColourPipeline:
    """How 8-bit RGB becomes YCbCr planes and back.

    chroma "420" downsamples Cb/Cr by averaging each 2x2 block (odd edges replicated) and
    upsamples by nearest neighbour; "444" keeps full resolution. Values are rounded half up and
    clipped at every integer step.
    """

    matrix: str = "bt709"
    range: str = "full"  # "full" or "limited"
    bit_depth: int = 10
    chroma: str = "420"  # "420" or "444"

    def __post_init__(self) -> None:
        if self.matrix not in MATRICES:
            raise ValueError(f"unknown matrix {self.matrix!r}; known: {sorted(MATRICES)}")
        if self.range not in ("full", "limited"):
            raise ValueError(f"range must be 'full' or 'limited', not {self.range!r}")
        if self.chroma not in ("420", "444"):
            raise ValueError(f"chroma must be '420' or '444', not {self.chroma!r}")
        if not 8 <= self.bit_depth <= 16:
            raise ValueError(f"bit depth must be 8..16, not {self.bit_depth}")

    def describe(self) -> dict:
        return {
            **asdict(self),
            "downsampling": "2x2 mean" if self.chroma == "420" else "none",
            "upsampling": "nearest" if self.chroma == "420" else "none",
            "rounding": "half up, clipped",
        }

    @property
    def ffmpeg_pix_fmt(self) -> str:
        """The raw planar layout for ffmpeg: yuv420p, yuv444p10le, ..."""
        sub = "420" if self.chroma == "420" else "444"
        return f"yuv{sub}p" if self.bit_depth == 8 else f"yuv{sub}p{self.bit_depth}le"

    def _scale(self) -> tuple[float, float, float, float]:
        """(luma offset, luma span, chroma offset, chroma span) in code values."""
        top = (1 << self.bit_depth) - 1
        if self.range == "full":
            return 0.0, float(top), float(1 << (self.bit_depth - 1)), float(top)
        k = 1 << (self.bit_depth - 8)
        return 16.0 * k, 219.0 * k, 128.0 * k, 224.0 * k

    def rgb_to_planes(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 H x W x 3 -> Y, Cb, Cr as uint16 integer planes at this pipeline's bit depth."""
        kr, kb = MATRICES[self.matrix]
        kg = 1.0 - kr - kb
        x = rgb.astype(np.float64) / 255.0
        y = kr * x[..., 0] + kg * x[..., 1] + kb * x[..., 2]
        cb = (x[..., 2] - y) / (2.0 * (1.0 - kb))
        cr = (x[..., 0] - y) / (2.0 * (1.0 - kr))
        if self.chroma == "420":
            cb, cr = _downsample2(cb), _downsample2(cr)
        y_off, y_span, c_off, c_span = self._scale()
        top = (1 << self.bit_depth) - 1
        return (
            _quantise(y_off + y_span * y, top),
            _quantise(c_off + c_span * cb, top),
            _quantise(c_off + c_span * cr, top),
        )

    def planes_to_rgb(self, y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
        """Integer planes -> uint8 H x W x 3 (the size of the luma plane)."""
        y_off, y_span, c_off, c_span = self._scale()
        h, w = y.shape
        if self.chroma == "420":
            cb = np.repeat(np.repeat(cb, 2, axis=0), 2, axis=1)[:h, :w]
            cr = np.repeat(np.repeat(cr, 2, axis=0), 2, axis=1)[:h, :w]
        kr, kb = MATRICES[self.matrix]
        kg = 1.0 - kr - kb
        yf = (y.astype(np.float64) - y_off) / y_span
        cbf = (cb.astype(np.float64) - c_off) / c_span
        crf = (cr.astype(np.float64) - c_off) / c_span
        r = yf + 2.0 * (1.0 - kr) * crf
        b = yf + 2.0 * (1.0 - kb) * cbf
        g = (yf - kr * r - kb * b) / kg
        rgb = np.stack([r, g, b], axis=-1) * 255.0
        return _quantise(rgb, 255).astype(np.uint8)

    def to_raw(self, rgb: np.ndarray) -> bytes:
        """RGB -> the raw planar file ffmpeg and the VVC/HEVC reference tools read."""
        dtype = "<u2" if self.bit_depth > 8 else "u1"
        return b"".join(p.astype(dtype).tobytes() for p in self.rgb_to_planes(rgb))

    def chroma_size(self, height: int, width: int) -> tuple[int, int]:
        if self.chroma == "420":
            return (height + 1) // 2, (width + 1) // 2
        return height, width

    def from_raw(self, raw: bytes, height: int, width: int) -> np.ndarray:
        """Raw planar file (one frame) -> RGB; raises ValueError if the size does not match."""
        dtype = np.dtype("<u2" if self.bit_depth > 8 else "u1")
        ch, cw = self.chroma_size(height, width)
        expected = (height * width + 2 * ch * cw) * dtype.itemsize
        if len(raw) != expected:
            raise ValueError(
                f"decoded raw frame has {len(raw)} bytes, expected {expected} for "
                f"{width}x{height} {self.ffmpeg_pix_fmt}"
            )
        data = np.frombuffer(raw, dtype=dtype)
        y = data[: height * width].reshape(height, width)
        cb = data[height * width : height * width + ch * cw].reshape(ch, cw)
        cr = data[height * width + ch * cw :].reshape(ch, cw)
        return self.planes_to_rgb(y, cb, cr)


def _quantise(x: np.ndarray, top: int) -> np.ndarray:
    return np.clip(np.floor(x + 0.5), 0, top).astype(np.uint16)


def _downsample2(plane: np.ndarray) -> np.ndarray:
    h, w = plane.shape
    padded = np.pad(plane, ((0, h % 2), (0, w % 2)), mode="edge")
    return padded.reshape((h + 1) // 2, 2, (w + 1) // 2, 2).mean(axis=(1, 3))


def luma_bt709(rgb: np.ndarray) -> np.ndarray:
    """Full-range BT.709 luma of an 8-bit RGB image, as float in [0, 255] (for PSNR-Y)."""
    kr, kb = MATRICES["bt709"]
    x = rgb.astype(np.float64)
    return kr * x[..., 0] + (1.0 - kr - kb) * x[..., 1] + kb * x[..., 2]
