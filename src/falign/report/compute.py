"""The report's first step: open the runs and analyse their best models.  Results out
(dataclasses of :mod:`falign.analysis.compared`), no figures and no files.

:func:`open_groups` opens each run's best model through :func:`falign.training.run.open_run` and
puts the runs on the same data together; the functions below take models and test data and
return one result each.  Every model is evaluated on the test split of the dataset its own run's
config names, with the evaluation transform (no augmentation).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..analysis.compared import CKAComparison, ConfusionResults, ExemplarComparison
from ..training.run import open_run, predictions
from .runs import Run

if TYPE_CHECKING:
    from torch import nn

    from ..data import Dataset

__all__ = ["Group", "cka_comparison", "confusion_results", "evaluation_inputs", "exemplar_comparison",
           "open_groups"]


@dataclass
class Group:
    """Runs on the same data: their best models and that data's test split."""

    runs: list[Run]
    data: Dataset
    models: dict[str, nn.Module]


def open_groups(runs: Sequence[Run], device: str = "cpu") -> tuple[list[Group], list[str]]:
    """The runs' best models (``best.pt``), opened on ``device`` and grouped by their data config:
    (groups, one note for each run without a best model)."""
    from ..training.loop import resolve_device

    torch_device = resolve_device(device)
    skipped: list[str] = []
    by_data: dict[str, list[Run]] = {}
    for run in runs:
        if not (run.path / "best.pt").is_file():
            skipped.append(f"{run.label}: no best.pt in {run.path} (the run has not completed an epoch; "
                           "resume it with `falign train ... --resume`)")
            continue
        key = json.dumps(run.config.get("data") or {}, sort_keys=True, default=str)
        by_data.setdefault(key, []).append(run)
    groups = []
    for members in by_data.values():
        opened = {run.label: open_run(run.path, device=torch_device) for run in members}
        data = opened[members[0].label].data()
        groups.append(Group(members, data, {label: run.model() for label, run in opened.items()}))
    return groups, skipped


def evaluation_inputs(data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split through the evaluation transform: (x (N, ...) float, un-augmented; y (N,))."""
    return data.eval_transform(data.test.x), data.test.y


def confusion_results(models: Mapping[str, nn.Module], data: Dataset) -> ConfusionResults:
    """Each model's classification report (confusion matrix, per-class precision / recall / F1) on
    the test split."""
    from ..analysis.classification import classification_report

    reports = {}
    for label, model in models.items():
        preds, labels = predictions(model, data.test, data.eval_transform)
        reports[label] = classification_report(labels, preds, num_classes=data.num_classes,
                                               class_names=data.classes)
    return ConfusionResults(reports, list(data.classes))


def _feedback_layer_names(model: nn.Module) -> list[str]:
    from ..layers import feedback_layers

    return [name for name, _ in feedback_layers(model)]


def cka_comparison(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *,
                   layers: Sequence[str] | None = None, reference: str = "bp", title: str = "BP",
                   minibatch_size: int | None = None, seed: int = 0) -> CKAComparison:
    """Unbiased minibatch linear CKA between the layers of every model and those of the
    ``reference`` model, on the three test subsets of Lance & Kieu 2026 (``cka_subsets``).
    ``layers`` are the layers of every model (the same architecture); None takes each model's
    converted layers.  No reference among ``models``: an empty comparison."""
    from ..analysis.cka import DEFAULT_MINIBATCH_SIZE, cka_subsets

    # Unbiased minibatch CKA: its value does not depend on a subset's size, so the three
    # subsets (of different sizes) are comparable; the biased full-batch one rises as n falls.
    size_of_batch = minibatch_size or DEFAULT_MINIBATCH_SIZE
    out = CKAComparison(reference, title, size_of_batch, seed)
    ref = models.get(reference)
    if ref is None:
        return out
    ref_layers = list(layers) if layers is not None else _feedback_layer_names(ref)
    for label, model in models.items():
        if label == reference:
            continue
        other_layers = list(layers) if layers is not None else _feedback_layer_names(model)
        out.results[f"{label} vs {reference}"] = cka_subsets(
            ref, model, x, y, ref_layers, other_layers, estimator="minibatch",
            minibatch_size=size_of_batch, seed=seed)
    return out


def exemplar_comparison(models: Mapping[str, nn.Module], layer: str, x: torch.Tensor, y: torch.Tensor, *,
                        k: int = 5, n: int = 9, mean: Sequence[float] | None = None,
                        std: Sequence[float] | None = None) -> ExemplarComparison:
    """For each model, the ``k`` channels of ``layer`` with the largest mean |Grad-CAM
    importance| (true gradient) and the ``n`` test images that activate each most."""
    from ..analysis.gradcam import exemplars

    sets = {label: exemplars(model, layer, x, y, k=k, n=n, gradient="true")
            for label, model in models.items()}
    return ExemplarComparison(layer, sets, None if mean is None else tuple(mean),
                              None if std is None else tuple(std))
