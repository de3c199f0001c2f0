"""``python -m falign.reproduce.recheck``: a finished run's first epoch, retrained by today's
code, compared bit for bit with what the run recorded (and its epoch-1 weights)."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_config

from falign.reproduce.recheck import main
from falign.training import parse_config, train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_run_of_this_code_rechecks_the_same_and_a_changed_one_does_not(data_root, tmp_path, capsys):
    cfg = parse_config(tiny_config(rule={"name": "brsf"},
                                   train={"epochs": 2, "checkpoint_every_epoch": True}))
    train(cfg, tmp_path / "r", log=None, threads=1)
    assert main([str(tmp_path / "r"), "--out", str(tmp_path / "checks.json")]) == 0
    checks = json.loads((tmp_path / "checks.json").read_text())["checks"]
    assert checks[0]["same_first_epoch_record"] and checks[0]["same_epoch_1_weights"] is True
    # a run whose first epoch another code made: its record no longer matches
    tracking = json.loads((tmp_path / "r" / "tracking.json").read_text())
    tracking["epochs"][0]["train_loss"] += 1e-12
    (tmp_path / "r" / "tracking.json").write_text(json.dumps(tracking))
    assert main([str(tmp_path / "r")]) == 1
    assert "DIFFERENT" in capsys.readouterr().out
