"""The sweep record: what ``run_sweep`` writes to ``sweep.json`` and returns, and what the report
reads.

``sweep.json``, schema version 2::

    {"schema_version": 2, "name": "mnist-fa", "sampler": "grid",
     "rules": {"fa": {
       "trials": [{"number": 0, "params": {"optim.lr": 0.01}, "value": 0.93,
                   "state": "COMPLETE", "status": "completed"}],     # value: best val accuracy
       "best_params": {"optim.lr": 0.01},                            # null: no trial completed
       "final": {"params": {...}, "runs": [{"seed": 0, "best_val_acc": ..., "test_acc": ...,
                 "best_epoch": 3, "status": "completed", "run_dir": "out/final/fa-seed0"}],
                 "test_acc_mean": ..., "test_acc_std": ...}}}}      # final: only once trained

Version 1 is the same without ``schema_version`` and reads as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
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

__all__ = ["SWEEP_VERSION", "FinalRun", "SweepFinal", "SweepRecord", "SweepRule", "SweepTrial"]

#: version of the ``sweep.json`` form this module writes (a file without one is version 1)
SWEEP_VERSION = 2


@dataclass(frozen=True)
class SweepTrial:
    """One trial of a rule's study: its parameters, its value (best validation accuracy),
    Optuna's state name and the run's status."""

    number: int
    params: dict[str, Any]
    value: float | None
    state: str
    status: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "params": dict(self.params), "value": self.value,
                "state": self.state, "status": self.status}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> SweepTrial:
        d = mapping(d, "trials[]", where)
        return cls(number=integer(d.get("number"), "number", where),
                   params=mapping(d.get("params") or {}, "params", where),
                   value=numeric(d.get("value"), "value", where, optional=True),
                   state=str(d.get("state") or "unknown"),
                   status=text(d.get("status"), "status", where, optional=True))


@dataclass(frozen=True)
class FinalRun:
    """One seed's full training of the best parameters."""

    seed: int
    best_val_acc: float | None
    test_acc: float | None
    best_epoch: int | None
    status: str
    run_dir: str

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "best_val_acc": self.best_val_acc, "test_acc": self.test_acc,
                "best_epoch": self.best_epoch, "status": self.status, "run_dir": self.run_dir}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> FinalRun:
        d = mapping(d, "runs[]", where)
        run_dir = text(d.get("run_dir"), "run_dir", where)
        if not run_dir:
            raise RecordError(f"{where}: a final run without its run_dir")
        return cls(seed=integer(d.get("seed"), "seed", where),
                   best_val_acc=numeric(d.get("best_val_acc"), "best_val_acc", where, optional=True),
                   test_acc=numeric(d.get("test_acc"), "test_acc", where, optional=True),
                   best_epoch=integer(d.get("best_epoch"), "best_epoch", where, optional=True),
                   status=str(d.get("status") or "unknown"), run_dir=run_dir)


@dataclass(frozen=True)
class SweepFinal:
    """The best parameters trained on every final seed, and the test accuracy's mean and sample
    standard deviation over them."""

    params: dict[str, Any]
    runs: tuple[FinalRun, ...]
    test_acc_mean: float | None
    test_acc_std: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"params": dict(self.params), "runs": [r.to_dict() for r in self.runs],
                "test_acc_mean": self.test_acc_mean, "test_acc_std": self.test_acc_std}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> SweepFinal:
        d = mapping(d, "final", where)
        return cls(params=mapping(d.get("params") or {}, "params", where),
                   runs=tuple(FinalRun.from_dict(r, f"{where}: runs[{i}]")
                              for i, r in enumerate(sequence(d.get("runs") or [], "runs", where))),
                   test_acc_mean=numeric(d.get("test_acc_mean"), "test_acc_mean", where, optional=True),
                   test_acc_std=numeric(d.get("test_acc_std"), "test_acc_std", where, optional=True))


@dataclass(frozen=True)
class SweepRule:
    """One rule's study: its trials, the best parameters (None until a trial completes) and its
    final runs (None until trained, or when the sweep was asked for none)."""

    trials: tuple[SweepTrial, ...] = ()
    best_params: dict[str, Any] | None = None
    final: SweepFinal | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"trials": [t.to_dict() for t in self.trials], "best_params": self.best_params}
        if self.final is not None:
            d["final"] = self.final.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str) -> SweepRule:
        d = mapping(d or {}, "rules[]", where)
        best, final = d.get("best_params"), d.get("final")
        return cls(trials=tuple(SweepTrial.from_dict(t, f"{where}: trials[{i}]")
                                for i, t in enumerate(sequence(d.get("trials") or [], "trials", where))),
                   best_params=None if best is None else mapping(best, "best_params", where),
                   final=None if final is None else SweepFinal.from_dict(final, f"{where}: final"))


@dataclass(frozen=True)
class SweepRecord:
    """A sweep: one study per rule (label -> :class:`SweepRule`)."""

    name: str
    sampler: str | None
    rules: dict[str, SweepRule] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SWEEP_VERSION, "name": self.name, "sampler": self.sampler,
                "rules": {label: r.to_dict() for label, r in self.rules.items()}}

    @classmethod
    def from_dict(cls, d: Any, where: str = "sweep.json") -> SweepRecord:
        check_version(d, "schema_version", SWEEP_VERSION, "sweep.json", where)
        rules = d.get("rules")
        if not isinstance(rules, dict):
            raise RecordError(f"{where}: lists no rules")
        return cls(name=str(d.get("name") or ""),
                   sampler=text(d.get("sampler"), "sampler", where, optional=True),
                   rules={str(label): SweepRule.from_dict(entry, f"{where}: rules.{label}")
                          for label, entry in rules.items()})

    def save(self, path: str | os.PathLike[str]) -> None:
        write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SweepRecord:
        """Read a ``sweep.json`` of any version; :class:`RecordError` naming it if it is not one."""
        return cls.from_dict(read_json(path), where=str(path))
