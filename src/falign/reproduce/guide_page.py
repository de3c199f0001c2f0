"""The docs page "Choosing a rule", made from the rule guide's committed summary.

    python -m falign.reproduce.guide_page results/ --write docs/choosing-a-rule.md \
        --figure docs/figures/rule-guide.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from .guide import GUIDE_LR, LEARNED, OPTIMIZERS, PURPOSE, TASKS


def _lr(trial: dict[str, Any]) -> float | None:
    return (trial.get("optim") or {}).get("lr")


def grid_table(summary: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """task -> rule -> optimizer -> {lrs, val (best val acc per lr, None: diverged), diverged,
    learned (lrs whose best val acc >= LEARNED), best_lr, test_mean, test_std, seeds}."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for m in summary.get("methods") or []:
        rule, _, opt = m["method"].rpartition("-")
        trials = sorted((t for t in m.get("trials") or [] if _lr(t) is not None), key=_lr)
        val = {_lr(t): (None if t.get("status") == "diverged" else t.get("best_val_acc")) for t in trials}
        runs = [r for r in m.get("runs") or [] if r.get("test_acc") is not None]
        entry = {
            "lrs": list(val), "val": val,
            "diverged": [lr for lr, v in val.items() if v is None],
            "learned": [lr for lr, v in val.items() if v is not None and v >= LEARNED],
            "loss_rose": [_lr(t) for t in trials if _rose(t)],
            "best_lr": (((m.get("config") or {}).get("optim") or {}).get("lr") if runs
                        else _best_lr(val)),
            "test_mean": m.get("test_acc_mean"), "test_std": m.get("test_acc_std"), "seeds": len(runs),
        }
        out.setdefault(m["part"], {}).setdefault(rule, {})[opt] = entry
    return out


def _best_lr(val: dict[float, float | None]) -> float | None:
    done = {k: v for k, v in val.items() if v is not None}
    return max(done, key=lambda k: done[k]) if done else None


def _rose(trial: dict[str, Any]) -> bool:
    losses = [x for x in trial.get("train_losses") or [] if x is not None]
    return len(losses) > 1 and (not math.isfinite(losses[-1]) or losses[-1] > losses[0])


def _pct(x: float | None, std: float | None = None) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.2f}" + (f" ± {100 * std:.2f}" if std else "")


def _lrs(lrs: list[float]) -> str:
    return ", ".join(f"{x:g}" for x in lrs) if lrs else "none"


def advice(grid: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """One line a rule and task: its best optimizer and learning rate, its gap to BP there, and
    where it diverged or failed to learn -- read off the measured grid, nothing else."""
    lines = []
    for task, by_rule in grid.items():
        bp = max((e["test_mean"] or 0 for e in by_rule.get("bp", {}).values()), default=None)
        for rule, by_opt in by_rule.items():
            best = max(by_opt.items(), key=lambda kv: kv[1]["test_mean"] or -1)
            opt, e = best
            text = (f"**{rule}** on {task}: best with {OPTIMIZERS.get(opt, opt)} at lr {e['best_lr']:g}"
                    if e["best_lr"] is not None else f"**{rule}** on {task}: no learning rate learned")
            if e["test_mean"] is not None:
                text += (f", {_pct(e['test_mean'], e['test_std'])}% test over {e['seeds']} "
                         f"seed{'s' if e['seeds'] != 1 else ''}")
                if bp and rule != "bp":
                    text += f" ({100 * (e['test_mean'] - bp):+.2f} points against BP's best)"
            notes = []
            for o, f in by_opt.items():
                if f["diverged"]:
                    at = ", ".join(f"{x:g}" for x in f["diverged"])
                    notes.append(f"diverged under {OPTIMIZERS.get(o, o)} at lr {at}")
                if f["lrs"] and len(f["learned"]) < len(f["lrs"]):
                    notes.append(f"under {OPTIMIZERS.get(o, o)} learned at lr {_lrs(f['learned'])} of "
                                 f"{_lrs(f['lrs'])}")
            lines.append(text + (f"; {'; '.join(notes)}" if notes else "") + ".")
    return lines


def page(summary: dict[str, Any], figure: str | None = None) -> str:
    """The docs page "Choosing a rule" (Markdown) from the target's summary."""
    grid = grid_table(summary)
    status = summary.get("status")
    units = summary.get("units") or {}
    out = ["# Choosing a rule", "",
           "Which rule, with which optimizer and learning rate? This page answers with measurements: "
           "every registered rule under SGD + momentum 0.9 and under Adam, each at five learning "
           "rates (the same for every rule), two epochs a run, on two tasks, then three seeds at "
           "each rule's best learning rate per optimizer. Made by "
           "`falign reproduce rule-guide --scale full` (units of the evidence queue) and "
           "`python -m falign.reproduce.guide_page results/ --write docs/choosing-a-rule.md`; the numbers "
           "are `results/rule-guide.json`.", ""]
    if status != "completed":
        out += [f"**Status: {status}** — {len(units.get('done') or [])} of {units.get('total', '?')} "
                "units measured; the tables below hold what is measured so far.", ""]
    out += ["## What each rule is for", ""]
    out += [f"* `{rule}` — {text}" for rule, text in PURPOSE.items()]
    out += ["", "## What the measurements say", ""]
    lines = advice(grid)
    out += [f"* {line}" for line in lines] if lines else ["Nothing measured yet."]
    out += ["", f"A run *learned* when its best validation accuracy reached {100 * LEARNED:.0f}% (chance "
            "is 10%); *diverged* means its loss became NaN or infinite.", ""]
    if figure:
        out += [f"![Best validation accuracy against learning rate]({figure})", ""]
    for task, by_rule in grid.items():
        title = TASKS.get(task, (task,))[0]
        out += [f"## {title}", ""]
        for opt in GUIDE_LR:
            lrs = GUIDE_LR[opt]
            head = ["rule", *[f"lr {x:g}" for x in lrs], "best lr", "test % at it (mean ± std, seeds)"]
            out += [f"**{OPTIMIZERS[opt]}**: best validation accuracy % after two epochs "
                    "(div.: diverged)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for rule, by_opt in by_rule.items():
                e = by_opt.get(opt)
                if e is None:
                    continue
                cells = []
                for x in lrs:
                    v = e["val"].get(x, "missing")
                    cells.append("div." if v is None else "-" if v == "missing" else f"{100 * v:.1f}")
                best = f"{e['best_lr']:g}" if e["best_lr"] is not None else "-"
                out.append("| " + " | ".join([f"`{rule}`", *cells, best,
                                              _pct(e["test_mean"], e["test_std"])]) + " |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def figure(summary: dict[str, Any], path: Path) -> Path | None:
    """Best validation accuracy against learning rate, one panel per task and optimizer."""
    from ..plots import NothingToPlot, plot_lr_grid

    grid = grid_table(summary)
    panels = {}
    for task, by_rule in grid.items():
        for opt in GUIDE_LR:
            series = {rule: ([x for x in e["lrs"]], [None if e["val"][x] is None else 100 * e["val"][x]
                                                     for x in e["lrs"]])
                      for rule, by_opt in by_rule.items() if (e := by_opt.get(opt))}
            if series:
                panels[f"{task}, {OPTIMIZERS[opt]}"] = series
    try:
        return plot_lr_grid(panels, path, ylabel="best validation accuracy (%)")
    except NothingToPlot:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m falign.reproduce.guide_page",
                                description=__doc__.splitlines()[0])
    p.add_argument("results", help="the folder holding rule-guide.json")
    p.add_argument("--write", help="write the page here (Markdown)")
    p.add_argument("--figure", help="draw the figure here (PNG); the page links it relative to --write")
    args = p.parse_args(argv)
    summary = json.loads((Path(args.results) / "rule-guide.json").read_text())
    link = None
    if args.figure:
        drawn = figure(summary, Path(args.figure))
        if drawn is not None and args.write:
            import os

            link = os.path.relpath(drawn, Path(args.write).parent)
    text = page(summary, link)
    if args.write:
        Path(args.write).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
