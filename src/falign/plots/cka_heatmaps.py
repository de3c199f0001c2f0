"""CKA heatmaps: one panel per comparison, one shared colour scale."""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from falign.plots import _style

if TYPE_CHECKING:
    from falign.analysis.cka import CKAResult

__all__ = ["plot_cka_heatmaps"]


def plot_cka_heatmaps(
    results: Mapping[str, CKAResult],
    path_stem: str | os.PathLike[str],
    title: str = "CKA between layers",
    *,
    xlabel: str = "Layer of model B",
    ylabel: str = "Layer of model A",
    annotate: bool = True,
    ncols: int | None = None,
) -> list[Path]:
    """One heatmap per entry of ``results`` (panel title: key and n), shared colorbar.

    Rows are ``layers_a``, columns ``layers_b``. The colour scale runs from 0 (or the lowest
    value, if a minibatch estimate went negative) to 1. A result with ``skipped`` set is shown
    as a panel stating the reason. Writes ``path_stem``.png and .pdf and returns their paths.
    """
    if not results:
        raise ValueError("no CKA results to plot")
    entries = list(results.items())
    mats = {}
    for key, res in entries:
        matrix = res.matrix
        matrix = matrix.detach().cpu().numpy() if hasattr(matrix, "detach") else matrix
        mats[key] = np.asarray(matrix, dtype=np.float64)
    finite = [m[np.isfinite(m)] for m in mats.values()]
    lowest = min((float(f.min()) for f in finite if f.size), default=0.0)
    kernels = {getattr(res, "kernel", "linear") for _, res in entries}
    kernel = kernels.pop() if len(kernels) == 1 else None
    bar_label = f"{kernel.capitalize() + ' ' if kernel else ''}CKA (dimensionless)"

    ncols = ncols or min(len(entries), 3)
    nrows = math.ceil(len(entries) / ncols)
    n_a = max(len(res.layers_a) for _, res in entries)
    n_b = max(len(res.layers_b) for _, res in entries)
    panel_w = min(max(2.8, 0.55 * n_b + 1.4), 8.0)
    panel_h = min(max(2.6, 0.5 * n_a + 1.4), 8.0)

    import matplotlib
    from matplotlib.colors import Normalize

    cmap = matplotlib.colormaps[_style.HEATMAP_CMAP].with_extremes(bad="#DDDDDD")
    norm = Normalize(vmin=min(0.0, lowest), vmax=1.0)
    with _style.style_context():
        fig = _style.new_figure(panel_w * ncols + 1.2, panel_h * nrows + 0.5)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        image = None
        for ax, (key, res) in zip(axes[: len(entries)], entries, strict=True):
            ax.set_title(f"{key} (n={res.n})")
            skipped = getattr(res, "skipped", None)
            if skipped:
                ax.text(
                    0.5,
                    0.5,
                    "\n".join(textwrap.wrap(f"skipped: {skipped}", 30)),
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                )
                ax.set_axis_off()
                continue
            values = mats[key]
            image = ax.imshow(values, cmap=cmap, norm=norm, interpolation="nearest", aspect="auto")
            ax.set_xticks(
                range(len(res.layers_b)),
                labels=list(res.layers_b),
                rotation=45,
                ha="right",
                rotation_mode="anchor",
            )
            ax.set_yticks(range(len(res.layers_a)), labels=list(res.layers_a))
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.spines[:].set_visible(False)
            if annotate:
                _style.annotate_cells(ax, values.tolist(), ".2f", cmap, norm)
        for ax in axes[len(entries) :]:
            ax.set_axis_off()
        if image is None:  # every panel skipped: still show the scale
            from matplotlib.cm import ScalarMappable

            image = ScalarMappable(norm=norm, cmap=cmap)
        fig.colorbar(image, ax=list(axes), label=bar_label, shrink=0.85)
        if title:
            fig.suptitle(title)
        return _style.save_figure(fig, path_stem)
