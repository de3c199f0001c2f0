"""The fast-path options of a training config (bf16/fp16 autocast, channels-last, torch.compile)
train on CPU and give the same kind of run; CUDA timings are taken on a GPU machine, not here."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DATA

from falign.training import parse_config, train
from falign.training.loop import FastPath


def _cfg(**train_options):
    return parse_config({
        "name": "fast", "device": "cpu",
        "data": {"name": "mnist", "subset": 300, "val_size": 100, "options": {"pad_to": 32}},
        "model": {"name": "lenet"},
        "rule": {"name": "fa"},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "train": {"epochs": 1, "batch_size": 50, **train_options},
    })


@pytest.fixture(autouse=True)
def _data(monkeypatch):
    if not (DATA / "mnist").is_dir():
        pytest.skip(f"MNIST not found in {DATA}")
    monkeypatch.setenv("FALIGN_DATA", str(DATA))


@pytest.mark.parametrize("options", [{"amp": "bf16"}, {"channels_last": True},
                                     {"amp": "bf16", "channels_last": True, "alignment_every": 2}])
def test_fast_path_trains(tmp_path, options):
    plain = train(_cfg(), tmp_path / "plain", log=None)
    fast = train(_cfg(**options), tmp_path / "fast", log=None)
    assert fast.status == "completed"
    assert math.isfinite(fast.epochs[0].train_loss)
    # same data, same seed: the loss differs only by rounding, not by a different computation
    assert fast.epochs[0].train_loss == pytest.approx(plain.epochs[0].train_loss, rel=0.05)
    if "alignment_every" in options:
        assert fast.alignment and all(
            0 <= rec.layers["conv2"]["update_angle"] <= 180 for rec in fast.alignment)


def test_channels_last_is_exact(tmp_path):
    a = train(_cfg(), tmp_path / "a", log=None)
    b = train(_cfg(channels_last=True), tmp_path / "b", log=None)
    assert b.epochs[0].train_loss == pytest.approx(a.epochs[0].train_loss, rel=1e-4)


def test_fp16_uses_a_grad_scaler():
    fast = FastPath(_cfg(amp="fp16"), torch.device("cpu"))
    assert fast.scaler is not None
    assert FastPath(_cfg(amp="bf16"), torch.device("cpu")).scaler is None


@pytest.mark.parametrize("rule", ["sdfa", "drtp"])
def test_fp16_training_moves_sign_dfa_and_drtp_as_float32_does(tmp_path, rule):
    """Under fp16 the loss is scaled (65536 at first) and every gradient unscaled before the
    step: the runner gives the rule the scale, so the hidden layers move as far as without
    autocast, not 65536 times less."""
    def hidden_move(amp):  # how far the first hidden layer's W moves over the second epoch
        cfg = _cfg(amp=amp)
        cfg.rule.name = rule
        cfg.model.name, cfg.data.options = "mlp", {}
        cfg.train.checkpoint_every_epoch, cfg.train.epochs = True, 2
        train(cfg, tmp_path / f"{rule}-{amp}", log=None)
        a, b = (torch.load(tmp_path / f"{rule}-{amp}" / f"epoch_00{i}.pt", weights_only=True)["model"]
                for i in (1, 2))
        key = next(k for k in a if k.endswith("weight"))
        return float((b[key] - a[key]).norm()) / float(a[key].norm())

    assert FastPath(_cfg(amp="fp16"), torch.device("cpu")).loss_scale() == 65536.0
    assert FastPath(_cfg(), torch.device("cpu")).loss_scale() == 1.0
    plain, fp16 = hidden_move("none"), hidden_move("fp16")
    # different roundings, different trajectories; unscaled twice, the move would be 1/65536
    assert 1e-3 < plain < 2 and 0.1 < fp16 / plain < 10


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    a = train(_cfg(), tmp_path / "a", log=None)
    b = train(_cfg(compile=True), tmp_path / "b", log=None)
    assert b.epochs[0].train_loss == pytest.approx(a.epochs[0].train_loss, rel=1e-4)
