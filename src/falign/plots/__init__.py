"""Figures from analysis results. matplotlib is imported inside the functions only."""

from falign.plots.cka_heatmaps import plot_cka_heatmaps
from falign.plots.confusion import plot_confusion_matrix
from falign.plots.curves import plot_curves, plot_lr_grid, plot_val_curves
from falign.plots.exemplars import plot_exemplar_grid
from falign.plots.seeds import plot_seed_summary
from falign.plots.training import (
    NothingToPlot,
    plot_alignment,
    plot_loss_curves,
    plot_sign_concordance,
    plot_val_accuracy,
)

__all__ = [
    "NothingToPlot",
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
