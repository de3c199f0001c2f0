"""The re-check record: what ``python -m falign.reproduce.recheck --out`` writes
(``results/checks/NAME.json``) and the results tables read.

Version 1 (no version key; the only form so far)::

    {"falign": "0.2.0", "git": {"commit": ..., "dirty": false}, "torch": "2.13.0+cpu",
     "checks": [{"run": "dfa-mnist/compare/dfa/seed0", "threads": 1,
                 "same_first_epoch_record": true, "same_epoch_1_weights": null,
                 "keys_only_today": [], "first_epoch": {"train_loss": ..., ...},
                 "differences": {"val_acc": [old, new]}}]}
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import check_version, integer, mapping, read_json, sequence, text, write_json

__all__ = ["RECHECK_VERSION", "RecheckRecord", "RunCheck"]

#: version of the re-check form this module writes (written without a key: version 1)
RECHECK_VERSION = 1


@dataclass(frozen=True)
class RunCheck:
    """One run's first epoch retrained on today's code: whether its record (and its epoch-1
    tensors, where the run kept them; None where it did not) came out the same."""

    run: str
    threads: int | None
    same_first_epoch_record: bool
    same_epoch_1_weights: bool | None
    keys_only_today: tuple[str, ...] | None = ()  # None: a check from before it was kept
    first_epoch: dict[str, Any] | None = None
    differences: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        """The same first-epoch record, and the same epoch-1 tensors where the run kept them."""
        return self.same_first_epoch_record and self.same_epoch_1_weights is not False

    def to_dict(self) -> dict[str, Any]:
        d = {"run": self.run, "threads": self.threads,
             "same_first_epoch_record": self.same_first_epoch_record,
             "same_epoch_1_weights": self.same_epoch_1_weights}
        if self.keys_only_today is not None:
            d["keys_only_today"] = list(self.keys_only_today)
        d.update(first_epoch=self.first_epoch, differences=self.differences)
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str) -> RunCheck:
        d = mapping(d, "checks[]", where)
        weights, first, diff = d.get("same_epoch_1_weights"), d.get("first_epoch"), d.get("differences")
        added = d.get("keys_only_today")
        return cls(run=str(d.get("run")),
                   threads=integer(d.get("threads"), "threads", where, optional=True),
                   same_first_epoch_record=bool(d.get("same_first_epoch_record")),
                   same_epoch_1_weights=None if weights is None else bool(weights),
                   keys_only_today=None if added is None else tuple(
                       str(k) for k in sequence(added, "keys_only_today", where)),
                   first_epoch=None if first is None else mapping(first, "first_epoch", where),
                   differences=None if diff is None else mapping(diff, "differences", where))


@dataclass(frozen=True)
class RecheckRecord:
    """The re-checks of a target's committed runs, and the code they were made on."""

    checks: tuple[RunCheck, ...]
    falign: str | None = None
    git: dict[str, Any] | None = None
    torch: str | None = None

    @property
    def commit(self) -> str | None:
        """The commit of the code the runs were re-checked on."""
        return (self.git or {}).get("commit")

    def to_dict(self) -> dict[str, Any]:
        return {"falign": self.falign, "git": self.git, "torch": self.torch,
                "checks": [c.to_dict() for c in self.checks]}

    @classmethod
    def from_dict(cls, d: Any, where: str = "checks.json") -> RecheckRecord:
        check_version(d, "schema_version", RECHECK_VERSION, "re-check", where)
        git = d.get("git")
        return cls(checks=tuple(RunCheck.from_dict(c, f"{where}: checks[{i}]")
                                for i, c in enumerate(sequence(d.get("checks") or [], "checks", where))),
                   falign=text(d.get("falign"), "falign", where, optional=True),
                   git=None if git is None else mapping(git, "git", where),
                   torch=text(d.get("torch"), "torch", where, optional=True))

    def save(self, path: str | os.PathLike[str]) -> None:
        write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RecheckRecord:
        """Read a ``results/checks/NAME.json``; :class:`RecordError` naming it."""
        return cls.from_dict(read_json(path), where=str(path))
