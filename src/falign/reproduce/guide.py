"""The rule guide: which rule, with which optimizer and learning rate?  A measured answer.

``falign reproduce rule-guide --scale full`` trains every registered rule under SGD with
momentum 0.9 and under Adam, each on a grid of five learning rates (the same for every rule),
on two tasks -- the MNIST MLP of falign's main job, and a small CNN with batch norm and
residual blocks (a ResNet-8) on 10,000 Fashion-MNIST images -- two epochs a run; then three
seeds at each rule's best point per optimizer.  Each (task, rule, optimizer) is a unit of the
evidence queue.  ``python -m falign.reproduce.guide_page results/ --write
docs/choosing-a-rule.md --figure docs/figures/rule-guide.png`` makes the docs page from the
committed summary.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

from ..records import RecheckRecord, ReproductionSummary, TrialSummary
from ..training.config import ExperimentConfig, SweepConfig, parse_config
from .base import Context, Outcome, Target, register_target
from .tables import provenance_lines

#: five learning rates per optimizer, the same for every rule
GUIDE_LR = {"sgd": [0.001, 0.003, 0.01, 0.03, 0.1], "adam": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]}
MOMENTUM = {"sgd": 0.9, "adam": 0.0}
OPTIMIZERS = {"sgd": "SGD + momentum 0.9", "adam": "Adam"}

#: task -> (title, config)
TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "mnist-mlp": ("MNIST, the 784-1000-10 MLP (ReLU) of falign's main job", {
        "data": {"name": "mnist", "val_size": 5000},
        "model": {"name": "mlp"},
    }),
    "fashion-cnn": ("Fashion-MNIST (10,000 training images), a ResNet-8: batch norm and residual blocks", {
        "data": {"name": "fashion-mnist", "val_size": 2000, "subset": 10000},
        "model": {"name": "resnet", "options": {"depth": 8}},
    }),
}
SMOKE_RULES = ("bp", "fa", "drtp")
#: a run "learned" when its best validation accuracy is at least this (chance is 10%)
LEARNED = 0.2

#: what each rule is for: the question of the field it answers, the constraint it models
PURPOSE = {
    "bp": "the reference: exact gradients through the transposed weights (weight transport).",
    "fa": "feedback alignment (Lillicrap et al. 2016): a fixed random B in place of Wᵀ; the "
          "baseline of learning without weight transport, and what a device that can only hold "
          "a fixed random projection per layer computes.",
    "dfa": "direct feedback alignment (Nøkland 2016): each layer gets B_i e straight from the "
           "output error, no layer-to-layer backward pass: the rule of optical and analog "
           "co-processors that compute one random projection of e for every layer at once.",
    "sdfa": "sign-DFA (Frenkel et al. 2021): B_i sign(e), one bit of error per output: for "
            "on-chip learning where the error must be sent with few bits.",
    "drtp": "direct random target projection (Frenkel et al. 2021): B_i y*, the label in place of "
            "the error, so the hidden updates need no output error at all (forward-only "
            "hardware).",
    "dkp": "direct Kolen-Pollack (Webster et al. 2020): DFA whose B_i learn from hᵀe, closing "
           "DFA's gap to backprop while keeping one direct projection per layer.",
    "usf": "uniform sign-concordant feedback (Liao et al. 2016): B = sign(W), one bit of each "
           "weight transported: asks how much of backprop's success is the sign.",
    "frsf": "fixed random-magnitude sign-concordant feedback (\"uSF Init\"): sign(W) with fixed "
            "random magnitudes.",
    "brsf": "batchwise random-magnitude sign-concordant feedback: fresh random magnitudes each "
            "step.",
    "usf_norm": "norm-scaled sign feedback (\"uSF SN\"): sign(W) scaled to W's norm, which removes "
                "the learning-rate confound of plain sign feedback.",
    "sign_tracking": "sign tracking: B follows sign(W) refreshed every few steps, a device that "
                     "copies signs now and then rather than every step.",
    "kp": "Kolen-Pollack (Akrout et al. 2019): B learns with W's own update plus weight decay, so "
          "B and W converge without transporting W: local learning of the feedback.",
    "wm": "weight mirror (Akrout et al. 2019): B learns from noise injected into each layer "
          "(B <- B + eta y xᵀ): a second local learning phase that aligns B with W.",
}


def guide_config(task: str, smoke: bool) -> ExperimentConfig:
    _, body = TASKS[task]
    data = {"name": f"rule-guide-{task}", "seed": 0, **copy.deepcopy(body),
            "rule": {"name": "bp"}, "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
            "train": {"epochs": 2, "batch_size": 128, "checkpoint_every_epoch": False}}
    if smoke:
        data["data"].update(subset=600, val_size=200)
        data["train"]["epochs"] = 1
    return parse_config(data, where=f"rule guide ({task})")


def guide_spec(rules: list[str], smoke: bool) -> SweepConfig:
    spaces = {}
    for rule in rules:
        for opt, lrs in GUIDE_LR.items():
            spaces[f"{rule}-{opt}"] = {"rule": rule, "params": {
                "optim.name": [opt], "optim.momentum": [MOMENTUM[opt]],
                "optim.lr": [lrs[1], lrs[3]] if smoke else list(lrs)}}
    return SweepConfig.model_validate({
        "sampler": "grid", "trial_epochs": 1 if smoke else 2, "final_epochs": 1 if smoke else 2,
        "final_seeds": [0] if smoke else [0, 1, 2], "rules": spaces})


def rule_guide(ctx: Context) -> Outcome:
    from ..rules import rules as registered

    names = list(SMOKE_RULES) if ctx.smoke else sorted(registered())
    outcome = Outcome(run_dirs=[], published={}, notes=[
        "falign's own experiment (nothing published): every registered rule under SGD + momentum "
        "0.9 and under Adam, five learning rates each, two epochs a run, then three seeds at each "
        "rule's best learning rate per optimizer. The docs page 'Choosing a rule' is made from "
        "this target's summary."])
    for task in TASKS:
        if not ctx.wants(task):
            continue
        cfg = guide_config(task, ctx.smoke)
        ctx.sweep(cfg, guide_spec(names, ctx.smoke), task)
        outcome.run_dirs += sorted((ctx.out / task / "final").glob("*"))
    ctx.trained()
    return outcome


# -- the docs page ------------------------------------------------------------------------------

def grid_table(summary: ReproductionSummary) -> dict[str, dict[str, dict[str, Any]]]:
    """task -> rule -> optimizer -> {lrs, val (best val acc per lr, None: diverged), diverged,
    learned (lrs whose best val acc >= LEARNED), best_lr, test_mean, test_std, seeds}."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for m in summary.methods:
        rule, _, opt = m.method.rpartition("-")
        trials = sorted((t for t in m.trials if t.lr is not None), key=lambda t: t.lr)
        val = {t.lr: (None if t.status == "diverged" else t.best_val_acc) for t in trials}
        runs = [r for r in m.runs if r.test_acc is not None]
        entry = {
            "lrs": list(val), "val": val,
            "diverged": [lr for lr, v in val.items() if v is None],
            "learned": [lr for lr, v in val.items() if v is not None and v >= LEARNED],
            "loss_rose": [t.lr for t in trials if _rose(t)],
            "best_lr": (((m.config or {}).get("optim") or {}).get("lr") if runs
                        else _best_lr(val)),
            "test_mean": m.test_acc_mean, "test_std": m.test_acc_std, "seeds": len(runs),
        }
        out.setdefault(m.part, {}).setdefault(rule, {})[opt] = entry
    return out


def _best_lr(val: dict[float, float | None]) -> float | None:
    done = {k: v for k, v in val.items() if v is not None}
    return max(done, key=lambda k: done[k]) if done else None


def _rose(trial: TrialSummary) -> bool:
    losses = [x for x in trial.train_losses if x is not None]
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
            measured = {o: e for o, e in by_opt.items() if e["lrs"]}
            if not measured:
                lines.append(f"**{rule}** on {task}: not measured yet.")
                continue
            finals = {o: e for o, e in measured.items() if e["test_mean"] is not None}
            pool = finals or measured
            opt, e = max(pool.items(), key=lambda kv: kv[1]["test_mean"] if finals else
                         max((v for v in kv[1]["val"].values() if v is not None), default=-1))
            missing = [OPTIMIZERS.get(o, o) for o in GUIDE_LR if o not in finals]
            if e["best_lr"] is None:
                text = f"**{rule}** on {task}: no learning rate learned under {OPTIMIZERS.get(opt, opt)}"
            elif len(finals) == len(GUIDE_LR):
                text = f"**{rule}** on {task}: best with {OPTIMIZERS.get(opt, opt)} at lr {e['best_lr']:g}"
            else:
                text = (f"**{rule}** on {task}: with {OPTIMIZERS.get(opt, opt)}, best at lr {e['best_lr']:g} "
                        f"({', '.join(missing)} not measured yet)")
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


def page(summary: ReproductionSummary, figure: str | None = None, check: RecheckRecord | None = None) -> str:
    """The docs page "Choosing a rule" (Markdown) from the target's summary and, where there is
    one, the re-check of its runs' first epoch on later code (``results/checks/rule-guide.json``)."""
    grid = grid_table(summary)
    status, units = summary.status, summary.units
    out = ["# Choosing a rule", "",
           "Which rule, with which optimizer and learning rate? This page answers with measurements: "
           "every registered rule under SGD + momentum 0.9 and under Adam, each at five learning "
           "rates (the same for every rule), two epochs a run, on two tasks, then three seeds at "
           "each rule's best learning rate per optimizer. Made by "
           "`falign reproduce rule-guide --scale full` (units of the evidence queue) and "
           "`python -m falign.reproduce.guide_page results/ --write docs/choosing-a-rule.md`; the numbers "
           "are `results/rule-guide.json`."]
    out += provenance_lines(summary, check) + [""]
    if status != "completed":
        out += [f"**Status: {status}** — {len(units.done) if units else 0} of "
                f"{units.total if units else '?'} "
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


def figure(summary: ReproductionSummary, path: Path) -> Path | None:
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


#: the docs page made from the committed summary, and its figure (relative to the repository)
PAGE, FIGURE = "docs/choosing-a-rule.md", "docs/figures/rule-guide.png"


def load_check(results: Path) -> RecheckRecord | None:
    """The committed re-check of the guide's runs (``results/checks/rule-guide.json``), if any."""
    path = Path(results) / "checks" / "rule-guide.json"
    return RecheckRecord.load(path) if path.is_file() else None


def write_page(results: Path, repo: Path) -> list[Path]:
    """Rewrite the docs page (and its figure) from ``results/rule-guide.json``."""
    import os

    path = Path(results) / "rule-guide.json"
    if not path.is_file():
        return []
    summary = ReproductionSummary.load(path)
    page_path, figure_path = Path(repo) / PAGE, Path(repo) / FIGURE
    drawn = figure(summary, figure_path)
    text = page(summary, os.path.relpath(drawn, page_path.parent) if drawn else None, load_check(results))
    if page_path.is_file() and page_path.read_text() == text:
        return [drawn] if drawn else []
    page_path.write_text(text)
    return [page_path, *([drawn] if drawn else [])]


register_target(Target("rule-guide", "Choosing a rule: every rule x optimizer x learning rate",
                       "falign's own experiment", rule_guide,
                       metric="none published (falign's own experiment)",
                       parts=tuple(TASKS), page=write_page))
