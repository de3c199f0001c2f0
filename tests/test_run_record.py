"""The run record (tracking.json): version 1 files read, the plain form round-trips, bad files are
one-line errors, the resumable part in last.pt is unchanged; the results table; and training
draws nothing (falign.training imports no plotting or analysis code; `falign compare` draws)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from conftest import ONE_THREAD, tiny_config

from falign.training import (
    AlignmentRecord,
    EpochRecord,
    RecordError,
    RunRecord,
    parse_config,
    train,
)
from falign.training.record import RESUMED, SCHEMA_VERSION
from falign.training.results import ResultRow, by_label, format_results, format_table

pytestmark = pytest.mark.usefixtures("one_thread")

# What train() wrote before the record had a schema version, key for key.
V1 = {
    "config": {"name": "tiny", "seed": 0, "rule": {"name": "fa", "options": {}},
               "train": {"epochs": 2, "loss": "cross_entropy"}},
    "model_spec": {"name": "mlp", "rule": "fa", "rule_options": {"seed": 0}},
    "dataset": "MNIST, 400/200/600",
    "epochs": [
        {"epoch": 1, "train_loss": 1.5, "train_acc": 0.5, "train_errors": 200, "lr": 0.05,
         "seconds": 0.25, "val_loss": 1.25, "val_acc": 0.625},
        {"epoch": 2, "train_loss": 1.0, "train_acc": 0.75, "train_errors": 100, "lr": 0.05,
         "seconds": 0.75, "val_loss": 1.0, "val_acc": 0.6},
    ],
    "best_epoch": 1, "best_val_acc": 0.625, "test_acc": 0.5, "selected_on": "val",
    "status": "completed",
    "environment": {"falign": "0.1.0", "python": "3.12.3", "torch": "2.13.0+cpu",
                    "platform": "Linux", "device": "cpu", "threads": 1},
    "alignment": [{"step": 0, "epoch": 1, "layers": {"layers.1": {
        "update_angle": 88.5, "signal_angle": None, "feedback_angle": 90.0, "norm_ratio": 1.0,
        "sign_concordance": 0.5, "update_sign_concordance": 0.55}}}],
    "stopped_early": False,
}


def tiny(**sections) -> dict:
    return tiny_config(**{**sections, "train": {"epochs": 2, **sections.get("train", {})}})


# ------------------------------------------------------------------------------- the file

def test_a_version_1_tracking_json_reads(tmp_path):
    path = tmp_path / "tracking.json"
    path.write_text(json.dumps(V1))
    record = RunRecord.read(path)
    assert record.status == "completed" and record.best_epoch == 1 and record.test_acc == 0.5
    assert record.epochs[1] == EpochRecord(epoch=2, train_loss=1.0, train_acc=0.75, train_errors=100,
                                           lr=0.05, seconds=0.75, val_loss=1.0, val_acc=0.6)
    assert record.alignment[0].layers["layers.1"]["signal_angle"] is None
    assert record.config["rule"]["name"] == "fa" and record.environment["threads"] == 1
    # read by hand from the dict above, not through the record's own code
    assert record.val_curve == [0.625, 0.6]
    assert record.seconds_per_epoch == 0.5
    assert record.finished and not record.stopped_early
    # written again: the same keys and values, now with the version
    assert record.to_dict() == {"schema_version": 3, **V1, "test_loss": None}
    assert set(record.to_dict()) == {"schema_version", "test_loss", *V1}


def test_round_trip_through_the_plain_form_and_the_file(tmp_path):
    record = RunRecord(
        config={"seed": 3}, model_spec={"name": "mlp"}, dataset="XOR, 4/0/4",
        epochs=[EpochRecord(1, 0.5, 0.75, 1, 0.1, 0.01), EpochRecord(2, 0.25, 1.0, 0, 0.1, 0.02)],
        best_epoch=2, best_val_acc=1.0, test_acc=None, selected_on="test", status="diverged",
        environment={"device": "cpu"}, stopped_early=True,
        alignment=[AlignmentRecord(0, 1, {"fc": {"update_angle": 45.0, "feedback_angle": None}}),
                   AlignmentRecord(2, 2, {})])
    plain = record.to_dict()
    assert json.loads(json.dumps(plain)) == plain  # plain JSON types only
    assert RunRecord.from_dict(plain) == record
    assert RunRecord.from_dict(plain).to_dict() == plain
    assert record.val_curve == []  # no validation split: no curve
    record.write(tmp_path / "tracking.json")
    assert RunRecord.read(tmp_path / "tracking.json") == record
    assert [p.name for p in tmp_path.iterdir()] == ["tracking.json"]  # no temp file left
    assert SCHEMA_VERSION == plain["schema_version"] == 3


@pytest.mark.parametrize("text, message", [
    (json.dumps({**V1, "schema_version": 4}), "schema version 4 is newer than this falign reads"),
    (json.dumps({**V1, "schema_version": "2"}), "schema_version '2' is not a version number"),
    (json.dumps([V1]), "holds a JSON list, not an object"),
    (json.dumps({**V1, "epochs": [{"epoch": 1}]}), "epochs[0]: no 'train_loss'"),
    (json.dumps({**V1, "best_val_acc": "high"}), "'best_val_acc' is 'high', not a number"),
    (json.dumps({**V1, "alignment": [{"epoch": 1, "layers": {}}]}), "alignment[0]: no 'step'"),
    ("{not json", "cannot be read as JSON"),
])
def test_a_bad_file_is_one_line_naming_it(tmp_path, text, message):
    path = tmp_path / "tracking.json"
    path.write_text(text)
    with pytest.raises(RecordError) as err:
        RunRecord.read(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_partial_record_takes_the_defaults():
    record = RunRecord.from_dict({"epochs": [V1["epochs"][0]]})
    assert record.status == "unknown" and record.dataset == "" and record.alignment == []
    assert record.best_epoch is None and record.selected_on == "val" and not record.finished


def test_indexing_like_the_old_dict_still_works_and_warns():
    record = RunRecord.from_dict(V1)
    with pytest.warns(DeprecationWarning, match="record.epochs"):
        epochs = record["epochs"]
    assert epochs == V1["epochs"]


# ---------------------------------------------------------------------- resume and last.pt

def test_the_checkpoints_part_keeps_its_form_and_a_version_1_run_resumes(data_root, tmp_path):
    cfg = parse_config(tiny(train={"alignment_every": 5}))
    whole = train(cfg, tmp_path / "whole", log=None)
    run = tmp_path / "old"
    train(cfg, run, log=None, stop_after=1)
    part = torch.load(run / "last.pt", weights_only=True)["tracking"]
    # the form every earlier falign wrote: those five keys, plain dicts inside
    assert set(part) == set(RESUMED) == {"epochs", "best_epoch", "best_val_acc", "alignment",
                                         "stopped_early"}
    assert set(part["epochs"][0]) == set(V1["epochs"][0]) and set(part["alignment"][0]) == {
        "step", "epoch", "layers"}
    # the run directory as an earlier falign left it: tracking.json without a version
    old = json.loads((run / "tracking.json").read_text())
    del old["schema_version"]
    (run / "tracking.json").write_text(json.dumps(old))
    resumed = train(cfg, run, resume=True, log=None)
    a, b = resumed.to_dict(), whole.to_dict()
    for d in (a, b):
        d.pop("environment")
        for e in d["epochs"]:
            e.pop("seconds")
    assert a == b and resumed.alignment  # the probe records continue too


# ---------------------------------------------------------------------------- the table

ROWS = [ResultRow("bp", 0.8125, 0.7912, 2, 3, 1.5, "completed"),
        ResultRow("fa:dense", None, None, None, 0, None, "diverged"),
        ResultRow("usf", 0.5, 0.25, 1, 12, 12.25, "completed")]


def test_results_text_and_markdown():
    text = format_results(ROWS, ["best val %", "test %", "s/epoch", by_label("paper", {"usf": "9"})])
    assert text.splitlines() == [
        "method    best val %  test %  s/epoch  paper",
        "--------  ----------  ------  -------  -----",
        "bp             81.25   79.12     1.50      -",
        "fa:dense           -       -        -      -",
        "usf            50.00   25.00     12.2      9",
    ]
    md = format_results(ROWS[:1], ["epochs", "status"], label="rule", style="markdown")
    assert md.splitlines() == ["| rule | epochs | status |", "|---|---:|---|", "| bp | 3 | completed |"]
    assert format_table(["a|b"], [["x|y"]], style="markdown").splitlines()[2] == "| x\\|y |"


def test_a_row_of_a_record():
    row = ResultRow.of("fa", RunRecord.from_dict(V1))
    assert (row.best_val_acc, row.test_acc, row.best_epoch, row.epochs, row.sec_per_epoch,
            row.status, row.val_curve) == (0.625, 0.5, 1, 2, 0.5, "completed", [0.625, 0.6])


# ------------------------------------------------------------------------ no drawing below

def test_training_imports_neither_plots_nor_analyses_but_its_probe(data_root, tmp_path):
    """The loop measures alignment with the probe of falign.analysis.alignment and imports
    nothing else of analysis/ (CKA, Grad-CAM) and nothing of plots/ or matplotlib."""
    script = textwrap.dedent(f"""
        import json, sys
        from falign.training import parse_config, train
        from falign.training.compare import run_compare

        cfg = parse_config({json.dumps(tiny(train={"epochs": 1, "alignment_every": 4}))})
        record = train(cfg, {str(tmp_path / "run")!r}, log=None)
        assert record.alignment, "the probe did not run"
        rows = run_compare(cfg, ["bp", "fa"], {str(tmp_path / "cmp")!r}, log=lambda s: None)
        assert [r.status for r in rows] == ["completed", "completed"]
        print(json.dumps(sorted(m for m in sys.modules
                                if m.startswith(("falign.plots", "falign.analysis", "matplotlib"))
                                and m not in ("falign.analysis", "falign.analysis.alignment"))))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **ONE_THREAD})
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.splitlines()[-1]) == []
    assert not (tmp_path / "cmp" / "val_acc.png").exists()


def test_falign_compare_writes_its_figure(data_root, tmp_path, capsys):
    from falign.cli.main import main

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config()))
    out = tmp_path / "cmp"
    assert main(["compare", "--config", str(cfg), "--rules", "bp,fa", "--out", str(out)]) == 0
    assert (out / "val_acc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "val_acc.pdf").read_bytes()[:5] == b"%PDF-"
    assert f"figure: {out / 'val_acc.png'}" in capsys.readouterr().out
    assert "![validation accuracy](val_acc.png)" in (out / "summary.md").read_text()
