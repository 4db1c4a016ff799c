"""BD-rate / BD-quality: published test vectors, analytic cases, errors and aggregations."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from licbench.bench.bd import (
    METHODS,
    BDError,
    BDOverlapWarning,
    average_curve,
    bd_quality,
    bd_rate,
    bd_table,
    ms_ssim_db,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
BD_VECTORS = REPO_ROOT.parent / "shared" / "reference" / "bd" / "jctvc-e137.json"

# A concave RD curve (bpp, PSNR-like quality) used by the analytic cases.
RATES = np.array([0.08, 0.15, 0.3, 0.55, 0.9, 1.5, 2.4])
QUALITY = 24.0 + 11.0 * np.log10(1.0 + 6.0 * RATES)


def _vectors() -> dict:
    with open(BD_VECTORS) as f:
        return json.load(f)


@pytest.mark.parametrize("name", ["jctvc_e137_1", "jctvc_e137_2"])
def test_pchip_reproduces_published_jctvc_e137_vectors(name: str) -> None:
    vector = _vectors()[name]
    result = bd_rate(vector["rate_anchor"], vector["psnr_anchor"], vector["rate_test"], vector["psnr_test"])
    assert abs(result / 100.0 - vector["published_expected_bd_rate_fraction"]) < 5e-5


@pytest.mark.parametrize("method", METHODS)
def test_every_rate_times_1_1_is_plus_ten_percent(method: str) -> None:
    assert bd_rate(RATES, QUALITY, RATES * 1.1, QUALITY, method=method) == pytest.approx(10.0, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_quality_plus_half_db_is_bd_quality_half(method: str) -> None:
    assert bd_quality(RATES, QUALITY, RATES, QUALITY + 0.5, method=method) == pytest.approx(0.5, abs=1e-9)
    # A better test curve saves bits at equal quality.
    assert bd_rate(RATES, QUALITY, RATES, QUALITY + 0.5, method=method) < 0


@pytest.mark.parametrize("method", METHODS)
def test_swapping_anchor_and_test_inverts_the_ratio(method: str) -> None:
    test_rates = RATES * np.array([0.8, 0.85, 0.9, 0.93, 0.97, 1.02, 1.05])
    test_quality = QUALITY + np.linspace(0.3, -0.2, RATES.size)
    forward = bd_rate(RATES, QUALITY, test_rates, test_quality, method=method)
    backward = bd_rate(test_rates, test_quality, RATES, QUALITY, method=method)
    assert forward != pytest.approx(0.0, abs=0.1)
    assert (1 + forward / 100) * (1 + backward / 100) == pytest.approx(1.0, abs=1e-12)
    assert bd_quality(RATES, QUALITY, test_rates, test_quality, method=method) == pytest.approx(
        -bd_quality(test_rates, test_quality, RATES, QUALITY, method=method), abs=1e-12
    )


def test_cubic_integrates_only_over_the_overlap() -> None:
    # log10(rate) is an exact cubic in quality, so the cubic fit is exact; the test curve adds
    # 0.01 * (q - 37), whose mean over the shared quality range [34, 40] is zero, but not over
    # the test curve's own range [34, 44] nor over the union [30, 44].
    def log_rate(q: np.ndarray) -> np.ndarray:
        return -1.2 + 0.08 * (q - 30) + 0.002 * (q - 30) ** 2 + 0.0001 * (q - 30) ** 3

    anchor_q = np.linspace(30, 40, 6)
    test_q = np.linspace(34, 44, 6)
    test_log_rate = log_rate(test_q) + 0.01 * (test_q - 37)
    result = bd_rate(10 ** log_rate(anchor_q), anchor_q, 10**test_log_rate, test_q, method="cubic")
    assert result == pytest.approx(0.0, abs=1e-9)


def test_too_few_points_is_an_error() -> None:
    with pytest.raises(BDError, match=r"test curve: 3 points, BD needs at least 4"):
        bd_rate(RATES, QUALITY, RATES[:3], QUALITY[:3])


def test_no_overlap_is_an_error() -> None:
    with pytest.raises(BDError, match="no overlap in quality"):
        bd_rate(RATES, QUALITY, RATES, QUALITY + 30)
    with pytest.raises(BDError, match="no overlap in log10 rate"):
        bd_quality(RATES, QUALITY, RATES * 100, QUALITY)


def test_non_monotonic_curve_is_an_error_naming_curve_and_place() -> None:
    bumpy = QUALITY.copy()
    bumpy[4] = bumpy[3] - 0.1
    with pytest.raises(BDError, match=r"anchor curve: quality must increase strictly with rate, but from point 3 to 4"):
        bd_rate(RATES, bumpy, RATES, QUALITY)
    repeated_rate = RATES.copy()
    repeated_rate[2] = repeated_rate[1]
    with pytest.raises(BDError, match=r"test curve: .* from point 1 to 2"):
        bd_quality(RATES, QUALITY, repeated_rate, QUALITY)


def test_nan_and_non_positive_rates_are_errors() -> None:
    with pytest.raises(BDError, match="anchor curve: NaN"):
        bd_rate(np.where(RATES > 1, np.nan, RATES), QUALITY, RATES, QUALITY)
    with pytest.raises(BDError, match="test curve: rates must be positive"):
        bd_rate(RATES, QUALITY, RATES - RATES[0], QUALITY)
    with pytest.raises(BDError, match="unknown BD method 'spline'"):
        bd_rate(RATES, QUALITY, RATES, QUALITY, method="spline")


def test_small_overlap_warns_and_full_overlap_does_not() -> None:
    with pytest.warns(BDOverlapWarning, match="overlap on only"):
        bd_rate(RATES, QUALITY, RATES * 8, QUALITY + 7.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BDOverlapWarning)
        bd_rate(RATES, QUALITY, RATES * 1.05, QUALITY)


def test_ms_ssim_db() -> None:
    assert ms_ssim_db(0.99) == pytest.approx(20.0)
    assert np.allclose(ms_ssim_db([0.9, 0.999]), [10.0, 30.0])


# --- aggregations ----------------------------------------------------------------------------

IMAGES = ("img-a", "img-b", "img-c")
IMAGE_RATE_SCALE = {"img-a": 0.6, "img-b": 1.0, "img-c": 1.7}  # images differ in difficulty


def _results(codec_bpp_factors: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Per-image results: every codec shares the anchor's per-image quality values and scales its
    per-image bpp by the given factor."""
    rows = []
    for codec, factors in codec_bpp_factors.items():
        for image in IMAGES:
            for rate_point, (rate, quality) in enumerate(zip(RATES[:5], QUALITY[:5])):
                bpp = rate * IMAGE_RATE_SCALE[image] * factors[image]
                rows.append({"codec": codec, "image": image, "rate": rate_point, "bpp": bpp, "psnr_rgb": quality})
    return pd.DataFrame(rows)


def _row(table: pd.DataFrame, codec: str) -> pd.Series:
    return table.set_index("codec").loc[codec]


def test_average_curve_keeps_only_rate_points_present_for_all_images() -> None:
    df = _results({"anchor": dict.fromkeys(IMAGES, 1.0), "other": dict.fromkeys(IMAGES, 0.8)})
    df = df.drop(df[(df["codec"] == "other") & (df["image"] == "img-b") & (df["rate"] == 2)].index)
    curves = average_curve(df, "psnr_rgb")
    assert sorted(curves[curves["codec"] == "anchor"]["rate"]) == [0, 1, 2, 3, 4]
    assert sorted(curves[curves["codec"] == "other"]["rate"]) == [0, 1, 3, 4]
    anchor_point = curves[(curves["codec"] == "anchor") & (curves["rate"] == 3)].iloc[0]
    assert anchor_point["bpp"] == pytest.approx(RATES[3] * np.mean(list(IMAGE_RATE_SCALE.values())))
    assert anchor_point["psnr_rgb"] == pytest.approx(QUALITY[3])
    assert (curves["n_images"] == 3).all()


def test_bd_table_average_curve_and_per_image_mean() -> None:
    # "uniform" saves 20 % on every image; "mixed" halves the easy image and adds 50 % to the hard one.
    df = _results(
        {
            "anchor": dict.fromkeys(IMAGES, 1.0),
            "uniform": dict.fromkeys(IMAGES, 0.8),
            "mixed": {"img-a": 0.5, "img-b": 1.0, "img-c": 1.5},
        }
    )
    average = bd_table(df, anchor="anchor", metric="psnr_rgb")
    per_image = bd_table(df, anchor="anchor", metric="psnr_rgb", aggregation="per-image-mean")
    assert list(average["codec"]) == ["uniform", "mixed"]
    assert set(average["aggregation"]) == {"average-curve"} and set(per_image["aggregation"]) == {"per-image-mean"}
    assert set(average["method"]) == {"pchip"}

    assert _row(average, "uniform")["bd_rate"] == pytest.approx(-20.0, abs=1e-9)
    assert _row(per_image, "uniform")["bd_rate"] == pytest.approx(-20.0, abs=1e-9)
    assert _row(average, "uniform")["n_points"] == 5 and _row(average, "uniform")["n_images"] == 3
    assert _row(average, "uniform")["overlap_fraction"] == pytest.approx(1.0)
    assert _row(average, "uniform")["bd_quality"] > 0

    # Per-image: (-50 % + 0 % + 50 %) / 3 = 0; the average curve weighs the hard image's bits more.
    assert _row(per_image, "mixed")["bd_rate"] == pytest.approx(0.0, abs=1e-9)
    scales = np.array(list(IMAGE_RATE_SCALE.values()))
    mixed_bpp = RATES[:5] * np.mean(scales * np.array([0.5, 1.0, 1.5]))
    expected = bd_rate(RATES[:5] * scales.mean(), QUALITY[:5], mixed_bpp, QUALITY[:5])
    assert _row(average, "mixed")["bd_rate"] == pytest.approx(expected, abs=1e-9)
    assert expected > 10.0


def test_bd_table_reports_bad_codecs_instead_of_raising() -> None:
    df = _results(
        {
            "anchor": dict.fromkeys(IMAGES, 1.0),
            "good": dict.fromkeys(IMAGES, 0.9),
            "short": dict.fromkeys(IMAGES, 0.9),
            "bumpy": dict.fromkeys(IMAGES, 0.9),
        }
    )
    df = df.drop(df[(df["codec"] == "short") & (df["rate"] >= 3)].index)
    bumpy_point = (df["codec"] == "bumpy") & (df["image"] == "img-c") & (df["rate"] == 2)
    df.loc[bumpy_point, "psnr_rgb"] = QUALITY[0] - 1.0

    average = bd_table(df, anchor="anchor", metric="psnr_rgb")
    assert _row(average, "good")["bd_rate"] == pytest.approx(-10.0, abs=1e-9)
    assert np.isnan(_row(average, "short")["bd_rate"])
    assert "test curve: 3 points" in _row(average, "short")["note"]

    per_image = bd_table(df, anchor="anchor", metric="psnr_rgb", aggregation="per-image-mean")
    bumpy = _row(per_image, "bumpy")
    assert bumpy["n_images"] == 2
    assert bumpy["bd_rate"] == pytest.approx(-10.0, abs=1e-9)
    assert bumpy["note"].startswith("BD failed for 1/3 images") and "img-c" in bumpy["note"]


def test_bd_table_with_a_supplied_anchor_curve() -> None:
    df = _results({"codec-x": dict.fromkeys(IMAGES, 1.0), "codec-y": dict.fromkeys(IMAGES, 1.25)})
    mean_scale = np.mean(list(IMAGE_RATE_SCALE.values()))
    published = (RATES[:5] * mean_scale * 1.25, QUALITY[:5])
    table = bd_table(df, anchor="published-anchor", metric="psnr_rgb", anchor_curve=published)
    assert list(table["codec"]) == ["codec-x", "codec-y"]
    assert set(table["anchor"]) == {"published-anchor"}
    assert _row(table, "codec-x")["bd_rate"] == pytest.approx(-20.0, abs=1e-9)
    assert _row(table, "codec-y")["bd_rate"] == pytest.approx(0.0, abs=1e-9)
    assert _row(table, "codec-x")["n_anchor_points"] == 5
    with pytest.raises(BDError, match="per-image-mean needs per-image anchor results"):
        bd_table(df, anchor="published-anchor", metric="psnr_rgb", anchor_curve=published, aggregation="per-image-mean")


def test_bd_table_input_errors() -> None:
    df = _results({"anchor": dict.fromkeys(IMAGES, 1.0), "other": dict.fromkeys(IMAGES, 0.9)})
    with pytest.raises(BDError, match="lacks column.*ms_ssim_db"):
        bd_table(df, anchor="anchor", metric="ms_ssim_db")
    with pytest.raises(BDError, match="anchor codec 'vtm' is not in the results; codecs present: anchor, other"):
        bd_table(df, anchor="vtm", metric="psnr_rgb")
    with pytest.raises(BDError, match="unknown aggregation"):
        bd_table(df, anchor="anchor", metric="psnr_rgb", aggregation="median")
