"""Small PNG charts with Pillow (matplotlib is not a dependency): line charts over categorical x
(concurrency levels, evenly spaced) and grouped bar charts. Missing values (None) leave gaps."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
WIDTH, HEIGHT = 720, 440
MARGIN = {"left": 78, "right": 20, "top": 46, "bottom": 62}


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def nice_ticks(high: float, count: int = 5) -> list[float]:
    """0 .. >= high in steps of 1, 2 or 5 x 10^k."""
    if not high or high <= 0 or math.isnan(high):
        high = 1.0
    raw = high / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    ticks = [0.0]
    while ticks[-1] < high - 1e-12:
        ticks.append(ticks[-1] + step)
    return ticks


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{value:.2g}"


def _frame(title: str, x_title: str, y_title: str, ticks: list[float], x_labels: list[str], slot_centers: list[float]):
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font, small, big = _font(13), _font(11), _font(16)
    left, right = MARGIN["left"], WIDTH - MARGIN["right"]
    top, bottom = MARGIN["top"], HEIGHT - MARGIN["bottom"]
    draw.text((WIDTH / 2, 14), title, fill="black", font=big, anchor="mt")
    y_max = ticks[-1]

    def y_of(value: float) -> float:
        return bottom - (bottom - top) * (value / y_max if y_max else 0)

    for tick in ticks:
        y = y_of(tick)
        draw.line([(left, y), (right, y)], fill="#e6e6e6")
        draw.text((left - 6, y), _label(tick), fill="black", font=small, anchor="rm")
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=1)
    for x, text in zip(slot_centers, x_labels):
        draw.line([(x, bottom), (x, bottom + 4)], fill="black")
        draw.text((x, bottom + 7), text, fill="black", font=small, anchor="mt")
    draw.text(((left + right) / 2, HEIGHT - 18), x_title, fill="black", font=font, anchor="ms")
    # vertical y title
    label = Image.new("RGBA", (bottom - top, 18), (255, 255, 255, 0))
    ImageDraw.Draw(label).text(((bottom - top) / 2, 9), y_title, fill="black", font=font, anchor="mm")
    rotated = label.rotate(90, expand=True)
    image.paste(rotated, (6, top), rotated)
    return image, draw, y_of


def _legend(draw, names: list[str]) -> None:
    font = _font(12)
    x, y = MARGIN["left"] + 10, MARGIN["top"] + 6
    for i, name in enumerate(names):
        color = COLORS[i % len(COLORS)]
        draw.rectangle([x, y + 3, x + 14, y + 11], fill=color)
        draw.text((x + 20, y + 7), name, fill="black", font=font, anchor="lm")
        y += 17


def _slots(count: int) -> list[float]:
    left, right = MARGIN["left"], WIDTH - MARGIN["right"]
    width = (right - left) / max(count, 1)
    return [left + width * (i + 0.5) for i in range(count)]


def line_chart(path: str | Path, title: str, x_labels: list, series: dict[str, list], x_title: str = "concurrency",
               y_title: str = "") -> Path:
    x_labels = [str(x) for x in x_labels]
    values = [v for ys in series.values() for v in ys if v is not None and not math.isnan(v)]
    ticks = nice_ticks(max(values) * 1.08 if values else 1.0)
    centers = _slots(len(x_labels))
    image, draw, y_of = _frame(title, x_title, y_title, ticks, x_labels, centers)
    for i, (name, ys) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        points = [(centers[j], y_of(v)) if v is not None and not math.isnan(v) else None for j, v in enumerate(ys)]
        for a, b in zip(points, points[1:]):
            if a and b:
                draw.line([a, b], fill=color, width=2)
        for p in points:
            if p:
                draw.ellipse([p[0] - 3.5, p[1] - 3.5, p[0] + 3.5, p[1] + 3.5], fill=color)
    _legend(draw, list(series))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=True)
    return path


def bar_chart(path: str | Path, title: str, categories: list, series: dict[str, list], x_title: str = "",
              y_title: str = "") -> Path:
    categories = [str(c) for c in categories]
    values = [v for ys in series.values() for v in ys if v is not None and not math.isnan(v)]
    ticks = nice_ticks(max(values) * 1.08 if values else 1.0)
    centers = _slots(len(categories))
    image, draw, y_of = _frame(title, x_title, y_title, ticks, categories, centers)
    slot = (WIDTH - MARGIN["left"] - MARGIN["right"]) / max(len(categories), 1)
    bar = slot * 0.8 / max(len(series), 1)
    bottom = y_of(0)
    for i, (name, ys) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        for j, v in enumerate(ys):
            if v is None or math.isnan(v):
                continue
            x0 = centers[j] - slot * 0.4 + i * bar
            draw.rectangle([x0 + 1, y_of(v), x0 + bar - 1, bottom], fill=color)
    _legend(draw, list(series))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=True)
    return path
