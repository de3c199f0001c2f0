"""Line plots of per-epoch curves (accuracy, loss, angle) for several methods."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from falign.plots import _style
from falign.plots.training import NothingToPlot

__all__ = ["plot_curves", "plot_val_curves"]


def plot_curves(
    series: Mapping[str, Sequence[float]],
    path_stem: str | os.PathLike[str],
    xlabel: str = "Epoch",
    ylabel: str = "Value",
    title: str = "",
    *,
    x: Sequence[float] | None = None,
    references: Mapping[str, float] | None = None,
    logy: bool = False,
) -> list[Path]:
    """One line per entry of ``series`` (name -> values), each with its own colour and marker.

    The x values default to 1, 2, ... (epochs counted from 1); pass ``x`` to share other ones.
    NaN values leave gaps. ``references`` draws dashed horizontal lines (e.g. a published
    accuracy), in the colour of the series of the same name when there is one. Put units in
    the labels, e.g. ``ylabel="Validation accuracy (%)"``. Writes ``path_stem``.png and .pdf and
    returns their paths.
    """
    if not series:
        raise ValueError("no series to plot")
    colours = {name: _style.PALETTE[i % len(_style.PALETTE)] for i, name in enumerate(series)}
    with _style.style_context():
        fig = _style.new_figure(5.5, 3.6)
        ax = fig.add_subplot()
        for i, (name, values) in enumerate(series.items()):
            ys = [float(v) for v in values]
            xs = list(range(1, len(ys) + 1)) if x is None else [float(v) for v in x]
            if len(xs) != len(ys):
                raise ValueError(f"series {name!r} has {len(ys)} values for {len(xs)} x values")
            ax.plot(
                xs,
                ys,
                label=name,
                color=colours[name],
                marker=_style.MARKERS[i % len(_style.MARKERS)],
                markersize=4,
                markevery=max(1, math.ceil(len(ys) / 25)),
                linewidth=1.4,
            )
        for j, (name, value) in enumerate((references or {}).items()):
            colour = colours.get(name, "#555555")
            ax.axhline(
                value, color=colour, linestyle=(0, (4, 2 + j % 3)), linewidth=1.0, label=f"{name} (reference)"
            )
        if logy:
            ax.set_yscale("log")
        if x is None:
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.grid(True, linewidth=0.4, alpha=0.5)
        ax.legend(frameon=False)
        return _style.save_figure(fig, path_stem)


def plot_val_curves(
    rows: Sequence[Any],
    path_stem: str | os.PathLike[str],
    *,
    title: str = "",
) -> list[Path]:
    """The validation-accuracy figure of a comparison (``falign compare``'s ``val_acc``): one line
    per row, from its ``label`` and ``val_curve`` (accuracies as fractions, epochs from 1), e.g.
    the `falign.training.results.ResultRow` list that ``run_compare`` returns. Raises
    `NothingToPlot` when no row has a curve. Writes ``path_stem``.png and .pdf; returns their paths.
    """
    series = {r.label: [100 * a for a in r.val_curve] for r in rows if r.val_curve}
    if not series:
        raise NothingToPlot("no run recorded a validation accuracy")
    return plot_curves(series, path_stem, xlabel="epoch", ylabel="validation accuracy (%)", title=title)


def plot_lr_grid(
    panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float | None]]]],
    path: str | os.PathLike[str],
    *,
    ylabel: str = "Accuracy (%)",
) -> Path:
    """One panel per entry of ``panels`` (title -> {series name: (learning rates, values)}),
    learning rate on a log axis; a value None (a diverged run) is drawn as a cross at the bottom.
    Raises `NothingToPlot` when no panel has a value. Writes ``path`` (a PNG, and the PDF beside
    it) and returns the PNG's path."""
    if not any(v is not None for series in panels.values() for _, vs in series.values() for v in vs):
        raise NothingToPlot("no learning-rate grid was measured")
    names = list(dict.fromkeys(n for series in panels.values() for n in series))
    colours = {n: _style.PALETTE[i % len(_style.PALETTE)] for i, n in enumerate(names)}
    markers = {n: _style.MARKERS[i % len(_style.MARKERS)] for i, n in enumerate(names)}
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    with _style.style_context():
        fig = _style.new_figure(5.0 * cols, 3.4 * rows + 0.9)
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, (title, series) in zip(axes.flat, panels.items(), strict=False):
            for name, (lrs, values) in series.items():
                ok = [(x, v) for x, v in zip(lrs, values, strict=True) if v is not None]
                if ok:
                    ax.plot([x for x, _ in ok], [v for _, v in ok], color=colours[name],
                            marker=markers[name], markersize=4, linewidth=1.2, label=name)
                bad = [x for x, v in zip(lrs, values, strict=True) if v is None]
                if bad:
                    ax.plot(bad, [0.0] * len(bad), linestyle="none", marker="x", color=colours[name])
            ax.set_xscale("log")
            ax.set_ylim(0, 100)
            ax.set_title(title)
            ax.set_xlabel("learning rate")
            ax.set_ylabel(ylabel)
            ax.grid(True, linewidth=0.4, alpha=0.5)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        legend: dict[str, Any] = {}  # every series once, whichever panel drew it
        for ax in axes.flat:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                legend.setdefault(label, handle)
        if legend:
            fig.legend(list(legend.values()), list(legend), loc="outside lower center",
                       ncol=max(1, min(len(legend), 7)), frameon=False)
        stem = Path(path).with_suffix("")
        return _style.save_figure(fig, stem)[0]
