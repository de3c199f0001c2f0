"""Figures from analysis results. matplotlib is imported inside the functions only."""

from falign.plots.cka_heatmaps import plot_cka_heatmaps
from falign.plots.confusion import plot_confusion_matrix
from falign.plots.curves import plot_curves

__all__ = ["plot_cka_heatmaps", "plot_confusion_matrix", "plot_curves"]
