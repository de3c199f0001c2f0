"""Confusion-matrix figure."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from falign.plots import _style

if TYPE_CHECKING:
    from falign.analysis.classification import ClassificationReport

__all__ = ["plot_confusion_matrix"]


def _as_array(report_or_matrix: Any) -> np.ndarray:
    matrix = getattr(report_or_matrix, "confusion", report_or_matrix)
    if hasattr(matrix, "detach"):
        matrix = matrix.detach().cpu().numpy()
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {matrix.shape}")
    return matrix


def plot_confusion_matrix(
    report_or_matrix: ClassificationReport | Any,
    class_names: Sequence[str] | None,
    path_stem: str | os.PathLike[str],
    title: str = "Confusion matrix",
    *,
    normalize: bool = False,
    annotate: bool | None = None,
) -> list[Path]:
    """Heatmap of a (C, C) confusion matrix, rows = true class, columns = predicted class.

    ``report_or_matrix`` is a `ClassificationReport` or a matrix (tensor, array, nested list).
    ``class_names`` defaults to the report's names, else 0..C-1. ``normalize`` divides each row
    by its support (the diagonal then reads as per-class recall). Cells are annotated when
    ``annotate`` is True, or by default for at most 20 classes. Writes ``path_stem``.png and .pdf
    and returns their paths.
    """
    counts = _as_array(report_or_matrix)
    c = counts.shape[0]
    if class_names is None:
        class_names = getattr(report_or_matrix, "class_names", None) or [str(i) for i in range(c)]
    if len(class_names) != c:
        raise ValueError(f"{len(class_names)} class names for a {c}-class matrix")
    if normalize:
        rows = counts.sum(1, keepdims=True).astype(np.float64)
        values = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
        fmt, bar_label, vmax = ".2f", "Fraction of the true class", 1.0
    else:
        values = counts.astype(np.float64)
        integral = bool(np.allclose(values, np.round(values)))
        fmt, bar_label = ("d" if integral else ".3g"), "Examples (count)"
        vmax = max(float(values.max()), 1.0)
        if integral:
            values = values.round().astype(np.int64)
    if annotate is None:
        annotate = c <= 20

    import matplotlib
    from matplotlib.colors import Normalize

    side = min(max(3.5, 0.45 * c + 1.8), 14.0)
    with _style.style_context():
        fig = _style.new_figure(side + 1.0, side)
        ax = fig.add_subplot()
        cmap = matplotlib.colormaps[_style.HEATMAP_CMAP]
        norm = Normalize(vmin=0.0, vmax=vmax)
        image = ax.imshow(values, cmap=cmap, norm=norm, interpolation="nearest")
        ax.set_xticks(range(c), labels=list(class_names), rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(c), labels=list(class_names))
        ax.set_xlabel("Predicted class")
        ax.set_ylabel("True class")
        ax.set_title(title)
        ax.spines[:].set_visible(False)
        if annotate:
            _style.annotate_cells(ax, values.tolist(), fmt, cmap, norm)
        bar = fig.colorbar(image, ax=ax, label=bar_label, shrink=0.85)
        if fmt == "d":
            from matplotlib.ticker import MaxNLocator

            bar.locator = MaxNLocator(integer=True)
            bar.update_ticks()
        return _style.save_figure(fig, path_stem)
