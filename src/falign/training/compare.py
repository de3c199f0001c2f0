"""Train several rules on identical data, model and seed; one table, one summary, the rows back.

``run_compare`` trains each method once, into ``out/<label>``; ``run_compare_seeds`` trains each
on every seed, into ``out/<label>/seed<k>``, and reports the mean and standard deviation over the
seeds (:class:`SeedRuns`).  This module runs; the statistics are functions of the comparison's
record (:mod:`falign.training.statistics`) and its tables and ``summary.md`` are drawn from that
record (:mod:`falign.training.compare_text`); the figures are drawn by the caller (``falign
compare``, ``falign reproduce``) from the returned rows: ``falign.training`` imports no plotting
code.

Every method's config is built and checked (its dataset, model and optimizer, see
:func:`~falign.training.loop.check_config`) before a file is written.  The same comparison asked
again into its folder, once finished, reads its runs back and trains nothing; another one there
is refused unless resumed or overwritten.  A comparison stopped by a signal records
``"status": "interrupted"`` in ``compare.json``.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..records import ComparedRun, CompareRecord, RecordError, RunRecord
from ..rules import parse_rule
from . import compare_text
from .compare_text import COMPARE_COLUMNS, SEED_COLUMNS, format_seed_results, pct_pm, seed_cells
from .config import CompareEntry, ExperimentConfig, parse_config, set_values
from .loop import RunDirError, check_config, same_config, signals_interrupt, train
from .results import ResultRow
from .statistics import SeedRuns, mean_std, seed_summaries

__all__ = ["COMPARE_COLUMNS", "SEED_COLUMNS", "SeedRuns", "check_configs", "compare_configs",
           "compare_table", "format_seed_results", "mean_std", "method", "method_values", "pct_pm",
           "run_compare", "run_compare_seeds", "run_label", "seed_cells", "seed_configs",
           "seed_run_dir", "seed_summary_markdown", "seed_table", "summary_markdown"]


def method(entry: str | CompareEntry | dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(label, rule name, rule options) of a comparison entry: "fa", "fa:dense" (conv_feedback)
    or a :class:`CompareEntry` / mapping with label, rule and options. An entry's own config
    values (``set``) are :func:`method_values`."""
    entry = _entry(entry)
    if isinstance(entry, CompareEntry):
        return entry.label, entry.rule, dict(entry.options)
    cls, variant = parse_rule(entry)  # a name, a variant or a user's import path
    return entry, (entry if ":" in entry and not variant else cls.name), variant


def method_values(entry: str | CompareEntry | dict[str, Any]) -> dict[str, Any]:
    """The dotted config values an entry sets for its method only (none for a string entry)."""
    entry = _entry(entry)
    return dict(entry.set) if isinstance(entry, CompareEntry) else {}


def _entry(entry: str | CompareEntry | dict[str, Any]) -> str | CompareEntry:
    return CompareEntry.model_validate(entry) if isinstance(entry, dict) else entry


def compare_configs(base: ExperimentConfig,
                    rules: list[str | CompareEntry]) -> dict[str, ExperimentConfig]:
    """label -> the config that method trains on: the base config with the entry's rule and its
    own ``set`` values, validated as a whole (a bad per-method value fails here, before any run)."""
    out = {}
    for entry in rules:
        label, name, opts = method(entry)
        if name == base.rule.name:  # the config's own rule keeps the config's rule options
            opts = {**base.rule.options, **opts}
        where = f"compare entry '{label}'"
        data = set_values(base.to_dict(), method_values(entry), where=where)
        data.update(rule={"name": name, "options": opts}, name=f"{base.name}-{run_label(label)}",
                    compare=[])
        out[label] = parse_config(data, where=where)
    return out


def run_label(label: str) -> str:
    """A label as a directory name."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in label)


def run_compare(base: ExperimentConfig, rules: list[str | CompareEntry], out: str | Path, *,
                resume: bool = False, overwrite: bool = False, log=print) -> list[ResultRow]:
    """Train every method of ``rules`` on ``base`` into ``out/<label>``; log the results table
    and write ``summary.md`` and ``compare.json``; return one :class:`ResultRow` per method.

    Drawing is the caller's: ``falign compare`` writes ``val_acc.png`` from the rows'
    ``val_curve`` (:func:`falign.plots.plot_val_curves`).  With ``resume``, a method whose run
    is finished (completed or diverged) is read back, not trained again; so is every method
    when ``out`` holds this comparison (the same base config and rules), finished.
    """
    out = Path(out)
    marker = out / "compare.json"
    configs = compare_configs(base, rules)  # every method's config is valid before any file
    labels = list(configs)
    resume = _check_marker(out, base, labels, None, resume=resume, overwrite=overwrite, log=log)
    check_configs(configs.values())
    out.mkdir(parents=True, exist_ok=True)
    started = CompareRecord(rules=tuple(labels), base=base.to_dict(), status="running")
    started.save(marker)
    rows = []
    with signals_interrupt(), _interrupted(marker):
        for label, cfg in configs.items():
            record = _train_once(cfg, out / run_label(label), label, resume=resume,
                                 overwrite=overwrite, log=log)
            rows.append(ResultRow.of(label, record))
    done = replace(started, status="completed", rows=tuple(_marker_row(r) for r in rows))
    log(compare_text.compare_table(done))
    (out / "summary.md").write_text(compare_text.summary_markdown(done))
    done.save(marker)
    return rows


def _train_once(cfg: ExperimentConfig, run_dir: Path, title: str, *, resume: bool, overwrite: bool,
                log) -> RunRecord:
    """The run of ``cfg`` in ``run_dir``: read back when ``resume`` finds it finished, else
    trained (continued, with ``resume``)."""
    done = run_dir / "tracking.json"
    record = RunRecord.read(done) if resume and done.exists() else None
    if record is not None and record.finished and same_config(record.config, cfg) \
            and not (record.status == "completed" and cfg.train.epochs > len(record.epochs)):
        log(f"== {title}: already complete, reusing {run_dir}")
        return record  # (another config, or more epochs: train() checks and continues or refuses)
    log(f"== {title}")
    return train(cfg, run_dir, resume=resume, overwrite=overwrite, log=log)


def check_configs(configs: Iterable[ExperimentConfig]) -> None:
    """:func:`~falign.training.loop.check_config` of every config, each dataset built once:
    a method that cannot train (say a model too big for the images) fails before any file."""
    datasets: dict[str, Any] = {}
    checked = set()
    for cfg in configs:
        plain = cfg.to_dict()
        shape = json.dumps({k: v for k, v in plain.items() if k not in ("seed", "name")},
                           sort_keys=True, default=str)  # the seed changes no shape
        if shape in checked:
            continue
        data_key = json.dumps(plain["data"], sort_keys=True, default=str)
        datasets[data_key] = check_config(cfg, datasets.get(data_key))
        checked.add(shape)


@contextlib.contextmanager
def _interrupted(marker: Path):
    """On a KeyboardInterrupt (Ctrl-C, or SIGTERM under ``signals_interrupt``) in the block, the
    comparison's marker says ``"status": "interrupted"``."""
    try:
        yield
    except KeyboardInterrupt:
        with contextlib.suppress(OSError, RecordError):
            CompareRecord.load(marker).with_status("interrupted").save(marker)
        raise


def _check_marker(out: Path, base: ExperimentConfig, labels: list[str], seeds: Sequence[int] | None, *,
                  resume: bool, overwrite: bool, log) -> bool:
    """``out`` holds no comparison, or one that ``resume`` / ``overwrite`` may take over, or
    this one (the same base config, rules and seeds), finished; returns whether the runs are to
    be resumed: asked for, or this comparison finished (its runs are read back).  A comparison
    over seeds resumes only as one over seeds (its runs are ``<label>/seed<k>``)."""
    marker = out / "compare.json"
    if not marker.exists() or overwrite:
        return resume
    try:
        old = CompareRecord.load(marker)
    except RecordError:
        raise RunDirError(f"{marker}: cannot be read; use --overwrite to replace the comparison") from None
    same = (list(old.rules) == labels and old.seeds == (None if seeds is None else tuple(seeds))
            and old.base is not None and same_config(old.base, base))
    if not resume:
        if not same:
            raise RunDirError(f"{out}: holds another comparison (use --resume to continue it or "
                              "--overwrite to replace it)")
        if old.status != "completed":
            raise RunDirError(f"{out}: holds this comparison, not finished ({old.status}); "
                              "use --resume to continue it or --overwrite to start again")
        log(f"{out}: this comparison is finished; its runs are read back, none is trained")
        return True
    old_seeds = old.seeds
    if old_seeds is not None and seeds is None:
        raise RunDirError(f"{out}: holds a comparison over seeds {_seed_text(old_seeds)}; resume it "
                          f"with --seeds {_seed_text(old_seeds)}")
    if old_seeds is None and seeds is not None:
        raise RunDirError(f"{out}: holds a comparison of one seed per rule; --seeds needs another "
                          "--out (or --overwrite)")
    return True


def _seed_text(seeds: Sequence[Any]) -> str:
    return ",".join(str(s) for s in seeds)


def seed_configs(base: ExperimentConfig, rules: list[str | CompareEntry],
                 seeds: Sequence[int]) -> dict[str, dict[int, ExperimentConfig]]:
    """label -> seed -> config: :func:`compare_configs` with ``seed`` (the initial weights, the
    feedback matrices and the data order) set to each of ``seeds``."""
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    repeated = sorted(s for s, n in Counter(seeds).items() if n > 1)
    if repeated:
        raise ValueError(f"seeds: {_seed_text(repeated)} given more than once")
    out: dict[str, dict[int, ExperimentConfig]] = {}
    for label, cfg in compare_configs(base, rules).items():
        where = f"compare entry '{label}'"
        out[label] = {}
        for seed in seeds:
            values = {"seed": seed, "name": f"{cfg.name}-seed{seed}"}
            out[label][seed] = parse_config(set_values(cfg.to_dict(), values, where=where), where=where)
    return out


def seed_run_dir(label: str, seed: int) -> str:
    """The run directory of one method and seed, relative to the comparison's."""
    return f"{run_label(label)}/seed{seed}"


def run_compare_seeds(base: ExperimentConfig, rules: list[str | CompareEntry], seeds: Sequence[int],
                      out: str | Path, *, resume: bool = False, overwrite: bool = False,
                      log=print) -> list[SeedRuns]:
    """Train every method of ``rules`` on every seed of ``seeds`` into ``out/<label>/seed<k>``;
    log the table of means and standard deviations over the seeds, write ``summary.md`` and
    ``compare.json`` (every seed's numbers and run directory, then the means); return one
    :class:`SeedRuns` per method.  With ``resume``, finished runs are read back and the others
    continued, so a comparison stopped at any point (or given more seeds) goes on where it was.
    """
    out = Path(out)
    seeds = [int(s) for s in seeds]
    configs = seed_configs(base, rules, seeds)  # every config is valid before any file
    labels = list(configs)
    resume = _check_marker(out, base, labels, seeds, resume=resume, overwrite=overwrite, log=log)
    check_configs(c for by_seed in configs.values() for c in by_seed.values())
    out.mkdir(parents=True, exist_ok=True)
    planned = [ComparedRun(rule=label, seed=seed, run_dir=seed_run_dir(label, seed))
               for label in labels for seed in seeds]
    marker = CompareRecord(rules=tuple(labels), seeds=tuple(seeds), base=base.to_dict(),
                           status="running", runs=tuple(planned))
    marker.save(out / "compare.json")
    groups = []
    with signals_interrupt(), _interrupted(out / "compare.json"):
        for label, by_seed in configs.items():
            rows = []
            for seed, cfg in by_seed.items():
                record = _train_once(cfg, out / seed_run_dir(label, seed), f"{label}, seed {seed}",
                                     resume=resume, overwrite=overwrite, log=log)
                rows.append(ResultRow.of(label, record))
            groups.append(SeedRuns(label, list(seeds), rows))
    runs = tuple(replace(_marker_row(row), seed=plan.seed, run_dir=plan.run_dir)
                 for plan, row in zip(planned, (r for g in groups for r in g.rows), strict=True))
    done = replace(marker, status="completed", runs=runs)
    done = replace(done, summary=seed_summaries(done))  # the statistics, of the record
    log(compare_text.seed_table(done))
    (out / "summary.md").write_text(compare_text.seed_summary_markdown(done))
    done.save(out / "compare.json")
    return groups


# -- the statistics and the tables: their own modules, names kept here ----------------------------

_WARNED: set[str] = set()


def _deprecated(name: str, new: str) -> None:
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(f"falign.training.compare.{name} is deprecated; use {new}(record) "
                      "with the comparison's CompareRecord", DeprecationWarning, stacklevel=3)


def _marker_row(row: ResultRow) -> ComparedRun:
    return ComparedRun(rule=row.label, best_val_acc=row.best_val_acc, test_acc=row.test_acc,
                       epochs=row.epochs, best_epoch=row.best_epoch, sec_per_epoch=row.sec_per_epoch,
                       status=row.status)


def _one_seed_record(rows: list[ResultRow], base: ExperimentConfig) -> CompareRecord:
    return CompareRecord(rules=tuple(r.label for r in rows), base=base.to_dict(), status="completed",
                         rows=tuple(_marker_row(r) for r in rows))


def _seeds_record(groups: Sequence[SeedRuns], base: ExperimentConfig) -> CompareRecord:
    seeds = groups[0].seeds if groups else []
    runs = tuple(replace(_marker_row(row), seed=seed) for g in groups
                 for seed, row in zip(g.seeds, g.rows, strict=True))
    return CompareRecord(rules=tuple(g.label for g in groups), seeds=tuple(seeds), base=base.to_dict(),
                         status="completed", runs=runs)


def compare_table(rows: list[ResultRow], base: ExperimentConfig) -> str:
    """Deprecated: :func:`falign.training.compare_text.compare_table` of the record."""
    _deprecated("compare_table", "falign.training.compare_text.compare_table")
    return compare_text.compare_table(_one_seed_record(rows, base))


def summary_markdown(rows: list[ResultRow], base: ExperimentConfig) -> str:
    """Deprecated: :func:`falign.training.compare_text.summary_markdown` of the record."""
    _deprecated("summary_markdown", "falign.training.compare_text.summary_markdown")
    return compare_text.summary_markdown(_one_seed_record(rows, base))


def seed_table(groups: Sequence[SeedRuns], base: ExperimentConfig) -> str:
    """Deprecated: :func:`falign.training.compare_text.seed_table` of the record."""
    _deprecated("seed_table", "falign.training.compare_text.seed_table")
    return compare_text.seed_table(_seeds_record(groups, base))


def seed_summary_markdown(groups: Sequence[SeedRuns], base: ExperimentConfig) -> str:
    """Deprecated: :func:`falign.training.compare_text.seed_summary_markdown` of the record."""
    _deprecated("seed_summary_markdown", "falign.training.compare_text.seed_summary_markdown")
    return compare_text.seed_summary_markdown(_seeds_record(groups, base))
