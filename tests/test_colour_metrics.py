"""The explicit colour pipeline and the per-image metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import kodak_image
from licbench.bench.metrics import image_metrics, ms_ssim, psnr
from licbench.colour import ColourPipeline


@pytest.mark.parametrize("chroma,bit_depth,min_psnr", [("444", 10, 55.0), ("444", 8, 45.0), ("420", 10, 30.0)])
def test_round_trip_quality(chroma, bit_depth, min_psnr):
    image = kodak_image(1)[:97, :131]  # odd size on purpose
    pipeline = ColourPipeline(chroma=chroma, bit_depth=bit_depth)
    raw = pipeline.to_raw(image)
    back = pipeline.from_raw(raw, 97, 131)
    assert back.shape == image.shape and back.dtype == np.uint8
    assert psnr(image, back) > min_psnr


def test_raw_layout_sizes_and_values():
    image = np.zeros((3, 5, 3), np.uint8)
    image[..., :] = (255, 255, 255)
    pipeline = ColourPipeline(chroma="420", bit_depth=10, range="full")
    raw = pipeline.to_raw(image)
    assert len(raw) == 2 * (15 + 2 * 2 * 3)  # 3x5 luma, 2x3 chroma planes, 2 bytes a sample
    y, cb, cr = pipeline.rgb_to_planes(image)
    assert (y == 1023).all() and (cb == 512).all() and (cr == 512).all()
    limited = ColourPipeline(range="limited", bit_depth=8).rgb_to_planes(image)
    assert (limited[0] == 235).all() and (limited[1] == 128).all()


def test_wrong_raw_size_is_refused():
    with pytest.raises(ValueError, match="expected"):
        ColourPipeline().from_raw(b"\0" * 10, 4, 4)


def test_describe_records_every_choice():
    described = ColourPipeline(chroma="444", bit_depth=8).describe()
    assert described["matrix"] == "bt709" and described["range"] == "full"
    assert described["chroma"] == "444" and described["bit_depth"] == 8 and "rounding" in described


def test_metrics():
    image = kodak_image(3)[:200, :240]
    noisy = np.clip(image.astype(int) + np.random.default_rng(0).integers(-4, 5, image.shape), 0, 255).astype(np.uint8)
    mse = np.mean((image.astype(float) - noisy) ** 2)
    found = image_metrics(image, noisy)
    assert found["psnr_rgb"] == pytest.approx(10 * math.log10(255**2 / mse))
    assert 0.9 < found["ms_ssim"] < 1.0
    assert found["ms_ssim_db"] == pytest.approx(-10 * math.log10(1 - found["ms_ssim"]))
    assert image_metrics(image, image)["psnr_rgb"] == math.inf
    assert ms_ssim(image[:100, :100], noisy[:100, :100]) is None  # too small for five scales
    with pytest.raises(ValueError, match="expected"):
        image_metrics(image, noisy[:-1])
