"""A target's final runs trained again with the paper's hyper-parameters in place of those its
own search chose (same seed, same everything else), beside the grid's run: whether the search's
choice explains a miss of the published number.  Lance & Kieu 2026's ``measures["paper
config"]`` in ``results/lance-kieu-2026.json``, made from the committed runs whenever the
summary is.

Version 1::

    {"version": 1, "seed": 42, "tolerance": 3.5,       # points (the results tables')
     "methods": {"fa": {"published": 40.07,            # the paper's one number, %
                        "grid": {"values": {"optim.lr": 0.001, "rule.options.scale": 0.1},
                                 "test_acc": 0.361},   # a fraction; null: not measured yet
                        "paper": {"values": {"optim.lr": 0.001, "rule.options.scale": 0.01},
                                  "test_acc": null},
                        "change": null,                # points, paper's config minus the grid's
                        "closes": null}}}              # see PaperConfig.closes

``values`` are the substituted keys (dotted) as the runs' configs hold them.  ``change`` and
``closes`` are written for readers of the file and computed again when it is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .base import check_version, integer, mapping, number

__all__ = ["PAPER_CONFIG_VERSION", "ConfigRun", "PaperConfig", "PaperConfigMethod"]

#: version of the form this module writes (key ``version``)
PAPER_CONFIG_VERSION = 1


@dataclass(frozen=True)
class ConfigRun:
    """One run of a method: the values of the substituted keys it trained with and its test
    accuracy (a fraction; None while not measured)."""

    values: dict[str, Any]
    test_acc: float | None = None

    @property
    def points(self) -> float | None:
        """Test accuracy in points (%), None while not measured."""
        a = self.test_acc
        return None if a is None or not math.isfinite(a) else 100 * a

    def to_dict(self) -> dict[str, Any]:
        return {"values": dict(self.values), "test_acc": self.test_acc}

    @classmethod
    def from_dict(cls, d: Any, key: str, where: str) -> ConfigRun:
        d = mapping(d, key, where)
        return cls(values=mapping(d.get("values") or {}, f"{key}.values", where),
                   test_acc=number(d.get("test_acc"), f"{key}.test_acc", where, optional=True))


@dataclass(frozen=True)
class PaperConfigMethod:
    """One method at the grid's config and at the paper's, and the paper's number (%)."""

    grid: ConfigRun
    paper: ConfigRun
    published: float | None = None

    @property
    def change(self) -> float | None:
        """Points the paper's config adds to the grid's (negative: it loses); None until both
        are measured."""
        a, b = self.grid.points, self.paper.points
        return None if a is None or b is None else b - a


@dataclass(frozen=True)
class PaperConfig:
    """Each method's final config (the one its search chose) and the same config with the
    paper's hyper-parameters, both at ``seed``, beside the published number.  A config *misses*
    when its accuracy lies more than ``tolerance`` points from the published number; the paper's
    config *closes* the miss when the grid's config misses and the paper's does not."""

    seed: int
    tolerance: float
    methods: dict[str, PaperConfigMethod] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        """Whether any method's run at the paper's config is measured."""
        return any(m.paper.points is not None for m in self.methods.values())

    def distance(self, method: str, which: str) -> float | None:
        """Points between the published number and the method's accuracy at ``which`` config
        (``"grid"`` or ``"paper"``); None where either is unknown."""
        m = self.methods[method]
        at = getattr(m, which).points
        return None if at is None or m.published is None else abs(at - m.published)

    def within(self, method: str, which: str) -> bool | None:
        """Whether the accuracy at ``which`` config lies within the tolerance of the published one."""
        d = self.distance(method, which)
        return None if d is None else d <= self.tolerance

    def closes(self, method: str) -> bool | None:
        """Whether the paper's config closes the method's miss at the grid's config: the grid's
        misses and the paper's lies within the tolerance.  None while the paper's config is not
        measured, or where the grid's config does not miss (there is nothing to close)."""
        grid, paper = self.within(method, "grid"), self.within(method, "paper")
        if grid is None or paper is None or grid:
            return None
        return paper

    def to_dict(self) -> dict[str, Any]:
        methods = {label: {"published": m.published, "grid": m.grid.to_dict(), "paper": m.paper.to_dict(),
                           "change": None if m.change is None else round(m.change, 4),
                           "closes": self.closes(label)}
                   for label, m in self.methods.items()}
        return {"version": PAPER_CONFIG_VERSION, "seed": self.seed, "tolerance": self.tolerance,
                "methods": methods}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> PaperConfig:
        check_version(d, "version", PAPER_CONFIG_VERSION, "paper config record", where)
        methods = {}
        for label, m in mapping(d.get("methods") or {}, "methods", where).items():
            key = f"methods.{label}"
            m = mapping(m, key, where)
            methods[str(label)] = PaperConfigMethod(
                grid=ConfigRun.from_dict(m.get("grid") or {}, f"{key}.grid", where),
                paper=ConfigRun.from_dict(m.get("paper") or {}, f"{key}.paper", where),
                published=number(m.get("published"), f"{key}.published", where, optional=True))
        return cls(seed=integer(d.get("seed"), "seed", where),
                   tolerance=number(d.get("tolerance"), "tolerance", where), methods=methods)
