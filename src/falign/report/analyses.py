"""Analyses of the runs' best models for the report: confusion matrices, CKA against a reference
run, Grad-CAM exemplars.

The report picks them by name from :data:`ANALYSES` (``falign report --confusion --cka --gradcam
LAYER`` asks for ``confusion``, ``cka`` and ``gradcam``); :func:`analyse` opens each run through
:func:`falign.training.run.open_run` and hands every registered analysis asked for the runs on
one dataset.  Each returns a :class:`Section` (figures, preformatted text, notes); figures are
written under the folder given, nothing else is.  Every model is evaluated on the test split of
the dataset its own run's config names, with the evaluation transform (no augmentation).  The
reproduction targets use the same functions.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..registry import Registry
from ..training.run import CheckpointEvaluation, evaluate_checkpoint, open_run, predictions
from .runs import ReportError, Run

if TYPE_CHECKING:
    from torch import nn

    from ..data import Dataset

__all__ = ["ANALYSES", "CheckpointEvaluation", "ReportAnalysis", "Section", "analyse", "cka_vs_reference",
           "confusion_matrices", "evaluate_checkpoint", "exemplar_grid", "predictions",
           "register_analysis"]


@dataclass
class Section:
    """What an analysis adds to a report: figures (title, PNG, caption), preformatted texts
    (heading, text) and notes (one line each)."""

    figures: list[tuple[str, Path, str]] = field(default_factory=list)
    texts: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def extend(self, other: Section) -> Section:
        self.figures += other.figures
        self.texts += other.texts
        self.notes += other.notes
        return self


# -- the analyses ------------------------------------------------------------------------------

def _stem_part(label: str) -> str:
    """A method label as part of a file name: "fa (seed0)" -> "fa-seed0"."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", label).strip("-") or "run"


def confusion_matrices(models: Mapping[str, nn.Module], data: Dataset, folder: Path, *,
                       prefix: str = "") -> Section:
    """Confusion matrix (figure) and per-class precision / recall / F1 (text, also written to
    ``classification-<label>.txt``) of each model on the test split."""
    from ..analysis.classification import classification_report
    from ..plots import plot_confusion_matrix

    out = Section()
    for label, model in models.items():
        preds, labels = predictions(model, data.test, data.eval_transform)
        report = classification_report(labels, preds, num_classes=data.num_classes,
                                       class_names=data.classes)
        stem = folder / f"{prefix}confusion-{_stem_part(label)}"
        paths = plot_confusion_matrix(report, data.classes, stem, title=f"{label}: confusion matrix")
        (folder / f"{prefix}classification-{_stem_part(label)}.txt").write_text(report.to_text())
        out.figures.append((f"Confusion matrix: {label}", paths[0],
                            "Rows: true class; columns: predicted class (test set)."))
        out.texts.append((f"{label}: per-class precision / recall / F1 (test set)", report.to_text()))
    return out


def _feedback_layer_names(model: nn.Module) -> list[str]:
    from ..layers import feedback_layers

    return [name for name, _ in feedback_layers(model)]


def cka_vs_reference(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor,
                     folder: Path, *, layers: Sequence[str] | None = None, reference: str = "bp",
                     title: str = "BP", minibatch_size: int | None = None, seed: int = 0,
                     prefix: str = "") -> Section:
    """Unbiased minibatch linear CKA between the layers of every model and those of the
    ``reference`` model, on the three test subsets of Lance & Kieu 2026 (``cka_subsets``): one
    heatmap figure per subset, the diagonals and the estimator as notes.  ``layers`` are the
    layers of every model (the same architecture); None takes each model's converted layers.
    ``title`` names the reference in titles ("CKA vs BP")."""
    from ..analysis.cka import DEFAULT_MINIBATCH_SIZE, cka_subsets
    from ..plots import plot_cka_heatmaps

    out = Section()
    ref = models.get(reference)
    if ref is None:
        return out
    name = title
    # Unbiased minibatch CKA: its value does not depend on a subset's size, so the three
    # subsets (of different sizes) are comparable; the biased full-batch one rises as n falls.
    estimator, size_of_batch = "minibatch", minibatch_size or DEFAULT_MINIBATCH_SIZE
    per_subset: dict[str, dict[str, Any]] = {}
    sizes: list[str] = []

    def size(r) -> str:
        total = r.n + r.dropped
        if r.skipped:
            return f"n={total} (skipped)"
        if r.minibatch_size != size_of_batch:
            return f"n={total} (one minibatch of all {r.n})"
        return f"n={total} ({r.n} used)"

    ref_layers = list(layers) if layers is not None else _feedback_layer_names(ref)
    for label, model in models.items():
        if label == reference:
            continue
        other_layers = list(layers) if layers is not None else _feedback_layer_names(model)
        subsets = cka_subsets(ref, model, x, y, ref_layers, other_layers, estimator=estimator,
                              minibatch_size=size_of_batch, seed=seed)
        for subset, result in subsets.items():
            per_subset.setdefault(subset, {})[f"{label} vs {reference}"] = result
        sizes.append(f"{label} vs {reference}: " + ", ".join(f"{subset} {size(r)}"
                                                            for subset, r in subsets.items()))
    if sizes:
        out.notes.append(
            f"CKA estimator: unbiased minibatch linear CKA (Nguyen et al. 2021; mean unbiased "
            f"HSIC_1 of Song et al. 2012 over minibatches of {size_of_batch} test images in a "
            f"seeded random order, seed {seed}; the final partial minibatch is dropped, a subset "
            f"of fewer than {size_of_batch} images is one minibatch, fewer than 4 is skipped); "
            "its value does not depend on n, so the subsets are comparable, and it can be "
            "slightly negative. Subset sizes: " + "; ".join(sizes) + ".")
    for subset, results in per_subset.items():
        stem = folder / f"{prefix}cka-{subset}"
        paths = plot_cka_heatmaps(results, stem, title=f"Unbiased minibatch linear CKA vs {name} ({subset})")
        out.figures.append((f"CKA vs {name}: {subset}", paths[0],
                            "Linear CKA (unbiased minibatch estimator, minibatches of "
                            f"{size_of_batch}) between each layer of a method (columns) "
                            f"and of {name} (rows), on the test images of this subset."))
        for key, r in results.items():
            diag = ", ".join(f"{lay} {v:.2f}" for lay, v in zip(r.layers_a, r.diagonal().tolist(),
                                                                 strict=False))
            out.notes.append(f"CKA diagonal, {subset}, {key}: {diag}")
    return out


def exemplar_grid(models: Mapping[str, nn.Module], layer: str, x: torch.Tensor, y: torch.Tensor,
                  folder: Path, *, k: int = 5, n: int = 9, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None, prefix: str = "") -> Section:
    """For each model, the ``k`` channels of ``layer`` with the largest mean |Grad-CAM
    importance| (true gradient) and the ``n`` test images that activate each most: one figure."""
    from ..analysis.gradcam import exemplars
    from ..plots import plot_exemplar_grid

    sets = {label: exemplars(model, layer, x, y, k=k, n=n, gradient="true")
            for label, model in models.items()}
    mean_t = None if mean is None else torch.tensor(mean).view(-1, 1, 1)
    std_t = None if std is None else torch.tensor(std).view(-1, 1, 1)
    paths = plot_exemplar_grid(sets, folder / f"{prefix}exemplars", mean=mean_t, std=std_t,
                               title=f"{layer}: top Grad-CAM channels and their top-activating test images")
    return Section(figures=[("Exemplars", paths[0], f"For each method, the {layer} channels with the "
                             "largest mean |Grad-CAM importance| (true gradient) and the test images "
                             "that activate each most.")])


# -- the report's analyses of its runs ---------------------------------------------------------

@dataclass
class Group:
    """Runs on the same data: their best models and that data's test split."""

    runs: list[Run]
    data: Dataset
    models: dict[str, nn.Module]


@dataclass(frozen=True)
class ReportAnalysis:
    """An analysis the report can make of the runs on one dataset, by name from :data:`ANALYSES`.

    ``make(group, folder, prefix, option)`` returns the section (figures under ``folder``, their
    names starting with ``prefix``); ``check(group, option)``, if given, raises `ReportError`
    before any figure is written.  ``option`` is what was asked with the name (True, or a value
    such as Grad-CAM's layer)."""

    title: str
    make: Callable[[Group, Path, str, Any], Section]
    check: Callable[[Group, Any], None] | None = None


#: the report's analyses by name, in the order their sections appear
ANALYSES: Registry = Registry("report analysis", ReportError)


def register_analysis(name: str, analysis: ReportAnalysis) -> ReportAnalysis:
    """Add an analysis the report can be asked for by ``name``."""
    return ANALYSES.register(name, analysis)


def _channels(module: nn.Module) -> int | None:
    for attr in ("out_channels", "out_features", "num_features", "embed_dim", "hidden_size"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return None


def _test_inputs(group: Group) -> tuple[torch.Tensor, torch.Tensor]:
    return group.data.eval_transform(group.data.test.x), group.data.test.y  # (N, ...) float, un-augmented


def _confusion(group: Group, folder: Path, prefix: str, option: Any) -> Section:
    return confusion_matrices(group.models, group.data, folder, prefix=prefix)


def _cka(group: Group, folder: Path, prefix: str, option: Any) -> Section:
    labels = list(group.models)
    exact = [r.label for r in group.runs if r.exact]  # backprop runs: the reference
    reference = exact[0] if exact else labels[0]
    if len(labels) < 2:
        return Section(notes=[f"CKA compares two runs on the same data; {labels[0]} is "
                              "alone here (report it with a bp run, e.g. a comparison)."])
    x, y = _test_inputs(group)
    section = cka_vs_reference(group.models, x, y, folder, reference=reference,
                               title="BP" if exact else reference, prefix=prefix)
    if not exact:
        section.notes.insert(0, f"No backprop run on this data: CKA is against {reference}.")
    return section


def _gradcam_check(group: Group, layer: Any) -> None:
    for run in group.runs:
        modules = dict(group.models[run.label].named_modules())
        if layer not in modules or not layer:
            import difflib

            names = [n for n in modules if n]
            near = difflib.get_close_matches(layer, names, n=1, cutoff=0.4)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise ReportError(f"--gradcam {layer}: no layer '{layer}' in the model of "
                              f"{run.label} ({run.path}); {hint}its layers: {', '.join(names)}")
    if group.data.test.x.dim() != 4 or group.data.test.x.shape[1] not in (1, 3):
        raise ReportError(f"--gradcam: exemplars are images, and {group.data.description} is "
                          "not an image dataset")


def _gradcam(group: Group, folder: Path, prefix: str, layer: Any) -> Section:
    x, y = _test_inputs(group)
    first = group.models[group.runs[0].label]
    channels = _channels(dict(first.named_modules())[layer])
    k = min(3, channels) if channels else 3
    transform = group.data.eval_transform  # its mean and std undo the normalisation
    return exemplar_grid(group.models, layer, x, y, folder, k=k, n=min(6, x.shape[0]),
                         mean=getattr(transform, "mean", None), std=getattr(transform, "std", None),
                         prefix=prefix)


register_analysis("confusion", ReportAnalysis("Confusion matrices", _confusion))
register_analysis("cka", ReportAnalysis("CKA", _cka))
register_analysis("gradcam", ReportAnalysis("Grad-CAM exemplars", _gradcam, _gradcam_check))


def asked_analyses(analyses: Mapping[str, Any] | Sequence[str] | None = None, *, confusion: bool = False,
                   cka: bool = False, gradcam: str | None = None) -> dict[str, Any]:
    """``analyses`` as {name: option} (a list of names: each with True), every name checked
    against :data:`ANALYSES`; the keywords ``confusion``, ``cka`` and ``gradcam`` of earlier
    falign are still taken (deprecated)."""
    asked = dict(analyses) if isinstance(analyses, Mapping) else dict.fromkeys(analyses or (), True)
    legacy = {name: value for name, value in (("confusion", confusion), ("cka", cka), ("gradcam", gradcam))
              if value}
    if legacy:
        warnings.warn("confusion=, cka= and gradcam= are deprecated; pass analyses={'confusion': True, "
                      "'cka': True, 'gradcam': LAYER}", DeprecationWarning, stacklevel=3)
        asked.update(legacy)
    for name in asked:
        ANALYSES.lookup(name)
    return {name: option for name, option in asked.items() if option}


def analyse(runs: Sequence[Run], folder: Path, analyses: Mapping[str, Any] | Sequence[str] | None = None, *,
            confusion: bool = False, cka: bool = False, gradcam: str | None = None,
            device: str = "cpu") -> list[tuple[str, Section]]:
    """The analyses asked for (names of :data:`ANALYSES`, or {name: option}), of each run's best
    model (``best.pt``) on its own test split: [(section title, section)].  Runs on the same data
    are analysed together (CKA compares them with the ``bp`` run among them, else the first).
    Everything is checked (checkpoints, the data, the Grad-CAM layer in every model) before the
    first figure is written; a run without ``best.pt`` is left out with a note."""
    asked = asked_analyses(analyses, confusion=confusion, cka=cka, gradcam=gradcam)
    if not asked:
        return []
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
    chosen = [(name, ANALYSES[name], option) for name in ANALYSES if name in asked
              for option in [asked[name]]]
    for group in groups:
        for _, analysis, option in chosen:
            if analysis.check is not None:
                analysis.check(group, option)

    sections: list[tuple[str, Section]] = []
    many = len(groups) > 1
    for i, group in enumerate(groups):
        prefix = f"data{i + 1}-" if many else ""
        where = f" ({group.data.description})" if many else ""
        for _, analysis, option in chosen:
            sections.append((f"{analysis.title}{where}", analysis.make(group, folder, prefix, option)))
    if skipped:
        sections.append(("Not analysed", Section(notes=skipped)))
    return sections
