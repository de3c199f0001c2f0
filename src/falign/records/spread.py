"""The spread over seeds of a target's final runs: each method's final config trained again at
other seeds (only the seed changes, the hyper-parameters are those its search chose), beside
the run at the seed the paper's protocol names, which stays the number compared with the paper;
and each method's gap to a reference method (BP) seed by seed, like for like.  Lance & Kieu
2026's ``measures["seed spread"]`` in ``results/lance-kieu-2026.json``, made from the committed
runs whenever the summary is.

Version 1::

    {"version": 1, "reference": "bp", "protocol_seed": 42,
     "tolerance": 3.5, "gap_tolerance": 2.0,          # points (the results tables')
     "methods": {"fa": {"published": 40.07,            # the paper's one number, %
                        "test_acc": {"42": 0.361, "43": 0.372, "44": null},   # fractions; null:
                                                                              # not measured yet
                        "mean": 36.65, "std": 0.78,    # % over the measured seeds (n - 1)
                        "gap": {"42": -37.46, "43": -36.2},   # points to the reference, per seed
                        "gap_mean": -36.83, "gap_std": 0.89}, "bp": {...}}}

``mean``, ``std`` and the gaps are written for readers of the file and computed again when it is
read (only ``published`` and ``test_acc`` are read back).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from .base import RecordError, check_version, integer, mapping, number, text

__all__ = ["SPREAD_VERSION", "SeedSpread", "SpreadMethod"]

#: version of the form this module writes (key ``version``)
SPREAD_VERSION = 1


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1; 0 for one value); (None, None) for none."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class SpreadMethod:
    """One method's test accuracy (a fraction) at each seed; None where not measured yet."""

    test_acc: dict[int, float | None]
    published: float | None = None

    @property
    def measured(self) -> dict[int, float]:
        """Seed -> test accuracy in points (%), the seeds measured so far."""
        return {s: 100 * a for s, a in sorted(self.test_acc.items())
                if a is not None and math.isfinite(a)}

    @property
    def mean_std(self) -> tuple[float | None, float | None]:
        """Mean and sample standard deviation (points) over the measured seeds."""
        return _mean_std(list(self.measured.values()))


@dataclass(frozen=True)
class SeedSpread:
    """Each method at several seeds, and its gap to ``reference`` at each seed both measured
    (see the module docstring).  A method *misses* when its accuracy at ``protocol_seed`` lies
    more than ``tolerance`` points from the published number; the spread *covers* the miss when
    what lies beyond the tolerance is at most two standard deviations of the method's seeds."""

    reference: str
    protocol_seed: int
    tolerance: float
    gap_tolerance: float | None = None
    methods: dict[str, SpreadMethod] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        """Whether any seed beside the protocol's is measured."""
        return any(s != self.protocol_seed for m in self.methods.values() for s in m.measured)

    def gaps(self, method: str) -> dict[int, float]:
        """Seed -> the method's accuracy minus the reference's at that seed (points), for the
        seeds both are measured at."""
        mine, ref = self.methods[method].measured, self.methods[self.reference].measured
        return {s: mine[s] - ref[s] for s in mine if s in ref}

    def gap_mean_std(self, method: str) -> tuple[float | None, float | None]:
        return _mean_std(list(self.gaps(method).values()))

    def published_gap(self, method: str) -> float | None:
        pub, ref = self.methods[method].published, self.methods[self.reference].published
        return None if pub is None or ref is None else pub - ref

    def beyond(self, method: str) -> float | None:
        """Points by which the protocol seed's accuracy lies beyond the tolerance around the
        published number (negative: within it); None where either is unknown."""
        m = self.methods[method]
        at = m.measured.get(self.protocol_seed)
        if at is None or m.published is None:
            return None
        return abs(at - m.published) - self.tolerance

    def within(self, method: str) -> dict[int, bool]:
        """Seed -> whether that seed's accuracy lies within the tolerance of the published one."""
        m = self.methods[method]
        if m.published is None:
            return {}
        return {s: abs(a - m.published) <= self.tolerance for s, a in m.measured.items()}

    def covers(self, method: str) -> bool | None:
        """Whether the seed spread covers the method's miss at the protocol seed: what lies
        beyond the tolerance is at most two sample standard deviations of its measured seeds.
        None while there is no miss or fewer than two seeds are measured."""
        beyond = self.beyond(method)
        _, std = self.methods[method].mean_std
        if beyond is None or beyond <= 0 or len(self.methods[method].measured) < 2:
            return None
        return beyond <= 2 * std

    def to_dict(self) -> dict[str, Any]:
        methods = {}
        for label, m in self.methods.items():
            mean, std = m.mean_std
            entry: dict[str, Any] = {"published": m.published,
                                     "test_acc": {str(s): a for s, a in sorted(m.test_acc.items())},
                                     "mean": _round(mean), "std": _round(std)}
            if label != self.reference and self.reference in self.methods:
                gap_mean, gap_std = self.gap_mean_std(label)
                entry.update(gap={str(s): _round(g) for s, g in self.gaps(label).items()},
                             gap_mean=_round(gap_mean), gap_std=_round(gap_std))
            methods[label] = entry
        return {"version": SPREAD_VERSION, "reference": self.reference,
                "protocol_seed": self.protocol_seed, "tolerance": self.tolerance,
                "gap_tolerance": self.gap_tolerance, "methods": methods}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> SeedSpread:
        check_version(d, "version", SPREAD_VERSION, "seed spread record", where)
        methods = {}
        for label, m in mapping(d.get("methods") or {}, "methods", where).items():
            m = mapping(m, f"methods.{label}", where)
            accs = mapping(m.get("test_acc") or {}, f"methods.{label}.test_acc", where)
            try:
                seeds = {int(s): number(a, f"methods.{label}.test_acc.{s}", where, optional=True)
                         for s, a in accs.items()}
            except ValueError:
                raise RecordError(f"{where}: methods.{label}.test_acc has a key that is not a seed") from None
            methods[str(label)] = SpreadMethod(
                test_acc=seeds, published=number(m.get("published"), "published", where, optional=True))
        return cls(reference=text(d.get("reference"), "reference", where),
                   protocol_seed=integer(d.get("protocol_seed"), "protocol_seed", where),
                   tolerance=number(d.get("tolerance"), "tolerance", where),
                   gap_tolerance=number(d.get("gap_tolerance"), "gap_tolerance", where, optional=True),
                   methods=methods)


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)
