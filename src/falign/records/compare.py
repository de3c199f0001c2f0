"""The comparison record: what ``run_compare`` / ``run_compare_seeds`` write to
``compare.json`` and the report and a resumed comparison read.

``compare.json``, schema version 2::

    {"schema_version": 2,
     "rules": ["bp", "fa"],          # the methods' labels, in order
     "seeds": [0, 1],                # over several seeds only
     "base": {...},                  # the base config, as ExperimentConfig.to_dict()
     "status": "completed",          # "running", "completed" or "interrupted"
     "runs": [{"rule": "bp", "seed": 0, "run_dir": "bp/seed0", ...}],   # over seeds: every run
     "rows": [{"rule": "bp", "best_val_acc": 0.9, "test_acc": 0.9, "epochs": 3, "best_epoch": 3,
               "sec_per_epoch": 1.2, "status": "completed"}],            # one seed, once completed
     "summary": [{"rule": "bp", "seeds": [0, 1], "n": 2, "test_acc_mean": ..., ...}]}  # over seeds

Version 1 is the same without ``schema_version`` and reads as it is; a file that leaves out
``base`` or ``status`` (written by hand) reads with None and ``"unknown"``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .base import check_version, integer, mapping, numeric, read_json, sequence, text, write_json

__all__ = ["COMPARE_VERSION", "CompareRecord", "ComparedRun", "SeedSummary"]

#: version of the ``compare.json`` form this module writes (a file without one is version 1)
COMPARE_VERSION = 2

_RESULT_KEYS = ("best_val_acc", "test_acc", "epochs", "best_epoch", "sec_per_epoch", "status")


@dataclass(frozen=True)
class ComparedRun:
    """One method's run: over seeds, its seed and directory (relative to the comparison's); its
    numbers once the comparison has completed (``status`` None before)."""

    rule: str
    seed: int | None = None
    run_dir: str | None = None
    best_val_acc: float | None = None
    test_acc: float | None = None
    epochs: int | None = None
    best_epoch: int | None = None
    sec_per_epoch: float | None = None
    status: str | None = None

    def to_dict(self, *, planned: bool) -> dict[str, Any]:
        """``planned``: a run of a comparison over seeds (rule, seed, run_dir first)."""
        head = {"rule": self.rule, **({"seed": self.seed, "run_dir": self.run_dir} if planned else {})}
        if self.status is None:
            return head
        return {**head, **{k: getattr(self, k) for k in _RESULT_KEYS}}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> ComparedRun:
        d = mapping(d, "runs[]", where)
        return cls(rule=str(d.get("rule")), seed=integer(d.get("seed"), "seed", where, optional=True),
                   run_dir=text(d.get("run_dir"), "run_dir", where, optional=True),
                   best_val_acc=numeric(d.get("best_val_acc"), "best_val_acc", where, optional=True),
                   test_acc=numeric(d.get("test_acc"), "test_acc", where, optional=True),
                   epochs=integer(d.get("epochs"), "epochs", where, optional=True),
                   best_epoch=integer(d.get("best_epoch"), "best_epoch", where, optional=True),
                   sec_per_epoch=numeric(d.get("sec_per_epoch"), "sec_per_epoch", where, optional=True),
                   status=text(d.get("status"), "status", where, optional=True))


@dataclass(frozen=True)
class SeedSummary:
    """One method over seeds: mean and sample standard deviation of its accuracies."""

    rule: str
    seeds: tuple[int, ...]
    n: int
    test_acc_mean: float | None
    test_acc_std: float | None
    best_val_acc_mean: float | None
    best_val_acc_std: float | None
    status: str

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "seeds": list(self.seeds), "n": self.n,
                "test_acc_mean": self.test_acc_mean, "test_acc_std": self.test_acc_std,
                "best_val_acc_mean": self.best_val_acc_mean, "best_val_acc_std": self.best_val_acc_std,
                "status": self.status}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> SeedSummary:
        d = mapping(d, "summary[]", where)
        return cls(rule=str(d.get("rule")),
                   seeds=tuple(integer(s, "seeds[]", where)
                               for s in sequence(d.get("seeds") or [], "seeds", where)),
                   n=integer(d.get("n", 0), "n", where),
                   **{k: numeric(d.get(k), k, where, optional=True)
                      for k in ("test_acc_mean", "test_acc_std", "best_val_acc_mean", "best_val_acc_std")},
                   status=str(d.get("status") or "unknown"))


@dataclass(frozen=True)
class CompareRecord:
    """A comparison of several methods on one base config (one seed, or several: ``seeds``)."""

    rules: tuple[str, ...]
    base: dict[str, Any] | None = None
    status: str = "unknown"
    seeds: tuple[int, ...] | None = None
    runs: tuple[ComparedRun, ...] = ()
    rows: tuple[ComparedRun, ...] | None = None
    summary: tuple[SeedSummary, ...] | None = None

    @property
    def over_seeds(self) -> bool:
        return self.seeds is not None

    def with_status(self, status: str) -> CompareRecord:
        return replace(self, status=status)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema_version": COMPARE_VERSION, "rules": list(self.rules)}
        if self.seeds is not None:
            d["seeds"] = list(self.seeds)
        d.update(base=self.base, status=self.status)
        if self.seeds is not None or self.runs:
            d["runs"] = [r.to_dict(planned=True) for r in self.runs]
        if self.rows is not None:
            d["rows"] = [r.to_dict(planned=False) for r in self.rows]
        if self.summary is not None:
            d["summary"] = [s.to_dict() for s in self.summary]
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "compare.json") -> CompareRecord:
        check_version(d, "schema_version", COMPARE_VERSION, "compare.json", where)
        seeds = d.get("seeds")
        rows, summary = d.get("rows"), d.get("summary")
        base = d.get("base")
        return cls(
            rules=tuple(str(r) for r in sequence(d.get("rules") or [], "rules", where)),
            base=None if base is None else mapping(base, "base", where),
            status=str(d.get("status") or "unknown"),
            seeds=None if seeds is None else tuple(integer(s, "seeds[]", where)
                                                   for s in sequence(seeds, "seeds", where)),
            runs=tuple(ComparedRun.from_dict(r, f"{where}: runs[{i}]")
                       for i, r in enumerate(sequence(d.get("runs") or [], "runs", where))),
            rows=None if rows is None else tuple(ComparedRun.from_dict(r, f"{where}: rows[{i}]")
                                                 for i, r in enumerate(sequence(rows, "rows", where))),
            summary=None if summary is None else tuple(
                SeedSummary.from_dict(s, f"{where}: summary[{i}]")
                for i, s in enumerate(sequence(summary, "summary", where))))

    def save(self, path: str | os.PathLike[str]) -> None:
        write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CompareRecord:
        """Read a ``compare.json`` of any version; :class:`RecordError` naming it if it is not one."""
        return cls.from_dict(read_json(path), where=str(path))
