"""Bjontegaard delta (BD) rate and quality between rate-distortion curves.

Conventions
-----------
* Rates are positive (bpp, kbit/s, bytes: only ratios matter) and enter as ``log10(rate)``.
* ``bd_rate`` interpolates log10 rate as a function of quality and averages the gap over the
  quality interval both curves cover; the result is ``(10**gap - 1) * 100`` percent, negative
  when the test curve needs fewer bits for the same quality.
* ``bd_quality`` interpolates quality as a function of log10 rate and averages the gap over the
  shared log-rate interval (dB for PSNR, but any metric where higher is better works).

Methods
-------
* ``pchip`` (default): piecewise cubic Hermite interpolation with the Fritsch-Carlson/Butland
  slopes, integrated over the overlap; this is the procedure of the JVET common test conditions
  spreadsheet (JCTVC-E137 data reproduces its published values, see tests/test_bd.py).
* ``akima``: scipy's Akima spline, integrated the same way.
* ``cubic``: the original VCEG-M33 method, a least-squares 3rd-order polynomial integrated
  analytically over the overlap.

Overlap threshold: a ``BDOverlapWarning`` is raised when the shared interval covers less than
``MIN_OVERLAP_FRACTION`` (50 %) of either curve's own range, because the BD value then describes
only a small part of one curve and mostly reflects interpolation near its end.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.interpolate import Akima1DInterpolator, PchipInterpolator

BDMethod = Literal["pchip", "akima", "cubic"]
Aggregation = Literal["average-curve", "per-image-mean"]

METHODS: tuple[str, ...] = ("pchip", "akima", "cubic")
AGGREGATIONS: tuple[str, ...] = ("average-curve", "per-image-mean")
MIN_POINTS = 4
MIN_OVERLAP_FRACTION = 0.5


class BDError(ValueError):
    """A BD value cannot be computed from the given curves."""


class BDOverlapWarning(UserWarning):
    """The two curves share less than MIN_OVERLAP_FRACTION of either curve's range."""


def ms_ssim_db(ms_ssim: ArrayLike) -> np.ndarray | float:
    """MS-SSIM on a dB scale, ``-10 log10(1 - ms_ssim)``, which spreads values near 1 so that
    curves can be compared and BD-rated like PSNR."""
    values = np.asarray(ms_ssim, dtype=float)
    with np.errstate(divide="ignore"):
        decibels = -10.0 * np.log10(1.0 - values)
    return float(decibels) if decibels.ndim == 0 else decibels


@dataclass(frozen=True)
class _Curve:
    """One validated curve, sorted by rate: log10 rates and qualities, both strictly increasing."""

    log_rate: np.ndarray
    quality: np.ndarray


def _validated_curve(rate: ArrayLike, quality: ArrayLike, label: str) -> _Curve:
    rates = np.asarray(rate, dtype=float).ravel()
    qualities = np.asarray(quality, dtype=float).ravel()
    if rates.size != qualities.size:
        raise BDError(f"{label} curve: {rates.size} rates but {qualities.size} quality values")
    if rates.size < MIN_POINTS:
        raise BDError(f"{label} curve: {rates.size} points, BD needs at least {MIN_POINTS}")
    if np.isnan(rates).any() or np.isnan(qualities).any():
        raise BDError(f"{label} curve: NaN in rates or quality values")
    if not np.isfinite(qualities).all():
        raise BDError(f"{label} curve: infinite quality value")
    if (rates <= 0).any() or not np.isfinite(rates).all():
        bad = rates[(rates <= 0) | ~np.isfinite(rates)][0]
        raise BDError(f"{label} curve: rates must be positive and finite, got {bad:g}")
    order = np.argsort(rates, kind="stable")
    rates, qualities = rates[order], qualities[order]
    for i in range(rates.size - 1):
        if rates[i + 1] == rates[i] or qualities[i + 1] <= qualities[i]:
            raise BDError(
                f"{label} curve: quality must increase strictly with rate, but from point {i} to {i + 1} "
                f"(sorted by rate) rate goes {rates[i]:g} -> {rates[i + 1]:g} "
                f"and quality {qualities[i]:g} -> {qualities[i + 1]:g}"
            )
    return _Curve(np.log10(rates), qualities)


def _interpolant_integral(x: np.ndarray, y: np.ndarray, method: str) -> Callable[[float, float], float]:
    """Return a function giving the integral over [low, high] of the curve y(x) fitted by ``method``
    (x strictly increasing)."""
    if method == "pchip":
        spline = PchipInterpolator(x, y)
        return lambda low, high: float(spline.integrate(low, high))
    if method == "akima":
        spline = Akima1DInterpolator(x, y)
        return lambda low, high: float(spline.integrate(low, high))
    if method == "cubic":
        antiderivative = np.polyint(np.polyfit(x, y, 3))
        return lambda low, high: float(np.polyval(antiderivative, high) - np.polyval(antiderivative, low))
    raise BDError(f"unknown BD method {method!r}; choose one of {', '.join(METHODS)}")


@dataclass(frozen=True)
class _BDGap:
    """Mean vertical gap (test minus anchor) over the shared x interval."""

    mean_gap: float
    overlap_fraction: float  # shared interval / the larger of the two curves' x ranges (worst case)


def _mean_gap(
    anchor_x: np.ndarray, anchor_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, method: str, axis: str
) -> _BDGap:
    """Average of test_y(x) - anchor_y(x) over the x interval both curves cover."""
    low = max(anchor_x[0], test_x[0])
    high = min(anchor_x[-1], test_x[-1])
    if high <= low:
        raise BDError(
            f"no overlap in {axis}: anchor covers [{anchor_x[0]:.4g}, {anchor_x[-1]:.4g}], "
            f"test covers [{test_x[0]:.4g}, {test_x[-1]:.4g}]"
        )
    overlap_fraction = min((high - low) / (anchor_x[-1] - anchor_x[0]), (high - low) / (test_x[-1] - test_x[0]))
    if overlap_fraction < MIN_OVERLAP_FRACTION:
        warnings.warn(
            f"curves overlap on only {overlap_fraction:.0%} of a curve's {axis} range "
            f"(threshold {MIN_OVERLAP_FRACTION:.0%}); the BD value describes [{low:.4g}, {high:.4g}] only",
            BDOverlapWarning,
            stacklevel=4,
        )
    anchor_integral = _interpolant_integral(anchor_x, anchor_y, method)(low, high)
    test_integral = _interpolant_integral(test_x, test_y, method)(low, high)
    return _BDGap((test_integral - anchor_integral) / (high - low), overlap_fraction)


def _bd_rate_gap(
    anchor_rate: ArrayLike, anchor_quality: ArrayLike, test_rate: ArrayLike, test_quality: ArrayLike, method: str
) -> _BDGap:
    anchor = _validated_curve(anchor_rate, anchor_quality, "anchor")
    test = _validated_curve(test_rate, test_quality, "test")
    return _mean_gap(anchor.quality, anchor.log_rate, test.quality, test.log_rate, method, "quality")


def _bd_quality_gap(
    anchor_rate: ArrayLike, anchor_quality: ArrayLike, test_rate: ArrayLike, test_quality: ArrayLike, method: str
) -> _BDGap:
    anchor = _validated_curve(anchor_rate, anchor_quality, "anchor")
    test = _validated_curve(test_rate, test_quality, "test")
    return _mean_gap(anchor.log_rate, anchor.quality, test.log_rate, test.quality, method, "log10 rate")


def _percent(log_rate_gap: float) -> float:
    return (10.0**log_rate_gap - 1.0) * 100.0


def bd_rate(
    anchor_rate: ArrayLike,
    anchor_quality: ArrayLike,
    test_rate: ArrayLike,
    test_quality: ArrayLike,
    method: BDMethod = "pchip",
) -> float:
    """BD-rate in percent of the test curve against the anchor at equal quality
    (negative: the test codec saves bits). Raises BDError when it cannot be computed."""
    return _percent(_bd_rate_gap(anchor_rate, anchor_quality, test_rate, test_quality, method).mean_gap)


def bd_quality(
    anchor_rate: ArrayLike,
    anchor_quality: ArrayLike,
    test_rate: ArrayLike,
    test_quality: ArrayLike,
    method: BDMethod = "pchip",
) -> float:
    """BD-quality (e.g. BD-PSNR in dB) of the test curve against the anchor at equal rate
    (positive: the test codec is better). Raises BDError when it cannot be computed."""
    return _bd_quality_gap(anchor_rate, anchor_quality, test_rate, test_quality, method).mean_gap


# --- aggregation over per-image results -------------------------------------------------------

REQUIRED_COLUMNS: tuple[str, ...] = ("codec", "image", "rate", "bpp")


def _check_columns(df: pd.DataFrame, metric: str) -> None:
    missing = [c for c in (*REQUIRED_COLUMNS, metric) if c not in df.columns]
    if missing:
        raise BDError(f"results table lacks column(s) {', '.join(missing)}; it has {', '.join(map(str, df.columns))}")


def average_curve(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per codec and rate point: mean bpp and mean ``metric`` over images.

    A rate point is kept only when it has a finite bpp and metric for every image of the table
    (the union of images over all codecs), so that all curves average the same images.
    Columns: codec, rate, bpp, <metric>, n_images; sorted by codec then bpp.
    """
    _check_columns(df, metric)
    images = df["image"].unique()
    valid = df[np.isfinite(df["bpp"].astype(float)) & np.isfinite(df[metric].astype(float))]
    grouped = valid.groupby(["codec", "rate"], sort=False)
    curve = grouped.agg(bpp=("bpp", "mean"), quality=(metric, "mean"), n_images=("image", "nunique")).reset_index()
    curve = curve[curve["n_images"] == len(images)].rename(columns={"quality": metric})
    return curve.sort_values(["codec", "bpp"]).reset_index(drop=True)[["codec", "rate", "bpp", metric, "n_images"]]


@dataclass
class _CodecBD:
    """BD figures for one codec, or the reason they are missing."""

    bd_rate: float = np.nan
    bd_quality: float = np.nan
    n_points: int = 0
    n_images: int = 0
    overlap_fraction: float = np.nan
    note: str = ""


def _one_line(messages: list[str]) -> str:
    return "; ".join(dict.fromkeys(m for m in messages if m))


def _bd_pair(
    anchor: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], method: str
) -> tuple[float, float, float, list[str]]:
    """BD-rate, BD-quality, quality overlap fraction and the warning texts raised on the way."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BDOverlapWarning)
        rate_gap = _bd_rate_gap(anchor[0], anchor[1], test[0], test[1], method)
        quality_gap = _bd_quality_gap(anchor[0], anchor[1], test[0], test[1], method)
    messages = [str(w.message) for w in caught]
    return _percent(rate_gap.mean_gap), quality_gap.mean_gap, rate_gap.overlap_fraction, messages


def _bd_average_curve(
    curves: pd.DataFrame, anchor_curve: tuple[np.ndarray, np.ndarray], codec: str, metric: str, method: str
) -> _CodecBD:
    test = curves[curves["codec"] == codec]
    result = _CodecBD(n_points=len(test), n_images=int(test["n_images"].max()) if len(test) else 0)
    try:
        result.bd_rate, result.bd_quality, result.overlap_fraction, messages = _bd_pair(
            anchor_curve, (test["bpp"].to_numpy(), test[metric].to_numpy()), method
        )
        result.note = _one_line(messages)
    except BDError as error:
        result.note = str(error)
    return result


def _bd_per_image_mean(df: pd.DataFrame, anchor: str, codec: str, metric: str, method: str) -> _CodecBD:
    rate_values: list[float] = []
    quality_values: list[float] = []
    overlaps: list[float] = []
    points: list[int] = []
    failures: list[str] = []
    messages: list[str] = []
    images = sorted(df["image"].unique())
    for image in images:
        rows = df[df["image"] == image]
        anchor_rows = rows[rows["codec"] == anchor]
        test_rows = rows[rows["codec"] == codec]
        try:
            image_rate, image_quality, overlap, image_messages = _bd_pair(
                (anchor_rows["bpp"].to_numpy(), anchor_rows[metric].to_numpy()),
                (test_rows["bpp"].to_numpy(), test_rows[metric].to_numpy()),
                method,
            )
        except BDError as error:
            failures.append(f"{image}: {error}")
            continue
        rate_values.append(image_rate)
        quality_values.append(image_quality)
        overlaps.append(overlap)
        points.append(len(test_rows))
        messages.extend(f"{image}: {m}" for m in image_messages)
    result = _CodecBD(n_images=len(rate_values), n_points=min(points, default=0))
    if rate_values:
        result.bd_rate = float(np.mean(rate_values))
        result.bd_quality = float(np.mean(quality_values))
        result.overlap_fraction = float(np.mean(overlaps))
    if failures:
        failed = f"BD failed for {len(failures)}/{len(images)} images (excluded from the mean): "
        messages.insert(0, failed + "; ".join(failures))
    result.note = _one_line(messages)
    return result


def bd_table(
    df: pd.DataFrame,
    anchor: str,
    metric: str,
    method: BDMethod = "pchip",
    aggregation: Aggregation = "average-curve",
    anchor_curve: tuple[ArrayLike, ArrayLike] | None = None,
) -> pd.DataFrame:
    """BD-rate and BD-quality of every codec in ``df`` against ``anchor``, one row per codec.

    ``df`` holds per-image results (columns codec, image, rate, bpp and ``metric``).
    ``aggregation``: "average-curve" computes BD between the curves averaged over images
    (see ``average_curve``); "per-image-mean" averages per-image BD values, and images where BD
    cannot be computed are left out and counted in the note.
    ``anchor_curve=(bpp, quality)`` supplies the anchor directly (e.g. a published curve); then
    ``anchor`` is only its label, every codec in ``df`` is a test codec, and only
    "average-curve" is possible.
    A codec whose BD cannot be computed gets NaN values and the reason in the ``note`` column
    (which also carries overlap warnings); nothing is raised for one bad codec.
    """
    if method not in METHODS:
        raise BDError(f"unknown BD method {method!r}; choose one of {', '.join(METHODS)}")
    if aggregation not in AGGREGATIONS:
        raise BDError(f"unknown aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")
    _check_columns(df, metric)
    codecs = list(dict.fromkeys(df["codec"]))
    if anchor_curve is not None:
        if aggregation != "average-curve":
            raise BDError(
                "a supplied anchor_curve is an average over images; per-image-mean needs per-image anchor results"
            )
        anchor_bpp, anchor_quality = (np.asarray(values, dtype=float) for values in anchor_curve)
        test_codecs = codecs
    else:
        if anchor not in codecs:
            present = ", ".join(map(str, codecs))
            raise BDError(f"anchor codec {anchor!r} is not in the results; codecs present: {present}")
        test_codecs = [c for c in codecs if c != anchor]

    rows = []
    if aggregation == "average-curve":
        curves = average_curve(df, metric)
        if anchor_curve is None:
            anchor_rows = curves[curves["codec"] == anchor]
            anchor_bpp, anchor_quality = anchor_rows["bpp"].to_numpy(), anchor_rows[metric].to_numpy()
        for codec in test_codecs:
            result = _bd_average_curve(curves, (anchor_bpp, anchor_quality), codec, metric, method)
            rows.append((codec, result, len(anchor_bpp)))
    else:
        n_anchor_points = int(df[df["codec"] == anchor].groupby("image").size().min())
        for codec in test_codecs:
            rows.append((codec, _bd_per_image_mean(df, anchor, codec, metric, method), n_anchor_points))

    return pd.DataFrame(
        [
            {
                "codec": codec,
                "anchor": anchor,
                "metric": metric,
                "bd_rate": result.bd_rate,
                "bd_quality": result.bd_quality,
                "n_points": result.n_points,
                "n_anchor_points": n_anchor_points,
                "n_images": result.n_images,
                "overlap_fraction": result.overlap_fraction,
                "aggregation": aggregation,
                "method": method,
                "note": result.note,
            }
            for codec, result, n_anchor_points in rows
        ],
        columns=[
            "codec", "anchor", "metric", "bd_rate", "bd_quality", "n_points", "n_anchor_points",
            "n_images", "overlap_fraction", "aggregation", "method", "note",
        ],
    )
