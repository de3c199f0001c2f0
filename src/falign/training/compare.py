"""Train several rules on identical data, model and seed; one table, one figure, one summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..rules import parse_rule
from .config import CompareEntry, ExperimentConfig, parse_config, set_values
from .loop import RunDirError, train, write_json


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
                resume: bool = False, overwrite: bool = False, log=print,
                figure: bool = True) -> list[dict[str, Any]]:
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
    for rule, cfg in configs.items():
        run_dir = out / run_label(rule)
        done = run_dir / "tracking.json"
        if resume and done.exists() and json.loads(done.read_text()).get("status") in (
                "completed", "diverged"):
            tracking = json.loads(done.read_text())
            log(f"== {rule}: already complete, reusing {run_dir}")
        else:
            log(f"== {rule}")
            tracking = train(cfg, run_dir, resume=resume, overwrite=overwrite, log=log)
        rows.append(summary_row(rule, tracking))
    table = format_table(rows, base)
    log(table)
    (out / "summary.md").write_text(summary_markdown(rows, base, table))
    if figure:
        from ..plots import plot_curves

        series = {r["rule"]: [100 * a for a in r["val_curve"]] for r in rows if r["val_curve"]}
        if series:
            plot_curves(series, out / "val_acc", xlabel="epoch", ylabel="validation accuracy (%)",
                        title=f"{base.data.name} / {base.model.name}: validation accuracy")
    write_json(marker, {"rules": labels, "base": base.to_dict(), "status": "completed",
                        "rows": [{k: v for k, v in r.items() if k != "val_curve"} for r in rows]})
    return rows


def summary_row(rule: str, tracking: dict[str, Any]) -> dict[str, Any]:
    epochs = tracking["epochs"]
    secs = [e["seconds"] for e in epochs]
    return {
        "rule": rule,
        "best_val_acc": tracking.get("best_val_acc"),
        "test_acc": tracking.get("test_acc"),
        "epochs": len(epochs),
        "best_epoch": tracking.get("best_epoch"),
        "sec_per_epoch": sum(secs) / len(secs) if secs else None,
        "status": tracking.get("status"),
        "val_curve": [e["val_acc"] for e in epochs if e.get("val_acc") is not None],
    }


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def format_table(rows: list[dict[str, Any]], base: ExperimentConfig) -> str:
    lines = [
        f"{base.data.name} / {base.model.name}, seed {base.seed}",
        f"{'rule':<16}{'best val %':>11}{'test %':>9}{'epochs':>8}{'s/epoch':>9}  status",
    ]
    for r in rows:
        spe = "-" if r["sec_per_epoch"] is None else f"{r['sec_per_epoch']:.1f}"
        lines.append(f"{r['rule']:<16}{_pct(r['best_val_acc']):>11}{_pct(r['test_acc']):>9}"
                     f"{r['epochs']:>8}{spe:>9}  {r['status']}")
    return "\n".join(lines)


def summary_markdown(rows: list[dict[str, Any]], base: ExperimentConfig, table: str) -> str:
    md = [f"# falign compare: {base.data.name} / {base.model.name}", "",
          f"Seed {base.seed}, {base.train.epochs} epochs, optimiser {base.optim.name} "
          f"lr {base.optim.lr}, batch {base.train.batch_size}.", "",
          "| rule | best val acc % | test acc % | epochs | s/epoch | status |",
          "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        spe = "-" if r["sec_per_epoch"] is None else f"{r['sec_per_epoch']:.1f}"
        md.append(f"| {r['rule']} | {_pct(r['best_val_acc'])} | {_pct(r['test_acc'])} | "
                  f"{r['epochs']} | {spe} | {r['status']} |")
    md += ["", "![validation accuracy](val_acc.png)", ""]
    return "\n".join(md)
