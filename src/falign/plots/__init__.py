"""Figures from analysis results and run records. matplotlib is imported inside the functions only.

The report's figures are drawn here: those of its runs from their records
(:func:`draw_run_figures`), those of its analyses from what the analyses computed
(:mod:`falign.plots.compared`: :func:`draw_confusion`, :func:`draw_cka`, :func:`draw_exemplars`).
"""

from falign.plots.cka_heatmaps import plot_cka_heatmaps
from falign.plots.compared import draw_cka, draw_confusion, draw_exemplars
from falign.plots.confusion import plot_confusion_matrix
from falign.plots.curves import plot_curves, plot_lr_grid, plot_val_curves
from falign.plots.exemplars import plot_exemplar_grid
from falign.plots.seeds import plot_seed_summary
from falign.plots.training import (
    RUN_FIGURES,
    NothingToPlot,
    draw_run_figures,
    plot_alignment,
    plot_loss_curves,
    plot_sign_concordance,
    plot_val_accuracy,
)

__all__ = [
    "RUN_FIGURES",
    "NothingToPlot",
    "draw_cka",
    "draw_confusion",
    "draw_exemplars",
    "draw_run_figures",
    "plot_alignment",
    "plot_cka_heatmaps",
    "plot_confusion_matrix",
    "plot_curves",
    "plot_exemplar_grid",
    "plot_loss_curves",
    "plot_lr_grid",
    "plot_seed_summary",
    "plot_sign_concordance",
    "plot_val_accuracy",
    "plot_val_curves",
]
