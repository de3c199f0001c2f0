"""The records package: every record reads the forms falign has committed and written, writes
them back byte for byte where nothing changed, and refuses a malformed or newer file in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from falign.errors import FalignError
from falign.records import (
    COMPARE_VERSION,
    SWEEP_VERSION,
    CompareRecord,
    RecheckRecord,
    RecordError,
    ReproductionSummary,
    RunRecord,
    SweepRecord,
)

ROOT = Path(__file__).resolve().parents[1]
SUMMARIES = sorted((ROOT / "results").glob("*.json"))
CHECKS = sorted((ROOT / "results" / "checks").glob("*.json"))


@pytest.mark.parametrize("path", SUMMARIES, ids=lambda p: p.name)
def test_a_committed_summary_reads_and_writes_back_byte_for_byte(path):
    summary = ReproductionSummary.load(path)
    assert summary.target == path.stem and summary.methods
    assert json.dumps(summary.to_dict(), indent=1) == path.read_text().rstrip("\n")


def test_a_summary_keeps_which_runs_did_not_record_their_commit():
    """Absent (summaries from before runs recorded it) and null (a run trained before 0.2) differ."""
    old = ReproductionSummary.load(ROOT / "results" / "linear-fa.json")
    assert all(not r.trained_by_recorded for m in old.methods for r in m.runs)
    assert all("trained_by" not in r for m in old.to_dict()["methods"] for r in m["runs"])


@pytest.mark.parametrize("path", CHECKS, ids=lambda p: p.name)
def test_a_committed_recheck_reads_and_writes_back_byte_for_byte(path):
    check = RecheckRecord.load(path)
    assert check.checks and check.commit
    assert json.dumps(check.to_dict(), indent=1) == path.read_text().rstrip("\n")
    if path.stem == "linear-fa":  # checked before the tensors only today's code keeps were listed
        assert all(c.keys_only_today is None for c in check.checks)


def test_a_committed_run_record_reads():
    path = next(iter(sorted((ROOT / "results" / "runs").rglob("tracking.json"))))
    record = RunRecord.read(path)
    assert record.to_dict() == json.loads(path.read_text())


def test_the_old_record_module_still_names_the_run_record():
    from falign.training import record

    assert record.RunRecord is RunRecord and record.RecordError is RecordError


COMPARE_V1 = {"rules": ["bp", "fa"], "seeds": [0, 1], "base": {"seed": 0}, "status": "completed",
              "runs": [{"rule": "bp", "seed": 0, "run_dir": "bp/seed0", "best_val_acc": 0.5,
                        "test_acc": 0.25, "epochs": 1, "best_epoch": 1, "sec_per_epoch": 2.0,
                        "status": "completed"},
                       {"rule": "fa", "seed": 1, "run_dir": "fa/seed1"}],
              "summary": [{"rule": "bp", "seeds": [0, 1], "n": 2, "test_acc_mean": 0.25,
                           "test_acc_std": 0.0, "best_val_acc_mean": 0.5, "best_val_acc_std": 0.0,
                           "status": "completed"}]}
COMPARE_ONE_SEED_V1 = {"rules": ["bp"], "base": {"seed": 0}, "status": "completed",
                       "rows": [{"rule": "bp", "best_val_acc": 0.5, "test_acc": 0.25, "epochs": 1,
                                 "best_epoch": 1, "sec_per_epoch": 2.0, "status": "completed"}]}


@pytest.mark.parametrize("old", [COMPARE_V1, COMPARE_ONE_SEED_V1, {"rules": ["bp"], "status": "interrupted"}])
def test_a_version_1_compare_json_reads_and_writes_as_version_2(old, tmp_path):
    (tmp_path / "compare.json").write_text(json.dumps(old))
    record = CompareRecord.load(tmp_path / "compare.json")
    assert record.to_dict() == {"schema_version": COMPARE_VERSION, **old,
                                **({} if "base" in old else {"base": None})}
    record.save(tmp_path / "again.json")
    assert CompareRecord.load(tmp_path / "again.json") == record


SWEEP_V1 = {"name": "sw", "sampler": "grid", "rules": {
    "fa": {"trials": [{"number": 0, "params": {"optim.lr": 0.01}, "value": 0.5, "state": "COMPLETE",
                       "status": "completed"},
                      {"number": 1, "params": {"optim.lr": 1.0}, "value": None, "state": "PRUNED",
                       "status": "diverged"}],
           "best_params": {"optim.lr": 0.01},
           "final": {"params": {"optim.lr": 0.01},
                     "runs": [{"seed": 0, "best_val_acc": 0.5, "test_acc": 0.25, "best_epoch": 1,
                               "status": "completed", "run_dir": "sw/final/fa-seed0"}],
                     "test_acc_mean": 0.25, "test_acc_std": 0.0}},
    "bp": {"trials": [], "best_params": None}}}


def test_a_version_1_sweep_json_reads_and_writes_as_version_2(tmp_path):
    (tmp_path / "sweep.json").write_text(json.dumps(SWEEP_V1))
    record = SweepRecord.load(tmp_path / "sweep.json")
    assert record.rules["fa"].final.runs[0].test_acc == 0.25 and record.rules["bp"].final is None
    assert record.to_dict() == {"schema_version": SWEEP_VERSION, **SWEEP_V1}
    record.save(tmp_path / "again.json")
    assert SweepRecord.load(tmp_path / "again.json") == record


def test_an_old_reproduce_json_reads_as_a_summary(tmp_path):
    (tmp_path / "reproduce.json").write_text(json.dumps(
        {"name": "linear-fa", "scale": "smoke", "status": "completed", "report": "r/index.html",
         "results": "results.json", "extra": [{"method": "fa"}]}))
    marker = ReproductionSummary.load_marker(tmp_path / "reproduce.json")
    assert (marker.target, marker.scale, marker.status, marker.report) == \
        ("linear-fa", "smoke", "completed", "r/index.html")
    assert marker.extra_rows == ({"method": "fa"},)


@pytest.mark.parametrize(("cls", "key"), [(CompareRecord, "schema_version"), (SweepRecord, "schema_version"),
                                          (ReproductionSummary, "schema"), (RunRecord, "schema_version"),
                                          (RecheckRecord, "schema_version")])
def test_a_newer_or_malformed_file_is_one_line_error(cls, key, tmp_path):
    load = cls.read if cls is RunRecord else cls.load
    path = tmp_path / "x.json"
    path.write_text(json.dumps({key: 99, "rules": {}}))
    with pytest.raises(RecordError, match=r"version 99 is newer than this falign reads") as err:
        load(path)
    assert isinstance(err.value, FalignError) and "\n" not in str(err.value) and str(path) in str(err.value)
    for bad in ("{not json", "[1, 2]"):
        path.write_text(bad)
        with pytest.raises(RecordError, match=str(path)):
            load(path)


def test_a_wrongly_typed_value_names_its_place(tmp_path):
    summary = json.loads(SUMMARIES[0].read_text())
    summary["methods"][0]["runs"][0]["test_acc"] = "high"
    with pytest.raises(RecordError, match=r"methods\[0\]: runs\[0\]: 'test_acc' is 'high', not a number"):
        ReproductionSummary.from_dict(summary)
