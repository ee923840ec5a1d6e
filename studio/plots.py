"""Small line charts drawn with PIL: the Generate tab's weight-per-step plot and the bench figures.

matplotlib is not a dependency; a chart of a few lines over a few dozen steps needs only axes,
ticks, a zero line and a legend. Pure function of its inputs: same data, same pixels.

Why not gr.LinePlot for the tabs' charts (the weight plan, the NTI loss, the inversion error): one function draws
them and the committed bench figures alike, so a tab shows exactly the figure a bench writes, and the tests check
the images it draws; the charts are redrawn whole on each change (none is zoomed or hovered), which a PIL image
does without shipping a per-update DataFrame to Vega in the browser.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")
_GRID, _AXIS, _TEXT = (228, 228, 228), (120, 120, 120), (40, 40, 40)


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2, 5 x 10^k steps)."""
    span = high - low or 1.0
    raw = span / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int(math.ceil((high - first) / step)) + 1)]


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-9 else "0"


def line_chart(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    x_label: str = "",
    y_label: str = "",
    title: str = "",
    size: tuple[int, int] = (520, 220),
    markers: bool = False,
    y_range: tuple[float, float] | None = None,
) -> Image.Image:
    """Plot each named (xs, ys) series as a coloured line; the legend lists the names under the axes.
    The y label heads the chart (after the title); `size` is the plot's, the legend adds a row per series.
    The y axis spans `y_range` when given (e.g. 0-100 for percentages), else the data and 0."""
    font = ImageFont.load_default(size=11)
    width, plot_height = size
    names = list(series)
    legend_rows = len(names)
    height = plot_height + 16 * legend_rows + 6
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    xs_all = [float(x) for xs, _ in series.values() for x in xs] or [0.0, 1.0]
    ys_all = [float(y) for _, ys in series.values() for y in ys if math.isfinite(float(y))] or [0.0]
    x_low, x_high = min(xs_all), max(xs_all)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    y_ticks = _nice_ticks(*(y_range or (min(0.0, *ys_all), max(0.0, *ys_all))))
    y_low, y_high = y_ticks[0], y_ticks[-1]
    if y_high == y_low:
        y_high = y_low + 1

    left, right, top, bottom = 48, width - 12, 20 if (title or y_label) else 8, plot_height - 34

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_low) / (x_high - x_low) * (right - left), bottom - (y - y_low) / (y_high - y_low) * (bottom - top))

    header = " · ".join(text for text in (title, y_label) if text)
    if header:
        draw.text((left, 3), header, fill=_TEXT, font=font)
    for tick in y_ticks:
        _, y = px(x_low, tick)
        draw.line([(left, y), (right, y)], fill=_AXIS if abs(tick) < 1e-12 else _GRID, width=1)
        draw.text((left - 6, y), _label(tick), fill=_TEXT, font=font, anchor="rm")
    for tick in _nice_ticks(x_low, x_high, 6):
        if x_low - 1e-9 <= tick <= x_high + 1e-9:
            x, _ = px(tick, y_low)
            draw.line([(x, bottom), (x, bottom + 3)], fill=_AXIS)
            draw.text((x, bottom + 5), _label(tick), fill=_TEXT, font=font, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline=_AXIS)
    if x_label:
        draw.text(((left + right) / 2, bottom + 18), x_label, fill=_TEXT, font=font, anchor="mt")

    for index, name in enumerate(names):
        colour = PALETTE[index % len(PALETTE)]
        xs, ys = series[name]
        points = [px(float(x), float(y)) for x, y in zip(xs, ys) if math.isfinite(float(y))]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2, joint="curve")
        if markers or len(points) == 1:
            for x, y in points:
                draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=colour)
        row_y = plot_height + 2 + 16 * index
        draw.rectangle([left, row_y + 4, left + 14, row_y + 8], fill=colour)
        text = name if len(name) <= 70 else name[:67] + "…"
        draw.text((left + 20, row_y), text, fill=_TEXT, font=font)
    return image


def side_by_side(charts: list[Image.Image]) -> Image.Image:
    """Charts in one row, top-aligned on white: the figure a benchmark commits."""
    canvas = Image.new("RGB", (sum(chart.width for chart in charts), max(chart.height for chart in charts)), "white")
    x = 0
    for chart in charts:
        canvas.paste(chart, (x, 0))
        x += chart.width
    return canvas
