"""run_compare: several rules on identical data and seed; table, figure, summary; resume."""

from __future__ import annotations

import json

import pytest

from falign.training import RunDirError, parse_config
from falign.training.compare import compare_configs, run_compare

RULES = ["bp", "fa"]
pytestmark = pytest.mark.usefixtures("one_thread")


def base_config():
    return parse_config({
        "name": "cmp", "seed": 0, "device": "cpu",
        "data": {"name": "mnist", "subset": 600, "val_size": 200},
        "model": {"name": "mlp", "options": {"sizes": [784, 32, 10]}},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"epochs": 2, "batch_size": 50},
    })


@pytest.fixture(scope="module")
def compared(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "cmp"
    lines: list[str] = []
    rows = run_compare(base_config(), RULES, out, log=lines.append)
    return out, rows, lines


def test_compare_configs_differ_only_in_rule_and_name():
    base = base_config()
    configs = compare_configs(base, ["bp", "fa", "usf:dense"])
    assert list(configs) == ["bp", "fa", "usf:dense"]
    assert configs["usf:dense"].rule.options == {"conv_feedback": "dense"}
    for rule, cfg in configs.items():
        a, b = cfg.to_dict(), base.to_dict()
        assert a["rule"]["name"] == rule.partition(":")[0]
        assert {k: v for k, v in a.items() if k not in ("rule", "name")} == \
               {k: v for k, v in b.items() if k not in ("rule", "name")}
    assert len({cfg.name for cfg in configs.values()}) == 3


def test_one_run_and_one_row_per_rule(compared):
    out, rows, _ = compared
    assert [r["rule"] for r in rows] == RULES
    for row in rows:
        tracking = json.loads((out / row["rule"] / "tracking.json").read_text())
        assert tracking["config"]["rule"]["name"] == row["rule"]
        assert tracking["status"] == row["status"] == "completed"
        assert row["best_val_acc"] == tracking["best_val_acc"]
        assert row["test_acc"] == tracking["test_acc"]
        assert row["epochs"] == 2 and row["best_epoch"] == tracking["best_epoch"]
        assert row["val_curve"] == [e["val_acc"] for e in tracking["epochs"]]
    assert rows[0]["val_curve"] != rows[1]["val_curve"]  # the rules did learn differently


def test_summary_files(compared):
    out, rows, lines = compared
    md = (out / "summary.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert table[0].startswith("| rule |")
    assert [line.split("|")[1].strip() for line in table[1:]] == RULES
    for row, line in zip(rows, table[1:], strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == f"{100 * row['best_val_acc']:.2f}"
        assert cells[2] == f"{100 * row['test_acc']:.2f}"
        assert cells[5] == "completed"
    assert (out / "val_acc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "val_acc.pdf").read_bytes()[:5] == b"%PDF-"
    marker = json.loads((out / "compare.json").read_text())
    assert marker["status"] == "completed" and marker["rules"] == RULES
    assert [r["rule"] for r in marker["rows"]] == RULES
    assert marker["base"] == base_config().to_dict()
    logged = [entry for entry in lines if "best val %" in entry]  # the table was logged too
    assert len(logged) == 1 and all(f"\n{r} " in logged[0] for r in RULES)


def test_second_compare_without_resume_is_refused(compared):
    out, _, _ = compared
    before = {p: p.read_bytes() for p in sorted(out.rglob("*.json"))}
    with pytest.raises(RunDirError, match="holds another comparison"):
        run_compare(base_config(), RULES, out, log=lambda s: None)
    assert {p: p.read_bytes() for p in sorted(out.rglob("*.json"))} == before


def test_resume_reuses_completed_runs(compared):
    out, rows, _ = compared
    stamps = {r: [(out / r / f).stat().st_mtime_ns for f in ("tracking.json", "last.pt", "best.pt")]
              for r in RULES}
    lines: list[str] = []
    again = run_compare(base_config(), RULES, out, resume=True, log=lines.append, figure=False)
    assert again == rows
    for r in RULES:
        assert [(out / r / f).stat().st_mtime_ns for f in ("tracking.json", "last.pt", "best.pt")] \
            == stamps[r], f"{r} was trained again"
    assert sum("already complete" in line for line in lines) == len(RULES)


def test_the_configs_own_rule_keeps_its_options():
    from falign.training.compare import compare_configs
    from falign.training.config import load_config

    base = load_config("dfa-mnist")  # rule dfa with scale 1 (the DFA report's N(0, 1))
    configs = compare_configs(base, base.compare)
    assert configs["dfa"].rule.options["scale"] == 1.0
    assert configs["bp"].rule.options == {}
