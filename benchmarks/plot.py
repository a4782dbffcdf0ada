"""PNG charts with matplotlib (Agg, no display): line charts over categorical x (concurrency levels,
evenly spaced) and grouped bar charts. Missing values (None, NaN) leave gaps."""

from __future__ import annotations

import math
from pathlib import Path


def _figure(title: str, x_title: str, y_title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import textwrap

    figure, axes = plt.subplots(figsize=(7.2, 4.4), dpi=100)
    axes.set_title("\n".join(textwrap.wrap(title, 80)), fontsize=10)
    axes.set_xlabel(x_title)
    axes.set_ylabel(y_title)
    axes.grid(axis="y", alpha=0.3)
    return plt, figure, axes


def _values(ys: list) -> list[float]:
    return [math.nan if v is None else float(v) for v in ys]


def _save(plt, figure, axes, path: str | Path, legend: bool) -> Path:
    axes.set_ylim(bottom=0)
    if legend:
        axes.legend(fontsize=8, loc="best")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
    return path


def line_chart(path: str | Path, title: str, x_labels: list, series: dict[str, list], x_title: str = "concurrency",
               y_title: str = "") -> Path:
    plt, figure, axes = _figure(title, x_title, y_title)
    positions = list(range(len(x_labels)))
    for name, ys in series.items():
        axes.plot(positions, _values(ys), marker="o", markersize=4, label=name)
    axes.set_xticks(positions, [str(x) for x in x_labels], fontsize=7 if len(x_labels) > 12 else 10)
    return _save(plt, figure, axes, path, legend=bool(series))


def bar_chart(path: str | Path, title: str, categories: list, series: dict[str, list], x_title: str = "",
              y_title: str = "") -> Path:
    plt, figure, axes = _figure(title, x_title, y_title)
    width = 0.8 / max(len(series), 1)
    for i, (name, ys) in enumerate(series.items()):
        offsets = [j - 0.4 + (i + 0.5) * width for j in range(len(categories))]
        axes.bar(offsets, _values(ys), width=width * 0.95, label=name)
    axes.set_xticks(list(range(len(categories))), [str(c) for c in categories])
    return _save(plt, figure, axes, path, legend=bool(series))
