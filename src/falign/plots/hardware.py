"""Accuracy and alignment angle against the value of one hardware constraint of the feedback
path (``falign reproduce hardware-feedback``). matplotlib is imported inside the function."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from falign.plots import _style
from falign.plots.training import NothingToPlot

#: one point: (mean, std) over seeds, or None where nothing was measured
Point = tuple[float, float] | None


def plot_transform_axis(
    values: Sequence[str],
    accuracy: Mapping[str, Sequence[Point]],
    angle: Mapping[str, Sequence[Point]],
    path: str | os.PathLike[str],
    *,
    title: str,
    xlabel: str,
) -> Path:
    """Two panels side by side: test accuracy (%) and the final alignment angle (degrees)
    against the constraint's values (``values``: their labels, ideal first, drawn evenly spaced),
    one line per rule (``accuracy`` / ``angle``: rule -> one point a value), mean ± std over
    seeds as error bars. Raises `NothingToPlot` when no point was measured. Writes ``path`` (a
    PNG, and the PDF beside it) and returns the PNG's path."""
    if not any(p is not None for series in (*accuracy.values(), *angle.values()) for p in series):
        raise NothingToPlot(f"{title}: nothing measured yet")
    rules = list(dict.fromkeys([*accuracy, *angle]))
    colours = {r: _style.PALETTE[i % len(_style.PALETTE)] for i, r in enumerate(rules)}
    markers = {r: _style.MARKERS[i % len(_style.MARKERS)] for i, r in enumerate(rules)}
    xs = list(range(len(values)))
    with _style.style_context():
        fig = _style.new_figure(9.5, 3.6)
        axes = fig.subplots(1, 2, squeeze=False)[0]
        for ax, panel, ylabel in ((axes[0], accuracy, "test accuracy (%)"),
                                  (axes[1], angle, "final update angle vs BP (deg)")):
            for rule, points in panel.items():
                ok = [(x, p) for x, p in zip(xs, points, strict=True) if p is not None]
                if not ok:
                    continue
                ax.errorbar([x for x, _ in ok], [p[0] for _, p in ok], yerr=[p[1] for _, p in ok],
                            color=colours[rule], marker=markers[rule], markersize=4, linewidth=1.2,
                            capsize=3, label=rule)
            ax.set_xticks(xs, list(values))
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(True, linewidth=0.4, alpha=0.5)
        axes[1].set_ylim(0, max(90.0, axes[1].get_ylim()[1]))
        fig.suptitle(title)
        handles, labels = axes[0].get_legend_handles_labels()
        if not handles:
            handles, labels = axes[1].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncol=max(1, len(labels)),
                       frameon=False)
        return _style.save_figure(fig, Path(path).with_suffix(""))[0]
