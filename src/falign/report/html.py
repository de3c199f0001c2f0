"""``write_report``: one self-contained HTML page (figures inlined), ``results.txt`` and the figures.

The report is made in three steps: the analyses are computed from the opened runs
(:func:`falign.report.analyses.compute_analyses`: results, no files); the figures are drawn from
the runs' records and those results (:func:`falign.plots.draw_run_figures`,
:func:`falign.report.analyses.draw_analyses`: paths); :func:`write_html` takes the records, the
results and the figure paths and writes the page and ``results.txt``.  It draws nothing and opens
no checkpoint.

    from falign.report import write_report
    write_report(["runs/compare-mnist"], Path("report"), published={"test_acc": {"bp": 98.2}})
    write_report(["runs/sweep-x"], Path("report"), analyses={"confusion": True, "cka": True,
                                                             "gradcam": "conv2"})

A figure or section without data says how to get it (``train.alignment_every`` for the
alignment figures, ``--confusion`` for the confusion matrices, ...).
"""

from __future__ import annotations

import base64
import html
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import __version__
from ..plots.training import RUN_FIGURES, NothingToPlot, draw_run_figures
from ..records import RunRecord
from ..training.results import RESULT_COLUMNS, numeric_columns, result_cells
from .analyses import AnalysisResults, Section, asked_analyses, compute_analyses, draw_analyses
from .runs import Run, Sources, load_sources, published_columns, seed_groups, summary
from .text import (
    JPEG_NOTE,
    config_summary,
    is_jpeg,
    model_text,
    published_cells,
    results_txt,
    shared_or_each,
)

__all__ = ["FIGURES", "write_html", "write_report"]

Runs = Mapping[str, RunRecord]


@dataclass(frozen=True)
class FigureSpec:
    """How the page shows one figure of the runs (drawn by `falign.plots.draw_run_figures`)."""

    name: str  # file stem under figures/, a key of falign.plots.RUN_FIGURES
    title: str
    caption: str
    needs: str = ""  # drawn from: "val" (a validation split), "alignment" (train.alignment_every)

    @property
    def draw(self) -> Callable[[Runs, Path, dict[str, float]], list[Path]]:
        """The function of `falign.plots` that draws it."""
        return RUN_FIGURES[self.name]


#: how to get the data of a figure that could not be drawn, by what it needs
HOW_TO_GET = {
    "val": "no run has a validation split: set data.val_size (e.g. --set data.val_size=5000) and "
           "train again",
    "alignment": "no alignment records: set train.alignment_every (e.g. --set "
                 "train.alignment_every=10) and train again",
}


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("val_accuracy", "Validation accuracy",
               "Validation accuracy after each epoch. Dashed lines, where shown: published test accuracy.",
               "val"),
    FigureSpec("loss_curves", "Loss curves",
               "Training loss (solid; mean over the epoch's minibatches while the weights moved) and "
               "validation loss (dashed; measured after the epoch)."),
    FigureSpec("update_angle", "Update alignment",
               "Angle between each layer's weight update and the true backprop gradient on the same "
               "batch; 0 degrees is backprop, 90 degrees is no alignment.", "alignment"),
    FigureSpec("signal_angle", "Signal alignment",
               "Angle between the signal a layer sends to its input and backprop's signal at the same "
               "point (for DFA: the injected B e against backprop's signal there).", "alignment"),
    FigureSpec("feedback_angle", "Feedback alignment",
               "Angle between the effective feedback matrix B and the weights W (undefined, so absent, "
               "where B does not have W's shape: DFA, dense convolutional FA).", "alignment"),
    FigureSpec("sign_concordance", "Sign concordance",
               "Fraction of weights with sign(B) = sign(W) (left) and with sign(update) = sign(backprop "
               "gradient) (right), averaged over the layers that report it. 0.5 is chance.", "alignment"),
    FigureSpec("sign_concordance_per_layer", "Sign concordance per layer (supplementary)",
               "As above, one panel per layer: B vs W solid, update vs gradient dashed.", "alignment"),
)

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 68rem; margin: 2rem auto; padding: 0 1rem;
       color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9rem; color: #333; }
.warning { border-left: 4px solid #D55E00; background: #fdf0e6; padding: 0.5rem 0.8rem; }
.skipped { color: #555; font-style: italic; }
pre { background: #f7f7f7; padding: 0.6rem; overflow-x: auto; font-size: 0.85rem; }
details { margin: 0.4rem 0; } summary { cursor: pointer; }
"""


def e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """An HTML table of already-formatted text (escaped here); numeric columns right-aligned."""
    numeric = numeric_columns(rows)
    out = ["<table>", "<tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr>"]
    for row in rows:
        cells = "".join(f'<td class="num">{e(c)}</td>' if num else f"<td>{e(c)}</td>"
                        for c, num in zip(row, numeric, strict=True))
        out.append(f"<tr>{cells}</tr>")
    out.append("</table>")
    return out


def _note(note: str) -> str:
    """One note: a line of text, or a heading line over a preformatted block (a table)."""
    head, _, body = note.partition("\n")
    if not body:
        return f"<li>{e(note)}</li>"
    return f"<li>{e(head)}<pre>{e(body)}</pre></li>"


def _results_table(runs: Sequence[Run], published: Mapping[str, Mapping[str, float]]) -> list[str]:
    rows = [summary(run) for run in runs]
    out = _table(*result_cells(rows, [*RESULT_COLUMNS, *published_cells(published)], label="method"))
    on_test = [r.label for r in rows if r.selected_on == "test"]
    if on_test:
        out.append(f"<p>The best epoch was chosen on the test set (no validation split), so "
                   f"&ldquo;best val %&rdquo; is a test accuracy for: {e(', '.join(on_test))}.</p>")
    last = [r.label for r in rows if r.selected_on == "last"]
    if last:
        out.append(f"<p>No model selection (<code>train.select_on: last</code>): the last epoch is "
                   f"tested for: {e(', '.join(last))}.</p>")
    return out


def _setup_table(runs: Sequence[Run]) -> list[str]:
    configs = [config_summary(run) for run in runs]
    keys = ["rule", "optimiser", "lr", "weight decay"] + (
        ["scale"] if any(c["scale"] != "-" for c in configs) else [])
    rows = [[run.label, *(c[k] for k in keys), model_text(run), str(run.path)]
            for run, c in zip(runs, configs, strict=True)]
    return _table(["method", *keys, "model", "run directory"], rows)


def _environment_table(runs: Sequence[Run]) -> list[str]:
    envs = [run.record.environment for run in runs]
    keys = list(dict.fromkeys(k for env in envs for k in env))
    if not keys:
        return ["<p>No environment recorded.</p>"]
    if all(env == envs[0] for env in envs):
        return _table(["", "value"], [[k, str(envs[0].get(k, "-"))] for k in keys])
    return _table(["", *(run.label for run in runs)],
                  [[k, *(str(env.get(k, "-")) for env in envs)] for k in keys])


def _shared_line(name: str, items: list[tuple[str | None, str]]) -> list[str]:
    if len(items) == 1 and items[0][0] is None:
        return [f"<p><strong>{e(name)}:</strong> {e(items[0][1])}</p>"]
    return [f"<p><strong>{e(name)}:</strong></p>", "<ul>",
            *(f"<li>{e(label)}: {e(text)}</li>" for label, text in items), "</ul>"]


def _missing(spec: FigureSpec, runs: Sequence[Run], err: NothingToPlot) -> str:
    """Why a figure was not drawn, and how to get its data where a config key makes it."""
    if spec.needs == "alignment" and not any(run.record.alignment for run in runs):
        return HOW_TO_GET["alignment"]
    if spec.needs == "val" and not any(run.record.val_curve for run in runs):
        return HOW_TO_GET["val"]
    return str(err)


def _figures(runs: Sequence[Run], drawn: Mapping[str, Sequence[Path] | NothingToPlot]) -> list[str]:
    out = []
    said: set[str] = set()  # one line for all the figures that lack the same data
    for spec in FIGURES:
        paths = drawn.get(spec.name)
        if paths is None:
            continue
        if isinstance(paths, NothingToPlot):
            why = _missing(spec, runs, paths)
            if why in HOW_TO_GET.values():
                if why not in said:
                    titles = [f.title for f in FIGURES if f.needs == spec.needs]
                    out.append(f'<p class="skipped">{e(", ".join(titles))}: not drawn, {e(why)}.</p>')
                said.add(why)
                continue
            out.append(f'<p class="skipped">{e(spec.title)}: not drawn, {e(why)}.</p>')
            continue
        png, pdf = (Path(p) for p in paths)
        out += _figure_html(spec.title, png, f"{spec.caption} Files: figures/{png.name}, "
                            f"figures/{pdf.name}.")
    return out


def _seed_table(groups) -> list[str]:
    from ..training.compare_text import seed_cells

    return [*_table(*seed_cells(groups, label="method")),
            "<p>Runs whose configs differ only in the seed, grouped: mean &plusmn; sample standard "
            "deviation (n &minus; 1) over the seeds listed.</p>"]


def _sweep_html(sources: Sources) -> list[str]:
    """Per sweep: each rule's trials, best parameters and final runs (mean ± std)."""
    from ..training.compare_text import pct_pm

    out = []
    for source in sources.of_kind("sweep"):
        sweep = source.record
        cells = []
        for label, entry in sweep.rules.items():
            trials = entry.trials
            states = ", ".join(f"{n} {state.lower()}" for state, n in sorted(
                Counter(t.state for t in trials).items()))
            params = ", ".join(f"{k}={v}" for k, v in (entry.best_params or {}).items())
            fin = entry.final
            seeds = ",".join(str(r.seed) for r in fin.runs) if fin is not None else ""
            cells.append([str(label), f"{len(trials)} ({states})" if states else str(len(trials)),
                          params or "-", seeds or "-",
                          pct_pm(fin.test_acc_mean if fin else None, fin.test_acc_std if fin else None)])
        out += [f"<h3>Sweep {e(source.path)}</h3>",
                f"<p>Sampler: {e(sweep.sampler or '?')}; the best parameters of each rule "
                "(best validation accuracy of its short trials) trained on the final seeds.</p>",
                *_table(["rule", "trials", "best params", "final seeds", "final test % (mean ± std)"],
                        cells)]
    return out


def _reproduce_html(sources: Sources) -> list[str]:
    out = []
    for source in sources.of_kind("reproduce"):
        m = source.record
        out.append(f"<p><strong>Reproduction</strong> {e(m.target or '?')}, {e(m.scale or '?')} "
                   f"scale, {e(m.status)}: {e(source.path)}</p>")
        extra = list(m.extra_rows or ())
        if extra:
            keys = list(dict.fromkeys(k for row in extra for k in row))
            out += _table(keys, [["-" if row.get(k) is None else
                                  f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k])
                                  for k in keys] for row in extra])
    return out


def _analyses_html(sections: Sequence[tuple[str, Section]], asked: bool) -> list[str]:
    if not asked:
        return ["<h2>Analyses</h2>",
                '<p class="skipped">Confusion matrices, CKA between the runs\' layers and Grad-CAM '
                "exemplars of their best models: add --confusion, --cka or --gradcam LAYER to "
                "<code>falign report</code>.</p>"]
    out = ["<h2>Analyses</h2>", "<p>Each run's best model (best.pt) on the test split of its own "
           "dataset, evaluation transform.</p>"]
    for title, section in sections:
        out.append(f"<h3>{e(title)}</h3>")
        out += [f"<p>{e(note)}</p>" for note in section.notes]
        for fig_title, png, caption in section.figures:
            out += _figure_html(fig_title, png, f"{caption} File: figures/{png.name}.")
        for heading, text in section.texts:
            out += [f"<details><summary>{e(heading)}</summary>", f"<pre>{e(text)}</pre></details>"]
    return out


def _figure_html(title: str, png: Path, caption: str) -> list[str]:
    encoded = base64.b64encode(png.read_bytes()).decode("ascii")
    return ["<figure>", f"<h3>{e(title)}</h3>",
            f'<img alt="{e(title)}" src="data:image/png;base64,{encoded}">',
            f"<figcaption>{e(caption)}</figcaption>", "</figure>"]


def _default_title(runs: Sequence[Run]) -> str:
    datasets = {run.record.dataset for run in runs}
    models = {str((run.config.get("model") or {}).get("name") or "") for run in runs}
    shared = [values.pop() if len(values) == 1 else "" for values in (datasets, models)]
    parts = [s for s in shared if s]
    return "falign report" + (f": {' / '.join(parts)}" if parts else "")


def write_html(
    sources: Sources,
    out: str | os.PathLike[str],
    *,
    title: str | None = None,
    published: Mapping[str, Mapping[str, float]] | None = None,
    notes: Sequence[str] = (),
    run_figures: Mapping[str, Sequence[Path] | NothingToPlot] | None = None,
    analyses: AnalysisResults | None = None,
    extra_figures: Sequence[tuple[str, str | os.PathLike[str], str]] = (),
) -> Path:
    """Step three of :func:`write_report`: ``report.html`` and ``results.txt`` into ``out``, from the
    runs' records (``sources``, from :func:`falign.report.load_sources`), the figures already drawn
    of them (``run_figures``: {name of :data:`FIGURES`: [png, pdf] or the `NothingToPlot` of a
    figure without data}, as :func:`falign.plots.draw_run_figures` returns) and the analyses computed
    and drawn (``analyses``, as :func:`falign.report.analyses.draw_analyses` returns; their text
    files are written beside the figures, in ``out/figures``).  Draws nothing and opens no
    checkpoint.  The other arguments are :func:`write_report`'s.  Returns the path of
    ``report.html``."""
    runs = sources.runs
    out = Path(out)
    analyses = analyses if analyses is not None else AnalysisResults()
    asked = bool(analyses.asked)
    sections = analyses.sections()
    out.mkdir(parents=True, exist_ok=True)
    for item, (_, section) in zip(analyses.items, sections, strict=False):
        section.write_files(out / "figures", item.prefix)
    title = title or _default_title(runs)
    columns = published_columns(runs, published)
    groups = seed_groups(runs)
    notes = [*notes, *sources.notes]

    (out / "results.txt").write_text(results_txt(runs, title, columns, notes, groups), encoding="utf-8")

    datasets = shared_or_each(runs, lambda r: r.record.dataset or "unknown")
    page = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
            f"<title>{e(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
            f"<h1>{e(title)}</h1>",
            f"<p>{len(runs)} run{'s' if len(runs) != 1 else ''}; generated by falign {e(__version__)}.</p>"]
    page += _reproduce_html(sources)
    page += _shared_line("Dataset", datasets)
    if any(is_jpeg(text) for _, text in datasets):
        page.append(f'<p class="warning"><strong>JPEG copy:</strong> {e(JPEG_NOTE)}</p>')
    page += _shared_line("Model", shared_or_each(runs, model_text))
    if notes:
        page += ["<h2>Notes</h2>", "<ul>", *(_note(note) for note in notes), "</ul>"]
    page += ["<h2>Results</h2>", *_results_table(runs, columns)]
    if groups:
        page += ["<h2>Mean &plusmn; std over seeds</h2>", *_seed_table(groups)]
    if sources.of_kind("sweep"):
        page += ["<h2>Sweeps</h2>", *_sweep_html(sources)]
    page += ["<h2>Setup</h2>", *_setup_table(runs)]
    page += ["<h2>Figures</h2>", *_figures(runs, run_figures or {})]
    for fig_title, png, caption in extra_figures:
        page += _figure_html(fig_title, Path(png), caption)
    if not extra_figures or asked:
        page += _analyses_html(sections, asked)
    page += ["<h2>Configurations</h2>"]
    for run in runs:
        text = yaml.safe_dump(run.config, sort_keys=False)
        page += [f"<details><summary>{e(run.label)} &mdash; {e(run.path)}</summary>",
                 f"<pre>{e(text)}</pre></details>"]
    page += ["<h2>Environment</h2>", *_environment_table(runs), "</body>", "</html>"]
    path = out / "report.html"
    path.write_text("\n".join(page) + "\n", encoding="utf-8")
    return path


def write_report(
    run_dirs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    title: str | None = None,
    published: Mapping[str, Mapping[str, float]] | None = None,
    notes: Sequence[str] = (),
    extra_figures: Sequence[tuple[str, str | os.PathLike[str], str]] = (),
    analyses: Mapping[str, Any] | Sequence[str] | None = None,
    confusion: bool = False,
    cka: bool = False,
    gradcam: str | None = None,
    device: str = "cpu",
) -> Path:
    """Report on the runs in ``run_dirs`` into ``out``: ``report.html``, ``results.txt`` and
    ``figures/*.png|pdf``.  A path is a run directory, a comparison (all its runs, every seed), a
    sweep (its final runs, and a table of its trials) or a reproduction (every comparison, sweep
    and run in it).  Runs whose configs differ only in the seed get a mean ± std row.

    ``published`` maps a metric (``test_acc``, ``best_val_acc``) to {method label or rule: accuracy
    in %}; it adds a "published" column and dashed reference lines. ``notes`` are shown verbatim
    (escaped). ``extra_figures`` are (title, PNG path, caption) drawn elsewhere (CKA heatmaps,
    exemplar grids, confusion matrices), embedded after the training figures.  ``analyses`` names
    the analyses of each run's best model, made on ``device``: names of
    :data:`falign.report.analyses.ANALYSES`, or {name: option}, e.g. ``{"confusion": True, "cka":
    True, "gradcam": "conv2"}``; the keywords ``confusion``, ``cka`` and ``gradcam`` of earlier
    falign still work (deprecated).  Returns the path of ``report.html``.  Raises `ReportError` for
    a path that is none of these, or an analysis that cannot be made, before anything is written.

    The three steps, each callable on its own: compute the analyses
    (:func:`falign.report.analyses.compute_analyses`), draw the figures
    (:func:`falign.plots.draw_run_figures`, :func:`falign.report.analyses.draw_analyses`), write
    the page (:func:`write_html`).
    """
    sources = load_sources([Path(p) for p in run_dirs])
    out = Path(out)
    chosen = asked_analyses(analyses, confusion=confusion, cka=cka, gradcam=gradcam)
    results = compute_analyses(sources.runs, chosen, device=device)
    figures = out / "figures"
    draw_analyses(results, figures)
    references = published_columns(sources.runs, {"test_acc": (published or {}).get("test_acc") or {}})
    run_figures = draw_run_figures({run.label: run.record for run in sources.runs}, figures,
                                   next(iter(references.values()), {}))
    return write_html(sources, out, title=title, published=published, notes=notes, run_figures=run_figures,
                      analyses=results, extra_figures=extra_figures)
