"""The rule guide: its units cover every rule x optimizer x task, and the docs page 'Choosing a
rule' is made from its summary."""

from __future__ import annotations

from pathlib import Path

import falign
from falign.records import ReproductionSummary, UnitsSummary
from falign.reproduce import TARGETS
from falign.reproduce.base import plan
from falign.reproduce.guide import GUIDE_LR, PURPOSE, advice, grid_table, guide_spec, page

ROOT = Path(__file__).resolve().parents[1]


def test_full_scale_units_are_every_rule_under_both_optimizers_on_both_tasks() -> None:
    units = plan(TARGETS["rule-guide"])
    rules = sorted(falign.rules())
    expected = {f"{task}/{r}-{o}" for task in ("mnist-mlp", "fashion-cnn") for r in rules for o in GUIDE_LR}
    assert {u.name for u in units} == expected
    assert all(len(u.run_dirs) == 3 and u.extra for u in units)  # three seeds at the best point
    spec = guide_spec(rules, smoke=False)
    for label, space in spec.rules.items():
        opt = label.rpartition("-")[2]
        assert space.params["optim.lr"] == GUIDE_LR[opt] and space.params["optim.name"] == [opt]
        assert space.params["optim.momentum"] == [0.9 if opt == "sgd" else 0.0]
    assert spec.trial_epochs == spec.final_epochs == 2 and spec.final_seeds == [0, 1, 2]


def test_every_rule_has_its_purpose_said() -> None:
    assert set(PURPOSE) == set(falign.rules())


def _trial(lr: float, val: float | None, status: str = "completed", losses=(1.0, 0.5)) -> dict:
    return {"optim": {"name": "sgd", "lr": lr}, "best_val_acc": val, "status": status,
            "train_losses": list(losses)}


def _summary() -> ReproductionSummary:
    sgd = GUIDE_LR["sgd"]
    methods = [
        {"part": "mnist-mlp", "method": "bp-sgd", "config": {"optim": {"lr": 0.03}},
         "trials": [_trial(x, 0.5 + i / 10) for i, x in enumerate(sgd[:4])] + [_trial(0.1, None, "diverged")],
         "runs": [{"test_acc": 0.9}, {"test_acc": 0.92}, {"test_acc": 0.91}],
         "test_acc_mean": 0.91, "test_acc_std": 0.01},
        {"part": "mnist-mlp", "method": "fa-sgd", "config": {"optim": {"lr": 0.01}},
         "trials": [_trial(x, v) for x, v in zip(sgd, [0.11, 0.3, 0.8, 0.12, 0.1], strict=True)],
         "runs": [{"test_acc": 0.8}], "test_acc_mean": 0.8, "test_acc_std": 0.0},
    ]
    return ReproductionSummary.from_dict(
        {"status": "partial", "units": {"total": 52, "done": ["a", "b"]}, "methods": methods}, "test")


def test_the_grid_and_the_advice_are_what_the_trials_say() -> None:
    grid = grid_table(_summary())["mnist-mlp"]
    assert grid["bp"]["sgd"]["diverged"] == [0.1] and grid["bp"]["sgd"]["best_lr"] == 0.03
    assert grid["fa"]["sgd"]["learned"] == [0.003, 0.01]  # best val acc >= 20%
    lines = advice(grid_table(_summary()))
    bp = next(s for s in lines if s.startswith("**bp**"))
    fa = next(s for s in lines if s.startswith("**fa**"))
    assert "lr 0.03" in bp and "91.00 ± 1.00% test over 3 seeds" in bp and "diverged" in bp and "0.1" in bp
    assert "-11.00 points against BP's best" in fa and "learned at lr 0.003, 0.01 of" in fa
    text = page(_summary(), "figures/x.png")
    assert "**Status: partial** — 2 of 52 units" in text and "![" in text
    row = next(s for s in text.splitlines() if s.startswith("| `bp` |"))
    assert row.split(" | ")[5] == "div." and "91.00 ± 1.00" in row
    for rule in falign.rules():
        assert f"* `{rule}` — " in text


def test_the_docs_page_is_made_from_the_committed_summary() -> None:
    summary_path = ROOT / "results" / "rule-guide.json"
    doc = ROOT / "docs" / "choosing-a-rule.md"
    if summary_path.is_file():
        from falign.reproduce.guide import load_check

        text = page(ReproductionSummary.load(summary_path), "figures/rule-guide.png",
                    load_check(ROOT / "results"))
    else:  # before the first unit: the page says so
        units = UnitsSummary(total=len(plan(TARGETS["rule-guide"])), done=(), pending=())
        text = page(ReproductionSummary(target="rule-guide", scale="full", status="not run", units=units))
    assert doc.read_text() == text, "run python -m falign.reproduce.guide_page results/ --write " \
        "docs/choosing-a-rule.md --figure docs/figures/rule-guide.png"


def test_the_queue_rewrites_the_page_and_its_figure(tmp_path: Path) -> None:
    from falign.reproduce.guide import FIGURE, PAGE, write_page

    (tmp_path / "results").mkdir()
    (tmp_path / "docs" / "figures").mkdir(parents=True)
    _summary().save(tmp_path / "results" / "rule-guide.json")
    changed = write_page(tmp_path / "results", tmp_path)
    assert changed == [tmp_path / PAGE, tmp_path / FIGURE]
    assert (tmp_path / PAGE).read_text() == page(_summary(), "figures/rule-guide.png")
    assert (tmp_path / FIGURE).stat().st_size > 0
    assert tmp_path / PAGE not in write_page(tmp_path / "results", tmp_path)  # unchanged: not rewritten


def test_partial_data_says_what_is_not_measured_and_draws(tmp_path: Path) -> None:
    """The first unit to finish may be any (task, rule, optimizer): the page says which rules
    and optimizers are not measured yet, and the figure draws a panel that has no line yet."""
    from falign.reproduce.guide import figure

    one = ReproductionSummary.from_dict({"status": "partial", "methods": [
        {"part": "mnist-mlp", "method": "bp-adam", "config": {"optim": {"lr": 0.001}},
         "trials": [_trial(x, 0.9) for x in GUIDE_LR["adam"]], "runs": [{"test_acc": 0.95}],
         "test_acc_mean": 0.95, "test_acc_std": 0.0},
        {"part": "mnist-mlp", "method": "fa-sgd", "trials": [], "runs": [], "test_acc_mean": None}]}, "test")
    lines = advice(grid_table(one))
    assert lines[0].startswith("**bp** on mnist-mlp: with Adam, best at lr 0.001") and \
        "SGD + momentum 0.9 not measured yet" in lines[0]
    assert lines[1] == "**fa** on mnist-mlp: not measured yet."
    assert figure(one, tmp_path / "fig.png").stat().st_size > 0
