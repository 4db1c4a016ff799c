"""Matplotlib figures for the HTML report, returned as base64 PNG data URIs so that the page
needs no other file. Figures are built with the object API on the Agg canvas: no pyplot global
state, no display needed."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Colours of the run's codecs (matplotlib's tab10 then tab20b); published curves get the dark ones.
RUN_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
    "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173",
)
PUBLISHED_COLOURS = ("#000000", "#555555", "#7f3f00", "#003f5c")
FIGURE_SIZE = (5.6, 4.2)  # inches
DPI = 110
X_MARGIN = 0.05  # fraction of the run's bpp span shown beyond its ends


@dataclass(frozen=True)
class Series:
    """One rate-distortion curve to draw."""

    label: str
    bpp: Sequence[float]
    quality: Sequence[float]
    colour: str
    published: bool = False


def colour_map(labels: Sequence[str], palette: Sequence[str] = RUN_COLOURS) -> dict[str, str]:
    """A fixed colour per label, so that a codec has the same colour in every figure."""
    return {label: palette[i % len(palette)] for i, label in enumerate(labels)}


def data_uri(figure: Figure) -> str:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def rd_plot(series: Sequence[Series], quality_label: str, title: str) -> str:
    """Quality against bpp; published curves dashed. The axes frame the run's own curves, since a
    published curve often spans a much wider range (VTM: 0.03 to 2.8 bpp on Kodak)."""
    figure = Figure(figsize=FIGURE_SIZE, layout="constrained")
    axes = figure.add_subplot()
    measured = [s for s in series if not s.published and len(s.bpp)]
    window = _bpp_window(measured or [s for s in series if len(s.bpp)])
    visible_quality: list[float] = []
    for item in series:
        bpp, quality = np.asarray(item.bpp, dtype=float), np.asarray(item.quality, dtype=float)
        if not bpp.size:
            continue
        axes.plot(
            bpp,
            quality,
            linestyle="--" if item.published else "-",
            marker=None if item.published else "o",
            markersize=3.5,
            linewidth=1.4,
            color=item.colour,
            label=item.label,
        )
        if window is not None:
            inside = (bpp >= window[0]) & (bpp <= window[1])
            visible_quality.extend(quality[inside & np.isfinite(quality)])
    if window is not None:
        axes.set_xlim(*window)
    if visible_quality:
        low, high = min(visible_quality), max(visible_quality)
        pad = 0.05 * (high - low or 1.0)
        axes.set_ylim(low - pad, high + pad)
    axes.set_xlabel("bits per pixel")
    axes.set_ylabel(quality_label)
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    if series:
        figure.legend(fontsize=7, loc="outside lower center", ncols=2)
    else:
        axes.text(0.5, 0.5, "no complete rate points", ha="center", va="center", transform=axes.transAxes)
    return data_uri(figure)


def _bpp_window(series: Sequence[Series]) -> tuple[float, float] | None:
    values = np.concatenate([np.asarray(s.bpp, dtype=float) for s in series]) if series else np.array([])
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    low, high = float(values.min()), float(values.max())
    margin = X_MARGIN * (high - low or high)
    return max(0.0, low - margin), high + margin


def history_plot(entries: Sequence[dict[str, Any]], metric: str, colours: dict[str, str] | None = None) -> str:
    """BD-rate of each codec over the checks in ``entries`` (``licbench check`` history lines);
    a codec's point is a red cross where that check flagged it as a regression, and a failed
    check is a red vertical line (a codec without a BD-rate has no point to mark).
    ``colours`` keeps the codecs' colours of the other figures."""
    figure = Figure(figsize=(FIGURE_SIZE[0] * 1.6, FIGURE_SIZE[1]), layout="constrained")
    axes = figure.add_subplot()
    times = [datetime.fromisoformat(entry["time"]) for entry in entries]
    codecs = sorted({codec for entry in entries for codec in entry["bd_rate"]})
    colours = {**colour_map(codecs), **(colours or {})}
    for time, entry in zip(times, entries):
        if not entry.get("passed", True):
            axes.axvline(time, color="red", alpha=0.3, linewidth=2)
    for codec in codecs:
        points = [
            (time, entry["bd_rate"][codec], codec in entry.get("regressions", []))
            for time, entry in zip(times, entries)
            if entry["bd_rate"].get(codec) is not None
        ]
        if not points:
            continue
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=4, color=colours[codec], label=codec)
        flagged = [p for p in points if p[2]]
        if flagged:
            axes.plot([p[0] for p in flagged], [p[1] for p in flagged], linestyle="none", marker="X", markersize=9, color="red")
    axes.axhline(0.0, color="grey", linewidth=0.8)
    axes.set_ylabel(f"BD-rate on {metric} (%)")
    axes.set_title("BD-rate at each licbench check (red: failed check, cross: regressed codec)", fontsize=10)
    axes.grid(True, alpha=0.3)
    figure.autofmt_xdate()
    if codecs:
        axes.legend(fontsize=7)
    return data_uri(figure)
