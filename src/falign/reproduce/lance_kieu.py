"""Lance & Kieu 2026's analyses of the five final models side by side, as the evidence queue's
``analyses`` unit: alignment and sign concordance over training (from the runs' records), linear
CKA against BP on the paper's three test subsets, Grad-CAM exemplars.  Their numbers are one
:class:`~falign.records.AnalysesRecord` (``analyses.json``, committed with the figures under
``results/runs/lance-kieu-2026/analyses/``; the summary's ``measures["analyses"]``), and
:func:`write_page` puts the figures and numbers into the docs."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..records import AnalysesRecord, RecordError, ReproductionSummary
from ..training.config import ExperimentConfig
from ..training.record import RunRecord
from .base import Context, Outcome, best_model, dataset_of

NAME = "lance-kieu-2026"
ARCH1_LAYERS = ["conv1", "conv2", "fc1", "fc2", "fc3"]
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
#: the per-layer measures kept per epoch (see falign.analysis.alignment)
MEASURES = ("update_angle", "sign_concordance", "update_sign_concordance")


def alignment_by_epoch(record: RunRecord) -> dict[str, dict[str, list[Any]]]:
    """layer -> {"epoch": [...], measure: [mean over the epoch's probes, None where undefined]}."""
    by: dict[str, dict[int, dict[str, list[float]]]] = {}
    for probe in record.alignment:
        for layer, values in probe.layers.items():
            slot = by.setdefault(layer, {}).setdefault(probe.epoch, {m: [] for m in MEASURES})
            for m in MEASURES:
                v = values.get(m)
                if v is not None and math.isfinite(v):
                    slot[m].append(float(v))
    out = {}
    for layer, epochs in by.items():
        keys = sorted(epochs)
        out[layer] = {"epoch": keys, **{m: [sum(epochs[e][m]) / len(epochs[e][m]) if epochs[e][m] else None
                                            for e in keys] for m in MEASURES}}
    return out


def analyse(ctx: Context, cfg: ExperimentConfig, finals: Mapping[str, str], fixed_feedback: list[str],
            outcome: Outcome) -> AnalysesRecord:
    """The analyses of the final models ``finals`` (label -> run directory under the target's
    folder); their figures (PNG) go into ``ctx.out/analyses``, and with their notes into
    ``outcome``."""
    from ..plots import NothingToPlot, plot_alignment, plot_sign_concordance
    from ..plots.compared import draw_cka, draw_exemplars
    from ..report.analyses import cka_section, exemplar_section
    from ..report.compute import cka_comparison, exemplar_comparison

    folder = ctx.out / "analyses"
    folder.mkdir(parents=True, exist_ok=True)
    records = {label: RunRecord.read(ctx.out / rel / "tracking.json") for label, rel in finals.items()}
    figures: list[Path] = []
    for stem, title, draw in (
            ("alignment", "Update angle to BP's gradient", lambda p: plot_alignment(records, p)),
            ("sign-concordance", "Sign concordance", lambda p: plot_sign_concordance(records, p))):
        try:
            png = next(p for p in draw(folder / stem) if p.suffix == ".png")
        except NothingToPlot:
            continue
        figures.append(png)
        outcome.figures.append((title, png, "Over training steps, one line a method (the runs' "
                                "alignment probes, train.alignment_every)."))

    device = torch.device("cpu")
    data = dataset_of(cfg, device)
    x, y = data.eval_transform(data.test.x), data.test.y
    models = {label: best_model(ctx.out / rel, device) for label, rel in finals.items()}
    cka = cka_comparison(models, x, y, layers=ARCH1_LAYERS, reference="bp", title="BP")
    cka_figs = draw_cka(cka, folder)
    grid = exemplar_comparison(models, "conv2", x, y, k=3 if ctx.smoke else 5, n=6 if ctx.smoke else 9,
                               mean=CIFAR_MEAN, std=CIFAR_STD)
    grid_figs = draw_exemplars(grid, folder)
    for section in (cka_section(cka, cka_figs), exemplar_section(grid, grid_figs)):
        outcome.figures += section.figures
        outcome.notes += section.notes
    figures += [p for paths in cka_figs.values() for p in paths if p.suffix == ".png"]
    figures += [p for p in grid_figs if p.suffix == ".png"]
    for p in folder.glob("*.pdf"):  # the record keeps PNGs only
        p.unlink()

    cka_numbers = {label: {subset: {"n": r.n + r.dropped, "used": r.n, "layers": list(r.layers_a),
                                    "diagonal": [None if not math.isfinite(v) else round(v, 4)
                                                 for v in r.diagonal().tolist()],
                                    "skipped": r.skipped}
                           for subset, r in subsets.items()}
                   for key, subsets in cka.results.items()
                   for label in [key.rsplit(" vs ", 1)[0]]}  # "fa vs bp" -> "fa"
    exemplars = {label: {"layer": s.layer, "channels": list(s.channels),
                         "indices": {str(c): s.indices[c].tolist() for c in s.channels}}
                 for label, s in grid.sets.items()}
    return AnalysesRecord(scale=ctx.scale, models=dict(finals),
                          alignment={label: alignment_by_epoch(r) for label, r in records.items()},
                          cka=cka_numbers, exemplars=exemplars, fixed_feedback=tuple(fixed_feedback),
                          figures=tuple(p.name for p in figures))


# -- the docs section ------------------------------------------------------------------------------

#: the page holding the section, its markers, the figures' folder (repository paths)
PAGE, FIGURES = "docs/experiments/results.md", "docs/figures"
BEGIN, END = "<!-- lance-kieu-2026:analyses:begin -->", "<!-- lance-kieu-2026:analyses:end -->"


def _cell(v: Any, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def section(record: AnalysesRecord | None, figures: Mapping[str, str]) -> str:
    """The Markdown between the markers: the analyses' numbers and figures (``figures``: the
    record's figure name -> its path relative to the page)."""
    out = [BEGIN, "#### Lance & Kieu 2026: analyses of the five final models", ""]
    if record is None:
        return "\n".join([*out, "Not measured yet: the evidence queue's `analyses` unit of "
                          "`lance-kieu-2026` runs once the five final models exist "
                          "(`python -m falign.reproduce.queue status lance-kieu-2026 --runs DIR`).",
                          "", END])
    out += [f"Made by the `analyses` unit of the evidence queue ({record.scale} scale) from the final "
            "runs " + ", ".join(f"`{rel}`" for rel in record.models.values()) + "; the numbers are "
            f"`results/runs/{NAME}/analyses/analyses.json` and `measures.analyses` of "
            f"`results/{NAME}.json`.", ""]
    subsets = {s: None for c in record.cka.values() for s in c}
    for subset in subsets:
        out += [f"**CKA vs BP, diagonal ({subset})**: linear CKA (unbiased minibatch estimator) "
                "between each layer of a method and the same layer of BP.", "",
                "| method | n | " + " | ".join(ARCH1_LAYERS) + " |", "|---|---|" + "---|" * len(ARCH1_LAYERS)]
        for label, by in record.cka.items():
            r = by.get(subset)
            if r is None:
                continue
            diag = r.get("diagonal") or []
            out.append(f"| {label} | {r.get('n')} | " + " | ".join(_cell(v) for v in diag) + " |")
        out.append("")
    out += ["**Alignment at the last epoch**: mean over layers of the update angle to BP's gradient "
            "(degrees) and of sign concordance (B vs W; update vs BP's gradient).", "",
            "| method | epochs | update angle | sign(B) = sign(W) | sign(update) = sign(gradient) |",
            "|---|---|---|---|---|"]
    for label, layers in record.alignment.items():
        last = {m: [v[m][-1] for v in layers.values() if v.get(m) and v[m][-1] is not None] for m in MEASURES}
        epochs = max((v["epoch"][-1] for v in layers.values() if v.get("epoch")), default=None)
        mean = {m: sum(vs) / len(vs) if vs else None for m, vs in last.items()}
        out.append(f"| {label} | {epochs or '-'} | {_cell(mean['update_angle'], 1)} | "
                   f"{_cell(mean['sign_concordance'])} | {_cell(mean['update_sign_concordance'])} |")
    out.append("")
    if record.fixed_feedback:
        out += ["Fixed feedback: " + "; ".join(record.fixed_feedback) + ".", ""]
    for name in record.figures:
        if name in figures:
            out += [f"![{name[:-4]}]({figures[name]})", ""]
    return "\n".join([*out, END])


def write_page(results: Path, repo: Path) -> list[Path]:
    """Rewrite the analyses section of docs/experiments/results.md (between its markers) and
    copy the analyses' figures from the committed records into docs/figures
    (``lance-kieu-2026-<name>.png``); the files changed."""
    from .queue import records_dir

    page = Path(repo) / PAGE
    if not page.is_file():
        return []
    try:
        summary = ReproductionSummary.load(Path(results) / f"{NAME}.json")
        raw = summary.measures.get("analyses")
        record = None if raw is None else AnalysesRecord.from_dict(raw, f"{NAME}.json: measures.analyses")
    except RecordError:
        record = None
    changed, figures = [], {}
    if record is not None and record.scale == "full":
        src = records_dir(Path(results), NAME) / "analyses"
        for name in record.figures:
            if not (src / name).is_file():
                continue
            dst = Path(repo) / FIGURES / f"{NAME}-{name}"
            if not dst.is_file() or dst.read_bytes() != (src / name).read_bytes():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / name, dst)
                changed.append(dst)
            figures[name] = os.path.relpath(dst, page.parent)
    else:
        record = None
    text = page.read_text()
    block = section(record, figures)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        new = head + block + rest.split(END, 1)[1]
    else:
        new = text.rstrip("\n") + "\n\n" + block + "\n"
    if new != text:
        page.write_text(new)
        changed.insert(0, page)
    return changed
