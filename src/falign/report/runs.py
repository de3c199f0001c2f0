"""Find the runs behind the paths a report is asked for, label them, and summarise each one."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..training.record import RecordError, RunRecord
from ..training.results import ResultRow

__all__ = ["ReportError", "Run", "load_runs", "published_columns", "summary"]

# published metric -> column title; any other key is shown as "published <key>".
PUBLISHED_TITLES: dict[str, str] = {
    "test_acc": "published test %",
    "best_val_acc": "published val %",
    "val_acc": "published val %",
}


class ReportError(ValueError):
    """A path given to the report is not a run or comparison directory, or its files are unreadable."""


@dataclass
class Run:
    """One training run: its label in the report (``rule`` plus, where two runs share a rule,
    the directory), its directory and its record (``tracking.json``)."""

    label: str
    rule: str
    path: Path
    record: RunRecord

    @property
    def config(self) -> dict[str, Any]:
        return self.record.config


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = " ".join(str(err).split())
        raise ReportError(f"{path}: cannot be read as JSON ({reason})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: holds a JSON {type(data).__name__}, not an object")
    return data


def _run_dirs(path: Path) -> list[Path]:
    """``path`` itself for a run directory; its runs, in the comparison's order, for a comparison."""
    if not path.is_dir():
        raise ReportError(f"{path}: no such directory")
    marker = path / "compare.json"
    if marker.is_file() and not (path / "tracking.json").exists():
        rules = _read_json(marker).get("rules")
        if not isinstance(rules, list) or not rules:
            raise ReportError(f"{marker}: lists no rules")
        return [path / str(rule).replace(":", "-") for rule in rules]
    return [path]


def rule_label(config: Mapping[str, Any], fallback: str) -> str:
    """``fa``, or ``fa:dense`` when the run chose a rule variant (the compare syntax)."""
    from ..rules import rule_spec

    rule = config.get("rule") or {}
    name = rule.get("name")
    if not name:
        return fallback
    return rule_spec(str(name), rule.get("options"))[0]


def _disambiguate(bases: list[str], paths: list[Path]) -> list[str]:
    """Equal labels get the run's directory name, then parent/name, then a counter."""
    labels = list(bases)
    for describe in (lambda p: p.name, lambda p: f"{p.parent.name}/{p.name}"):
        counts = Counter(labels)
        labels = [f"{base} ({describe(path)})" if counts[label] > 1 else label
                  for base, label, path in zip(bases, labels, paths, strict=True)]
    seen: Counter[str] = Counter()
    out = []
    for label in labels:
        seen[label] += 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Every run under ``paths`` (run directories, or comparison directories expanded into their
    runs), each labelled by its rule and disambiguated by its directory name."""
    dirs: list[Path] = []
    for given in paths:
        for run_dir in _run_dirs(Path(given)):
            if run_dir.resolve() not in {d.resolve() for d in dirs}:
                dirs.append(run_dir)
    if not dirs:
        raise ReportError("no run directories given")
    records = []
    for run_dir in dirs:
        tracking_path = run_dir / "tracking.json"
        if not tracking_path.is_file():
            raise ReportError(f"{run_dir}: no tracking.json (not a falign run directory)")
        try:
            records.append(RunRecord.read(tracking_path))
        except RecordError as err:
            raise ReportError(str(err)) from None
    bases = [rule_label(r.config, d.name) for r, d in zip(records, dirs, strict=True)]
    labels = _disambiguate(bases, dirs)
    return [Run(label, base, d, r) for label, base, d, r in zip(labels, bases, dirs, records, strict=True)]


def summary(run: Run) -> ResultRow:
    """The numbers of a run's results row (accuracies as fractions, None when absent)."""
    return ResultRow.of(run.label, run.record)


def published_columns(runs: Sequence[Run],
                      published: Mapping[str, Mapping[str, float]] | None) -> dict[str, dict[str, float]]:
    """column title -> {run label: value in %} for each published metric that names a run's
    label, its directory name, or its rule (both runs of a rule compared twice get the rule's
    number).  A name mapped to None has no published number (it stops the lookup there)."""
    columns: dict[str, dict[str, float]] = {}
    for metric, by_label in (published or {}).items():
        values = {}
        for run in runs:
            value = by_label.get(run.label, by_label.get(run.path.name, by_label.get(run.rule)))
            if value is not None:
                values[run.label] = float(value)
        if values:
            columns.setdefault(PUBLISHED_TITLES.get(metric, f"published {metric}"), {}).update(values)
    return columns
