"""Lance & Kieu 2026's analyses of the five final models side by side, as the evidence queue's
``analyses`` unit: alignment and sign concordance over training (from the runs' records), linear
CKA against BP on the paper's three test subsets, Grad-CAM exemplars.  Their numbers are one
:class:`~falign.records.AnalysesRecord` (``analyses.json``, committed with the figures under
``results/runs/lance-kieu-2026/analyses/``; the summary's ``measures["analyses"]``), and
:func:`write_page` puts the figures and numbers into the docs.

The seed spread: the paper reports one seed (42) of each method, and falign's FA finals at
seed 42 (kernel 36.10 against 40.07%, dense 30.89 against 35.77%) miss the published numbers by
more than the JPEG copy's 3.5-point tolerance.  The queue's ``spread`` units train both FA
finals' and BP's configs again at seeds 43 and 44 (only the seed changes);
:func:`spread_measures` makes their :class:`~falign.records.SeedSpread` (each method's mean
± std over the three seeds, the gap to BP seed by seed, whether the spread covers the miss),
which the summary keeps as ``measures["seed spread"]`` beside the seed-42 numbers that stay the
ones compared with the paper, and :func:`spread_section` writes into the docs.

The paper's config: falign's 3-epoch grid chose another scale of B for FA than the paper's
search (kernel s 0.1, dense s 0.05, against s 0.01 for both, lr 1e-3 everywhere).  The queue's
``paper-config`` units train each FA final's config again at seed 42 with only the paper's
values (:data:`PAPER_VALUES`) set; :func:`paper_config` makes their
:class:`~falign.records.PaperConfig` (each method at the grid's config and at the paper's,
beside the published number, and whether the paper's config closes the miss), which the
summary keeps as ``measures["paper config"]`` and :func:`paper_config_section` writes into the
docs."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..records import (
    AnalysesRecord,
    ConfigRun,
    MethodSummary,
    PaperConfig,
    PaperConfigMethod,
    RecordError,
    ReproductionSummary,
    SeedSpread,
    SpreadMethod,
)
from ..training.config import ExperimentConfig
from ..training.record import RunRecord
from .base import Context, Outcome, best_model, dataset_of

NAME = "lance-kieu-2026"
ARCH1_LAYERS = ["conv1", "conv2", "fc1", "fc2", "fc3"]
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
#: the per-layer measures kept per epoch (see falign.analysis.alignment)
MEASURES = ("update_angle", "sign_concordance", "update_sign_concordance")
#: the seed the paper reports, the seeds its finals are trained at again, and for which methods
#: (FA misses its tolerance; BP makes its gap like for like), the summary part they enter
PROTOCOL_SEED, SPREAD_SEEDS, SPREAD_METHODS, SPREAD_PART = 42, (43, 44), ("fa", "fa:dense", "bp"), "spread"
#: the summary's measure the spread is kept under
SPREAD_KEY = "seed spread"
#: the paper's chosen hyper-parameters (its results table) set into FA's finals' configs, at the
#: protocol seed; the part they train in and the summary's measure they are kept under
PAPER_VALUES = {label: {"optim.lr": 1e-3, "rule.options.scale": 0.01, "seed": PROTOCOL_SEED}
                for label in ("fa", "fa:dense")}
PAPER_PART, PAPER_KEY = "paper-config", "paper config"


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
    """Rewrite the analyses, seed-spread and paper-config sections of
    docs/experiments/results.md (between their markers) and copy the analyses' figures from the
    committed records into docs/figures (``lance-kieu-2026-<name>.png``); the files changed."""
    from .queue import records_dir

    page = Path(repo) / PAGE
    if not page.is_file():
        return []
    try:
        summary = ReproductionSummary.load(Path(results) / f"{NAME}.json")
        raw = summary.measures.get("analyses")
        record = None if raw is None else AnalysesRecord.from_dict(raw, f"{NAME}.json: measures.analyses")
    except RecordError:
        summary = record = None
    spread, paper, hours = None, None, {}
    if summary is not None and summary.scale == "full":
        raw = summary.measures.get(SPREAD_KEY)
        try:  # no measure yet: the protocol seed's numbers alone
            spread = seed_spread(summary.methods) if raw is None else \
                SeedSpread.from_dict(raw, f"{NAME}.json: measures.{SPREAD_KEY}")
        except RecordError:
            spread = None
        raw = summary.measures.get(PAPER_KEY)
        try:  # likewise: the grid's numbers alone
            paper = paper_config(summary.methods) if raw is None else \
                PaperConfig.from_dict(raw, f"{NAME}.json: measures.{PAPER_KEY}")
        except RecordError:
            paper = None
        hours = {m.method: sum(r.seconds or 0.0 for r in m.runs) / 3600 for m in summary.methods
                 if m.part == "sweep" and any(r.seconds for r in m.runs)}
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
    new = _put(_put(text, BEGIN, END, section(record, figures)), SPREAD_BEGIN, SPREAD_END,
               spread_section(spread, {m: h for m, h in hours.items() if m in SPREAD_METHODS}))
    new = _put(new, PAPER_BEGIN, PAPER_END,
               paper_config_section(paper, {m: h for m, h in hours.items() if m in PAPER_VALUES}))
    if new != text:
        page.write_text(new)
        changed.insert(0, page)
    return changed


# -- the seed spread -------------------------------------------------------------------------------

def seed_spread(methods: Sequence[MethodSummary]) -> SeedSpread:
    """The spread of :data:`SPREAD_METHODS` over the protocol seed (their final in the part
    ``sweep``) and :data:`SPREAD_SEEDS` (the part ``spread``), from a summary's entries; a seed
    not measured yet is None."""
    from .tables import TOLERANCE

    by = {(m.part, m.method): m for m in methods}
    spread = {}
    dataset = None
    for label in SPREAD_METHODS:
        final, more = by.get(("sweep", label)), by.get((SPREAD_PART, label))
        accs: dict[int, float | None] = {s: None for s in (PROTOCOL_SEED, *SPREAD_SEEDS)}
        for entry in (final, more):
            for r in entry.runs if entry is not None else ():
                seed = r.seed if r.seed is not None else _seed_of(r.run_dir)
                if seed in accs and r.test_acc is not None:
                    accs[seed] = r.test_acc
        dataset = dataset or (final.dataset if final is not None else None)
        spread[label] = SpreadMethod(test_acc=accs, published=final.published if final is not None else None)
    tol, gap_tol = TOLERANCE.get(dataset or "cifar10-jpeg", TOLERANCE["cifar10-jpeg"])
    return SeedSpread(reference="bp", protocol_seed=PROTOCOL_SEED, tolerance=tol, gap_tolerance=gap_tol,
                      methods=spread)


def _seed_of(run_dir: str) -> int | None:
    """The seed of a run directory ``.../seedK`` (a run with no record has no seed of its own)."""
    tail = Path(run_dir).name
    return int(tail[4:]) if tail.startswith("seed") and tail[4:].isdigit() else None


def spread_measures(methods: Sequence[MethodSummary]) -> dict[str, Any]:
    """``{"seed spread": ...}`` once a seed beside the protocol's is measured; else nothing."""
    record = seed_spread(methods)
    return {SPREAD_KEY: record.to_dict()} if record.measured else {}


def spread_units() -> list[str]:
    return [f"{SPREAD_PART}/{m}/seed{s}" for m in SPREAD_METHODS for s in SPREAD_SEEDS]


def unit_command(unit: str) -> str:
    """The commands that train one unit (spread, paper config) outside the queue and commit its
    record."""
    return (f"`falign reproduce {NAME} --scale full --part {unit} --out runs/{NAME} --records "
            f"results/runs/{NAME} --threads 1`, then `python -m falign.reproduce.queue collect {NAME} "
            f"{unit} --runs runs`")


def _pts(v: float | None, sign: bool = False) -> str:
    return "-" if v is None else (f"{v:+.2f}" if sign else f"{v:.2f}")


def spread_lines(record: SeedSpread) -> list[str]:
    """Sentences: each method's spread, its miss at the protocol seed and whether the spread
    covers it, and its gap to BP seed by seed."""
    out = []
    for label, m in record.methods.items():
        seeds = m.measured
        if not seeds:
            continue
        mean, std = m.mean_std
        line = (f"{label}: {mean:.2f} ± {std:.2f}% over seed{'s' if len(seeds) > 1 else ''} "
                f"{', '.join(map(str, seeds))} (range {min(seeds.values()):.2f}-{max(seeds.values()):.2f})")
        at, beyond = seeds.get(record.protocol_seed), record.beyond(label)
        if at is not None and m.published is not None:
            line += (f"; seed {record.protocol_seed} lies {at - m.published:+.2f} points from the published "
                     f"{m.published:.2f}%")
            if beyond is not None and beyond > 0:
                covers = record.covers(label)
                line += f", {beyond:.2f} beyond the {record.tolerance:g}-point tolerance"
                if covers is None:
                    line += "; whether the seed spread covers that needs a second seed"
                else:
                    line += (f"; the seed spread {'covers' if covers else 'does not cover'} the miss "
                             f"({beyond:.2f} {'<=' if covers else '>'} 2 x {std:.2f})")
            else:
                line += f", within the {record.tolerance:g}-point tolerance"
            within = [s for s, ok in record.within(label).items() if ok]
            line += (f"; within tolerance at seed{'s' if len(within) > 1 else ''} "
                     f"{', '.join(map(str, within))}" if within else "; within tolerance at no seed")
        gaps = record.gaps(label) if label != record.reference else {}
        if gaps:
            gmean, gstd = record.gap_mean_std(label)
            pub = record.published_gap(label)
            line += (f". Gap to {record.reference} per seed: "
                     + ", ".join(f"{g:+.2f} ({s})" for s, g in gaps.items())
                     + f", {gmean:+.2f} ± {gstd:.2f}")
            if pub is not None:
                ok = [s for s, g in gaps.items() if record.gap_tolerance is not None
                      and abs(g - pub) <= record.gap_tolerance]
                line += (f" against the published {pub:+.2f} (within {record.gap_tolerance:g} points at "
                         f"{len(ok)} of {len(gaps)} seeds)")
        out.append(line + ".")
    return out


def spread_notes(methods: Sequence[MethodSummary]) -> list[str]:
    """The report's note on the seed spread (nothing while no other seed is measured)."""
    record = seed_spread(methods)
    if not record.measured:
        return []
    return [f"Seed spread (the finals' configs again at seeds {', '.join(map(str, SPREAD_SEEDS))}, only the "
            f"seed changed; seed {PROTOCOL_SEED} stays the number compared with the paper): "
            + " ".join(spread_lines(record))]


SPREAD_BEGIN, SPREAD_END = "<!-- lance-kieu-2026:spread:begin -->", "<!-- lance-kieu-2026:spread:end -->"


def spread_section(record: SeedSpread | None, hours: Mapping[str, float] | None = None) -> str:
    """The Markdown between the spread markers: the seeds' numbers and whether the spread covers
    FA's miss once measured; "Not measured yet" and the commands of the units still to run
    (``hours``: method -> hours of one core its seed-42 final took, the estimate of a unit)."""
    out = [SPREAD_BEGIN, "#### Lance & Kieu 2026: FA's miss and the spread over seeds", "",
           f"The paper reports one seed ({PROTOCOL_SEED}); its number stays the one the table above "
           f"compares. Beside it, the evidence queue's `{SPREAD_PART}` units train the final configs of "
           + " and ".join(f"`{m}`" for m in SPREAD_METHODS)
           + f" again at seeds {', '.join(map(str, SPREAD_SEEDS))} (the hyper-parameters the grid chose; "
           "only the seed changes), so that FA's spread and its gap to BP are measured like for like."]
    at = [] if record is None else [
        f"{label} {m.measured[record.protocol_seed]:.2f}% (published {m.published:.2f}, "
        f"{m.measured[record.protocol_seed] - m.published:+.2f} points"
        + (f", {b:.2f} beyond the {record.tolerance:g}-point tolerance)" if (b := record.beyond(label)) > 0
           else ", within tolerance)")
        for label, m in record.methods.items()
        if m.published is not None and record.protocol_seed in m.measured]
    if at:
        out[-1] += f" At seed {record.protocol_seed}: " + "; ".join(at) + "."
    out.append("")
    missing = [u for u in spread_units()
               if record is None or record.methods.get(u.split("/")[1]) is None
               or record.methods[u.split("/")[1]].test_acc.get(int(u.rsplit("seed", 1)[1])) is None]
    if record is not None and record.measured:
        seeds = (record.protocol_seed, *SPREAD_SEEDS)
        out += [f"Made from `measures[\"{SPREAD_KEY}\"]` of `results/{NAME}.json` (test %, best validation "
                "epoch; gaps in points):", "",
                "| method | published | " + " | ".join(f"seed {s}" for s in seeds)
                + " | mean ± std | gap to BP per seed | published gap |",
                "|---|---|" + "---|" * len(seeds) + "---|---|---|"]
        for label, m in record.methods.items():
            mean, std = m.mean_std
            gaps = record.gaps(label) if label != record.reference else {}
            gap = ", ".join(f"{g:+.2f}" for g in gaps.values()) if gaps else "-"
            if len(gaps) > 1:
                gmean, gstd = record.gap_mean_std(label)
                gap += f" ({gmean:+.2f} ± {gstd:.2f})"
            pub_gap = record.published_gap(label) if label != record.reference else None
            out.append(f"| {label} | {_pts(m.published)} | "
                       + " | ".join(_pts(m.measured.get(s)) for s in seeds)
                       + f" | {_pts(mean)} ± {_pts(std)} | {gap} | {_pts(pub_gap, sign=True)} |")
        out += ["", *spread_lines(record), ""]
    else:
        out += ["**Not measured yet.**", ""]
    out += _unmeasured(missing, hours, SPREAD_METHODS, after="the analyses")
    return "\n".join([*out, SPREAD_END])


# -- the paper's config in place of the grid's ----------------------------------------------------

def _dotted(config: Mapping[str, Any] | None, key: str) -> Any:
    """``config``'s value at a dotted key (None where it has none)."""
    node: Any = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def paper_config(methods: Sequence[MethodSummary]) -> PaperConfig:
    """Each method of :data:`PAPER_VALUES` at the grid's config (its final in the part ``sweep``,
    seed :data:`PROTOCOL_SEED`) and at the paper's (the part ``paper-config``), from a summary's
    entries: the substituted keys' values as each run's config holds them (the paper's values
    for a run not measured yet) and its test accuracy (None while not measured)."""
    from .tables import TOLERANCE

    by = {(m.part, m.method): m for m in methods}
    out, dataset = {}, None
    for label, values in PAPER_VALUES.items():
        final, again = by.get(("sweep", label)), by.get((PAPER_PART, label))
        runs = {}
        for which, entry in (("grid", final), ("paper", again)):
            acc = next((r.test_acc for r in (entry.runs if entry is not None else ())
                        if r.seed in (PROTOCOL_SEED, None) and r.test_acc is not None), None)
            config = entry.config if entry is not None else None
            held = {k: _dotted(config, k) for k in values} if config is not None else \
                ({} if which == "grid" else dict(values))
            runs[which] = ConfigRun(values=held, test_acc=acc)
        dataset = dataset or (final.dataset if final is not None else None)
        out[label] = PaperConfigMethod(grid=runs["grid"], paper=runs["paper"],
                                       published=final.published if final is not None else None)
    tol, _ = TOLERANCE.get(dataset or "cifar10-jpeg", TOLERANCE["cifar10-jpeg"])
    return PaperConfig(seed=PROTOCOL_SEED, tolerance=tol, methods=out)


def paper_config_measures(methods: Sequence[MethodSummary]) -> dict[str, Any]:
    """``{"paper config": ...}`` once a run at the paper's config is measured; else nothing."""
    record = paper_config(methods)
    return {PAPER_KEY: record.to_dict()} if record.measured else {}


def paper_config_units() -> list[str]:
    return [f"{PAPER_PART}/{m}" for m in PAPER_VALUES]


#: how the docs name the substituted keys
_SHORT = {"optim.lr": "lr", "rule.options.scale": "s", "seed": "seed"}


def _values(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{_SHORT.get(k, k)} {v:g}" if isinstance(v, int | float) else f"{_SHORT.get(k, k)} {v}"
                     for k, v in values.items()) or "-"


def paper_config_lines(record: PaperConfig) -> list[str]:
    """Sentences: each method at the grid's config and at the paper's, the change, and where
    each lies against the published number."""
    out = []
    for label, m in record.methods.items():
        grid, paper = m.grid.points, m.paper.points
        if grid is None or paper is None:
            continue
        line = (f"{label}: {grid:.2f}% at the grid's config ({_values(m.grid.values)}), {paper:.2f}% at the "
                f"paper's ({_values(m.paper.values)}), {m.change:+.2f} points")
        if m.published is not None:
            line += (f"; published {m.published:.2f}%, {grid - m.published:+.2f} points at the grid's config "
                     f"and {paper - m.published:+.2f} at the paper's")
            closes = record.closes(label)
            if closes is None:
                line += f" (the grid's config lies within the {record.tolerance:g}-point tolerance)"
            elif closes:
                line += (f"; the paper's config closes the miss (within the {record.tolerance:g}-point "
                         "tolerance)")
            else:
                line += (f"; the paper's config does not close the miss "
                         f"({record.distance(label, 'paper') - record.tolerance:.2f} beyond the "
                         f"{record.tolerance:g}-point tolerance)")
        out.append(line + ".")
    return out


def paper_config_notes(methods: Sequence[MethodSummary]) -> list[str]:
    """The report's note on the paper's config (nothing while no run at it is measured)."""
    record = paper_config(methods)
    if not record.measured:
        return []
    return [f"Paper's config (FA's finals trained again at seed {record.seed} with only the paper's "
            "lr and s in place of the grid's choice; one run each): " + " ".join(paper_config_lines(record))]


PAPER_BEGIN, PAPER_END = ("<!-- lance-kieu-2026:paper-config:begin -->",
                          "<!-- lance-kieu-2026:paper-config:end -->")


def paper_config_section(record: PaperConfig | None, hours: Mapping[str, float] | None = None) -> str:
    """The Markdown between the paper-config markers: each FA method at the grid's config and at
    the paper's once measured, and whether the paper's config closes the miss; "Not measured
    yet" and the commands of the units still to run (``hours``: method -> hours of one core its
    seed-42 final took, the estimate of a unit)."""
    out = [PAPER_BEGIN, "#### Lance & Kieu 2026: FA's miss and the grid's choice of B's scale", "",
           "The paper's search chose lr 1e-3 and feedback scale s 0.01 for both FA variants."]
    grid = [] if record is None else [f"{label} {_values(m.grid.values)}"
                                      for label, m in record.methods.items() if m.grid.values]
    if grid:
        out[-1] += " falign's run of the same 3-epoch grid chose " + "; ".join(grid) + "."
    out[-1] += (f" The evidence queue's `{PAPER_PART}` units train the final configs of "
                + " and ".join(f"`{m}`" for m in PAPER_VALUES)
                + f" again with only the paper's values set ({_values(next(iter(PAPER_VALUES.values())))}; "
                "50 epochs, best-validation checkpoint, everything else as the final), so that the two runs "
                "of a method differ only in what the grid chose. One run a config: a change smaller than the "
                "spread over seeds above is not told apart from the seed's.")
    out.append("")
    missing = [u for u in paper_config_units()
               if record is None or (m := record.methods.get(u.split("/", 1)[1])) is None
               or m.paper.points is None]
    if record is not None and record.measured:
        out += [f"Made from `measures[\"{PAPER_KEY}\"]` of `results/{NAME}.json` (test %, best validation "
                f"epoch, seed {record.seed}; the change in points):", "",
                "| method | published | grid's config | test % | paper's config | test % | change "
                "| within tolerance (grid / paper) | paper's config closes the miss |",
                "|---|---|---|---|---|---|---|---|---|"]
        for label, m in record.methods.items():
            within = "/".join({True: "yes", False: "no", None: "-"}[record.within(label, w)]
                              for w in ("grid", "paper"))
            closes = {True: "yes", False: "no", None: "-"}[record.closes(label)]
            out.append(f"| {label} | {_pts(m.published)} | {_values(m.grid.values)} | "
                       f"{_pts(m.grid.points)} | {_values(m.paper.values)} | {_pts(m.paper.points)} | "
                       f"{_pts(m.change, sign=True)} | {within} | {closes} |")
        out += ["", *paper_config_lines(record), ""]
    else:
        out += ["**Not measured yet.**", ""]
    out += _unmeasured(missing, hours, PAPER_VALUES, after="the spread units")
    return "\n".join([*out, PAPER_END])


def _unmeasured(missing: Sequence[str], hours: Mapping[str, float] | None, methods: Iterable[str],
                after: str) -> list[str]:
    """Lines listing the units of a section not measured yet (each method's estimate in hours
    where known), how the queue runs them (``after`` what) and each one's own command."""
    if not missing:
        return []
    est = ""
    if hours:
        est = (" (" + ", ".join(f"{m} about {hours[m]:.1f} h" for m in methods if m in hours)
               + f" of one core a unit, as the seed-{PROTOCOL_SEED} finals took)")
    return [f"Units not measured yet{est}; the queue runs them after {after} "
            f"(`python -m falign.reproduce.queue run {NAME} --runs runs --commit`), or one at a time:",
            "", *(f"- `{u}`: {unit_command(u)}" for u in missing), ""]


def _put(text: str, begin: str, end: str, block: str) -> str:
    """``text`` with ``block`` between its markers (appended where they are not)."""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    return text.rstrip("\n") + "\n\n" + block + "\n"
