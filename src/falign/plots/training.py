"""Figures of training runs: accuracy and loss per epoch, alignment and sign concordance per step.

Every function takes ``runs``: method label -> the record of one run, a
`falign.training.RunRecord` (what `falign.training.train` returns and ``RunRecord.read`` reads
from ``tracking.json``; the plain ``tracking.json`` object is accepted too). A method keeps its
colour and marker from its position in ``runs``, in every figure, also where it has nothing to
draw (BP has no alignment records), so the figures of one report read together. Missing values
(None) leave gaps. A figure whose data is absent from every run raises `NothingToPlot` instead of
writing an empty plot.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from falign.plots import _style
from falign.records import AlignmentRecord, RunRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "ANGLE_MEASURES",
    "NothingToPlot",
    "RUN_FIGURES",
    "draw_run_figures",
    "plot_alignment",
    "plot_loss_curves",
    "plot_sign_concordance",
    "plot_val_accuracy",
]

# measure -> y-axis label; all three are angles in degrees, 90 = orthogonal.
ANGLE_MEASURES: dict[str, str] = {
    "update_angle": "Update vs BP gradient (degrees)",
    "signal_angle": "Sent signal vs BP signal (degrees)",
    "feedback_angle": "Angle between B and W (degrees)",
    "delta_angle": "Received error vs BP's (degrees)",
}
# train.loss -> y-axis label. The loop records loss per example; mse and bce are also averaged over
# the outputs when the reduction is "mean", hence no "per example" on those.
LOSS_LABELS: dict[str | None, str] = {
    "cross_entropy": "Cross-entropy loss (nats per example)",
    "bce": "Binary cross-entropy loss (nats)",
    "mse": "Squared-error loss (dimensionless)",
    None: "Loss (dimensionless)",
}
STEP_LABEL = "Training step (updates)"
NAN = float("nan")


class NothingToPlot(ValueError):
    """None of the runs holds the data a figure needs (e.g. no alignment records)."""


Runs = Mapping[str, RunRecord | Mapping[str, Any]]


# -- data out of run records -------------------------------------------------------------------

def _as_records(runs: Runs) -> dict[str, RunRecord]:
    return {label: r if isinstance(r, RunRecord) else RunRecord.from_dict(r, where=f"run {label!r}")
            for label, r in runs.items()}


def _number(value: Any, scale: float = 1.0) -> float:
    return NAN if value is None else float(value) * scale


def _epoch_series(run: RunRecord, key: str, scale: float = 1.0) -> tuple[list[int], list[float]]:
    """(epochs, values) of one per-epoch metric; ([], []) when the run never recorded it."""
    xs = [e.epoch for e in run.epochs]
    ys = [_number(getattr(e, key), scale) for e in run.epochs]
    return (xs, ys) if any(not math.isnan(y) for y in ys) else ([], [])


def _records(run: RunRecord) -> list[AlignmentRecord]:
    return sorted(run.alignment, key=lambda r: r.step)


def _layer_names(runs: Mapping[str, RunRecord], measures: Sequence[str]) -> list[str]:
    """Layers with at least one value of ``measures`` in any run, in order of first appearance."""
    names: dict[str, None] = {}
    for run in runs.values():
        for record in _records(run):
            for layer, values in record.layers.items():
                if any(values.get(m) is not None for m in measures):
                    names.setdefault(layer)
    return list(names)


def _layer_series(run: RunRecord, layer: str, measure: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one measure of one layer; ([], []) when it is never recorded."""
    xs, ys = [], []
    for record in _records(run):
        values = record.layers.get(layer)
        if values is not None:
            xs.append(record.step)
            ys.append(_number(values.get(measure)))
    return (xs, ys) if any(not math.isnan(y) for y in ys) else ([], [])


def _layer_mean_series(run: RunRecord, measure: str) -> tuple[list[int], list[float]]:
    """(steps, mean over the layers that report ``measure`` at that step)."""
    xs, ys = [], []
    for record in _records(run):
        present = [float(v[measure]) for v in record.layers.values() if v.get(measure) is not None]
        if present:
            xs.append(record.step)
            ys.append(sum(present) / len(present))
    return xs, ys


# -- drawing ----------------------------------------------------------------------------------

def _looks(runs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """label -> line style kwargs (colour, marker), fixed by the label's position in ``runs``."""
    return {label: {"color": _style.PALETTE[i % len(_style.PALETTE)],
                    "marker": _style.MARKERS[i % len(_style.MARKERS)]}
            for i, label in enumerate(runs)}


def _line(ax: Axes, xs: Sequence[float], ys: Sequence[float], look: Mapping[str, Any], **kwargs: Any) -> None:
    ax.plot(xs, ys, markersize=3.5, markevery=max(1, math.ceil(len(ys) / 20)), linewidth=1.3,
            **look, **kwargs)


def _integer_x(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _panels(n: int, ncols: int | None, panel_w: float = 3.0,
            panel_h: float = 2.4) -> tuple[Figure, list[Axes]]:
    """A figure with ``n`` panels (shared axes) on a grid; unused grid cells are hidden."""
    ncols = ncols or min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = _style.new_figure(min(panel_w * ncols + 0.6, 16.0), min(panel_h * nrows + 0.8, 30.0))
    grid = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _figure_legend(fig: Figure, axes: Sequence[Axes], order: Sequence[str] = (),
                   extra: Mapping[str, Any] | None = None) -> None:
    """One legend below all panels: each label once, those in ``order`` first, then ``extra``
    (label -> proxy artist), then any other labelled line (reference lines)."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    labels = [label for label in order if label in seen]
    handles = {**{label: seen[label] for label in labels}, **(extra or {}),
               **{label: h for label, h in seen.items() if label not in labels}}
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center",
                   ncols=min(len(handles), 5), frameon=False)


def _finish(ax: Axes, xlabel: str, ylabel: str, title: str = "") -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, linewidth=0.4, alpha=0.5)


# -- figures ----------------------------------------------------------------------------------

def plot_val_accuracy(
    runs: Runs,
    path_stem: str | os.PathLike[str],
    *,
    references: Mapping[str, float] | None = None,
    title: str = "",
) -> list[Path]:
    """Validation accuracy (%) per epoch, one line per method.

    ``references`` (label -> accuracy in %) draws dashed horizontal lines, e.g. published
    numbers, in the colour of that method. Writes ``path_stem``.png and .pdf; returns their paths.
    """
    runs = _as_records(runs)
    looks = _looks({**runs, **{k: None for k in references or {} if k not in runs}})
    series = {label: _epoch_series(t, "val_acc", 100.0) for label, t in runs.items()}
    if not any(xs for xs, _ in series.values()):
        raise NothingToPlot("no run recorded a validation accuracy")
    with _style.style_context():
        fig = _style.new_figure(5.5, 3.6)
        ax = fig.add_subplot()
        for label, (xs, ys) in series.items():
            if xs:
                _line(ax, xs, ys, looks[label], label=label)
        for label, value in (references or {}).items():
            ax.axhline(float(value), color=looks[label]["color"], linestyle=(0, (4, 2)), linewidth=1.0,
                       label=f"{label} (published)")
        _integer_x(ax)
        _finish(ax, "Epoch", "Validation accuracy (%)", title)
        ax.legend(frameon=False)
        return _style.save_figure(fig, path_stem)


def plot_loss_curves(
    runs: Runs,
    path_stem: str | os.PathLike[str],
    *,
    ylabel: str | None = None,
    logy: bool = False,
    title: str = "",
) -> list[Path]:
    """Training (solid) and validation (dashed) loss per epoch, one colour per method.

    Training loss is the mean over the epoch's minibatches as the weights moved; validation loss
    is measured after the epoch. ``ylabel`` defaults to the runs' loss (``train.loss`` of their
    configs). Writes ``path_stem``.png and .pdf; returns their paths.
    """
    runs = _as_records(runs)
    if ylabel is None:
        kinds = {(t.config.get("train") or {}).get("loss") for t in runs.values()}
        ylabel = LOSS_LABELS.get(kinds.pop(), LOSS_LABELS[None]) if len(kinds) == 1 else LOSS_LABELS[None]
    looks = _looks(runs)
    train = {label: _epoch_series(t, "train_loss") for label, t in runs.items()}
    val = {label: _epoch_series(t, "val_loss") for label, t in runs.items()}
    if not any(xs for xs, _ in [*train.values(), *val.values()]):
        raise NothingToPlot("no run recorded a loss")
    with _style.style_context():
        fig = _style.new_figure(5.5, 3.6)
        ax = fig.add_subplot()
        for label in runs:
            if train[label][0]:
                _line(ax, *train[label], looks[label], label=f"{label} train", linestyle="-")
            if val[label][0]:
                _line(ax, *val[label], looks[label], label=f"{label} validation", linestyle="--",
                      markerfacecolor="white")
        if logy:
            ax.set_yscale("log")
        _integer_x(ax)
        _finish(ax, "Epoch", ylabel, title)
        ax.legend(frameon=False, ncols=2 if len(runs) > 3 else 1)
        return _style.save_figure(fig, path_stem)


def plot_alignment(
    runs: Runs,
    path_stem: str | os.PathLike[str],
    measure: str = "update_angle",
    *,
    ncols: int | None = None,
    title: str = "",
) -> list[Path]:
    """One angle over training steps: one panel per layer, one line per method.

    ``measure`` is ``update_angle``, ``signal_angle``, ``delta_angle`` or ``feedback_angle`` (see
    `falign.analysis.alignment`). A dotted line marks 90 degrees (orthogonal, no alignment).
    Layers for which no run has a value get no panel. Writes ``path_stem``.png and .pdf.
    """
    if measure not in ANGLE_MEASURES:
        raise ValueError(f"measure must be one of {sorted(ANGLE_MEASURES)}, got {measure!r}")
    runs = _as_records(runs)
    layers = _layer_names(runs, [measure])
    if not layers:
        raise NothingToPlot(f"no alignment record holds a value of {measure}")
    looks = _looks(runs)
    with _style.style_context():
        fig, axes = _panels(len(layers), ncols)
        for ax, layer in zip(axes, layers, strict=True):
            for label, run in runs.items():
                xs, ys = _layer_series(run, layer, measure)
                if xs:
                    _line(ax, xs, ys, looks[label], label=label)
            ax.axhline(90.0, color="#555555", linestyle=":", linewidth=0.9, label="90° (orthogonal)")
            _finish(ax, STEP_LABEL if ax.get_subplotspec().is_last_row() else "",
                    ANGLE_MEASURES[measure] if ax.get_subplotspec().is_first_col() else "", layer)
            _integer_x(ax)
            ax.tick_params(labelbottom=True)
        _figure_legend(fig, axes, list(runs))
        if title:
            fig.suptitle(title)
        return _style.save_figure(fig, path_stem)


def plot_sign_concordance(
    runs: Runs,
    path_stem: str | os.PathLike[str],
    per_layer: bool = False,
    *,
    ncols: int | None = None,
    title: str = "",
) -> list[Path]:
    """Sign concordance over training steps: sign(B) = sign(W), and sign(update) = sign(BP gradient).

    Main figure (``per_layer=False``): two panels, each the mean over layers that report it, one
    line per method. Supplementary (``per_layer=True``): one panel per layer, B vs W solid and
    update vs gradient dashed. A dotted line marks chance (0.5). Writes ``path_stem``.png and .pdf.
    """
    measures = {"sign_concordance": "B vs W", "update_sign_concordance": "update vs BP gradient"}
    ylabel = "Sign concordance (fraction of weights)"
    runs = _as_records(runs)
    looks = _looks(runs)
    extra: dict[str, Any] = {}
    with _style.style_context():
        if per_layer:
            from matplotlib.lines import Line2D

            layers = _layer_names(runs, list(measures))
            if not layers:
                raise NothingToPlot("no alignment record holds a sign concordance")
            fig, axes = _panels(len(layers), ncols)
            drawn: dict[str, None] = {}
            for ax, layer in zip(axes, layers, strict=True):
                for label, run in runs.items():
                    for measure, style in zip(measures, ("-", "--"), strict=True):
                        xs, ys = _layer_series(run, layer, measure)
                        if xs:
                            _line(ax, xs, ys, looks[label], linestyle=style)
                            drawn.setdefault(label)
                _chance(ax)
                _integer_x(ax)
                _finish(ax, STEP_LABEL if ax.get_subplotspec().is_last_row() else "",
                        ylabel if ax.get_subplotspec().is_first_col() else "", layer)
                ax.tick_params(labelbottom=True)
            # colour = method, line style = measure: proxies instead of method x measure entries
            extra = {label: Line2D([], [], linewidth=1.3, **looks[label]) for label in drawn}
            extra.update({f"{text} ({'solid' if style == '-' else 'dashed'})":
                          Line2D([], [], color="#333333", linestyle=style, linewidth=1.3)
                          for text, style in zip(measures.values(), ("-", "--"), strict=True)})
        else:
            series = {m: {label: _layer_mean_series(t, m) for label, t in runs.items()} for m in measures}
            if not any(xs for by_run in series.values() for xs, _ in by_run.values()):
                raise NothingToPlot("no alignment record holds a sign concordance")
            fig, axes = _panels(2, 2, panel_w=3.4, panel_h=2.9)
            for ax, (measure, by_run) in zip(axes, series.items(), strict=True):
                for label, (xs, ys) in by_run.items():
                    if xs:
                        _line(ax, xs, ys, looks[label], label=label)
                _chance(ax)
                _integer_x(ax)
                _finish(ax, STEP_LABEL, ylabel if measure == "sign_concordance" else "",
                        f"{measures[measure]} (mean over layers)")
                ax.tick_params(labelleft=True)
        axes[0].set_ylim(-0.02, 1.02)
        _figure_legend(fig, axes, list(runs), extra)
        if title:
            fig.suptitle(title)
        return _style.save_figure(fig, path_stem)


def _chance(ax: Axes) -> None:
    ax.axhline(0.5, color="#555555", linestyle=":", linewidth=0.9, label="chance (0.5)")


#: the figures of a set of runs, by file stem, in the order a report shows them: how each is drawn
#: from the runs' records (``references``: a method's published test accuracy in %)
RUN_FIGURES: dict[str, Callable[[Runs, Path, dict[str, float]], list[Path]]] = {
    "val_accuracy": lambda runs, stem, refs: plot_val_accuracy(runs, stem, references=refs),
    "loss_curves": lambda runs, stem, refs: plot_loss_curves(runs, stem),
    "update_angle": lambda runs, stem, refs: plot_alignment(runs, stem, "update_angle"),
    "signal_angle": lambda runs, stem, refs: plot_alignment(runs, stem, "signal_angle"),
    "feedback_angle": lambda runs, stem, refs: plot_alignment(runs, stem, "feedback_angle"),
    "sign_concordance": lambda runs, stem, refs: plot_sign_concordance(runs, stem, per_layer=False),
    "sign_concordance_per_layer": lambda runs, stem, refs: plot_sign_concordance(runs, stem, per_layer=True),
}


def draw_run_figures(
    runs: Runs,
    folder: str | os.PathLike[str],
    references: Mapping[str, float] | None = None,
) -> dict[str, list[Path] | NothingToPlot]:
    """Every figure of :data:`RUN_FIGURES` under ``folder`` (``<name>.png`` and ``.pdf``):
    {name: [png, pdf]}, or for a figure whose data no run has, the `NothingToPlot` it raised
    (and its files from an earlier drawing into the same folder removed)."""
    folder = Path(folder)
    refs = dict(references or {})
    out: dict[str, list[Path] | NothingToPlot] = {}
    for name, draw in RUN_FIGURES.items():
        stem = folder / name
        try:
            out[name] = list(draw(runs, stem, refs))
        except NothingToPlot as err:
            for stale in (stem.with_suffix(".png"), stem.with_suffix(".pdf")):
                stale.unlink(missing_ok=True)
            out[name] = err
    return out
