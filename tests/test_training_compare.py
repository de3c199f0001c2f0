"""run_compare: several rules on identical data and seed; table, summary, the rows; resume."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import tiny_config

from falign.training import RunDirError, RunRecord, parse_config
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
    configs = compare_configs(base, ["bp", "fa", "fa:dense"])
    assert list(configs) == ["bp", "fa", "fa:dense"]
    assert configs["fa:dense"].rule.options == {"conv_feedback": "dense"}
    for rule, cfg in configs.items():
        a, b = cfg.to_dict(), base.to_dict()
        assert a["rule"]["name"] == rule.partition(":")[0]
        assert {k: v for k, v in a.items() if k not in ("rule", "name")} == \
               {k: v for k, v in b.items() if k not in ("rule", "name")}
    assert len({cfg.name for cfg in configs.values()}) == 3


def test_one_run_and_one_row_per_rule(compared):
    out, rows, _ = compared
    assert [r.label for r in rows] == RULES
    for row in rows:
        tracking = json.loads((out / row.label / "tracking.json").read_text())
        assert tracking["config"]["rule"]["name"] == row.label
        assert tracking["status"] == row.status == "completed"
        assert row.best_val_acc == tracking["best_val_acc"]
        assert row.test_acc == tracking["test_acc"]
        assert row.epochs == 2 and row.best_epoch == tracking["best_epoch"]
        assert row.val_curve == [e["val_acc"] for e in tracking["epochs"]]
    assert rows[0].val_curve != rows[1].val_curve  # the rules did learn differently


def test_summary_files(compared):
    out, rows, lines = compared
    md = (out / "summary.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert table[0].startswith("| rule |")
    assert [line.split("|")[1].strip() for line in table[1:]] == RULES
    for row, line in zip(rows, table[1:], strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == f"{100 * row.best_val_acc:.2f}"
        assert cells[2] == f"{100 * row.test_acc:.2f}"
        assert cells[5] == "completed"
    # run_compare draws nothing (the figure is the CLI's: tests/test_run_record.py)
    assert not (out / "val_acc.png").exists()
    marker = json.loads((out / "compare.json").read_text())
    assert marker["status"] == "completed" and marker["rules"] == RULES
    assert [r["rule"] for r in marker["rows"]] == RULES
    assert marker["base"] == base_config().to_dict()
    logged = [entry for entry in lines if "best val %" in entry]  # the table was logged too
    assert len(logged) == 1 and all(f"\n{r} " in logged[0] for r in RULES)


def _runs(out) -> dict:
    """Every run file of a comparison (its runs' records and checkpoints): bytes and mtime."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.rglob("*"))
            if p.is_file() and p.parent != out}


def test_the_same_comparison_again_reads_its_runs_back(compared, tmp_path):
    import shutil

    out, rows, _ = compared
    copy = tmp_path / "cmp"
    shutil.copytree(out, copy)
    before = _runs(copy)
    lines: list[str] = []
    again = run_compare(base_config(), RULES, copy, log=lines.append)  # no resume: the same command
    assert again == rows and _runs(copy) == before  # nothing trained, no run file rewritten
    table = [entry for entry in lines if "best val %" in entry]
    assert len(table) == 1 and all(f"\n{r} " in table[0] for r in RULES)  # the table, again
    marker = json.loads((copy / "compare.json").read_text())
    assert marker["status"] == "completed" and [r["test_acc"] for r in marker["rows"]] == \
        [r.test_acc for r in rows]


@pytest.mark.parametrize("change", ["lr", "rules"])
def test_another_comparison_in_the_same_folder_is_refused(compared, change):
    out, _, _ = compared
    base, rules = base_config(), RULES
    if change == "lr":
        base.optim.lr = 0.1
    else:
        rules = ["bp"]
    before = {p: p.read_bytes() for p in sorted(out.rglob("*.json"))}
    with pytest.raises(RunDirError, match="holds another comparison"):
        run_compare(base, rules, out, log=lambda s: None)
    assert {p: p.read_bytes() for p in sorted(out.rglob("*.json"))} == before


def test_the_same_unfinished_comparison_without_resume_is_refused(compared, tmp_path):
    import shutil

    out, _, _ = compared
    copy = tmp_path / "cmp"
    shutil.copytree(out, copy)
    marker = json.loads((copy / "compare.json").read_text())
    (copy / "compare.json").write_text(json.dumps({**marker, "status": "interrupted"}))
    before = {p: p.read_bytes() for p in sorted(copy.rglob("*")) if p.is_file()}
    with pytest.raises(RunDirError, match="not finished.*--resume"):
        run_compare(base_config(), RULES, copy, log=lambda s: None)
    assert {p: p.read_bytes() for p in sorted(copy.rglob("*")) if p.is_file()} == before


def test_resume_reuses_completed_runs(compared):
    out, rows, _ = compared
    stamps = {r: [(out / r / f).stat().st_mtime_ns for f in ("tracking.json", "last.pt", "best.pt")]
              for r in RULES}
    lines: list[str] = []
    again = run_compare(base_config(), RULES, out, resume=True, log=lines.append)
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


def test_a_methods_own_values_reach_that_method_only():
    base = base_config()
    own = {"label": "fa-slow", "rule": "fa", "options": {"scale": 0.5},
           "set": {"optim.lr": 0.001, "train.batch_size": 25, "model.options.sizes": [784, 16, 10]}}
    configs = compare_configs(base, ["bp", own, "fa"])
    slow, fa, bp = configs["fa-slow"], configs["fa"], configs["bp"]
    assert (slow.optim.lr, slow.train.batch_size, slow.model.options["sizes"]) == (0.001, 25, [784, 16, 10])
    assert slow.rule.name == "fa" and slow.rule.options == {"scale": 0.5}
    for cfg in (bp, fa):  # the other methods keep the base values
        assert (cfg.optim.lr, cfg.train.batch_size, cfg.model.options["sizes"]) == (0.05, 50, [784, 32, 10])
    a, b = slow.to_dict(), fa.to_dict()
    differ = {f"{s}.{k}" for s in a if isinstance(a[s], dict) for k in a[s] if a[s][k] != b[s][k]}
    assert differ == {"optim.lr", "train.batch_size", "model.options", "rule.options"}
    assert base.optim.lr == 0.05 and base.train.batch_size == 50  # the base is not touched


def test_a_shipped_per_method_learning_rate():
    from falign.training.config import load_config

    base = load_config("resnet20-cifar10")  # BioTorch's DFA runs used SGD lr 1e-3, the others 0.1
    lrs = {label: cfg.optim.lr for label, cfg in compare_configs(base, base.compare).items()}
    assert lrs == {"bp": 0.1, "fa": 0.1, "dfa": 0.001, "usf": 0.1, "brsf": 0.1, "frsf": 0.1}


def test_the_string_forms_of_an_entry():
    from falign.training.compare import method, method_values

    assert method("fa") == ("fa", "fa", {})
    assert method("fa:dense") == ("fa:dense", "fa", {"conv_feedback": "dense"})
    assert method({"label": "d", "rule": "dfa", "set": {"optim.lr": 0.1}}) == ("d", "dfa", {})
    assert method_values("fa:dense") == {}
    assert method_values({"label": "d", "rule": "dfa", "set": {"optim.lr": 0.1}}) == {"optim.lr": 0.1}


@pytest.mark.parametrize("entry, message", [
    ({"label": "d", "rule": "dfa", "set": {"optim.lrr": 0.1}},
     "compare entry 'd': set: unknown key 'optim.lrr'; did you mean 'optim.lr'?"),
    ({"label": "d", "rule": "dfa", "set": {"rule.options.scale": 1.0}},
     "compare entry 'd': set 'rule.options.scale': give the rule as the entry's 'rule' and 'options'"),
    ({"label": "d", "rule": "dfa", "set": {"name": "other"}}, "compare entry 'd': set 'name'"),
    ({"label": "d", "rule": "dfa", "set": {"optim": {"lr": 0.1}}},
     "compare entry 'd': set: 'optim' is a section: set its keys"),
    ({"label": "d", "rule": "dfa", "set": {"optim.lr.x": 0.1}}, "'optim.lr' is a value, not a section"),
    ({"label": "d", "rule": "dfa", "sett": {}}, "compare entry 'd': unknown key 'sett'; did you mean 'set'?"),
    ({"label": "d", "rule": "dfaa"}, "compare entry 'd': rule: "),
    ({"label": "d"}, "compare entry 'd': needs 'rule'"),
])
def test_a_bad_entry_is_one_line_naming_it(entry, message):
    from falign.training import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config({"compare": ["bp", entry]}, where="x.yaml")
    text = str(err.value)
    assert text.startswith("x.yaml: ") and message in text and "\n" not in text, text


def test_a_per_method_value_is_validated_with_the_whole_config():
    from falign.training import ConfigError

    base = base_config()
    with pytest.raises(ConfigError, match=r"^compare entry 'slow': optim.lr: .*greater than 0"):
        compare_configs(base, [{"label": "slow", "rule": "fa", "set": {"optim.lr": -1.0}}])
    with pytest.raises(ConfigError, match="^compare entry 'bp-avg': .*rule 'bp' has no option 'average'"):
        compare_configs(base, [{"label": "bp-avg", "rule": "bp", "options": {"average": "batch"}}])
    # the config's own rule keeps its options; another rule starts from its own defaults
    dfa_base = parse_config({**base.to_dict(), "rule": {"name": "dfa", "options": {"average": "batch"}}})
    configs = compare_configs(dfa_base, ["dfa", {"label": "bp", "rule": "bp"}])
    assert (configs["dfa"].rule.options, configs["bp"].rule.options) == ({"average": "batch"}, {})


def test_an_entry_survives_the_round_trip_through_a_saved_config():
    cfg = parse_config({"compare": ["fa:dense", {"label": "d", "rule": "dfa", "set": {"optim.lr": 0.1}}]})
    again = parse_config(cfg.to_dict())
    assert again.compare == cfg.compare and again.compare[1].set == {"optim.lr": 0.1}


@pytest.mark.parametrize("seeds", [None, [0]])
def test_a_method_that_cannot_be_built_writes_nothing(data_root, tmp_path, seeds):
    from falign.models import ModelError
    from falign.training.compare import run_compare_seeds

    base = base_config()
    base.model.name, base.model.options = "lenet", {}  # 28x28 MNIST is too small for LeNet-5
    out, lines = tmp_path / "cmp", []
    with pytest.raises(ModelError, match="too small"):
        if seeds is None:
            run_compare(base, RULES, out, log=lines.append)
        else:
            run_compare_seeds(base, RULES, seeds, out, log=lines.append)
    assert not out.exists() and lines == []  # refused before the first run was announced


def test_a_bad_per_method_value_writes_nothing(tmp_path):
    from falign.training import ConfigError

    out = tmp_path / "cmp"
    with pytest.raises(ConfigError, match="compare entry 'slow'"):
        run_compare(base_config(), ["bp", {"label": "slow", "rule": "fa", "set": {"optim.lr": 0.0}}],
                    out, log=lambda s: None)
    assert not out.exists()


# ------------------------------------------------------------------------ several seeds per rule

SEEDS = [0, 1]


def _stats(values):
    import statistics

    return statistics.fmean(values), statistics.stdev(values)


@pytest.fixture(scope="module")
def seeded(data_root, tmp_path_factory):
    from falign.training.compare import run_compare_seeds

    out = tmp_path_factory.mktemp("seeds") / "cmp"
    base = base_config()
    base.train.epochs = 1
    lines: list[str] = []
    groups = run_compare_seeds(base, RULES, SEEDS, out, log=lines.append)
    return base, out, groups, lines


def test_every_rule_on_every_seed_in_its_own_run(seeded):
    base, out, groups, _ = seeded
    assert [g.label for g in groups] == RULES and all(g.seeds == SEEDS for g in groups)
    for group in groups:
        tests = []
        for seed, row in zip(SEEDS, group.rows, strict=True):
            tracking = json.loads((out / group.label / f"seed{seed}" / "tracking.json").read_text())
            assert tracking["config"]["seed"] == seed and tracking["config"]["rule"]["name"] == group.label
            assert row.test_acc == tracking["test_acc"] and row.best_val_acc == tracking["best_val_acc"]
            tests.append(tracking["test_acc"])
        assert tests[0] != tests[1]  # the seed did change the run
    # the seed changes only the seed: the same data, model and optimiser otherwise
    a = json.loads((out / "fa" / "seed0" / "tracking.json").read_text())["config"]
    b = json.loads((out / "fa" / "seed1" / "tracking.json").read_text())["config"]
    assert {k for k in a if a[k] != b[k]} == {"seed", "name"}


def test_the_table_is_mean_and_std_of_the_runs_own_records(seeded):
    _, out, _, lines = seeded
    table = next(entry for entry in lines if "test % (mean ± std)" in entry)
    rows = {line.split()[0]: line for line in table.splitlines()[3:]}
    assert list(rows) == RULES
    for rule in RULES:
        records = [json.loads((out / rule / f"seed{s}" / "tracking.json").read_text()) for s in SEEDS]
        for key in ("test_acc", "best_val_acc"):
            mean, std = _stats([r[key] for r in records])
            assert f"{100 * mean:.2f} ± {100 * std:.2f}" in rows[rule], (key, rows[rule])
    md = (out / "summary.md").read_text()
    assert all(f"| {rule} | 0,1 |" in md for rule in RULES) and "seeds.png" in md


def test_compare_json_records_every_seed_and_the_means(seeded):
    _, out, groups, _ = seeded
    marker = json.loads((out / "compare.json").read_text())
    assert marker["status"] == "completed" and marker["seeds"] == SEEDS and marker["rules"] == RULES
    runs = marker["runs"]
    assert [(r["rule"], r["seed"], r["run_dir"]) for r in runs] == [
        (rule, s, f"{rule}/seed{s}") for rule in RULES for s in SEEDS]
    for r in runs:
        assert r["test_acc"] == json.loads((out / r["run_dir"] / "tracking.json").read_text())["test_acc"]
    for entry, group in zip(marker["summary"], groups, strict=True):
        mean, std = _stats([r["test_acc"] for r in runs if r["rule"] == group.label])
        assert entry["rule"] == group.label and entry["n"] == 2
        assert entry["test_acc_mean"] == pytest.approx(mean) and entry["test_acc_std"] == pytest.approx(std)


def test_resume_with_another_seed_trains_only_that_seed(seeded, tmp_path):
    import shutil

    from falign.training.compare import run_compare_seeds

    base, out, groups_before, _ = seeded
    copy = tmp_path / "cmp"
    shutil.copytree(out, copy)
    stamps = {p: p.stat().st_mtime_ns for p in copy.rglob("*.pt")}
    with pytest.raises(RunDirError, match="holds another comparison"):  # other seeds: another one
        run_compare_seeds(base, RULES, [0, 1, 2], copy, log=lambda s: None)
    lines: list[str] = []
    again = run_compare_seeds(base, RULES, [0, 1], copy, log=lines.append)  # the same: read back
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert sum("already complete" in line for line in lines) == 4
    accs = lambda gs: [[r.test_acc for r in g.rows] for g in gs]  # noqa: E731
    assert accs(again) == accs(groups_before)
    lines: list[str] = []
    groups = run_compare_seeds(base, RULES, [0, 1, 2], copy, resume=True, log=lines.append)
    assert sum("already complete" in line for line in lines) == 4
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # seeds 0 and 1 were not trained again
    assert all((copy / rule / "seed2" / "best.pt").exists() for rule in RULES)
    assert [len(g.rows) for g in groups] == [3, 3]
    assert json.loads((copy / "compare.json").read_text())["seeds"] == [0, 1, 2]


def test_seeded_and_single_seed_comparisons_do_not_resume_each_other(seeded, compared):
    from falign.training.compare import run_compare_seeds

    base, seeded_out, _, _ = seeded
    single_out, _, _ = compared
    with pytest.raises(RunDirError, match="resume it with --seeds 0,1"):
        run_compare(base, RULES, seeded_out, resume=True, log=lambda s: None)
    with pytest.raises(RunDirError, match="one seed per rule"):
        run_compare_seeds(base, RULES, [0], single_out, resume=True, log=lambda s: None)
    with pytest.raises(ValueError, match="more than once"):
        run_compare_seeds(base, RULES, [1, 1], single_out / "never", log=lambda s: None)
    assert not (single_out / "never").exists()


def test_the_figure_with_error_bars(seeded, tmp_path):
    from falign.plots import NothingToPlot, plot_seed_summary

    _, _, groups, _ = seeded
    png, pdf = plot_seed_summary({g.label: g.rows for g in groups}, tmp_path / "seeds")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
    with pytest.raises(NothingToPlot):
        plot_seed_summary({"bp": []}, tmp_path / "none")


def test_resume_with_another_config_does_not_pass_the_old_runs_off_as_the_new(compared, tmp_path):
    """--resume with more epochs continues each run to them; the finished runs of the asked
    config are what the table reports, not the earlier runs read back as they were."""
    out, _, _ = compared
    copy = tmp_path / "cmp"
    shutil.copytree(out, copy)
    longer = base_config()
    longer.train.epochs = 3
    rows = run_compare(longer, RULES, copy, resume=True, log=lambda s: None)
    assert all(len(RunRecord.read(copy / r / "tracking.json").epochs) == 3 for r in RULES)
    assert [r.label for r in rows] == RULES


# ------------------------------------------- the statistics and the tables, from the record

def _record_over_seeds():
    from falign.records import ComparedRun, CompareRecord

    def run(rule, seed, test, val, status="completed"):
        return ComparedRun(rule=rule, seed=seed, run_dir=f"{rule}/seed{seed}", best_val_acc=val,
                           test_acc=test, epochs=2, best_epoch=2, sec_per_epoch=1.5, status=status)

    base = parse_config(tiny_config()).to_dict()
    return CompareRecord(rules=("bp", "fa"), seeds=(0, 1, 2), base=base, status="completed",
                         runs=(run("bp", 0, 0.9, 0.8), run("bp", 1, 0.8, 0.7), run("bp", 2, 0.7, 0.9),
                               run("fa", 0, 0.5, 0.4), run("fa", 1, float("nan"), 0.2, "diverged"),
                               run("fa", 2, 0.7, 0.6)))


def test_seed_statistics_are_functions_of_the_record():
    import statistics

    from falign.training.statistics import seed_summaries

    bp, fa = seed_summaries(_record_over_seeds())
    assert (bp.rule, bp.seeds, bp.n, bp.status) == ("bp", (0, 1, 2), 3, "completed")
    assert bp.test_acc_mean == pytest.approx(0.8) and bp.test_acc_std == pytest.approx(0.1)
    assert bp.best_val_acc_mean == pytest.approx(0.8)
    # a diverged run's NaN is left out of the mean; the status counts each
    assert fa.test_acc_mean == pytest.approx(0.6)
    assert fa.test_acc_std == pytest.approx(statistics.stdev([0.5, 0.7]))
    assert fa.status == "2 completed, 1 diverged"


def test_the_tables_are_drawn_from_the_record():
    from falign.training.compare_text import seed_summary_markdown, seed_table

    record = _record_over_seeds()
    table = seed_table(record)
    assert table.splitlines()[0] == "mnist / mlp, seeds 0,1,2 (mean ± sample std over 3 seeds)"
    assert "80.00 ± 10.00" in table
    md = seed_summary_markdown(record)
    assert md.startswith("# falign compare: mnist / mlp\n\nSeeds 0,1,2 ")
    assert "| fa | 0,1,2 |" in md and md.endswith("![mean and standard deviation over seeds](seeds.png)\n")


def test_the_old_table_functions_still_answer_and_warn_once():
    import warnings

    from falign.training import compare
    from falign.training.compare_text import seed_summary_markdown
    from falign.training.statistics import seed_groups

    record = _record_over_seeds()
    base = parse_config(record.base)
    compare._WARNED.discard("seed_summary_markdown")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        texts = [compare.seed_summary_markdown(seed_groups(record), base) for _ in range(2)]
    assert texts == [seed_summary_markdown(record)] * 2
    assert [w.category for w in caught] == [DeprecationWarning]
