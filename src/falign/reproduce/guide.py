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

import json
from pathlib import Path
from typing import Any

from ..training.config import ExperimentConfig, SweepConfig, parse_config
from .base import Context, Outcome, Target, register_target

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
    data = {"name": f"rule-guide-{task}", "seed": 0, **json.loads(json.dumps(body)),
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


#: the docs page made from the committed summary, and its figure (relative to the repository)
PAGE, FIGURE = "docs/choosing-a-rule.md", "docs/figures/rule-guide.png"


def write_page(results: Path, repo: Path) -> list[Path]:
    """Rewrite the docs page (and its figure) from ``results/rule-guide.json``."""
    from .guide_page import main

    summary = Path(results) / "rule-guide.json"
    if not summary.is_file():
        return []
    page, figure = Path(repo) / PAGE, Path(repo) / FIGURE
    before = page.read_text() if page.is_file() else None
    main([str(results), "--write", str(page), "--figure", str(figure)])
    return [page, figure] if page.read_text() != before else [figure]


register_target(Target("rule-guide", "Choosing a rule: every rule x optimizer x learning rate",
                       "falign's own experiment", rule_guide,
                       metric="none published (falign's own experiment)",
                       parts=tuple(TASKS), page=write_page))
