"""The reproduction summary: what ``falign reproduce`` writes to ``results.json`` as a target's
runs finish, what the evidence queue writes to ``results/NAME.json`` from committed run
records, and what the results tables, the rule guide's page and a resumed reproduction read.

Schema 1 (key ``schema``)::

    {"schema": 1, "target": "dfa-mnist", "title": ..., "citation": ..., "scale": "full",
     "status": "completed",              # "running", "partial", "completed", "interrupted", "stopped"
     "parts": [...], "parts_completed": [...], "all_parts": [...],
     "falign": "0.2.0", "git": {"commit": ..., "dirty": false}, "torch": ..., "hardware": {...},
     "published_metric": "test accuracy %",
     "wall_seconds_this_call": 12.5,      # written by falign reproduce, not by the queue
     "compute_seconds": 3864.6,
     "units": {"total": 4, "done": [...], "pending": [...], "made_by": ...},   # the queue's
     "methods": [{"part": ..., "method": "fa", "config": {...}, "seeds": [0],
                  "runs": [{"seed": 0, "run_dir": ..., "status": ..., "test_acc": ..., ...}],
                  "test_acc_mean": ..., "test_acc_std": ..., "published": 98.1,
                  "trials": [...]}],       # a sweep's grid trials, where kept
     "measures": {...},                   # the target's own numbers
     "report": "out/report/index.html",   # once falign reproduce has completed the target
     "extra_rows": [...]}                 # the target's extra rows, likewise

The last two are what ``reproduce.json`` held beside the name, scale and status (``target``,
``scale``, ``status`` here); an old ``reproduce.json`` reads as a summary with no methods
(:meth:`ReproductionSummary.load_marker`).  ``config``, ``git``, ``hardware`` and ``measures``
stay plain mappings: their schemas are the config's, the machine's and the target's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .base import (
    RecordError,
    check_version,
    integer,
    mapping,
    numeric,
    read_json,
    sequence,
    text,
    write_json,
)

__all__ = ["RESULTS_SCHEMA", "MethodSummary", "ReproductionSummary", "RunSummary", "TrialSummary",
           "UnitsSummary"]

#: version of the summary this module writes (key ``schema``)
RESULTS_SCHEMA = 1


def _opt_num(d: dict[str, Any], key: str, where: str) -> Any:
    return numeric(d.get(key), key, where, optional=True)


@dataclass(frozen=True)
class RunSummary:
    """One run of a method, read from its record.  A run with no record yet has only its
    directory and ``status == "missing"``.  ``trained_by`` is the commit that trained it (None
    for a run from before runs recorded it); ``trained_by_recorded`` is False in summaries
    written before they carried the field at all."""

    run_dir: str
    status: str
    seed: int | None = None
    test_acc: float | None = None
    test_loss: float | None = None
    best_val_acc: float | None = None
    best_epoch: int | None = None
    epochs: int | None = None
    selected_on: str | None = None
    seconds: float | None = None
    threads: int | None = None
    device: str | None = None
    trained_by: dict[str, Any] | None = None
    trained_by_recorded: bool = True

    @property
    def missing(self) -> bool:
        return self.status == "missing"

    @property
    def commit(self) -> str | None:
        return (self.trained_by or {}).get("commit")

    def to_dict(self) -> dict[str, Any]:
        if self.missing:
            return {"run_dir": self.run_dir, "status": self.status}
        d = {"seed": self.seed, "run_dir": self.run_dir, "status": self.status, "test_acc": self.test_acc,
             "test_loss": self.test_loss, "best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch,
             "epochs": self.epochs, "selected_on": self.selected_on, "seconds": self.seconds,
             "threads": self.threads, "device": self.device}
        if self.trained_by_recorded:
            d["trained_by"] = self.trained_by
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str) -> RunSummary:
        d = mapping(d, "runs[]", where)
        by = d.get("trained_by")
        return cls(run_dir=str(d.get("run_dir")), status=str(d.get("status") or "unknown"),
                   seed=integer(d.get("seed"), "seed", where, optional=True),
                   test_acc=_opt_num(d, "test_acc", where), test_loss=_opt_num(d, "test_loss", where),
                   best_val_acc=_opt_num(d, "best_val_acc", where),
                   best_epoch=integer(d.get("best_epoch"), "best_epoch", where, optional=True),
                   epochs=integer(d.get("epochs"), "epochs", where, optional=True),
                   selected_on=text(d.get("selected_on"), "selected_on", where, optional=True),
                   seconds=_opt_num(d, "seconds", where),
                   threads=integer(d.get("threads"), "threads", where, optional=True),
                   device=text(d.get("device"), "device", where, optional=True),
                   trained_by=None if by is None else mapping(by, "trained_by", where),
                   trained_by_recorded="trained_by" in d)


@dataclass(frozen=True)
class TrialSummary:
    """One grid trial of a sweep unit: its learning rule's options and optimizer settings, best
    validation accuracy, training losses and time."""

    run_dir: str
    status: str
    best_val_acc: float | None = None
    epochs: int | None = None
    train_losses: tuple[float | None, ...] = ()
    optim: dict[str, Any] = field(default_factory=dict)
    rule_options: dict[str, Any] | None = None
    seconds: float | None = None
    trained_by: dict[str, Any] | None = None

    @property
    def lr(self) -> float | None:
        return self.optim.get("lr")

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir, "status": self.status, "best_val_acc": self.best_val_acc,
                "epochs": self.epochs, "train_losses": list(self.train_losses), "optim": dict(self.optim),
                "rule_options": self.rule_options, "seconds": self.seconds, "trained_by": self.trained_by}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> TrialSummary:
        d = mapping(d, "trials[]", where)
        opts, by = d.get("rule_options"), d.get("trained_by")
        return cls(run_dir=str(d.get("run_dir")), status=str(d.get("status") or "unknown"),
                   best_val_acc=_opt_num(d, "best_val_acc", where),
                   epochs=integer(d.get("epochs"), "epochs", where, optional=True),
                   train_losses=tuple(numeric(x, "train_losses[]", where, optional=True)
                                      for x in sequence(d.get("train_losses") or [], "train_losses", where)),
                   optim=mapping(d.get("optim") or {}, "optim", where),
                   rule_options=None if opts is None else mapping(opts, "rule_options", where),
                   seconds=_opt_num(d, "seconds", where),
                   trained_by=None if by is None else mapping(by, "trained_by", where))


@dataclass(frozen=True)
class MethodSummary:
    """One method of a target (of one part): its config, each run, the mean and sample standard
    deviation of the test accuracy, the published number, and a sweep's grid trials."""

    part: str | None
    method: str
    config: dict[str, Any] | None = None
    seeds: tuple[int | None, ...] = ()
    runs: tuple[RunSummary, ...] = ()
    test_acc_mean: float | None = None
    test_acc_std: float | None = None
    published: float | None = None
    trials: tuple[TrialSummary, ...] = ()

    @property
    def dataset(self) -> str | None:
        return ((self.config or {}).get("data") or {}).get("name")

    def with_published(self, published: float | None) -> MethodSummary:
        return replace(self, published=published)

    def to_dict(self) -> dict[str, Any]:
        d = {"part": self.part, "method": self.method, "config": self.config, "seeds": list(self.seeds),
             "runs": [r.to_dict() for r in self.runs], "test_acc_mean": self.test_acc_mean,
             "test_acc_std": self.test_acc_std, "published": self.published}
        if self.trials:
            d["trials"] = [t.to_dict() for t in self.trials]
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str) -> MethodSummary:
        d = mapping(d, "methods[]", where)
        config = d.get("config")
        return cls(part=text(d.get("part"), "part", where, optional=True),
                   method=str(d.get("method")),
                   config=None if config is None else mapping(config, "config", where),
                   seeds=tuple(integer(s, "seeds[]", where, optional=True)
                               for s in sequence(d.get("seeds") or [], "seeds", where)),
                   runs=tuple(RunSummary.from_dict(r, f"{where}: runs[{i}]")
                              for i, r in enumerate(sequence(d.get("runs") or [], "runs", where))),
                   test_acc_mean=_opt_num(d, "test_acc_mean", where),
                   test_acc_std=_opt_num(d, "test_acc_std", where),
                   published=_opt_num(d, "published", where),
                   trials=tuple(TrialSummary.from_dict(t, f"{where}: trials[{i}]")
                                for i, t in enumerate(sequence(d.get("trials") or [], "trials", where))))


@dataclass(frozen=True)
class UnitsSummary:
    """The queue's units of a target: how many, which are done and which pending."""

    total: int
    done: tuple[str, ...]
    pending: tuple[str, ...]
    made_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "done": list(self.done), "pending": list(self.pending),
                "made_by": self.made_by}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> UnitsSummary:
        d = mapping(d, "units", where)
        return cls(total=integer(d.get("total", 0), "total", where),
                   done=tuple(str(u) for u in sequence(d.get("done") or [], "done", where)),
                   pending=tuple(str(u) for u in sequence(d.get("pending") or [], "pending", where)),
                   made_by=text(d.get("made_by"), "made_by", where, optional=True))


@dataclass(frozen=True)
class ReproductionSummary:
    """A reproduction target's summary (``results.json``, ``results/NAME.json``)."""

    target: str | None
    scale: str | None
    status: str
    title: str | None = None
    citation: str | None = None
    parts: tuple[str, ...] = ()
    parts_completed: tuple[str, ...] = ()
    all_parts: tuple[str, ...] = ()
    falign: str | None = None
    git: dict[str, Any] | None = None
    torch: str | None = None
    hardware: dict[str, Any] = field(default_factory=dict)
    published_metric: str | None = None
    wall_seconds_this_call: float | None = None
    compute_seconds: float | None = None
    units: UnitsSummary | None = None
    methods: tuple[MethodSummary, ...] = ()
    measures: dict[str, Any] = field(default_factory=dict)
    report: str | None = None
    extra_rows: tuple[dict[str, Any], ...] | None = None

    @property
    def commit(self) -> str | None:
        """The commit of the code that wrote the summary."""
        return (self.git or {}).get("commit")

    def method(self, part: str | None, name: str) -> MethodSummary | None:
        return next((m for m in self.methods if (m.part, m.method) == (part, name)), None)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema": RESULTS_SCHEMA, "target": self.target, "title": self.title,
            "citation": self.citation, "scale": self.scale, "status": self.status,
            "parts": list(self.parts), "parts_completed": list(self.parts_completed),
            "all_parts": list(self.all_parts), "falign": self.falign, "git": self.git,
            "torch": self.torch, "hardware": self.hardware, "published_metric": self.published_metric}
        if self.wall_seconds_this_call is not None:
            d["wall_seconds_this_call"] = self.wall_seconds_this_call
        d["compute_seconds"] = self.compute_seconds
        if self.units is not None:
            d["units"] = self.units.to_dict()
        d.update(methods=[m.to_dict() for m in self.methods], measures=self.measures)
        if self.report is not None:
            d["report"] = self.report
        if self.extra_rows is not None:
            d["extra_rows"] = [dict(r) for r in self.extra_rows]
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "results.json") -> ReproductionSummary:
        check_version(d, "schema", RESULTS_SCHEMA, "reproduction summary schema", where)
        units, git, extra = d.get("units"), d.get("git"), d.get("extra_rows")

        def names(key: str) -> tuple[str, ...]:
            return tuple(str(p) for p in sequence(d.get(key) or [], key, where))

        return cls(
            target=text(d.get("target"), "target", where, optional=True),
            scale=text(d.get("scale"), "scale", where, optional=True),
            status=str(d.get("status") or "unknown"),
            title=text(d.get("title"), "title", where, optional=True),
            citation=text(d.get("citation"), "citation", where, optional=True),
            parts=names("parts"), parts_completed=names("parts_completed"), all_parts=names("all_parts"),
            falign=text(d.get("falign"), "falign", where, optional=True),
            git=None if git is None else mapping(git, "git", where),
            torch=text(d.get("torch"), "torch", where, optional=True),
            hardware=mapping(d.get("hardware") or {}, "hardware", where),
            published_metric=text(d.get("published_metric"), "published_metric", where, optional=True),
            wall_seconds_this_call=_opt_num(d, "wall_seconds_this_call", where),
            compute_seconds=_opt_num(d, "compute_seconds", where),
            units=None if units is None else UnitsSummary.from_dict(units, f"{where}: units"),
            methods=tuple(MethodSummary.from_dict(m, f"{where}: methods[{i}]")
                          for i, m in enumerate(sequence(d.get("methods") or [], "methods", where))),
            measures=mapping(d.get("measures") or {}, "measures", where),
            report=text(d.get("report"), "report", where, optional=True),
            extra_rows=None if extra is None else tuple(
                mapping(r, "extra_rows[]", where) for r in sequence(extra, "extra_rows", where)))

    def save(self, path: str | os.PathLike[str]) -> None:
        write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReproductionSummary:
        """Read a ``results.json`` / ``results/NAME.json``; :class:`RecordError` naming it."""
        return cls.from_dict(read_json(path), where=str(path))

    @classmethod
    def load_marker(cls, path: str | os.PathLike[str]) -> ReproductionSummary:
        """Read the ``reproduce.json`` an older falign wrote beside ``results.json`` (its name,
        scale and status; ``report`` and ``extra`` once completed), as a summary."""
        d = read_json(path)
        where = str(path)
        if not isinstance(d, dict):
            raise RecordError(f"{where}: holds a JSON {type(d).__name__}, not an object")
        extra = d.get("extra")
        return cls(target=text(d.get("name"), "name", where, optional=True),
                   scale=text(d.get("scale"), "scale", where, optional=True),
                   status=str(d.get("status") or "unknown"),
                   report=text(d.get("report"), "report", where, optional=True),
                   extra_rows=None if extra is None else tuple(
                       mapping(r, "extra[]", where) for r in sequence(extra, "extra", where)))
