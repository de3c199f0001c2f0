"""The report's analyses of the runs' best models: confusion matrices, CKA against a reference
run, Grad-CAM exemplars.

The report picks them by name from :data:`ANALYSES` (``falign report --confusion --cka --gradcam
LAYER`` asks for ``confusion``, ``cka`` and ``gradcam``).  Each entry is three steps, run by the
report one after the other:

1. ``compute(group, option)``: the runs on one dataset, their best models opened
   (:mod:`falign.report.compute`), to a result (a dataclass of :mod:`falign.analysis.compared`);
   no figure, no file.  :func:`compute_analyses` opens the runs and computes every analysis asked
   for, after each one's ``check`` has passed for every group.
2. ``draw(result, folder, prefix)``: the result's figures under ``folder`` (a function of
   :mod:`falign.plots`), their paths returned.  :func:`draw_analyses`.
3. ``section(result, figures)``: the result and the figure paths to a :class:`Section` (figure
   titles and captions, preformatted texts, notes, text files), which
   :func:`falign.report.html.write_html` writes into the page.

The reproduction targets use :func:`confusion_matrices`, :func:`cka_vs_reference` and
:func:`exemplar_grid`, the three steps of one analysis at once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..analysis.compared import CKAComparison, ConfusionResults, ExemplarComparison
from ..plots.compared import draw_cka, draw_confusion, draw_exemplars, stem_part
from ..registry import Registry
from ..training.run import CheckpointEvaluation, evaluate_checkpoint, predictions
from .compute import (
    Group,
    cka_comparison,
    confusion_results,
    evaluation_inputs,
    exemplar_comparison,
    open_groups,
)
from .runs import ReportError, Run

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..data import Dataset

__all__ = ["ANALYSES", "Analysed", "AnalysisResults", "CheckpointEvaluation", "Group", "ReportAnalysis",
           "Section", "analyse", "cka_vs_reference", "compute_analyses", "confusion_matrices",
           "draw_analyses", "evaluate_checkpoint", "exemplar_grid", "predictions", "register_analysis"]


@dataclass
class Section:
    """What an analysis adds to a report: figures (title, PNG, caption), preformatted texts
    (heading, text), notes (one line each) and text files ({name: text}, written beside the
    figures, each name after the prefix of the runs' group)."""

    figures: list[tuple[str, Path, str]] = field(default_factory=list)
    texts: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def extend(self, other: Section) -> Section:
        self.figures += other.figures
        self.texts += other.texts
        self.notes += other.notes
        self.files.update(other.files)
        return self

    def write_files(self, folder: Path, prefix: str = "") -> list[Path]:
        """Write the text files under ``folder``; their paths."""
        paths = []
        for name, text in self.files.items():
            path = Path(folder) / f"{prefix}{name}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            paths.append(path)
        return paths


# -- the sections: results and figure paths in, text out -----------------------------------------

def confusion_section(results: ConfusionResults, figures: Mapping[str, Sequence[Path]]) -> Section:
    """Each model's confusion matrix (figure) and per-class precision / recall / F1 (text, and the
    file ``classification-<label>.txt``)."""
    out = Section()
    for label, report in results.reports.items():
        out.figures.append((f"Confusion matrix: {label}", Path(figures[label][0]),
                            "Rows: true class; columns: predicted class (test set)."))
        out.texts.append((f"{label}: per-class precision / recall / F1 (test set)", report.to_text()))
        out.files[f"classification-{stem_part(label)}.txt"] = report.to_text()
    return out


def _size(r, minibatch_size: int) -> str:
    total = r.n + r.dropped
    if r.skipped:
        return f"n={total} (skipped)"
    if r.minibatch_size != minibatch_size:
        return f"n={total} (one minibatch of all {r.n})"
    return f"n={total} ({r.n} used)"


def cka_section(comparison: CKAComparison, figures: Mapping[str, Sequence[Path]]) -> Section:
    """One heatmap figure per test subset; the estimator, the subsets' sizes and the diagonals as
    notes, after the comparison's own."""
    out = Section(notes=list(comparison.notes))
    size_of_batch, name = comparison.minibatch_size, comparison.title
    if comparison.results:
        sizes = [f"{key}: " + ", ".join(f"{subset} {_size(r, size_of_batch)}"
                                        for subset, r in subsets.items())
                 for key, subsets in comparison.results.items()]
        out.notes.append(
            f"CKA estimator: unbiased minibatch linear CKA (Nguyen et al. 2021; mean unbiased "
            f"HSIC_1 of Song et al. 2012 over minibatches of {size_of_batch} test images in a "
            f"seeded random order, seed {comparison.seed}; the final partial minibatch is dropped, a "
            f"subset of fewer than {size_of_batch} images is one minibatch, fewer than 4 is skipped); "
            "its value does not depend on n, so the subsets are comparable, and it can be "
            "slightly negative. Subset sizes: " + "; ".join(sizes) + ".")
    for subset, results in comparison.by_subset.items():
        out.figures.append((f"CKA vs {name}: {subset}", Path(figures[subset][0]),
                            "Linear CKA (unbiased minibatch estimator, minibatches of "
                            f"{size_of_batch}) between each layer of a method (columns) "
                            f"and of {name} (rows), on the test images of this subset."))
        for key, r in results.items():
            diag = ", ".join(f"{lay} {v:.2f}" for lay, v in zip(r.layers_a, r.diagonal().tolist(),
                                                                 strict=False))
            out.notes.append(f"CKA diagonal, {subset}, {key}: {diag}")
    return out


def exemplar_section(comparison: ExemplarComparison, figures: Sequence[Path]) -> Section:
    """The exemplar grid of every model, one figure."""
    return Section(figures=[("Exemplars", Path(figures[0]), f"For each method, the {comparison.layer} "
                             "channels with the largest mean |Grad-CAM importance| (true gradient) and "
                             "the test images that activate each most.")])


# -- one analysis, its three steps at once (the reproduction targets use these) --------------------

def confusion_matrices(models: Mapping[str, nn.Module], data: Dataset, folder: Path, *,
                       prefix: str = "") -> Section:
    """Confusion matrix (figure) and per-class precision / recall / F1 (text, also written to
    ``classification-<label>.txt``) of each model on the test split."""
    results = confusion_results(models, data)
    section = confusion_section(results, draw_confusion(results, folder, prefix))
    section.write_files(folder, prefix)
    return section


def cka_vs_reference(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor,
                     folder: Path, *, layers: Sequence[str] | None = None, reference: str = "bp",
                     title: str = "BP", minibatch_size: int | None = None, seed: int = 0,
                     prefix: str = "") -> Section:
    """Unbiased minibatch linear CKA between the layers of every model and those of the
    ``reference`` model (:func:`falign.report.compute.cka_comparison`): one heatmap figure per
    subset, the diagonals and the estimator as notes.  ``title`` names the reference in titles
    ("CKA vs BP")."""
    comparison = cka_comparison(models, x, y, layers=layers, reference=reference, title=title,
                                minibatch_size=minibatch_size, seed=seed)
    return cka_section(comparison, draw_cka(comparison, folder, prefix))


def exemplar_grid(models: Mapping[str, nn.Module], layer: str, x: torch.Tensor, y: torch.Tensor,
                  folder: Path, *, k: int = 5, n: int = 9, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None, prefix: str = "") -> Section:
    """For each model, the ``k`` channels of ``layer`` with the largest mean |Grad-CAM
    importance| (true gradient) and the ``n`` test images that activate each most: one figure."""
    comparison = exemplar_comparison(models, layer, x, y, k=k, n=n, mean=mean, std=std)
    return exemplar_section(comparison, draw_exemplars(comparison, folder, prefix))


# -- the registry ---------------------------------------------------------------------------------

_WARNED: set[str] = set()


@dataclass(frozen=True)
class ReportAnalysis:
    """An analysis the report can make of the runs on one dataset, by name from :data:`ANALYSES`.

    ``compute(group, option)`` returns a result (no figure, no file); ``draw(result, folder,
    prefix)`` writes its figures under ``folder`` (names starting with ``prefix``) and returns
    their paths; ``section(result, figures)`` makes the :class:`Section` the page shows.
    ``check(group, option)``, if given, raises `ReportError` before anything is computed or
    written.  ``option`` is what was asked with the name (True, or a value such as Grad-CAM's
    layer).

    ``make(group, folder, prefix, option) -> Section``, all three steps in one, is the form of
    earlier falign (deprecated): it is still run, in the draw step."""

    title: str
    make: Callable[[Group, Path, str, Any], Section] | None = None
    check: Callable[[Group, Any], None] | None = None
    compute: Callable[[Group, Any], Any] | None = None
    draw: Callable[[Any, Path, str], Any] | None = None
    section: Callable[[Any, Any], Section] | None = None

    def __post_init__(self) -> None:
        if self.compute is not None and self.draw is not None and self.section is not None:
            return
        if self.make is None:
            raise TypeError(f"report analysis {self.title!r}: give compute, draw and section")
        if "make" not in _WARNED:
            _WARNED.add("make")
            warnings.warn("ReportAnalysis(title, make) is deprecated; give compute= (the result), "
                          "draw= (its figures) and section= (the page's text)", DeprecationWarning,
                          stacklevel=3)
        make = self.make
        object.__setattr__(self, "compute", lambda group, option: (group, option))
        object.__setattr__(self, "draw", lambda made, folder, prefix: make(made[0], folder, prefix, made[1]))
        object.__setattr__(self, "section", lambda made, section: section)


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


def _confusion(group: Group, option: Any) -> ConfusionResults:
    return confusion_results(group.models, group.data)


def _cka(group: Group, option: Any) -> CKAComparison:
    from ..analysis.cka import DEFAULT_MINIBATCH_SIZE

    labels = list(group.models)
    exact = [r.label for r in group.runs if r.exact]  # backprop runs: the reference
    reference = exact[0] if exact else labels[0]
    title = "BP" if exact else reference
    if len(labels) < 2:
        return CKAComparison(reference, title, DEFAULT_MINIBATCH_SIZE, 0, notes=[
            f"CKA compares two runs on the same data; {labels[0]} is alone here (report it with a "
            "bp run, e.g. a comparison)."])
    x, y = evaluation_inputs(group.data)
    comparison = cka_comparison(group.models, x, y, reference=reference, title=title)
    if not exact:
        comparison.notes.insert(0, f"No backprop run on this data: CKA is against {reference}.")
    return comparison


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


def _gradcam(group: Group, layer: Any) -> ExemplarComparison:
    x, y = evaluation_inputs(group.data)
    first = group.models[group.runs[0].label]
    channels = _channels(dict(first.named_modules())[layer])
    k = min(3, channels) if channels else 3
    transform = group.data.eval_transform  # its mean and std undo the normalisation
    return exemplar_comparison(group.models, layer, x, y, k=k, n=min(6, x.shape[0]),
                               mean=getattr(transform, "mean", None), std=getattr(transform, "std", None))


register_analysis("confusion", ReportAnalysis("Confusion matrices", compute=_confusion, draw=draw_confusion,
                                              section=confusion_section))
register_analysis("cka", ReportAnalysis("CKA", compute=_cka, draw=draw_cka, section=cka_section))
register_analysis("gradcam", ReportAnalysis("Grad-CAM exemplars", compute=_gradcam, draw=draw_exemplars,
                                            section=exemplar_section, check=_gradcam_check))


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


# -- the report's three steps over all its runs ----------------------------------------------------

@dataclass
class Analysed:
    """One registered analysis of the runs on one dataset: its section's title, the name it is
    registered by, what its compute step returned, the prefix of its files' names and, once drawn,
    its figures (what its draw step returned)."""

    title: str
    name: str
    result: Any
    prefix: str = ""
    figures: Any = None

    def section(self) -> Section:
        return ANALYSES[self.name].section(self.result, self.figures)


@dataclass
class AnalysisResults:
    """What :func:`compute_analyses` returns: the analyses asked for ({name: option}), each one made
    of each dataset's runs, in the order of their sections, and a note for each run not analysed."""

    asked: dict[str, Any] = field(default_factory=dict)
    items: list[Analysed] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def sections(self) -> list[tuple[str, Section]]:
        """[(section title, section)]; the runs not analysed last."""
        out = [(item.title, item.section()) for item in self.items]
        if self.skipped:
            out.append(("Not analysed", Section(notes=list(self.skipped))))
        return out


def compute_analyses(runs: Sequence[Run], analyses: Mapping[str, Any] | Sequence[str] | None = None, *,
                     device: str = "cpu") -> AnalysisResults:
    """Step one: the analyses asked for (names of :data:`ANALYSES`, or {name: option}) of each
    run's best model (``best.pt``) on its own test split, computed on ``device``.  Runs on the same
    data are analysed together (CKA compares the runs of one dataset); with more than one dataset,
    each section's title names its data and its files' prefix is ``data<i>-``.  A run without a
    ``best.pt`` gets a note.  Raises `ReportError` where an analysis cannot be made, before any is
    computed; writes nothing."""
    asked = asked_analyses(analyses)
    out = AnalysisResults(asked)
    if not asked:
        return out
    groups, out.skipped = open_groups(runs, device)
    chosen = [(name, ANALYSES[name], asked[name]) for name in ANALYSES if name in asked]
    for group in groups:
        for _, analysis, option in chosen:
            if analysis.check is not None:
                analysis.check(group, option)
    many = len(groups) > 1
    for i, group in enumerate(groups):
        prefix = f"data{i + 1}-" if many else ""
        where = f" ({group.data.description})" if many else ""
        for name, analysis, option in chosen:
            out.items.append(Analysed(f"{analysis.title}{where}", name, analysis.compute(group, option),
                                      prefix))
    return out


def draw_analyses(results: AnalysisResults, folder: Path) -> AnalysisResults:
    """Step two: each analysis's figures under ``folder`` (its draw step); ``results`` with their
    paths filled in."""
    for item in results.items:
        item.figures = ANALYSES[item.name].draw(item.result, Path(folder), item.prefix)
    return results


def analyse(runs: Sequence[Run], folder: Path, analyses: Mapping[str, Any] | Sequence[str] | None = None, *,
            confusion: bool = False, cka: bool = False, gradcam: str | None = None,
            device: str = "cpu") -> list[tuple[str, Section]]:
    """The analyses asked for, computed (:func:`compute_analyses`), drawn under ``folder``
    (:func:`draw_analyses`) and their text files written there: [(section title, section)]."""
    asked = asked_analyses(analyses, confusion=confusion, cka=cka, gradcam=gradcam)
    results = draw_analyses(compute_analyses(runs, asked, device=device), folder)
    sections = results.sections()
    for item, (_, section) in zip(results.items, sections, strict=False):
        section.write_files(folder, item.prefix)
    return sections
