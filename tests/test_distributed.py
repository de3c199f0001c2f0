"""Data-parallel training on CPU with gloo: 2 processes == 1 process on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DATA, ONE_THREAD

pytestmark = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"MNIST not found in {DATA}")


def _config(tmp_path: Path, rule: str) -> Path:
    cfg = {
        "name": f"ddp-{rule}",
        "data": {"name": "mnist", "subset": 400, "val_size": 100},
        "model": {"name": "mlp", "options": {"sizes": [784, 24, 16, 10]}},
        "rule": {"name": rule},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "train": {"epochs": 2, "batch_size": 40},
    }
    path = tmp_path / f"{rule}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **ONE_THREAD, "FALIGN_DATA": str(DATA), **(env_extra or {})}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=240)


@pytest.mark.parametrize("rule", ["brsf", "dfa"])
def test_two_processes_match_one(tmp_path: Path, rule: str) -> None:
    cfg = _config(tmp_path, rule)
    one = _run([sys.executable, "-m", "falign", "train", str(cfg), "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "falign", "train", str(cfg), "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-2000:]
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    for key, value in a["model"].items():
        # float32 sums in another order over 2 epochs: equal to a relative 1e-4 in norm (a wrong
        # gradient average, e.g. a sum instead of a mean, is off by O(1))
        va, vb = value.double(), b["model"][key].double()
        err = torch.linalg.vector_norm(va - vb) / torch.linalg.vector_norm(va).clamp_min(1e-12)
        assert err <= 1e-4, (key, float(err))
    # the feedback matrices are identical on every rank without communication
    feedback = [k for k in a["model"] if k.endswith(".feedback")]
    assert feedback
    ta = json.loads((tmp_path / "one" / "tracking.json").read_text())
    tb = json.loads((tmp_path / "two" / "tracking.json").read_text())
    assert tb["status"] == "completed"
    accs = [e["train_acc"] for e in ta["epochs"]]
    assert [e["train_acc"] for e in tb["epochs"]] == pytest.approx(accs, abs=0.01)
    # only rank 0 wrote: one tracking file, no stray temp files
    assert not list((tmp_path / "two").glob(".*.tmp"))
