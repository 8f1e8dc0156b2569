"""Pictures: aligned text tables and shaded heatmaps for the terminal, and PNG figures (needs matplotlib)."""

from __future__ import annotations

import numpy as np

from . import backend

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
        grid: array-like ``(rows, cols)`` (a backend array is copied to the host).
        title: printed above the grid.
    """
    grid = backend.to_numpy(grid).astype(float)
    if grid.ndim != 2:
        raise ValueError(f"heatmap: expected a 2-D grid, got shape {grid.shape}")
    lines = [title] if title else []
    for row in grid:
        lines.append("  " + " ".join(f"{v:4.2f}{shade(v) * 2}" for v in row))
    return "\n".join(lines)


# ------------------------------------------------------------ PNG figures (matplotlib, optional)


def pyplot():
    """Import matplotlib's pyplot with a file-only backend.

    Raises:
        ImportError: naming the extra to install when matplotlib is missing.
    """
    try:
        import matplotlib  # noqa: PLC0415 - optional dependency

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError("plots need matplotlib: pip install -e '.[plot]'") from exc
    return plt


def plot_heatmaps(path: str, grids: list, titles: list, row_labels=None, col_labels=None) -> None:
    """Save one panel per grid (values in ``[0, 1]``, e.g. gate density per patch) side by side as a PNG.

    ``row_labels`` and ``col_labels``, if given, name the rows (on the first
    panel) and the columns (on every panel); the grids must then share a shape.

    Raises:
        ValueError: if ``grids`` and ``titles`` differ in length or are empty.
    """
    if not grids or len(grids) != len(titles):
        raise ValueError(f"plot_heatmaps: got {len(grids)} grids and {len(titles)} titles")
    plt = pyplot()
    wide = 1.6 if row_labels is not None else 0.0  # room for the row names
    fig, axes = plt.subplots(1, len(grids), figsize=(3.2 * len(grids) + wide, 3.2 + 0.15 * len(row_labels or ())),
                             squeeze=False)
    for i, (ax, grid, title) in enumerate(zip(axes[0], grids, titles, strict=True)):
        im = ax.imshow(backend.to_numpy(grid).astype(float), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(col_labels)), col_labels, fontsize=7) if col_labels is not None else ax.set_xticks([])
        if row_labels is not None and i == 0:
            ax.set_yticks(range(len(row_labels)), row_labels, fontsize=7)
        else:
            ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="share of token updates applied")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_training(path: str, histories: dict) -> None:
    """Save mean density and each layer's ``tau`` over training steps, one line per method, as a PNG.

    Args:
        histories: ``{method: FitResult.history}`` of gated runs (records with ``density`` and ``tau``).
    """
    plt = pyplot()
    fig, (ax_d, ax_t) = plt.subplots(1, 2, figsize=(10, 3.5))
    for method, history in histories.items():
        steps = [h["step"] for h in history]
        line = ax_d.plot(steps, [h["density"] for h in history], label=method)[0]
        taus = np.array([h["tau"] for h in history])  # (steps, layers)
        ax_t.plot(steps, taus, color=line.get_color(), alpha=0.5, linewidth=0.8)
    ax_d.set(xlabel="step", ylabel="density (training batch)", ylim=(-0.02, 1.02), title="density")
    ax_t.set(xlabel="step", ylabel="tau", title="tau per gated layer")
    ax_d.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_tradeoff(path: str, points: list, dense_accuracy: float | None = None) -> None:
    """Save test accuracy against density, one point per ``(sparsity_weight, density, accuracy)``, as a PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([p[1] for p in points], [p[2] for p in points], "o-")
    for w, d, a in points:
        ax.annotate(f"{w:g}", (d, a), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if dense_accuracy is not None:
        ax.axhline(dense_accuracy, color="gray", linestyle="--", label="dense")
        ax.legend(fontsize=8)
    ax.set(xlabel="density of applied token updates", ylabel="test accuracy",
           title="accuracy vs density (labels: sparsity_weight)", xlim=(-0.02, 1.02))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
