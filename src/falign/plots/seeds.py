"""Several seeds of each method: mean ± standard deviation, as error bars."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from falign.plots import _style
from falign.plots.training import NothingToPlot

__all__ = ["plot_seed_summary"]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value), the numbers of the tables."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _finite(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def plot_seed_summary(
    groups: Mapping[str, Sequence[Any]],
    path_stem: str | os.PathLike[str],
    *,
    title: str = "",
) -> list[Path]:
    """Method label -> its runs, one per seed: objects with ``val_curve`` (validation accuracy
    after each epoch, fractions) and ``test_acc`` (a fraction or None), e.g. the
    `falign.training.results.ResultRow` lists of ``falign compare --seeds`` or run records.

    Left: the mean validation accuracy after each epoch, error bars one standard deviation over
    the seeds that reached that epoch. Right: the mean test accuracy of each method with its
    error bar, and each seed's own value as a dot. A panel without data is left out; `NothingToPlot`
    when neither has any. Accuracies are drawn in %. Writes ``path_stem``.png and .pdf and returns
    their paths.
    """
    curves: dict[str, tuple[list[int], list[float], list[float]]] = {}
    tests: dict[str, list[float]] = {}
    for label, runs in groups.items():
        by_epoch: dict[int, list[float]] = {}
        for run in runs:
            for epoch, value in enumerate(run.val_curve, start=1):
                if _finite(value) is not None:
                    by_epoch.setdefault(epoch, []).append(100 * float(value))
        if by_epoch:
            epochs = sorted(by_epoch)
            stats = [_mean_std(by_epoch[e]) for e in epochs]
            curves[label] = (epochs, [m for m, _ in stats], [s for _, s in stats])
        accs = [100 * v for v in (_finite(run.test_acc) for run in runs) if v is not None]
        if accs:
            tests[label] = accs
    if not curves and not tests:
        raise NothingToPlot("no run recorded a validation or test accuracy")
    looks = {label: {"color": _style.PALETTE[i % len(_style.PALETTE)],
                     "marker": _style.MARKERS[i % len(_style.MARKERS)]} for i, label in enumerate(groups)}
    panels = [p for p, present in (("curves", curves), ("tests", tests)) if present]
    with _style.style_context():
        fig = _style.new_figure(4.2 * len(panels) + 0.6, 3.6)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, panel in zip(axes, panels, strict=True):
            if panel == "curves":
                for label, (epochs, means, stds) in curves.items():
                    ax.errorbar(epochs, means, yerr=stds, label=label, capsize=3, markersize=4,
                                linewidth=1.4, elinewidth=0.9, **looks[label])
                from matplotlib.ticker import MaxNLocator

                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_xlabel("Epoch")
                ax.set_ylabel("Validation accuracy (%)")
                ax.set_title("Validation accuracy, mean ± std over seeds")
                ax.legend(frameon=False)
            else:
                labels = list(tests)
                for i, label in enumerate(labels):
                    mean, std = _mean_std(tests[label])
                    ax.errorbar([i], [mean], yerr=[std], capsize=5, markersize=6, linewidth=0,
                                elinewidth=1.4, **looks[label])
                    ax.scatter([i + 0.15] * len(tests[label]), tests[label], s=10, alpha=0.6,
                               color=looks[label]["color"], zorder=3)
                ax.set_xticks(range(len(labels)), labels=labels, rotation=30, ha="right",
                              rotation_mode="anchor")
                ax.set_xlim(-0.6, len(labels) - 0.4)
                ax.set_ylabel("Test accuracy (%)")
                ax.set_title("Test accuracy: mean ± std (dots: each seed)")
            ax.grid(True, linewidth=0.4, alpha=0.5)
        if title:
            fig.suptitle(title)
        return _style.save_figure(fig, path_stem)
