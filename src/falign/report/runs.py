"""Find the runs behind the paths a report is asked for, label them, and summarise each one."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FalignError
from ..records import CompareRecord, RecordError, ReproductionSummary, RunRecord, SweepRecord
from ..training.results import ResultRow

if TYPE_CHECKING:
    from ..training.statistics import SeedRuns

__all__ = ["ReportError", "Run", "Source", "Sources", "load_runs", "load_sources", "published_columns",
           "seed_groups", "summary"]

# published metric -> column title; any other key is shown as "published <key>".
PUBLISHED_TITLES: dict[str, str] = {
    "test_acc": "published test %",
    "best_val_acc": "published val %",
    "val_acc": "published val %",
}


class ReportError(FalignError, ValueError):
    """A path given to the report is not a run, comparison, sweep or reproduction directory, or its
    files are unreadable; an analysis asked of the report cannot be made."""


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

    @property
    def exact(self) -> bool:
        """Whether the run trained by exact backprop (its rule's pathway is ``exact``): the
        reference other runs are compared with."""
        from ..rules import RuleError, get_rule

        name = (self.config.get("rule") or {}).get("name")
        try:
            return get_rule(str(name)).exact
        except RuleError:  # a rule no longer registered (a user's, not imported)
            return False


#: the file that marks each kind of directory, and how it is read (a reproduction written before
#: its marker was folded into ``results.json`` has a ``reproduce.json``, read first)
_MARKERS = (("compare", "compare.json", CompareRecord.load), ("sweep", "sweep.json", SweepRecord.load),
            ("reproduce", "reproduce.json", ReproductionSummary.load_marker),
            ("reproduce", "results.json", ReproductionSummary.load))


@dataclass
class Source:
    """A directory given to the report that is not one run: a comparison (``compare.json``), a
    sweep (``sweep.json``) or a reproduction (``results.json``), with its record."""

    kind: str  # "compare", "sweep" or "reproduce"
    path: Path
    record: CompareRecord | SweepRecord | ReproductionSummary


@dataclass
class Sources:
    """Everything under the paths given to the report: the runs, the comparisons, sweeps and
    reproductions they came from, and notes on what is missing (with how to get it)."""

    runs: list[Run]
    sources: list[Source]
    notes: list[str]

    def of_kind(self, kind: str) -> list[Source]:
        return [s for s in self.sources if s.kind == kind]


# the folders of a reproduction that hold its report and analyses, not runs
_NOT_RUNS = ("report", "analysis")


def _compare_dirs(path: Path, record: CompareRecord) -> list[Path]:
    from ..training.compare import run_label

    if record.runs:  # over several seeds: every run is listed
        if not all(r.run_dir for r in record.runs):
            raise ReportError(f"{path / 'compare.json'}: a run without its run_dir")
        return [path / str(r.run_dir) for r in record.runs]
    if not record.rules:
        raise ReportError(f"{path / 'compare.json'}: lists no rules")
    return [path / run_label(rule) for rule in record.rules]


def _sweep_dirs(path: Path, record: SweepRecord, notes: list[str]) -> list[Path]:
    dirs = []
    for label, entry in record.rules.items():
        runs = list(entry.final.runs) if entry.final is not None else []
        if not runs:
            notes.append(f"sweep {path}: '{label}' has no final runs (no trial of it completed); the "
                         f"other rules are reported")
        # by name under final/: the recorded path is relative to where the sweep was started
        dirs += [path / "final" / Path(r.run_dir).name for r in runs]
    if not dirs:
        raise ReportError(f"{path}: the sweep has no final runs yet (a trial must complete first; "
                          f"finish it with `falign sweep CONFIG --resume --out {path}`)")
    return dirs


def _expand(path: Path, sources: list[Source], notes: list[str]) -> list[Path]:
    """``path`` itself for a run directory; its runs for a comparison (``compare.json``), a sweep
    (``sweep.json``: the final runs of every rule) or a reproduction (``reproduce.json``: every
    comparison, sweep and run directory in it)."""
    if not path.is_dir():
        raise ReportError(f"{path}: no such directory")
    if (path / "tracking.json").exists():
        return [path]
    for kind, name, load in _MARKERS:
        if (path / name).is_file():
            try:
                data = load(path / name)
            except RecordError as err:
                raise ReportError(str(err)) from None
            sources.append(Source(kind, path, data))
            break
    else:
        if (path / "optuna-journal.log").exists() or (path / "trials").is_dir():
            raise ReportError(f"{path}: a sweep that has not finished (no sweep.json yet); finish it "
                              f"with `falign sweep CONFIG --resume --out {path}`, or report on "
                              "the trial runs under trials/")
        return [path]  # "no tracking.json" is said where the runs are read
    if isinstance(data, CompareRecord):
        if data.status != "completed":
            notes.append(f"comparison {path} has not finished ({data.status}; resume "
                         f"it with `falign compare ... --resume --out {path}`)")
        dirs = _compare_dirs(path, data)
        started = [d for d in dirs if (d / "tracking.json").is_file()]
        if not started:
            raise ReportError(f"{path}: the comparison holds no run yet (resume it with `falign "
                              f"compare ... --resume --out {path}`)")
        if len(started) < len(dirs):
            notes.append(f"comparison {path}: not started: "
                         + ", ".join(_planned(path, d, data) for d in dirs if d not in started))
        return started
    if isinstance(data, SweepRecord):
        return _sweep_dirs(path, data, notes)
    if data.status != "completed":
        notes.append(f"reproduction {path} has not finished (resume it with `falign reproduce "
                     f"{data.target or 'NAME'} --resume --out {path}`)")
    dirs = []
    for child in sorted(p for p in path.iterdir() if p.is_dir() and p.name not in _NOT_RUNS):
        if any((child / f).exists() for f in ("tracking.json", "compare.json", "sweep.json")):
            try:
                dirs += _expand(child, sources, notes)
            except ReportError as err:  # a part not run yet: the others are reported
                notes.append(str(err))
    if not dirs:
        raise ReportError(f"{path}: the reproduction holds no runs yet")
    return dirs


def _planned(path: Path, run_dir: Path, record: CompareRecord) -> str:
    """A run a comparison planned, by its rule (and seed) as the comparison names it."""
    for run in record.runs:
        if path / str(run.run_dir) == run_dir:
            return f"{run.rule} (seed {run.seed})"
    from ..training.compare import run_label

    names = [r for r in record.rules if path / run_label(r) == run_dir]
    return names[0] if names else run_dir.name


def _unfinished(run: Run) -> str | None:
    """A note on a run that has not finished (stopped part-way, or still training)."""
    record = run.record
    if record.status not in ("running", "interrupted"):
        return None
    planned = (record.config.get("train") or {}).get("epochs")
    return (f"{run.label}: {record.status} after {len(record.epochs)} of {planned} epochs, not tested "
            f"(resume it with --resume): {run.path}")


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


def load_sources(paths: Sequence[str | Path]) -> Sources:
    """Every run under ``paths`` (run directories, comparisons, sweeps and reproductions, expanded
    into their runs), each labelled by its rule and disambiguated by its directory name, with
    the comparisons, sweeps and reproductions themselves."""
    dirs: list[Path] = []
    sources: list[Source] = []
    notes: list[str] = []
    for given in paths:
        for run_dir in _expand(Path(given), sources, notes):
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
    runs = [Run(label, base, d, r) for label, base, d, r in zip(labels, bases, dirs, records, strict=True)]
    notes += [note for note in map(_unfinished, runs) if note]
    return Sources(runs, sources, notes)


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Every run under ``paths`` (see :func:`load_sources`)."""
    return load_sources(paths).runs


def summary(run: Run) -> ResultRow:
    """The numbers of a run's results row (accuracies as fractions, None when absent)."""
    return ResultRow.of(run.label, run.record)


#: config keys that may differ between runs of one experiment repeated over seeds
_PER_SEED = ("seed", "name")


def _without_seed(config: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in _PER_SEED}, sort_keys=True,
                      default=str)


def seed_groups(runs: Sequence[Run]) -> list[SeedRuns]:
    """The runs whose configs differ only in the seed (and name), two or more of different
    seeds: one :class:`~falign.training.statistics.SeedRuns` each (mean ± std), labelled by the
    rule, plus the folder above the runs where two groups share a rule."""
    from ..training.statistics import SeedRuns

    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(_without_seed(run.config), []).append(run)
    chosen = [g for g in groups.values()
              if len(g) > 1 and len({r.config.get("seed") for r in g}) == len(g)]
    labels = _disambiguate([g[0].rule for g in chosen], [g[0].path.parent for g in chosen])
    return [SeedRuns(label, [r.config.get("seed") for r in g], [summary(r) for r in g])
            for label, g in zip(labels, chosen, strict=True)]


def published_columns(runs: Sequence[Run],
                      published: Mapping[str, Mapping[str, float]] | None) -> dict[str, dict[str, float]]:
    """column title -> {run label: value in %} for each published metric that names a run's
    label, its directory name, its method's (the folder of a seed's run), or its rule (both
    runs of a rule compared twice get the rule's number).  A name mapped to None has no
    published number (it stops the lookup there)."""
    columns: dict[str, dict[str, float]] = {}
    for metric, by_label in (published or {}).items():
        values = {}
        for run in runs:
            # a seed's run (<method>/seedK) is named by its method's folder
            method = run.path.parent.name if run.path.name.startswith("seed") else None
            keys = [k for k in (run.label, run.path.name, method, run.rule) if k is not None]
            value = next((by_label[k] for k in keys if k in by_label), None)
            if value is not None:
                values[run.label] = float(value)
        if values:
            columns.setdefault(PUBLISHED_TITLES.get(metric, f"published {metric}"), {}).update(values)
    return columns
