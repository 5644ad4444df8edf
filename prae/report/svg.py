"""Line charts as inline SVG: pure string building, no plotting library, so the report needs
nothing beyond the engine's own dependencies and opens offline in any browser."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


@dataclass(frozen=True)
class Line:
    label: str
    x: np.ndarray
    y: np.ndarray
    step: bool = False  # a held amount: drawn as steps, not slopes


@dataclass(frozen=True)
class Band:
    label: str
    x: np.ndarray
    low: np.ndarray
    high: np.ndarray


def nice_ticks(hi: float, n: int = 5) -> list[float]:
    """0 and round steps up to at least ``hi``: 0, 0.5, 1.0... Worked number: hi 3.7 -> step 1."""
    if not hi > 0 or not math.isfinite(hi):
        return [0.0, 1.0]
    raw = hi / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(math.ceil(hi / step - 1e-9)) + 1)]


def _fmt(v: float) -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:g}{suffix}"
    return f"{v:g}"


def line_chart(
    title: str, lines: Sequence[Line], band: Band | None = None, width: int = 640, height: int = 236
) -> str:
    """An SVG chart of ``lines`` (and a shaded ``band``) over a shared x axis in seconds."""
    left, right, top, bottom = 56, 12, 42, 36  # the legend sits between the title and the plot
    pw, ph = width - left - right, height - top - bottom
    xs = [s.x for s in lines if len(s.x)] + ([band.x] if band is not None and len(band.x) else [])
    ys = [s.y for s in lines if len(s.y)] + ([band.high] if band is not None and len(band.high) else [])
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(title)}"><title>{html.escape(title)}</title>',
        f'<text x="{left}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>',
    ]
    if not xs:
        out.append(f'<text x="{left}" y="{top + ph / 2}" font-size="12">no data</text></svg>')
        return "".join(out)
    x0 = min(float(np.nanmin(x)) for x in xs)
    x1 = max(float(np.nanmax(x)) for x in xs)
    finite = [float(np.nanmax(y)) for y in ys if np.isfinite(y).any()]
    yt = nice_ticks(max(finite) if finite else 1.0)
    y1 = yt[-1]
    span = (x1 - x0) or 1.0

    def px(x: np.ndarray) -> np.ndarray:
        return left + (np.asarray(x, float) - x0) / span * pw

    def py(y: np.ndarray) -> np.ndarray:
        return top + ph - np.asarray(y, float) / y1 * ph

    for t in yt:
        yy = float(py(np.array(t)))
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 4}" y="{yy + 4:.1f}" font-size="10" text-anchor="end">{_fmt(t)}</text>')
    for t in nice_ticks(x1 - x0):
        if t > x1 - x0:
            break
        xx = float(px(np.array(x0 + t)))
        out.append(f'<text x="{xx:.1f}" y="{top + ph + 14}" font-size="10" text-anchor="middle">{_fmt(t)}</text>')
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 4}" font-size="10" text-anchor="middle">seconds since the start</text>'
    )
    if band is not None and len(band.x):
        ok = np.isfinite(band.low) & np.isfinite(band.high)
        bx, lo, hi = px(band.x[ok]), py(band.low[ok]), py(band.high[ok])
        pts = [f"{a:.1f},{b:.1f}" for a, b in zip(bx, hi, strict=True)]
        pts += [f"{a:.1f},{b:.1f}" for a, b in zip(bx[::-1], lo[::-1], strict=True)]
        out.append(f'<polygon class="band" points="{" ".join(pts)}" fill="#1f77b4" fill-opacity="0.15" stroke="none"/>')
    legend = [(band.label, "#1f77b4", True)] if band is not None else []
    for i, s in enumerate(lines):
        colour = COLOURS[i % len(COLOURS)]
        ok = np.isfinite(s.y)
        x, y = px(s.x[ok]), py(s.y[ok])
        if s.step and len(x) > 1:
            x, y = np.repeat(x, 2)[1:], np.repeat(y, 2)[:-1]
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(x, y, strict=True))
        out.append(f'<polyline class="series" points="{pts}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        legend.append((s.label, colour, False))
    for i, (label, colour, area) in enumerate(legend):
        lx = left + 8 + 150 * i
        mark = (
            f'<rect x="{lx}" y="24" width="14" height="8" fill="{colour}" fill-opacity="0.15"/>'
            if area
            else f'<line x1="{lx}" x2="{lx + 14}" y1="28" y2="28" stroke="{colour}" stroke-width="2"/>'
        )
        out.append(mark + f'<text x="{lx + 18}" y="32" font-size="10">{html.escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)
