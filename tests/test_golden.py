"""Golden fixtures: a small run and every analysis on it, made by an earlier commit
(tests/golden/make_golden.py), reproduced to the last bit.  A refactor changes no number: if
one of these fails, the change computes something else (regenerate the fixtures only when that
is the point of the change, and say so in its commit)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import mnist_or_skip

HERE = Path(__file__).resolve().parent / "golden"
pytestmark = pytest.mark.usefixtures("one_thread")


def _maker():
    spec = importlib.util.spec_from_file_location("make_golden", HERE / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _data(monkeypatch):
    monkeypatch.setenv("FALIGN_DATA", str(mnist_or_skip()))


def _same(a, b, what: str) -> None:
    if isinstance(a, torch.Tensor) and a.is_floating_point() and a.numel() == 1 and math.isnan(float(a)):
        assert math.isnan(float(b)), what
        return
    assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, what
    assert torch.equal(a.nan_to_num(), b.nan_to_num()) and torch.equal(a.isnan(), b.isnan()), what


def test_the_golden_run_retrains_bit_for_bit(tmp_path: Path) -> None:
    """Its config trained again: the same record (losses, accuracies, alignment probes) and the
    same epoch-1 and best weights and feedback."""
    maker = _maker()
    record = maker.train_run(tmp_path / "run")
    old = json.loads((HERE / "run" / "tracking.json").read_text())
    new = json.loads((tmp_path / "run" / "tracking.json").read_text())
    for e_old, e_new in zip(old["epochs"], new["epochs"], strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "train_errors"):
            assert e_old.get(key) == e_new.get(key), key
    assert old["alignment"] == new["alignment"] and old["test_acc"] == new["test_acc"] == record.test_acc
    for name in ("epoch_001.pt", "best.pt"):
        a = torch.load(HERE / "run" / name, weights_only=True)["model"]
        b = torch.load(tmp_path / "run" / name, weights_only=True)["model"]
        assert set(a) <= set(b)
        for key in a:
            _same(a[key], b[key], f"{name}: {key}")


def test_every_analysis_on_the_golden_run_is_unchanged() -> None:
    """Alignment and sign concordance, CKA in each form, Grad-CAM importance and maps,
    channel rankings, exemplars, the averaged DFA loops' updates: bit for bit."""
    want = torch.load(HERE / "values.pt", weights_only=True)
    got = _maker().compute_values(HERE / "run")
    assert sorted(got) == sorted(want)
    for key in want:
        _same(want[key], got[key], key)
