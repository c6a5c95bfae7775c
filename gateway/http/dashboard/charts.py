"""Inline SVG charts drawn on the server: readable with scripts off, no chart library."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

WIDTH, HEIGHT = 720, 180
PAD_LEFT, PAD_BOTTOM, PAD_TOP = 64, 22, 10


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: Decimal


@dataclass(frozen=True, slots=True)
class BarChart:
    bars: list[Bar]
    peak: Decimal
    first: str
    last: str
    width: int = WIDTH
    height: int = HEIGHT
    left: int = PAD_LEFT
    baseline: float = HEIGHT - PAD_BOTTOM


def bar_chart(points: list[tuple[str, Decimal]]) -> BarChart:
    """One bar per point, scaled to the largest value (all zero: flat bars)."""
    peak = max((value for _, value in points), default=Decimal(0))
    plot_w = WIDTH - PAD_LEFT - 4
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    step = plot_w / max(len(points), 1)
    bars = []
    for i, (label, value) in enumerate(points):
        h = float(value / peak) * plot_h if peak > 0 else 0.0
        bars.append(Bar(x=round(PAD_LEFT + i * step + step * 0.1, 2),
                        y=round(HEIGHT - PAD_BOTTOM - h, 2), width=round(step * 0.8, 2),
                        height=round(h, 2), label=label, value=value))
    return BarChart(bars, peak, points[0][0] if points else "", points[-1][0] if points else "")
