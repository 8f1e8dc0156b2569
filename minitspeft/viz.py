"""Text pictures for the terminal: aligned tables and shaded heatmaps of gate density."""

from __future__ import annotations

import numpy as np

SHADES = " .:-=+*#%@"


def format_table(headers: list, rows: list, align: str | None = None) -> str:
    """Render ``rows`` (lists of already-formatted strings) under ``headers`` as aligned columns.

    Args:
        headers: column titles.
        rows: one list of cell strings per row, as long as ``headers``.
        align: one character per column, ``"l"`` or ``"r"`` (default: first
            column left, the rest right).

    Raises:
        ValueError: if a row's length differs from the headers'.
    """
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"format_table: row {row} has {len(row)} cells for {len(headers)} headers")
    align = align or "l" + "r" * (len(headers) - 1)
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]

    def line(cells):
        cells = zip(cells, widths, align, strict=True)
        return "  ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w) for c, w, a in cells)

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def shade(value: float) -> str:
    """One character whose darkness grows with ``value`` in ``[0, 1]`` (NaN prints as ``?``)."""
    if not np.isfinite(value):
        return "?"
    return SHADES[int(round(float(np.clip(value, 0, 1)) * (len(SHADES) - 1)))]


def heatmap(grid, title: str = "") -> str:
    """A 2-D array of values in ``[0, 1]`` as rows of numbers, each followed by its shade.

    Args:
        grid: array-like ``(rows, cols)``.
        title: printed above the grid.
    """
    grid = np.asarray(grid, dtype=float)
    if grid.ndim != 2:
        raise ValueError(f"heatmap: expected a 2-D grid, got shape {grid.shape}")
    lines = [title] if title else []
    for row in grid:
        lines.append("  " + " ".join(f"{v:4.2f}{shade(v) * 2}" for v in row))
    return "\n".join(lines)
