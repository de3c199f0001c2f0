"""What every reproduction target shares: its context, its outcome, the registry and the
machine-readable summary ``results.json``.

A target is a function ``run(ctx) -> Outcome`` registered with :func:`register_target`.  It
trains only through ``ctx.compare`` / ``ctx.compare_seeds`` / ``ctx.sweep`` / ``ctx.train``,
which also enter each method's runs into the summary, or ``ctx.train_runs`` (several short runs
as one unit, entered by the caller), and calls ``ctx.trained()`` once its training is over,
before analyses that need the trained models; ``ctx.measure`` adds numbers of
the target's own (a loss table, bits per character).  The summary is rewritten after every
comparison, sweep or run entered, so a target that stops part-way leaves a partial summary
(``"status": "running"``) saying how far it got.

Units.  Every training call declares the *units* it trains (:class:`Unit`: one method's runs
of one part, or one method x seed), so a long target is also a queue of pieces that fit in a
few hours of one core: ``ctx.planning`` runs the target without training anything and collects
its units (:func:`plan`); ``ctx.unit`` trains exactly one of them (``falign reproduce NAME
--part PART/METHOD[/seedK]``).  ``ctx.records`` is a folder of committed run records
(``results/runs/NAME``, see :mod:`falign.reproduce.queue`): a unit they hold finished is not
trained again, its records are read instead.

Analyses that need the trained models side by side (their ``best.pt``, which lives only in the
target's folder on the machine that trained them) are units too: ``ctx.final_models`` declares
one ``model`` unit a run, which retrains the run from its committed config when its model is
gone (same seed, same thread count) and compares the new record with the committed one
(:class:`~falign.records.ModelRetrain`); ``ctx.analyses`` declares the ``analyses`` unit, which
runs only once every model it needs exists.  ``ctx.reseed`` declares units after those: a final
run trained again at other seeds from its config (only the seed changes), one unit a method
and seed, which waits until that config is committed; ``ctx.substitute`` likewise trains a
final's config again with a few values set (a paper's hyper-parameters in place of those the
search chose), one unit a method.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import FalignError
from ..provenance import git_commit
from ..records import (
    AnalysesRecord,
    MethodSummary,
    ModelRetrain,
    RecordError,
    ReproductionSummary,
    RunSummary,
    SweepRecord,
    TrialSummary,
)
from ..registry import Registry
from ..report.analyses import confusion_matrices
from ..training.compare import method, run_compare, run_compare_seeds, run_label, seed_run_dir
from ..training.config import ExperimentConfig, SweepConfig, load_config, parse_config, set_values
from ..training.record import RunRecord
from ..training.results import ResultRow

RESULTS = "results.json"


class ReproduceError(FalignError, ValueError):
    """Unknown target or scale, or an output directory holding another reproduction."""


#: the files of a run directory a unit's committed record keeps (a few KB: no checkpoints)
RECORD_FILES = ("config.yaml", "tracking.json", "steps.jsonl")
#: a run's model (what analyses of the trained models open), a retrained run's comparison with
#: its committed record, and the record an ``analyses`` unit writes into its folder
MODEL, RETRAIN_FILE, ANALYSES_FILE = "best.pt", "retrain.json", "analyses.json"
#: the first epoch's record fields compared when a run is retrained (those of the re-check)
FIRST_EPOCH_FIELDS = ("train_loss", "train_acc", "train_errors", "lr", "val_loss", "val_acc")
#: kinds of units: runs to train, a finished run retrained for its lost model, analyses of models
UNIT_KINDS = ("train", "model", "analyses")


@dataclass(frozen=True)
class Unit:
    """One piece of a target that one process trains on its own: one method's runs of one part
    (a comparison entry, a sweep's grid and final runs, a single run) or one method and seed.
    ``run_dirs`` are the runs it ends with, relative to the target's folder; ``extra`` are
    globs (same root) of other runs whose records belong to it (a sweep's grid trials).

    ``kind`` (:data:`UNIT_KINDS`): ``"train"`` trains its runs; ``"model"`` retrains its one
    finished run whose model (``best.pt``) is gone from the target's folder; ``"analyses"``
    analyses the models of the runs ``needs`` names and writes ``analyses.json`` into its one
    folder ``run_dirs[0]`` (its method is empty: its name is its part).  A ``"train"`` unit
    that ``needs`` runs trains from their configs (a final run at another seed) and waits
    until those are committed."""

    part: str
    method: str
    seed: int | None
    run_dirs: tuple[str, ...]
    published: float | None = None
    extra: tuple[str, ...] = ()
    kind: str = "train"
    needs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in UNIT_KINDS:
            raise ValueError(f"unit kind must be one of {UNIT_KINDS}, not {self.kind!r}")

    @property
    def name(self) -> str:
        """``PART/METHOD`` or ``PART/METHOD/seedK`` (``PART`` for an analyses unit): what
        ``--part`` takes."""
        head = f"{self.part}/{self.method}" if self.method else self.part
        return head + ("" if self.seed is None else f"/seed{self.seed}")


def has_model(run_dir: Path) -> bool:
    """Whether the run is finished in its folder with its best model (``best.pt``) beside its
    record (a run still training has a best model too, not yet the final one)."""
    return (Path(run_dir) / MODEL).is_file() and finished_record(run_dir) is not None


def analyses_record(folder: Path) -> AnalysesRecord | None:
    """The analyses record in ``folder`` (an analyses unit's), if there is one that reads."""
    path = Path(folder) / ANALYSES_FILE
    if not path.is_file():
        return None
    try:
        return AnalysesRecord.load(path)
    except RecordError:
        return None


def unit_finished(unit: Unit, root: Path) -> bool:
    """Whether ``unit`` is finished in ``root`` (the target's folder of runs): every run's record
    done (:func:`finished_record`), and for a model unit its model there too; an analyses unit
    when its record is written."""
    root = Path(root)
    if unit.kind == "analyses":
        return all(analyses_record(root / rel) is not None for rel in unit.run_dirs)
    if unit.kind == "model":
        return all(has_model(root / rel) for rel in unit.run_dirs)
    return all(finished_record(root / rel) is not None for rel in unit.run_dirs)


def compare_retrained(run: str, threads: int | None, new: RunRecord, old: RunRecord | None,
                      kept: RunSummary | None) -> ModelRetrain:
    """How the record of a retrained run compares with what was committed: its committed record
    ``old`` (the first epoch's record, then test accuracy, best epoch and epochs), else the
    numbers the committed summary ``kept``."""
    if old is not None and old.epochs and new.epochs:
        a, b = old.epochs[0], new.epochs[0]
        first = {f: (getattr(a, f), getattr(b, f)) for f in FIRST_EPOCH_FIELDS}
        whole = {"test_acc": (old.test_acc, new.test_acc),
                 "best_val_acc": (old.best_val_acc, new.best_val_acc),
                 "best_epoch": (old.best_epoch, new.best_epoch),
                 "epochs": (len(old.epochs), len(new.epochs))}
        fields = {**{f"epoch 1 {k}": v for k, v in first.items()}, **whole}
        return ModelRetrain(run=run, threads=threads, against="record",
                            same_first_epoch_record=all(x == y for x, y in first.values()),
                            differences={k: v for k, v in fields.items() if v[0] != v[1]},
                            compared=tuple(fields), test_acc=new.test_acc)
    if kept is not None:
        fields = {"test_acc": (kept.test_acc, new.test_acc),
                  "best_val_acc": (kept.best_val_acc, new.best_val_acc),
                  "best_epoch": (kept.best_epoch, new.best_epoch), "epochs": (kept.epochs, len(new.epochs))}
        fields = {k: v for k, v in fields.items() if v[0] is not None}
        return ModelRetrain(run=run, threads=threads, against="summary", same_first_epoch_record=None,
                            differences={k: v for k, v in fields.items() if v[0] != v[1]},
                            compared=tuple(fields), test_acc=new.test_acc)
    return ModelRetrain(run=run, threads=threads, against="nothing", same_first_epoch_record=None,
                        test_acc=new.test_acc)


def finished_record(run_dir: Path) -> RunRecord | None:
    """The run's record when it is done: ``completed`` with a test accuracy, or ``diverged``
    (its loss became NaN or infinite: an outcome, not a run to train again); an interrupted or
    running run is not done."""
    path = Path(run_dir) / "tracking.json"
    if not path.is_file():
        return None
    record = RunRecord.read(path)
    done = record.status == "diverged" or (record.status == "completed" and record.test_acc is not None)
    return record if done else None


class _Stop(Exception):  # noqa: N818  (control flow, not an error)
    """Raised by ``ctx.trained()`` when planning, and after a unit's training."""


@dataclass
class Outcome:
    run_dirs: list[Path]
    published: dict[str, float | None]  # label, run dir name or rule -> published test acc (%)
    notes: list[str] = field(default_factory=list)
    figures: list[tuple[str, Path, str]] = field(default_factory=list)  # (title, png, caption)
    extra_rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Target:
    name: str
    title: str
    citation: str
    run: Callable[[Context], Outcome]
    #: what the published numbers are (the summary's ``published_metric``)
    metric: str = "test accuracy %"
    #: parts that can be run on their own (``falign reproduce NAME --part P``); () for none
    parts: tuple[str, ...] = ()
    #: a page of its own made from the committed summary: ``(results folder, repository) ->
    #: the files it rewrote``; such a target's table is not in the README
    page: Callable[[Path, Path], list[Path]] | None = None
    #: numbers the target makes from its methods' entries (key -> plain value), merged into the
    #: summary's ``measures`` wherever a summary is written (a whole run, the queue's summarise);
    #: an empty mapping while there is nothing to say
    measures: Callable[[Sequence[MethodSummary]], dict[str, Any]] | None = None


TARGETS: Registry = Registry("reproduction", ReproduceError)


def register_target(target: Target) -> Target:
    if target.name in TARGETS:
        raise ValueError(f"reproduction '{target.name}' is registered twice")
    return TARGETS.register(target.name, target)


@dataclass
class Context:
    out: Path
    scale: str
    resume: bool
    log: Callable[[str], None]
    download: bool = False  # fetch missing datasets (data.download in every config)
    target: Target | None = None
    methods: list[MethodSummary] = field(default_factory=list)
    measures: dict[str, Any] = field(default_factory=dict)
    report: str | None = None  # the HTML report, once the target has completed
    extra_rows: list[dict[str, Any]] | None = None  # the target's extra rows, likewise
    started: float = field(default_factory=time.time)
    parts: tuple[str, ...] | None = None  # the parts asked for (None: all)
    done_parts: list[str] = field(default_factory=list)  # parts earlier calls completed
    planning: bool = False  # collect the units (``planned``), train nothing
    unit: str | None = None  # train exactly this unit (its name), nothing else
    records: Path | None = None  # committed run records of this target (results/runs/NAME)
    planned: list[Unit] = field(default_factory=list)
    trained_unit: Unit | None = None

    @property
    def smoke(self) -> bool:
        return self.scale == "smoke"

    def wants(self, part: str) -> bool:
        """Whether this call runs ``part`` of the target."""
        if self.unit is not None:
            return self.unit.split("/", 1)[0] == part
        return self.parts is None or part in self.parts

    # -- units --------------------------------------------------------------------------------

    def _units(self, units: list[Unit]) -> list[Unit]:
        """Of the units a training call declares, those it trains: none when planning (they are
        collected), the one asked for in unit mode, else all; units the committed records hold
        finished get their records copied into the target's folder, where resuming reads them."""
        if self.planning:
            self.planned += units
            return []
        if self.unit is not None:
            units = [u for u in units if u.name == self.unit]
        for u in units:
            self._seed_from_records(u)
        return units

    def _seed_from_records(self, unit: Unit) -> None:
        if self.records is None:
            return
        for rel in unit.run_dirs:
            here, there = self.out / rel, self.records / rel
            if finished_record(here) is None and finished_record(there) is not None:
                here.mkdir(parents=True, exist_ok=True)
                for name in RECORD_FILES:
                    if (there / name).is_file():
                        shutil.copy2(there / name, here / name)

    def _done(self, unit: Unit) -> None:
        """After a unit's training in unit mode: stop the target there."""
        if self.unit is not None:
            self.trained_unit = unit
            raise _Stop(unit.name)

    def trained(self) -> None:
        """A target calls this when its training is over: planning and unit mode end here,
        before the analyses that need every trained model."""
        if self.planning or self.unit is not None:
            raise _Stop()

    def final_models(self, finals: dict[str, str], *, part: str = "models") -> None:
        """Declare one model unit ``part/LABEL`` for each final run (label -> run directory
        relative to the target's folder) whose model the analyses open.  A run whose model
        (``best.pt``) is not in the target's folder but whose config is committed is retrained
        from that config, with the seed it holds and the thread count its committed record (or
        the committed summary) names; the new record is compared with the committed one
        (``retrain.json`` beside it, :class:`~falign.records.ModelRetrain`).  In unit mode only
        the unit asked for; when the whole target runs, every such run (its training units have
        made the models of the runs they trained)."""
        units = [Unit(part, label, None, (rel,), kind="model") for label, rel in finals.items()]
        if self.planning:
            self.planned += units
            return
        if self.unit is not None:
            units = [u for u in units if u.name == self.unit]
        for u in units:
            rel = u.run_dirs[0]
            if not has_model(self.out / rel):
                cfg = self.committed_config(rel)
                if cfg is None:
                    if self.unit is None:
                        continue
                    raise ReproduceError(f"{rel}: its model is gone and no config of it is committed "
                                         f"in {self.records}: train its unit instead")
                self._retrain(rel, cfg)
            self._done(u)

    def _committed_run(self, rel: str) -> tuple[RunRecord | None, RunSummary | None]:
        """The committed record of run ``rel`` and the entry the committed summary keeps of it."""
        old = kept = None
        if self.records is not None and (self.records / rel / "tracking.json").is_file():
            old = RunRecord.read(self.records / rel / "tracking.json")
        if self.records is not None and self.target is not None:
            try:  # results/runs/NAME -> results/NAME.json
                summary = ReproductionSummary.load(self.records.parent.parent / f"{self.target.name}.json")
            except RecordError:
                summary = None
            if summary is not None and summary.scale == self.scale:
                kept = next((r for m in summary.methods for r in m.runs if r.run_dir == rel), None)
        return old, kept

    def _retrain(self, rel: str, cfg: ExperimentConfig) -> ModelRetrain:
        from ..training.loop import train

        here = self.out / rel
        old, kept = self._committed_run(rel)
        threads = (old.environment.get("threads") if old is not None else None) or \
            (kept.threads if kept is not None else None) or 1
        if not (here / "last.pt").is_file():  # no retraining started: what is here are copies
            for name in (*RECORD_FILES, RETRAIN_FILE):  # of the committed record; start afresh
                (here / name).unlink(missing_ok=True)
        self.log(f"== {rel}: its model is gone; retraining it from its committed config "
                 f"(seed {cfg.seed}, {threads} thread(s))")
        new = train(cfg, here, resume=True, log=self.log, threads=int(threads))
        if not has_model(here):
            raise ReproduceError(f"{here}: retrained, but it holds no {MODEL}")
        check = compare_retrained(rel, int(threads), new, old, kept)
        check.save(here / RETRAIN_FILE)
        self.log(check.describe())
        return check

    def analyses(self, needs: Sequence[str], analyse: Callable[[], AnalysesRecord], *,
                 part: str = "analyses") -> AnalysesRecord | None:
        """Analyses that need the trained models of the runs ``needs`` (relative to the target's
        folder): declares the unit ``part``, which runs ``analyse`` once each of those models
        exists, writes its record into ``out/part/analyses.json`` and the summary's measures,
        and returns it.  Planning and unit mode for another unit skip it (None), so a target
        declares its later units after it; for the analyses unit and the whole target a missing
        model is an error, and in unit mode the target stops once the record is written."""
        unit = Unit(part, "", None, (part,), kind="analyses", needs=tuple(needs))
        if self.planning:
            self.planned.append(unit)
            return None
        if self.unit is not None and self.unit != unit.name:
            return None
        missing = [rel for rel in needs if not has_model(self.out / rel)]
        if missing:
            raise ReproduceError(f"the analyses need the models of {', '.join(missing)}, which are "
                                 f"not in {self.out}: train or retrain those units first")
        record = analyse()
        path = self.out / part / ANALYSES_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        record.save(path)
        self.measure("analyses", record.to_dict())
        if self.unit is not None:
            self._done(unit)
        return record

    def reseed(self, finals: dict[str, str], seeds: Sequence[int], *, part: str) -> dict[str, list[Path]]:
        """Each final run of ``finals`` (label -> run directory under the target's folder)
        trained again at each of ``seeds``, with only the config's seed (and name) changed, so
        the spread of a method over seeds is measured with the hyper-parameters its search
        chose: one unit ``part/LABEL/seedK`` a method and seed, run directory
        ``part/LABEL/seedK``, which needs the final's config (the committed one in
        ``records``, else the run's own in the target's folder; the queue holds the unit back
        until it is committed).  Each method enters the summary (part ``part``) with its
        seeds' runs; returns label -> those run directories (none when planning, or in unit
        mode for another unit)."""
        from ..training.loop import train

        units = [Unit(part, label, s, (f"{part}/{seed_run_dir(label, s)}",), needs=(rel,))
                 for label, rel in finals.items() for s in seeds]
        todo = self._units(units)
        for u in todo:
            here = self.out / u.run_dirs[0]
            if finished_record(here) is None:
                cfg = self._final_config(u).model_copy(deep=True)
                cfg.seed, cfg.name = u.seed, f"{run_label(u.method)}-{part}-s{u.seed}"
                self.log(f"== {u.name}: {u.needs[0]}'s config at seed {u.seed}")
                train(cfg, here, resume=True, log=self.log)
            self._done(u)
        out: dict[str, list[Path]] = {}
        for u in todo:
            out.setdefault(u.method, []).append(self.out / u.run_dirs[0])
        for label, dirs in out.items():
            self.add(label, dirs, part=part)
        return out

    def substitute(self, finals: dict[str, str], values: dict[str, dict[str, Any]], *,
                   part: str) -> dict[str, Path]:
        """Each final run of ``finals`` (label -> run directory under the target's folder)
        trained again from its config with ``values[label]`` set (dotted keys -> values, e.g. a
        paper's hyper-parameters in place of those the search chose) and the name changed,
        nothing else: one unit ``part/LABEL`` a method, run directory ``part/LABEL``, which
        needs the final's config like a :meth:`reseed` unit.  Each method enters the summary
        (part ``part``) with its run; returns label -> its run directory (none when planning,
        or in unit mode for another unit)."""
        from ..training.loop import train

        units = [Unit(part, label, None, (f"{part}/{run_label(label)}",), needs=(rel,))
                 for label, rel in finals.items()]
        todo = self._units(units)
        for u in todo:
            here = self.out / u.run_dirs[0]
            if finished_record(here) is None:
                cfg = substituted(self._final_config(u), values[u.method], f"{run_label(u.method)}-{part}",
                                  where=u.name)
                self.log(f"== {u.name}: {u.needs[0]}'s config with "
                         + ", ".join(f"{k}={v}" for k, v in values[u.method].items()))
                train(cfg, here, resume=True, log=self.log)
            self._done(u)
        out = {u.method: self.out / u.run_dirs[0] for u in todo}
        for label, run_dir in out.items():
            self.add(label, [run_dir], part=part)
        return out

    def _final_config(self, unit: Unit) -> ExperimentConfig:
        """The config of the final run a :meth:`reseed` or :meth:`substitute` unit trains from:
        the committed one, else the run's own in the target's folder."""
        final = unit.needs[0]
        cfg = self.committed_config(final)
        if cfg is None and (self.out / final / "config.yaml").is_file():
            cfg = load_config(str(self.out / final / "config.yaml"))
        if cfg is None:
            where = self.records or "no --records given"
            raise ReproduceError(f"{unit.name} trains from the config of {final}, which is neither "
                                 f"committed ({where}) nor in {self.out}: train the unit that "
                                 "makes that run first, or pass --records results/runs/NAME")
        return cfg

    def committed_config(self, rel: str) -> ExperimentConfig | None:
        """The config a committed record of run ``rel`` was trained with, if there is one."""
        path = self.records / rel / "config.yaml" if self.records is not None else None
        if path is not None and path.is_file():
            return load_config(str(path))
        return None

    def config(self, name: str, smoke: dict[str, Any]) -> ExperimentConfig:
        """A shipped config, shrunk for the smoke scale (dotted keys -> values)."""
        cfg = load_config(name)
        values = {**(smoke if self.smoke else {}), **({"data.download": True} if self.download else {})}
        if not values:
            return cfg
        where = f"{name} (smoke scale)" if self.smoke else name
        return parse_config(set_values(cfg.to_dict(), values, where=where), where=where)

    def compare(self, cfg: ExperimentConfig, rules, sub: str, *,
                published: dict[str, float] | None = None) -> tuple[Path, list[ResultRow]]:
        """``run_compare`` into ``out/sub`` (resumed), with its validation-accuracy figure; each
        method enters the summary (part ``sub``) with its ``published`` number."""
        from ..plots import NothingToPlot, plot_val_curves

        out = self.out / sub
        published = published or {}
        units = [Unit(sub, label, None, (f"{sub}/{run_label(label)}",), published.get(label))
                 for label in (method(e)[0] for e in rules)]
        todo = {u.method for u in self._units(units)}
        if not todo:
            return out, []
        rules = [e for e in rules if method(e)[0] in todo]
        rows = run_compare(cfg, rules, out, resume=True, log=self.log)
        for u in units:
            if u.method in todo:
                self._done(u)
        for row in rows:
            self.add(row.label, [out / run_label(row.label)], part=sub,
                     published=published.get(row.label))
        try:
            plot_val_curves(rows, out / "val_acc",
                            title=f"{cfg.data.name} / {cfg.model.name}: validation accuracy")
        except NothingToPlot:
            pass
        return out, rows

    def compare_seeds(self, cfg: ExperimentConfig, rules, seeds: Sequence[int], sub: str, *,
                      published: dict[str, float] | None = None):
        """``run_compare_seeds`` into ``out/sub`` (resumed), with its figure over seeds; each
        method enters the summary with every seed's run."""
        from ..plots import NothingToPlot, plot_seed_summary

        out = self.out / sub
        published = published or {}
        units = [Unit(sub, label, s, (f"{sub}/{seed_run_dir(label, s)}",), published.get(label))
                 for label in (method(e)[0] for e in rules) for s in seeds]
        todo = self._units(units)
        if not todo:
            return out, []
        if self.unit is not None:
            rules, seeds = [e for e in rules if method(e)[0] == todo[0].method], [todo[0].seed]
        groups = run_compare_seeds(cfg, rules, seeds, out, resume=True, log=self.log)
        if self.unit is not None:
            self._done(todo[0])
        for g in groups:
            self.add(g.label, [out / seed_run_dir(g.label, s) for s in g.seeds], part=sub,
                     published=published.get(g.label))
        try:
            plot_seed_summary({g.label: g.rows for g in groups}, out / "seeds",
                              title=f"{cfg.data.name} / {cfg.model.name}")
        except NothingToPlot:
            pass
        return out, groups

    def sweep(self, cfg: ExperimentConfig, spec: SweepConfig, sub: str, *,
              published: dict[str, float] | None = None) -> SweepRecord:
        """``run_sweep`` into ``out/sub`` (resumed): each rule's grid, then its final runs; each
        rule is a unit, entered into the summary with its final runs (one a seed).  A rule
        whose final runs the committed records hold is not searched again; a rule whose final
        run's config is committed but whose run is not finished (its grid's choice made by an
        earlier call whose trials are gone) trains that config, not the grid again.  Returns the
        sweep's record of the rules it searched (none when every rule was read or trained
        from the records)."""
        from ..training.loop import train
        from ..training.sweep import run_sweep, search_spaces

        out = self.out / sub
        published = published or {}
        labels = list(search_spaces(cfg, spec))
        units = []
        for label in labels:
            finals = tuple(f"{sub}/final/{run_label(label)}-seed{s}" for s in spec.final_seeds)
            study = f"{cfg.name}-{label.replace(':', '-')}"
            units.append(Unit(sub, label, None, finals, published.get(label),
                              extra=(f"{sub}/trials/{study}-[0-9][0-9][0-9]*",)))
        todo = self._units(units)
        summary = SweepRecord(name=cfg.name, sampler=spec.sampler)
        search = []
        for u in todo:
            finished = all(finished_record(self.out / r) for r in u.run_dirs)
            if finished:  # resumed from its own trials, or read from the records alone
                if any(any(self.out.glob(pattern)) for pattern in u.extra):
                    search.append(u.method)
                continue
            configs = [self.committed_config(r) for r in u.run_dirs]
            if all(c is not None for c in configs):
                for rel, run_cfg in zip(u.run_dirs, configs, strict=True):
                    self.log(f"== {u.name}: training {rel} from its committed config (the grid's "
                             "choice of an earlier call)")
                    train(run_cfg, self.out / rel, resume=True, log=self.log)
            else:
                search.append(u.method)
        if search:
            spec = spec.model_copy(deep=True)
            if spec.rules:
                spec.rules = {k: v for k, v in spec.rules.items() if k in search}
            summary = SweepRecord.from_dict(run_sweep(cfg, spec, out, resume=True, log=self.log),
                                            where=str(out / "sweep.json"))
        for u in todo:
            self.add(u.method, [self.out / r for r in u.run_dirs], part=sub,
                     published=published.get(u.method), trials=u.extra)
            self._done(u)
        return summary

    def train(self, cfg: ExperimentConfig, sub: str, *, part: str) -> Path | None:
        """One run of ``cfg`` into ``out/sub`` (resumed): a unit ``part/sub`` of its own,
        entered into the summary as method ``sub``."""
        from ..training.loop import train

        unit = Unit(part, sub, None, (sub,))
        if not self._units([unit]):
            return None
        train(cfg, self.out / sub, resume=True, log=self.log)
        self.add(sub, [self.out / sub], part=part)
        self._done(unit)
        return self.out / sub

    def train_runs(self, runs: dict[str, ExperimentConfig], *, part: str, method: str,
                   seed: int | None = None) -> list[Path]:
        """Several short runs of one method (``rel dir -> config``, e.g. the points of a sweep
        over one setting) trained one after another as one unit ``part/method[/seedK]``, so a
        unit fills a few hours of one core however short each run is.  Returns the run
        directories (none when planning, or in unit mode for another unit); the caller enters
        them into the summary (``add``), once per method with every seed's runs."""
        from ..training.loop import train

        unit = Unit(part, method, seed, tuple(runs))
        if not self._units([unit]):
            return []
        for rel, cfg in runs.items():
            train(cfg, self.out / rel, resume=True, log=self.log)
        self._done(unit)
        return [self.out / rel for rel in runs]

    def add(self, label: str, run_dirs: Sequence[Path], *, part: str | None = None,
            published: float | None = None, trials: Sequence[str] = ()) -> None:
        """Enter one method's runs (one a seed) into the summary, and rewrite it; ``trials`` are
        globs (under the target's folder) of its grid's trial runs."""
        self.methods = [m for m in self.methods if (m.part, m.method) != (part, label)]
        entry = method_summary(label, run_dirs, self.out, part=part, published=published)
        if trials and (found := trial_entries(self.out, trials)):
            entry = replace(entry, trials=tuple(found))
        self.methods.append(entry)
        self.write("running")

    def keep_earlier(self) -> None:
        """On a resume, start from the summary an earlier call left (another part's methods
        stay in it; what this call enters again replaces its earlier entry)."""
        try:
            old = ReproductionSummary.load(self.out / RESULTS)
        except RecordError:
            return
        name = self.target.name if self.target else None
        if (old.target, old.scale) == (name, self.scale):
            self.methods = list(old.methods)
            self.measures = dict(old.measures)
            self.done_parts = list(old.parts_completed)

    def measure(self, key: str, value: Any) -> None:
        """A number (or table) of the target's own, kept in the summary under ``measures``."""
        self.measures[key] = value
        self.write("running")

    def write(self, status: str) -> Path:
        path = self.out / RESULTS
        if self.planning or self.unit is not None:  # a unit's summary is made from records
            return path
        summary(self, status).save(path)
        return path


def substituted(cfg: ExperimentConfig, values: dict[str, Any], name: str, *,
                where: str = "config") -> ExperimentConfig:
    """A copy of ``cfg`` with ``values`` (dotted keys -> values) set and the name ``name``,
    validated again."""
    data = set_values(cfg.to_dict(), {**values, "name": name}, where=where)
    return parse_config(data, where=where)


def plan(target: Target, *, scale: str = "full", out: Path | None = None) -> list[Unit]:
    """The units of ``target`` at ``scale``, in the order the target trains them (nothing is
    trained or written)."""
    ctx = Context(out=Path(out or "."), scale=scale, resume=True, log=lambda s: None,
                  target=target, planning=True)
    try:
        target.run(ctx)
    except _Stop:
        pass
    else:
        raise ReproduceError(f"reproduction '{target.name}' ended without calling ctx.trained()")
    return ctx.planned


# -- the summary ------------------------------------------------------------------------------

def _run_entry(run_dir: Path, root: Path) -> RunSummary:
    path = run_dir / "tracking.json"
    if not path.is_file():
        return RunSummary(run_dir=os.path.relpath(run_dir, root), status="missing")
    r = RunRecord.read(path)
    return RunSummary(seed=r.config.get("seed"), run_dir=os.path.relpath(run_dir, root),
                      status=r.status, test_acc=r.test_acc, test_loss=r.test_loss,
                      best_val_acc=r.best_val_acc, best_epoch=r.best_epoch, epochs=len(r.epochs),
                      selected_on=r.selected_on, seconds=sum(e.seconds or 0.0 for e in r.epochs),
                      threads=r.environment.get("threads"), device=r.environment.get("device"),
                      trained_by=r.environment.get("git"))  # the commit that trained it (None before 0.2)


def trial_entries(root: Path, patterns: Sequence[str]) -> list[TrialSummary]:
    """A sweep unit's grid trials (run directories matching ``patterns`` under ``root``): each
    one's parameters, status, best validation accuracy, training losses and seconds."""
    out = []
    for pattern in patterns:
        for d in sorted(p for p in Path(root).glob(pattern) if (p / "tracking.json").is_file()):
            r = RunRecord.read(d / "tracking.json")
            out.append(TrialSummary(run_dir=os.path.relpath(d, root), status=r.status,
                                    best_val_acc=r.best_val_acc, epochs=len(r.epochs),
                                    train_losses=tuple(e.train_loss for e in r.epochs),
                                    optim={k: (r.config.get("optim") or {}).get(k)
                                           for k in ("name", "lr", "weight_decay")},
                                    rule_options=(r.config.get("rule") or {}).get("options"),
                                    seconds=sum(e.seconds or 0.0 for e in r.epochs),
                                    trained_by=r.environment.get("git")))
    return out


def method_summary(label: str, run_dirs: Sequence[Path], root: Path, *, part: str | None,
                   published: float | None) -> MethodSummary:
    from ..training.compare import mean_std

    runs = [_run_entry(Path(d), root) for d in run_dirs]
    config = None
    first = Path(run_dirs[0]) / "tracking.json" if run_dirs else None
    if first is not None and first.is_file():
        config = RunRecord.read(first).config
    mean, std = mean_std([r.test_acc for r in runs])
    return MethodSummary(part=part, method=label, config=config, seeds=tuple(r.seed for r in runs),
                         runs=tuple(runs), test_acc_mean=mean, test_acc_std=std, published=published)


def hardware() -> dict[str, Any]:
    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _completed_parts(ctx: Context, status: str) -> list[str]:
    """Every part a call has completed: earlier calls' and, once completed, this call's."""
    done = list(ctx.done_parts)
    if status == "completed":
        now = ctx.parts if ctx.parts is not None else ctx.target.parts if ctx.target else ()
        done += [p for p in now if p not in done]
    return done


def target_measures(target: Target | None, methods: Sequence[MethodSummary],
                    measures: dict[str, Any]) -> dict[str, Any]:
    """``measures`` with the numbers the target makes from ``methods`` (:attr:`Target.measures`)."""
    if target is None or target.measures is None:
        return measures
    return {**measures, **target.measures(tuple(methods))}


def summary(ctx: Context, status: str) -> ReproductionSummary:
    """What ``results.json`` holds now: the target, this call's run-state (``status``; the report
    and extra rows once completed) and every method entered so far."""
    target = ctx.target
    return ReproductionSummary(
        target=target.name if target else None, title=target.title if target else None,
        citation=target.citation if target else None, scale=ctx.scale, status=status,
        parts=tuple(ctx.parts if ctx.parts is not None else target.parts if target else ()),
        parts_completed=tuple(_completed_parts(ctx, status)),
        all_parts=tuple(target.parts) if target else (),
        falign=__version__, git=git_commit(), torch=torch.__version__, hardware=hardware(),
        published_metric=target.metric if target else None,
        wall_seconds_this_call=round(time.time() - ctx.started, 1),
        compute_seconds=round(sum(r.seconds or 0.0 for m in ctx.methods for r in m.runs), 1),
        methods=tuple(ctx.methods), measures=target_measures(target, ctx.methods, ctx.measures),
        report=ctx.report,
        extra_rows=None if ctx.extra_rows is None else tuple(ctx.extra_rows))


# -- analyses shared by targets ----------------------------------------------------------------

def best_model(run_dir: Path, device: torch.device):
    from ..training.run import open_run

    return open_run(run_dir, device=device).model()


def dataset_of(cfg: ExperimentConfig, device: torch.device):
    from ..training.loop import build_dataset

    return build_dataset(cfg, device)


def confusion_figures(ctx: Context, runs: dict[str, Path], cfg: ExperimentConfig,
                      outcome: Outcome) -> None:
    """Confusion matrix and per-class precision / recall / F1 of each run's best model."""
    device = torch.device("cpu")
    models = {label: best_model(run_dir, device) for label, run_dir in runs.items()}
    section = confusion_matrices(models, dataset_of(cfg, device), ctx.out / "analysis")
    outcome.figures += section.figures
    outcome.notes += [f"{heading}\n{text}" for heading, text in section.texts]
