"""Figure helpers shared by the leaderboard, sweep report, analysis and benchmarks."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .files import atomic_path


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, png: Path, dpi: int = 120) -> None:
    """Write ``fig`` to ``png`` atomically (a temporary file of its own, so concurrent jobs
    rendering the same figure never share one) and close it."""
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)


def annotated_heatmap(
    grid: Sequence[Sequence[float]],
    xs: Sequence[Any],
    ys: Sequence[Any],
    *,
    xlabel: str,
    ylabel: str,
    label: str,
    title: str,
    png: Path,
    fmt: str = "{:.1f}",
    cmap: str = "viridis",
) -> None:
    """A heatmap with its value written in every cell (NaN cells stay empty)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(xs) + 2), max(2.5, 0.7 * len(ys) + 1.5)))
    im = ax.imshow(grid, origin="lower", cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_yticks(range(len(ys)), [str(y) for y in ys])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if value == value:
                ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=7, color="white")
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(textwrap.fill(title, 48), fontsize=8)  # wrapped: small grids make narrow figures
    save(fig, png)
