"""The dose sweep's plot, drawn with Pillow: output noise ÷ HD noise against LD noise, the acceptance band marked.

Why Pillow and not matplotlib: the plot is a few lines on two linear axes, and Pillow is already the trainer's
dependency for montages; one more plotting library (and its licence row and pins) would buy nothing here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 820, 480
LEFT, RIGHT, TOP, BOTTOM = 70, 260, 40, 56  # margins around the plotting area, px (legend on the right)
COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207))
BAND_FILL = (222, 242, 222)
GRID = (225, 225, 225)
INK = (30, 30, 30)

Curve = Sequence[tuple[float, float]]  # (LD noise HU, ratio) points


def _nice_step(span: float, ticks: int = 6) -> float:
    """A 1-2-5 step that gives about ``ticks`` ticks over ``span``."""
    raw = span / max(1, ticks)
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def _ranges(curves: Mapping[str, Curve], band: tuple[float, float]) -> tuple[float, float, float, float]:
    xs = [x for c in curves.values() for x, _ in c if math.isfinite(x)] or [0.0, 1.0]
    ys = [y for c in curves.values() for _, y in c if math.isfinite(y)] or [1.0]
    x_step = _nice_step(max(xs) - min(xs) or 1.0)
    x0, x1 = math.floor(min(xs) / x_step) * x_step, math.ceil(max(xs) / x_step) * x_step
    y1 = max(band[1] * 1.25, max(ys) * 1.1)
    return x0, max(x1, x0 + x_step), 0.0, y1


def save_sweep_plot(
    path: Path,
    curves: Mapping[str, Curve],
    *,
    band: tuple[float, float] = (0.8, 1.2),
    title: str = "Dose sweep: output noise / HD noise (soft tissue, against the noise-free REF)",
) -> None:
    """A PNG line chart: x = measured LD noise (HU), y = output noise ÷ HD noise, one line per method, the band
    shaded and y = 1 dashed."""
    image = Image.new("RGB", (WIDTH, HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)  # the default font has no ÷ or ×: the labels are ASCII
    x0, x1, y0, y1 = _ranges(curves, band)
    right, bottom = WIDTH - RIGHT, HEIGHT - BOTTOM

    def px(x: float, y: float) -> tuple[float, float]:
        return LEFT + (x - x0) / (x1 - x0) * (right - LEFT), bottom - (y - y0) / (y1 - y0) * (bottom - TOP)

    draw.rectangle((*px(x0, band[1]), *px(x1, band[0])), fill=BAND_FILL)
    for x in _ticks(x0, x1):
        draw.line((*px(x, y0), *px(x, y1)), fill=GRID)
        draw.text(px(x, y0), f"{x:g}", fill=INK, font=font, anchor="mt")
    for y in _ticks(y0, y1):
        draw.line((*px(x0, y), *px(x1, y)), fill=GRID)
        draw.text((LEFT - 6, px(x0, y)[1]), f"{y:g}", fill=INK, font=font, anchor="rm")
    _dashed(draw, px(x0, 1.0), px(x1, 1.0))
    draw.text(
        (right - 4, px(x1, band[1])[1] + 3), f"{band[0]:g}-{band[1]:g} x HD", fill=(60, 120, 60), font=font, anchor="ra"
    )
    draw.rectangle((LEFT, TOP, right, bottom), outline=INK)
    for i, (name, curve) in enumerate(curves.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = [px(x, y) for x, y in curve if math.isfinite(x) and math.isfinite(y)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for cx, cy in points:
            draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill=colour)
        ly = TOP + 8 + 18 * i
        draw.line((right + 12, ly, right + 32, ly), fill=colour, width=2)
        draw.text((right + 38, ly), name, fill=INK, font=font, anchor="lm")
    draw.text((WIDTH // 2, 12), title, fill=INK, font=font, anchor="mt")
    draw.text(
        ((LEFT + right) / 2, HEIGHT - 18),
        "LD noise, HU (std of LD - REF in soft tissue, measured)",
        fill=INK,
        font=font,
        anchor="mm",
    )
    draw.text((8, TOP - 20), "output noise / HD noise", fill=INK, font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)


def _ticks(lo: float, hi: float) -> list[float]:
    step = _nice_step(hi - lo)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _dashed(draw: ImageDraw.ImageDraw, start: tuple[float, float], end: tuple[float, float], dash: int = 8) -> None:
    """A horizontal dashed line (y = 1: output noise equal to HD's)."""
    (xa, y), (xb, _) = start, end
    x = xa
    while x < xb:
        draw.line((x, y, min(x + dash, xb), y), fill=INK, width=1)
        x += 2 * dash
