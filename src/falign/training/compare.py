"""Train several rules on identical data, model and seed; one table, one summary, the rows back.

The validation-accuracy figure is drawn by the caller (``falign compare``, ``falign reproduce``)
from the returned rows: ``falign.training`` imports no plotting code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..rules import parse_rule
from .config import CompareEntry, ExperimentConfig, parse_config, set_values
from .loop import RunDirError, train
from .record import RunRecord, write_json
from .results import ResultRow, format_results


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
    is finished (completed or diverged) is read back, not trained again.
    """
    out = Path(out)
    marker = out / "compare.json"
    if marker.exists() and not (resume or overwrite):
        raise RunDirError(f"{out}: holds another comparison (use --resume to continue it or "
                          "--overwrite to replace it)")
    configs = compare_configs(base, rules)  # every method's config is valid before any file
    out.mkdir(parents=True, exist_ok=True)
    labels = list(configs)
    write_json(marker, {"rules": labels, "base": base.to_dict(), "status": "running"})
    rows = []
    for label, cfg in configs.items():
        run_dir = out / run_label(label)
        done = run_dir / "tracking.json"
        record = RunRecord.read(done) if resume and done.exists() else None
        if record is not None and record.finished:
            log(f"== {label}: already complete, reusing {run_dir}")
        else:
            log(f"== {label}")
            record = train(cfg, run_dir, resume=resume, overwrite=overwrite, log=log)
        rows.append(ResultRow.of(label, record))
    log(compare_table(rows, base))
    (out / "summary.md").write_text(summary_markdown(rows, base))
    write_json(marker, {"rules": labels, "base": base.to_dict(), "status": "completed",
                        "rows": [_marker_row(r) for r in rows]})
    return rows


#: the columns of a comparison's table (after the method's label)
COMPARE_COLUMNS = ("best val %", "test %", "epochs", "s/epoch", "status")


def _marker_row(row: ResultRow) -> dict[str, Any]:
    return {"rule": row.label, "best_val_acc": row.best_val_acc, "test_acc": row.test_acc,
            "epochs": row.epochs, "best_epoch": row.best_epoch, "sec_per_epoch": row.sec_per_epoch,
            "status": row.status}


def compare_table(rows: list[ResultRow], base: ExperimentConfig) -> str:
    """The table ``run_compare`` logs: a line naming the setting, then one row per method."""
    return (f"{base.data.name} / {base.model.name}, seed {base.seed}\n"
            + format_results(rows, COMPARE_COLUMNS, label="rule"))


def summary_markdown(rows: list[ResultRow], base: ExperimentConfig) -> str:
    md = [f"# falign compare: {base.data.name} / {base.model.name}", "",
          f"Seed {base.seed}, {base.train.epochs} epochs, optimiser {base.optim.name} "
          f"lr {base.optim.lr}, batch {base.train.batch_size}.", "",
          format_results(rows, COMPARE_COLUMNS, label="rule", style="markdown"),
          "", "![validation accuracy](val_acc.png)", ""]
    return "\n".join(md)
