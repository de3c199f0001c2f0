"""Figures of several models analysed side by side (the report's analyses): results in, files
out.  Each function takes a dataclass of :mod:`falign.analysis.compared`, writes its figures
(PNG and PDF) under ``folder`` with names starting with ``prefix``, and returns their paths."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from falign.analysis.compared import CKAComparison, ConfusionResults, ExemplarComparison

__all__ = ["draw_cka", "draw_confusion", "draw_exemplars", "stem_part"]


def stem_part(label: str) -> str:
    """A method label as part of a file name: "fa (seed0)" -> "fa-seed0"."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", label).strip("-") or "run"


def draw_confusion(results: ConfusionResults, folder: Path, prefix: str = "") -> dict[str, list[Path]]:
    """One confusion matrix per model, ``<prefix>confusion-<label>``: {label: [png, pdf]}."""
    from falign.plots.confusion import plot_confusion_matrix

    return {label: plot_confusion_matrix(report, results.class_names,
                                         Path(folder) / f"{prefix}confusion-{stem_part(label)}",
                                         title=f"{label}: confusion matrix")
            for label, report in results.reports.items()}


def draw_cka(comparison: CKAComparison, folder: Path, prefix: str = "") -> dict[str, list[Path]]:
    """One heatmap figure per test subset, ``<prefix>cka-<subset>``: {subset: [png, pdf]}."""
    from falign.plots.cka_heatmaps import plot_cka_heatmaps

    return {subset: plot_cka_heatmaps(
                results, Path(folder) / f"{prefix}cka-{subset}",
                title=f"Unbiased minibatch linear CKA vs {comparison.title} ({subset})")
            for subset, results in comparison.by_subset.items()}


def draw_exemplars(comparison: ExemplarComparison, folder: Path, prefix: str = "") -> list[Path]:
    """The exemplar grid of every model, ``<prefix>exemplars``: [png, pdf]."""
    import torch

    from falign.plots.exemplars import plot_exemplar_grid

    mean = None if comparison.mean is None else torch.tensor(comparison.mean).view(-1, 1, 1)
    std = None if comparison.std is None else torch.tensor(comparison.std).view(-1, 1, 1)
    return plot_exemplar_grid(comparison.sets, Path(folder) / f"{prefix}exemplars", mean=mean, std=std,
                              title=f"{comparison.layer}: top Grad-CAM channels and their "
                                    "top-activating test images")
