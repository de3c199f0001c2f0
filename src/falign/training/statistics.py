"""The statistics of a comparison, as functions of its record (:class:`falign.records.CompareRecord`):
the mean and sample standard deviation over seeds, each method's runs grouped.

``run_compare_seeds`` keeps :func:`seed_summaries` of its record in ``compare.json``; the tables
and ``summary.md`` (:mod:`falign.training.compare_text`) are drawn from the same groups.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ..records import ComparedRun, CompareRecord, SeedSummary
from .results import ResultRow

__all__ = ["SeedRuns", "mean_std", "result_row", "result_rows", "seed_groups", "seed_summaries"]


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1; 0 for one value) of the finite values;
    (None, None) when there are none.  The sweep's final runs report the same."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


@dataclass
class SeedRuns:
    """One method trained on several seeds: its results row for each seed (in ``seeds`` order)
    and their mean ± standard deviation (:func:`mean_std`)."""

    label: str
    seeds: list[int]
    rows: list[ResultRow]

    def mean_std(self, key: str) -> tuple[float | None, float | None]:
        """Of a row attribute: ``test_acc``, ``best_val_acc``, ``sec_per_epoch``."""
        return mean_std([getattr(r, key) for r in self.rows])

    @property
    def status(self) -> str:
        """"completed" when every seed's run is; else the count of each status."""
        counts = Counter(r.status for r in self.rows)
        if set(counts) == {"completed"}:
            return "completed"
        return ", ".join(f"{n} {status}" for status, n in counts.items())

    @property
    def epochs(self) -> str:
        counts = sorted({r.epochs for r in self.rows})
        return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"

    def summary(self) -> SeedSummary:
        """The means and standard deviations ``compare.json`` keeps."""
        test, val = self.mean_std("test_acc"), self.mean_std("best_val_acc")
        return SeedSummary(rule=self.label, seeds=tuple(self.seeds), n=len(self.rows),
                           test_acc_mean=test[0], test_acc_std=test[1], best_val_acc_mean=val[0],
                           best_val_acc_std=val[1], status=self.status)

    def to_dict(self) -> dict:
        return self.summary().to_dict()


def result_row(run: ComparedRun) -> ResultRow:
    """A compared run's numbers as a results row (its label: the method's)."""
    return ResultRow(label=run.rule, best_val_acc=run.best_val_acc, test_acc=run.test_acc,
                     best_epoch=run.best_epoch, epochs=run.epochs or 0, sec_per_epoch=run.sec_per_epoch,
                     status=run.status or "unknown")


def result_rows(record: CompareRecord) -> list[ResultRow]:
    """One row per method of a comparison of one seed, once completed (none before)."""
    return [result_row(r) for r in record.rows or ()]


def seed_groups(record: CompareRecord) -> list[SeedRuns]:
    """Each method's runs of a comparison over seeds, in the record's order of methods and seeds."""
    groups = []
    for label in record.rules:
        runs = [r for r in record.runs if r.rule == label]
        groups.append(SeedRuns(label, [r.seed for r in runs], [result_row(r) for r in runs]))
    return groups


def seed_summaries(record: CompareRecord) -> tuple[SeedSummary, ...]:
    """The mean and sample standard deviation over seeds of each method's accuracies."""
    return tuple(g.summary() for g in seed_groups(record))
