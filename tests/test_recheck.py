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


def test_an_older_checkpoint_is_compared_on_the_tensors_it_holds(data_root, tmp_path):
    """A checkpoint written before a bookkeeping buffer existed (a feedback layer's step
    counter) is compared on what it holds; a changed weight in it is a difference."""
    import torch

    cfg = parse_config(tiny_config(rule={"name": "fa"}, train={"epochs": 1, "checkpoint_every_epoch": True}))
    train(cfg, tmp_path / "r", log=None, threads=1)
    path = tmp_path / "r" / "epoch_001.pt"
    ckpt = torch.load(path, weights_only=True)
    dropped = sorted(k for k in ckpt["model"] if k.endswith("feedback_step"))
    assert dropped
    for k in dropped:
        del ckpt["model"][k]
    torch.save(ckpt, path)
    assert main([str(tmp_path / "r"), "--out", str(tmp_path / "c.json")]) == 0
    check = json.loads((tmp_path / "c.json").read_text())["checks"][0]
    assert check["same_epoch_1_weights"] is True and check["keys_only_today"] == dropped
    first = next(k for k in ckpt["model"] if k.endswith("weight"))
    ckpt["model"][first] = ckpt["model"][first] + 1e-7
    torch.save(ckpt, path)
    assert main([str(tmp_path / "r")]) == 1
