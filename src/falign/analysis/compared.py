"""The results of one analysis of several trained models, side by side: what the report's
analyses compute and its figures are drawn from (``falign.plots.compared``).

Plain dataclasses of the per-model results in :mod:`falign.analysis.classification`,
:mod:`falign.analysis.cka` and :mod:`falign.analysis.gradcam`, keyed by the models' labels in the
order they were given; nothing here computes, opens a run or writes a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cka import CKAResult
    from .classification import ClassificationReport
    from .gradcam import ExemplarSet

__all__ = ["CKAComparison", "ConfusionResults", "ExemplarComparison"]


@dataclass
class ConfusionResults:
    """Each model's predictions on a test split, as a classification report (its confusion
    matrix and per-class precision / recall / F1)."""

    reports: dict[str, ClassificationReport]  # model label -> report
    class_names: list[str]


@dataclass
class CKAComparison:
    """Linear CKA between the layers of every model and those of a reference model, on each test
    subset (`falign.analysis.cka_subsets`), with the estimator's settings.

    ``results[key][subset]`` is one comparison's result, ``key`` being ``"<label> vs
    <reference>"``; ``title`` names the reference in titles ("BP").  ``notes`` are what the
    caller said about the choice of models (a missing reference), shown first."""

    reference: str
    title: str
    minibatch_size: int
    seed: int
    results: dict[str, dict[str, CKAResult]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def by_subset(self) -> dict[str, dict[str, CKAResult]]:
        """subset -> {key: result}, subsets in the order the first comparison has them."""
        out: dict[str, dict[str, CKAResult]] = {}
        for key, subsets in self.results.items():
            for subset, result in subsets.items():
                out.setdefault(subset, {})[key] = result
        return out


@dataclass
class ExemplarComparison:
    """For each model, the most important channels of ``layer`` (Grad-CAM) and their
    top-activating inputs; ``mean`` and ``std`` undo the inputs' normalisation for display."""

    layer: str
    sets: dict[str, ExemplarSet]  # model label -> its channels and images
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
