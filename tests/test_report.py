"""``falign.report.write_report`` on hand-written tracking.json files (numbers known in advance) and
on one real, tiny comparison: a self-contained page, the right numbers, escaped text, the figures."""

from __future__ import annotations

import base64
import json
import math
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import mnist_or_skip

from falign.plots import NothingToPlot, plot_alignment, plot_sign_concordance
from falign.plots.training import _layer_mean_series
from falign.report import ReportError, load_runs, load_sources, write_report
from falign.training import AlignmentRecord, RunRecord

FIGURE_NAMES = ["val_accuracy", "loss_curves", "update_angle", "signal_angle", "feedback_angle",
                "sign_concordance", "sign_concordance_per_layer"]
EVIL = "u<sf>&"  # a rule name that must come out escaped


def _config(rule: str, options: dict | None = None, lr: float = 0.01, wd: float = 0.0) -> dict:
    return {"name": f"synthetic-{rule}", "seed": 0,
            "data": {"name": "mnist", "subset": 600},
            "model": {"name": "mlp", "options": {"sizes": [784, 16, 10]}},
            "rule": {"name": rule, "options": options or {}},
            "optim": {"name": "sgd", "lr": lr, "weight_decay": wd},
            "train": {"epochs": 3, "loss": "cross_entropy"}}


def _layer(u, s, f, sc, usc) -> dict:
    return {"update_angle": u, "signal_angle": s, "feedback_angle": f,
            "norm_ratio": None if f is None else 1.0, "sign_concordance": sc, "update_sign_concordance": usc}


def _tracking(rule: str, val: list[float], test: float, *, options: dict | None = None,
              alignment: list | None = None, dataset: str = "MNIST, 600/200/600",
              seconds: float = 2.0, status: str = "completed") -> dict:
    best = max(range(len(val)), key=lambda i: val[i])
    epochs = [{"epoch": i + 1, "train_loss": 2.0 / (i + 1), "train_acc": v - 0.01, "train_errors": 10,
               "val_loss": 2.2 / (i + 1), "val_acc": v, "lr": 0.01, "seconds": seconds}
              for i, v in enumerate(val)]
    return {"config": _config(rule, options), "dataset": dataset, "epochs": epochs,
            "best_epoch": best + 1, "best_val_acc": val[best], "test_acc": test, "selected_on": "val",
            "status": status, "environment": {"falign": "0.1.0", "torch": "2.13.0+cpu", "device": "cpu"},
            "alignment": alignment or []}


def _write(run_dir: Path, tracking: dict) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "tracking.json").write_text(json.dumps(tracking))
    return run_dir


# FA: every measure, some None (layer fc2 sends no signal; one missing feedback angle).
FA_ALIGNMENT = [
    {"step": step, "epoch": 1 + step // 20, "layers": {
        "fc1": _layer(80.0 - step, None, 89.0, 0.5 + step / 200, 0.55 + step / 200),
        "fc2": _layer(70.0 - step, 85.0 - step, None if step == 20 else 88.0, 0.5, 0.6),
    }} for step in (0, 10, 20, 30)
]
# The escaped rule: a B-vs-W sign concordance of 1 (as USF), no feedback angle on fc2.
EVIL_ALIGNMENT = [
    {"step": step, "epoch": 1, "layers": {
        "fc1": _layer(40.0, None, 30.0, 1.0, 0.8),
        "fc2": _layer(30.0, 35.0, None, None, 0.9),
    }} for step in (0, 10, 20, 30)
]
BP_ALIGNMENT = [{"step": step, "epoch": 1, "layers": {}} for step in (0, 10, 20, 30)]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    _write(root / "bp", _tracking("bp", [0.80, 0.8125, 0.81], 0.7912, alignment=BP_ALIGNMENT, seconds=1.5))
    fa = _tracking("fa", [0.60, 0.70, 0.7550], 0.7321, options={"conv_feedback": "dense"},
                   alignment=FA_ALIGNMENT, seconds=3.0)
    _write(root / "fa-dense", fa)
    _write(root / "evil", _tracking(EVIL, [0.70, 0.7777, 0.74], 0.7654, options={"scale": 0.5},
                                    alignment=EVIL_ALIGNMENT, status="diverged"))
    return root


@pytest.fixture(scope="module")
def report(synthetic: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    path = write_report([synthetic / "bp", synthetic / "fa-dense", synthetic / "evil"], out,
                        title="Synthetic <runs>", notes=["lr tuned by <hand> & eye"],
                        published={"test_acc": {"bp": 75.80, "fa:dense": 70.5, "dfa": 60.0}})
    assert path == out / "report.html"
    return out


class _Tables(HTMLParser):
    """Every <table> of a page as a list of rows of cell text (entities decoded)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _tables(page: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


def _results_rows(page: str) -> dict[str, dict[str, str]]:
    header, *rows = _tables(page)[0]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


# ----------------------------------------------------------------------------- the page itself

def test_results_table_has_one_row_per_method_with_the_numbers(report: Path) -> None:
    rows = _results_rows((report / "report.html").read_text())
    assert list(rows) == ["bp", "fa:dense", EVIL]
    assert rows["bp"] == {"method": "bp", "best val %": "81.25", "test %": "79.12", "best epoch": "2",
                          "epochs": "3", "s/epoch": "1.50", "status": "completed",
                          "published test %": "75.80"}
    assert rows["fa:dense"]["best val %"] == "75.50" and rows["fa:dense"]["test %"] == "73.21"
    assert rows["fa:dense"]["best epoch"] == "3" and rows["fa:dense"]["published test %"] == "70.50"
    assert rows[EVIL]["best val %"] == "77.77" and rows[EVIL]["status"] == "diverged"
    assert rows[EVIL]["published test %"] == "-"  # "dfa" names no run: no number, and no extra row


def test_page_is_self_contained_with_one_inline_png_per_figure(report: Path) -> None:
    page = (report / "report.html").read_text()
    sources = re.findall(r'\bsrc\s*=\s*"([^"]*)"', page)
    assert len(sources) == len(FIGURE_NAMES)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"\b(href|url)\s*[=(]", page) and "<script" not in page and "<link" not in page
    # each inlined image is byte for byte the PNG written to figures/
    inlined = {base64.b64decode(s.split(",", 1)[1]) for s in sources}
    assert inlined == {(report / "figures" / f"{name}.png").read_bytes() for name in FIGURE_NAMES}


def test_text_is_escaped(report: Path) -> None:
    page = (report / "report.html").read_text()
    assert EVIL not in page and "u&lt;sf&gt;&amp;" in page
    assert "<runs>" not in page and "Synthetic &lt;runs&gt;" in page
    assert "lr tuned by &lt;hand&gt; &amp; eye" in page


def test_page_holds_dataset_configs_environment_and_no_jpeg_note(report: Path) -> None:
    page = (report / "report.html").read_text()
    assert "MNIST, 600/200/600" in page and "JPEG" not in page
    assert page.count("<details>") == 3 and "conv_feedback: dense" in page
    env = [t for t in _tables(page) if t[0] == ["", "value"]]
    assert env and ["torch", "2.13.0+cpu"] in env[0]


def test_figures_are_written_as_png_and_pdf(report: Path) -> None:
    for name in FIGURE_NAMES:
        png, pdf = report / "figures" / f"{name}.png", report / "figures" / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000


def test_results_txt_has_config_numbers_and_published_column(report: Path) -> None:
    text = (report / "results.txt").read_text()
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("method"))
    assert header.split("  ")[0] == "method"
    for column in ("rule", "lr", "weight decay", "scale", "best val %", "test %", "best epoch",
                   "published test %", "status"):
        assert column in header
    row = {cells[0]: cells for cells in map(str.split, lines) if cells[:1] in (["bp"], ["fa:dense"], [EVIL])}
    assert row["bp"] == ["bp", "bp", "sgd", "0.01", "0", "-", "81.25", "79.12", "2", "75.80", "completed"]
    assert row["fa:dense"] == ["fa:dense", "fa:dense", "sgd", "0.01", "0", "-", "75.50", "73.21", "3",
                               "70.50", "completed"]
    assert row[EVIL] == [EVIL, EVIL, "sgd", "0.01", "0", "0.5", "77.77", "76.54", "2", "-", "diverged"]
    assert "lr tuned by <hand> & eye" in text  # plain text: not escaped
    assert "JPEG" not in text


# ----------------------------------------------------------------------- inputs and edge cases

def test_missing_tracking_json_raises_report_error_naming_the_path(tmp_path: Path) -> None:
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    with pytest.raises(ReportError) as info:
        write_report([empty], tmp_path / "out")
    assert str(empty) in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)
    # a comparison stopped before its second run started: the first is reported, the second listed
    comp = tmp_path / "comp"
    _write(comp / "bp", _tracking("bp", [0.5], None, status="interrupted"))
    (comp / "compare.json").write_text(json.dumps({"rules": ["bp", "fa:dense"], "status": "interrupted"}))
    sources = load_sources([comp])
    assert [r.path for r in sources.runs] == [comp / "bp"]
    assert any(str(comp) in n and "not finished" in n for n in sources.notes), sources.notes
    assert any("fa:dense" in n and "not started" in n for n in sources.notes), sources.notes
    assert any("bp" in n and "interrupted" in n for n in sources.notes), sources.notes
    write_report([comp], tmp_path / "partial")
    text = (tmp_path / "partial" / "results.txt").read_text()
    row = next(line for line in text.splitlines() if line.startswith("bp "))
    assert row.split()[-1] == "interrupted" and "fa:dense" in text.split("Notes:")[1]
    (comp / "bp" / "tracking.json").unlink()  # no run started at all: nothing to report
    with pytest.raises(ReportError, match=re.escape(str(comp))):
        load_runs([comp])
    with pytest.raises(ReportError, match=re.escape(str(tmp_path / "nowhere"))):
        load_runs([tmp_path / "nowhere"])
    (empty / "tracking.json").write_text("{not json")
    with pytest.raises(ReportError, match=re.escape(str(empty / "tracking.json"))):
        load_runs([empty])


def test_comparison_dirs_are_expanded_and_equal_rules_get_their_dir_names(tmp_path: Path) -> None:
    for name in ("a", "b"):
        _write(tmp_path / name / "bp", _tracking("bp", [0.5], 0.5))
        _write(tmp_path / name / "fa", _tracking("fa", [0.5], 0.5))
        (tmp_path / name / "compare.json").write_text(json.dumps({"rules": ["bp", "fa"]}))
    _write(tmp_path / "run1", _tracking("fa", [0.5], 0.5))
    runs = load_runs([tmp_path / "a", tmp_path / "b", tmp_path / "run1", tmp_path / "a" / "bp"])
    assert [r.label for r in runs] == ["bp (a/bp)", "fa (a/fa)", "bp (b/bp)", "fa (b/fa)", "fa (run1)"]
    assert [r.path for r in runs][:2] == [tmp_path / "a" / "bp", tmp_path / "a" / "fa"]
    assert {r.rule for r in runs} == {"bp", "fa"}


def test_jpeg_dataset_gets_a_note_and_absent_alignment_is_reported(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _write(runs / "bp", _tracking("bp", [0.5, 0.6], 0.55, dataset="CIFAR-10 (JPEG copy), 45000/5000/10000"))
    out = tmp_path / "out"
    stale = out / "figures" / "update_angle.png"  # left by an earlier report into the same folder
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    write_report([runs / "bp"], out)
    page = (out / "report.html").read_text()
    assert "CIFAR-10 (JPEG copy)" in page and 'class="warning"' in page and "lossy JPEG copy" in page
    assert "lossy JPEG copy" in (out / "results.txt").read_text()
    assert page.count("data:image/png;base64,") == 2  # accuracy and loss only
    # one line for every figure drawn from alignment records, saying how to get them
    assert page.count("not drawn") == 1
    assert ("Update alignment, Signal alignment, Feedback alignment, Sign concordance, Sign concordance "
            "per layer (supplementary): not drawn, no alignment records: set train.alignment_every") in page
    assert not stale.exists()
    assert "<title>falign report: CIFAR-10 (JPEG copy), 45000/5000/10000 / mlp</title>" in page


# ----------------------------------------------------------------------- the figure functions

def test_layer_mean_ignores_missing_values() -> None:
    record = RunRecord(alignment=[
        AlignmentRecord(10, 1, {"a": {"sign_concordance": 0.6}, "b": {"sign_concordance": None},
                                "c": {"sign_concordance": 0.8}}),
        AlignmentRecord(0, 1, {"a": {"sign_concordance": None}}),  # nothing to average: no point
        AlignmentRecord(20, 1, {"a": {"sign_concordance": 0.25}, "c": {"sign_concordance": 0.75}}),
    ])
    steps, means = _layer_mean_series(record, "sign_concordance")
    assert steps == [10, 20]
    assert all(math.isclose(m, e) for m, e in zip(means, [0.7, 0.5], strict=True))


def test_figure_functions_refuse_absent_data_and_bad_measures(tmp_path: Path) -> None:
    runs = {"bp": _tracking("bp", [0.5], 0.5, alignment=BP_ALIGNMENT)}
    with pytest.raises(NothingToPlot):
        plot_alignment(runs, tmp_path / "a")
    with pytest.raises(NothingToPlot):
        plot_sign_concordance(runs, tmp_path / "s", per_layer=True)
    with pytest.raises(ValueError, match="measure"):
        plot_alignment(runs, tmp_path / "a", measure="norm_ratio")
    assert not list(tmp_path.iterdir())


def test_importing_the_report_does_not_import_matplotlib() -> None:
    code = "import sys, falign.report; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------- a real comparison, end to end

def test_report_on_a_real_tiny_comparison(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FALIGN_DATA", str(mnist_or_skip()))
    from falign.training import parse_config
    from falign.training.compare import run_compare

    base = parse_config({
        "name": "tiny", "seed": 0, "device": "cpu",
        "data": {"name": "mnist", "subset": 600, "val_size": 200},
        "model": {"name": "mlp", "options": {"sizes": [784, 16, 10]}},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"epochs": 1, "batch_size": 50, "alignment_every": 4, "alignment_batch": 64},
    })
    rows = run_compare(base, ["bp", "fa"], tmp_path / "cmp", log=lambda s: None)
    write_report([tmp_path / "cmp"], tmp_path / "out", published={"test_acc": {"fa": 12.34}})
    page = (tmp_path / "out" / "report.html").read_text()
    table = _results_rows(page)
    assert list(table) == ["bp", "fa"]
    for row in rows:
        assert table[row.label]["best val %"] == f"{100 * row.best_val_acc:.2f}"
        assert table[row.label]["test %"] == f"{100 * row.test_acc:.2f}"
        assert table[row.label]["epochs"] == "1"
    assert table["fa"]["published test %"] == "12.34" and table["bp"]["published test %"] == "-"
    assert page.count("data:image/png;base64,") == len(FIGURE_NAMES)
    assert "not drawn" not in page
    text = (tmp_path / "out" / "results.txt").read_text()
    assert f"{100 * rows[1].test_acc:.2f}" in text and "12.34" in text


# ------------------------------------------------- sweeps, reproductions, seeds, missing sections

def _mean_std(values: list[float]) -> str:
    import statistics

    return f"{100 * statistics.fmean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def _seed_run(run_dir: Path, rule: str, seed: int, val: list[float], test: float) -> Path:
    tracking = _tracking(rule, val, test)
    tracking["config"] = {**tracking["config"], "seed": seed, "name": f"{rule}-final-s{seed}"}
    return _write(run_dir, tracking)


def _seed_table(page: str) -> dict[str, dict[str, str]]:
    table = next(t for t in _tables(page) if "test % (mean ± std)" in t[0])
    return {row[0]: dict(zip(table[0], row, strict=True)) for row in table[1:]}


SWEEP_TESTS = {"bp": [0.80, 0.83, 0.815], "fa": [0.70, 0.66]}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """A finished sweep as ``falign sweep`` leaves it: sweep.json and final/<rule>-seed<k> runs
    (the run_dir recorded relative to where the sweep was started, not to the sweep)."""
    root = tmp_path_factory.mktemp("sweep") / "sweep-x"
    rules = {}
    for rule, tests in SWEEP_TESTS.items():
        runs = []
        for seed, test in enumerate(tests):
            _seed_run(root / "final" / f"{rule}-seed{seed}", rule, seed, [0.5, test - 0.01], test)
            runs.append({"seed": seed, "test_acc": test, "status": "completed",
                         "run_dir": f"elsewhere/sweep-x/final/{rule}-seed{seed}"})
        trials = [{"number": 0, "params": {"optim.lr": 0.1}, "value": 0.5, "state": "COMPLETE"},
                  {"number": 1, "params": {"optim.lr": 1.0}, "value": None, "state": "PRUNED"}]
        rules[rule] = {"trials": trials,
                       "best_params": {"optim.lr": 0.1},
                       "final": {"params": {"optim.lr": 0.1}, "runs": runs, "test_acc_mean": 0.0,
                                 "test_acc_std": 0.0}}
    rules["kp"] = {"trials": [], "best_params": None}  # no trial completed: no final runs
    (root / "sweep.json").write_text(json.dumps({"name": "x", "sampler": "grid", "rules": rules}))
    return root


def test_a_sweep_reports_its_final_runs_with_mean_and_std(sweep_dir: Path, tmp_path: Path) -> None:
    from falign.report import load_sources

    sources = load_sources([sweep_dir])
    assert [r.path for r in sources.runs] == [sweep_dir / "final" / f"{rule}-seed{s}"
                                              for rule, tests in SWEEP_TESTS.items()
                                              for s in range(len(tests))]
    assert [s.kind for s in sources.sources] == ["sweep"]
    assert any("'kp' has no final runs" in note for note in sources.notes)
    write_report([sweep_dir], tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text()
    seeds = _seed_table(page)
    assert list(seeds) == ["bp", "fa"]
    for rule, tests in SWEEP_TESTS.items():  # computed here from the numbers the runs were given
        assert seeds[rule]["test % (mean ± std)"] == _mean_std(tests)
        assert seeds[rule]["seeds"] == ",".join(str(s) for s in range(len(tests)))
    sweep = next(t for t in _tables(page) if t[0][:3] == ["rule", "trials", "best params"])
    assert sweep[1][:4] == ["bp", "2 (1 complete, 1 pruned)", "optim.lr=0.1", "0,1,2"]
    assert sweep[3][0] == "kp" and sweep[3][2] == "-"
    text = (tmp_path / "out" / "results.txt").read_text()
    assert _mean_std(SWEEP_TESTS["bp"]) in text and "Mean ± sample std over seeds" in text


def test_a_sweep_without_final_runs_says_how_to_finish_it(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    (sweep / "trials" / "x-000").mkdir(parents=True)
    (sweep / "optuna-journal.log").write_text("")
    with pytest.raises(ReportError, match=r"has not finished \(no sweep.json yet\); finish it with "
                                          r"`falign sweep CONFIG --resume"):
        load_runs([sweep])
    (sweep / "sweep.json").write_text(json.dumps({"name": "x", "rules": {"fa": {"trials": []}}}))
    with pytest.raises(ReportError, match="no final runs yet"):
        write_report([sweep], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_reproduction_reports_every_comparison_sweep_and_run_in_it(sweep_dir: Path, tmp_path: Path) -> None:
    import shutil

    repro = tmp_path / "reproduce-x"
    _write(repro / "compare" / "bp", _tracking("bp", [0.5, 0.6], 0.61))
    _write(repro / "compare" / "fa", _tracking("fa", [0.4, 0.5], 0.52))
    (repro / "compare" / "compare.json").write_text(json.dumps({"rules": ["bp", "fa"],
                                                               "status": "completed"}))
    _write(repro / "fa-extra", _tracking("fa", [0.45], 0.47))
    shutil.copytree(sweep_dir, repro / "tuned")
    _write(repro / "report" / "old", _tracking("bp", [0.1], 0.1))  # the reproduction's own report
    (repro / "analysis").mkdir()
    (repro / "reproduce.json").write_text(json.dumps({
        "name": "sign-tracking", "scale": "smoke", "status": "completed",
        "extra": [{"method": "fa", "shared_lr_test": 0.52, "tuned_lr": 0.1}]}))
    runs = load_runs([repro])
    assert [r.path.relative_to(repro).as_posix() for r in runs] == [
        "compare/bp", "compare/fa", "fa-extra", *(f"tuned/final/{rule}-seed{s}" for rule, tests
                                                  in SWEEP_TESTS.items() for s in range(len(tests)))]
    write_report([repro], tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text()
    assert "sign-tracking" in page and "smoke" in page
    assert ["method", "shared_lr_test", "tuned_lr"] in [t[0] for t in _tables(page)]  # its extra rows


def test_a_seeded_comparison_is_expanded_into_every_seed(tmp_path: Path) -> None:
    cmp = tmp_path / "cmp"
    tests = {("bp", 0): 0.9, ("bp", 1): 0.92, ("fa", 0): 0.8, ("fa", 1): 0.75}
    for (rule, seed), test in tests.items():
        _seed_run(cmp / rule / f"seed{seed}", rule, seed, [0.5], test)
    (cmp / "compare.json").write_text(json.dumps({
        "rules": ["bp", "fa"], "seeds": [0, 1], "status": "completed",
        "runs": [{"rule": rule, "seed": seed, "run_dir": f"{rule}/seed{seed}"} for rule, seed in tests]}))
    runs = load_runs([cmp])
    assert [r.label for r in runs] == ["bp (seed0)", "bp (seed1)", "fa (seed0)", "fa (seed1)"]
    write_report([cmp], tmp_path / "out")
    seeds = _seed_table((tmp_path / "out" / "report.html").read_text())
    assert seeds["bp"]["test % (mean ± std)"] == _mean_std([0.9, 0.92])
    assert seeds["fa"]["test % (mean ± std)"] == _mean_std([0.8, 0.75])


def test_runs_that_differ_in_more_than_the_seed_are_not_averaged(tmp_path: Path) -> None:
    a = _seed_run(tmp_path / "a", "fa", 0, [0.5], 0.5)
    b = _tracking("fa", [0.5], 0.6)
    b["config"] = {**b["config"], "seed": 1, "optim": {"name": "sgd", "lr": 0.1, "weight_decay": 0.0}}
    write_report([a, _write(tmp_path / "b", b)], tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text()
    assert "over seeds" not in page and not [t for t in _tables(page) if "test % (mean ± std)" in t[0]]


def test_sections_without_data_say_how_to_get_them(tmp_path: Path) -> None:
    tracking = _tracking("fa", [0.5, 0.6], 0.55)
    for epoch in tracking["epochs"]:
        epoch["val_acc"] = epoch["val_loss"] = None
    write_report([_write(tmp_path / "run", tracking)], tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Validation accuracy: not drawn, no run has a validation split: set data.val_size" in page
    assert "no alignment records: set train.alignment_every" in page
    assert "add --confusion, --cka or --gradcam LAYER" in page


def test_the_report_picks_its_analyses_by_name() -> None:
    from falign.report.analyses import ANALYSES, asked_analyses

    assert list(ANALYSES)[:3] == ["confusion", "cka", "gradcam"]  # the order of their sections
    assert asked_analyses(["cka"]) == {"cka": True}
    assert asked_analyses({"gradcam": "conv2", "cka": False}) == {"gradcam": "conv2"}
    with pytest.warns(DeprecationWarning, match="analyses="):  # the keywords of earlier falign
        assert asked_analyses(confusion=True, gradcam="x") == {"confusion": True, "gradcam": "x"}
    with pytest.raises(ReportError, match="unknown report analysis 'ckaa'; did you mean 'cka'"):
        asked_analyses(["ckaa"])


@pytest.fixture(scope="module")
def tiny_compare(tmp_path_factory) -> tuple[Path, list]:
    """A real comparison (bp, fa) of a tiny MLP on 600 MNIST images, one epoch: its folder and rows."""
    import os

    root = mnist_or_skip()
    saved = os.environ.get("FALIGN_DATA")
    os.environ["FALIGN_DATA"] = str(root)
    try:
        from falign.training import parse_config
        from falign.training.compare import run_compare

        base = parse_config({
            "name": "tiny", "seed": 0, "device": "cpu",
            "data": {"name": "mnist", "subset": 600, "val_size": 200},
            "model": {"name": "mlp", "options": {"sizes": [784, 16, 10]}},
            "optim": {"name": "sgd", "lr": 0.05}, "train": {"epochs": 1, "batch_size": 50},
        })
        folder = tmp_path_factory.mktemp("tiny") / "cmp"
        rows = run_compare(base, ["bp", "fa"], folder, log=lambda s: None)
    finally:
        if saved is None:
            os.environ.pop("FALIGN_DATA", None)
        else:
            os.environ["FALIGN_DATA"] = saved
    return folder, rows


def test_analyses_of_the_best_models(tiny_compare, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FALIGN_DATA", str(mnist_or_skip()))
    cmp, rows = tiny_compare
    with pytest.raises(ReportError, match=r"--gradcam layer0: no layer 'layer0' in the model of bp .*"
                                          r"did you mean 'layers.0'\?"):
        write_report([cmp], tmp_path / "bad", analyses={"gradcam": "layer0"})
    assert not (tmp_path / "bad").exists()

    write_report([cmp], tmp_path / "out",
                 analyses={"confusion": True, "cka": True, "gradcam": "layers.1"})
    page = (tmp_path / "out" / "report.html").read_text()
    for title in ("Confusion matrix: bp", "Confusion matrix: fa", "CKA vs BP: all", "Exemplars"):
        assert f"<h3>{title}</h3>" in page
    assert "add --confusion" not in page
    for row in rows:  # the per-class report's accuracy is the run's own test accuracy
        text = (tmp_path / "out" / "figures" / f"classification-{row.label}.txt").read_text()
        accuracy = next(line for line in text.splitlines() if line.strip().startswith("accuracy"))
        assert accuracy.split()[1] == f"{row.test_acc:.2f}" and accuracy.split()[2] == "600"
    notes = re.findall(r"<p>(CKA diagonal, all, fa vs bp: [^<]*)</p>", page)
    assert len(notes) == 1 and "layers.0" in notes[0] and "layers.1" in notes[0]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_compute_step_returns_results_and_writes_nothing(tiny_compare, tmp_path: Path,
                                                            monkeypatch) -> None:
    """Step one gives dataclasses and no file; steps two and three by hand make write_report's files."""
    from falign.analysis import CKAComparison, ConfusionResults, ExemplarComparison
    from falign.plots import draw_run_figures
    from falign.report.analyses import compute_analyses, draw_analyses
    from falign.report.html import write_html

    monkeypatch.setenv("FALIGN_DATA", str(mnist_or_skip()))
    monkeypatch.chdir(tmp_path)
    cmp, rows = tiny_compare
    before = _files(cmp)
    sources = load_sources([cmp])
    results = compute_analyses(sources.runs, {"confusion": True, "cka": True, "gradcam": "layers.1"})
    assert _files(cmp) == before and not list(tmp_path.iterdir())  # nothing written anywhere
    kinds = [(item.name, type(item.result), item.figures) for item in results.items]
    assert kinds == [("confusion", ConfusionResults, None), ("cka", CKAComparison, None),
                     ("gradcam", ExemplarComparison, None)]
    confusion, cka, exemplars = (item.result for item in results.items)
    for row in rows:  # the confusion matrix's diagonal is the run's test accuracy
        matrix = confusion.reports[row.label].confusion
        assert int(matrix.sum()) == 600
        assert int(matrix.diagonal().sum()) / 600 == pytest.approx(row.test_acc)
    assert (cka.reference, cka.title, list(cka.results)) == ("bp", "BP", ["fa vs bp"])
    assert set(cka.by_subset) == {"all", "both_correct", "ref_correct_other_wrong"}
    assert exemplars.layer == "layers.1" and list(exemplars.sets) == ["bp", "fa"]

    out = tmp_path / "by-hand"
    draw_analyses(results, out / "figures")
    figures = draw_run_figures({run.label: run.record for run in sources.runs}, out / "figures")
    write_html(sources, out, run_figures=figures, analyses=results)
    write_report([cmp], tmp_path / "whole", analyses={"confusion": True, "cka": True, "gradcam": "layers.1"})
    assert _files(out) == _files(tmp_path / "whole")


_PNG = b"\x89PNG\r\n\x1a\n not a real image: "  # the writer only inlines the bytes


def _drawn(folder: Path, name: str) -> list[Path]:
    """A figure someone else drew: a PNG and a PDF whose bytes say which they are."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.png", folder / f"{name}.pdf"]
    for path in paths:
        path.write_bytes(_PNG + name.encode())
    return paths


def _inlined(path: Path) -> str:
    return f'src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode("ascii")}"'


def test_the_html_writer_takes_records_results_and_figure_paths(tmp_path: Path) -> None:
    """No training, no checkpoint, no drawing: hand-made records, results and figure files in,
    the page out with every number, text and figure where it belongs."""
    import torch

    from falign.analysis import CKAComparison, CKAResult, ConfusionResults, ExemplarComparison, ExemplarSet
    from falign.analysis.classification import classification_report
    from falign.report.analyses import Analysed, AnalysisResults
    from falign.report.html import write_html

    runs = tmp_path / "runs"
    _write(runs / "bp", _tracking("bp", [0.5, 0.6], 0.55))
    _write(runs / "fa", _tracking("fa", [0.4, 0.45], 0.42))
    sources = load_sources([runs / "bp", runs / "fa"])
    drawn = tmp_path / "drawn"  # figures drawn elsewhere; the writer must not add any of its own
    report = {"bp": classification_report([0, 0, 1, 1], [0, 1, 1, 1], class_names=["cat", "dog"]),
              "fa": classification_report([0, 0, 1, 1], [1, 1, 1, 1], class_names=["cat", "dog"])}
    cka = CKAComparison("bp", "BP", 4, 0, results={"fa vs bp": {"all": CKAResult(
        torch.tensor([[0.91, 0.2], [0.3, 0.77]], dtype=torch.float64), ["fc1", "fc2"], ["fc1", "fc2"], 8,
        minibatch=True, minibatch_size=4)}}, notes=["No backprop run on this data? (a note of its own)"])
    sets = {"bp": ExemplarSet("conv2", "Grad-CAM (true gradient)", [0], {0: torch.tensor([1])},
                              {0: torch.zeros(1, 1, 2, 2)})}
    results = AnalysisResults(
        asked={"confusion": True, "cka": True, "gradcam": "conv2"},
        items=[Analysed("Confusion matrices", "confusion", ConfusionResults(report, ["cat", "dog"]),
                        figures={"bp": _drawn(drawn, "confusion-bp"), "fa": _drawn(drawn, "confusion-fa")}),
               Analysed("CKA", "cka", cka, figures={"all": _drawn(drawn, "cka-all")}),
               Analysed("Grad-CAM exemplars", "gradcam", ExemplarComparison("conv2", sets),
                        prefix="data2-", figures=_drawn(drawn, "data2-exemplars"))],
        skipped=["ghost: no best.pt in nowhere"])
    loss = _drawn(drawn, "loss_curves")
    out = tmp_path / "out"
    path = write_html(sources, out, title="By <hand>", run_figures={
        "loss_curves": loss, "val_accuracy": NothingToPlot("no validation accuracy"),
        "update_angle": NothingToPlot("no alignment"), "signal_angle": NothingToPlot("no alignment")},
        analyses=results)

    page = path.read_text()
    assert path == out / "report.html" and "<title>By &lt;hand&gt;</title>" in page
    # nothing drawn: the only files written beside the page are the per-class reports
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["classification-bp.txt",
                                                                   "classification-fa.txt"]
    assert (out / "figures" / "classification-fa.txt").read_text() == report["fa"].to_text()
    assert (out / "results.txt").is_file()
    assert _inlined(loss[0]) in page and "Files: figures/loss_curves.png, figures/loss_curves.pdf." in page
    assert "Validation accuracy: not drawn, no validation accuracy." in page
    assert page.count("no alignment records: set train.alignment_every") == 1  # one line for both
    assert "<h3>Feedback alignment</h3>" not in page and "<h3>Loss curves</h3>" in page
    for title, png in (("Confusion matrix: bp", drawn / "confusion-bp.png"),
                       ("Confusion matrix: fa", drawn / "confusion-fa.png"),
                       ("CKA vs BP: all", drawn / "cka-all.png"),
                       ("Exemplars", drawn / "data2-exemplars.png")):
        assert f"<h3>{title}</h3>" in page and _inlined(png) in page
        assert f"File: figures/{png.name}." in page
    assert "<pre>" + report["bp"].to_text().replace("&", "&amp;").replace("<", "&lt;") in page
    notes = re.findall(r"<p>(CKA[^<]*|No backprop[^<]*)</p>", page)
    assert notes[0] == "No backprop run on this data? (a note of its own)"
    assert "Subset sizes: fa vs bp: all n=8 (8 used)." in notes[1]
    assert notes[2] == "CKA diagonal, all, fa vs bp: fc1 0.91, fc2 0.77"
    assert "For each method, the conv2 channels with the largest mean" in page
    assert "<h3>Not analysed</h3>\n<p>ghost: no best.pt in nowhere</p>" in page
    assert "add --confusion" not in page

    # asked for nothing: the page says how to ask, and the same records give the same tables
    write_html(sources, tmp_path / "plain", run_figures={"loss_curves": loss})
    plain = (tmp_path / "plain" / "report.html").read_text()
    assert "add --confusion, --cka or --gradcam LAYER" in plain and _tables(plain) == _tables(page)


def test_an_analysis_of_earlier_falign_still_runs(tmp_path: Path, monkeypatch) -> None:
    """ReportAnalysis(title, make): warned once, then its make runs in the draw step."""
    from falign.report import analyses

    monkeypatch.setattr(analyses, "_WARNED", set())
    calls = []

    def make(group, folder, prefix, option):
        calls.append((group, folder, prefix, option))
        return analyses.Section(notes=["made"])

    with pytest.warns(DeprecationWarning, match="compute=") as caught:
        old = analyses.ReportAnalysis("Old", make)
        analyses.ReportAnalysis("Old again", make)
    assert len([w for w in caught if w.category is DeprecationWarning]) == 1
    made = old.compute("group", 7)
    assert calls == []  # computing writes nothing
    figures = old.draw(made, tmp_path, "p-")
    assert calls == [("group", tmp_path, "p-", 7)] and old.section(made, figures).notes == ["made"]
    with pytest.raises(TypeError, match="compute, draw and section"):
        analyses.ReportAnalysis("Nothing")
