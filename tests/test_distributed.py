"""Data-parallel training on CPU with gloo: 2 processes == 1 process on the same global batch.

Each case trains once in one process and once under ``torchrun --nproc_per_node 2`` and
compares the final weights (float32 sums in another order: a relative 1e-4 in norm; a wrong
average -- a sum where a mean belongs, shares weighted equally when they are not, per-process
batch statistics -- is off by O(1)) and the alignment probe's records.
"""

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

MLP = {"name": "mlp", "options": {"sizes": [784, 24, 16, 10], "activation": "tanh"}}
CASES = {
    # batch 41: every global batch splits 21 / 20, and the last one 7 / 6
    "fa-mean-uneven-shares": {"rule": {"name": "fa"}, "train": {"batch_size": 41}},
    "brsf": {"rule": {"name": "brsf"}},
    "kp-momentum-decay": {"rule": {"name": "kp"}, "optim": {"weight_decay": 0.01},
                          "train": {"batch_size": 41}},
    # the DFA report's setting: BCE summed over the batch (each step was halved under 2 processes)
    "dfa-summed-loss": {"rule": {"name": "dfa", "options": {"scale": 1.0}},
                        "train": {"loss": "bce", "loss_reduction": "sum"}, "optim": {"lr": 0.002}},
    "dfa-batch-averaged": {"rule": {"name": "dfa", "options": {"average": "batch", "scale": 1.0}},
                           "train": {"loss": "bce", "loss_reduction": "sum", "batch_size": 41},
                           "optim": {"lr": 0.05}},
    "dfa-class-averaged": {"rule": {"name": "dfa", "options": {"average": "class", "scale": 1.0}},
                           "train": {"loss": "bce", "loss_reduction": "sum"}, "optim": {"lr": 0.05}},
    # direct Kolen-Pollack with B stepped by an optimizer and schedule of its own (optim.feedback)
    "dkp-feedback-optimizer": {"rule": {"name": "dkp"},
                               "optim": {"nesterov": True, "weight_decay": 1e-4,
                                         "feedback": {"name": "adam", "lr": 0.002, "weight_decay": 1e-4,
                                                      "schedule": {"name": "exponential", "gamma": 0.8}}},
                               "train": {"batch_size": 41}},
    # batch norm: statistics over the global batch (falign's GlobalBatchNorm on gloo)
    "batchnorm-resnet": {"rule": {"name": "fa"}, "model": {"name": "resnet", "options": {"depth": 8}},
                         "train": {"batch_size": 41, "epochs": 1}},
}


def _config(tmp_path: Path, case: str) -> Path:
    cfg = {
        "name": f"ddp-{case}",
        "device": "cpu",
        "data": {"name": "mnist", "subset": 400, "val_size": 100},
        "model": MLP,
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "train": {"epochs": 2, "batch_size": 40, "alignment_every": 3},
    }
    for section, values in CASES[case].items():
        cfg[section] = {**cfg.get(section, {}), **values}
    path = tmp_path / f"{case}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **ONE_THREAD, "FALIGN_DATA": str(DATA)}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)


def _train(cfg: Path, out: Path, processes: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "falign", "train", str(cfg), "--out", str(out)]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(processes), *cmd[1:]]
    return _run(cmd)


#: float32 sums in another order through batch normalisation: the small BN biases (whose
#: gradients are sums of many cancelling terms) move by up to ~0.5% in norm; with per-process
#: statistics the same run is off by 10-25% (the exactness itself is shown in float64 below)
TOLERANCE = {"batchnorm-resnet": 2e-2}
#: the same float32 noise in the probe's angles (degrees) of the layers right before a BN
ANGLE_TOLERANCE = {"batchnorm-resnet": 2.0}


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_match_one(tmp_path: Path, case: str) -> None:
    cfg = _config(tmp_path, case)
    one = _train(cfg, tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _train(cfg, tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-2000:]
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    for key, value in a["model"].items():
        va, vb = value.double(), b["model"][key].double()
        err = torch.linalg.vector_norm(va - vb) / torch.linalg.vector_norm(va).clamp_min(1e-12)
        assert err <= TOLERANCE.get(case, 1e-4), (key, float(err))
    ta = json.loads((tmp_path / "one" / "tracking.json").read_text())
    tb = json.loads((tmp_path / "two" / "tracking.json").read_text())
    assert tb["status"] == "completed"
    assert [e["train_loss"] for e in tb["epochs"]] == pytest.approx([e["train_loss"] for e in ta["epochs"]],
                                                                     rel=TOLERANCE.get(case, 1e-4))
    # the probe measures the whole global batch in both
    assert ta["alignment"] and len(ta["alignment"]) == len(tb["alignment"])
    for ra, rb in zip(ta["alignment"], tb["alignment"], strict=True):
        assert ra["step"] == rb["step"]
        for layer, stats in ra["layers"].items():
            for name, value in stats.items():
                other = rb["layers"][layer][name]
                if value is None:
                    assert other is None, (ra["step"], layer, name)
                else:
                    assert other == pytest.approx(value, abs=ANGLE_TOLERANCE.get(case, 0.05)), (
                        ra["step"], layer, name)
    # only rank 0 wrote: one tracking file, no stray temp files
    assert not list((tmp_path / "two").glob(".*.tmp"))


def test_global_batchnorm_equals_one_process_in_float64() -> None:
    script = Path(__file__).parent / "helpers" / "ddp_batchnorm.py"
    run = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                str(script)])
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert max(report.values()) < 1e-12, report


def test_per_process_batchnorm_is_an_option_and_a_different_computation(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "batchnorm-resnet")
    data = yaml.safe_load(cfg.read_text())
    data["train"].update(sync_batchnorm=False, alignment_every=0)
    cfg.write_text(yaml.safe_dump(data))
    assert _train(cfg, tmp_path / "one", 1).returncode == 0
    two = _train(cfg, tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-2000:]
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["model"]
    errors = [float(torch.linalg.vector_norm(a[k].double() - b[k].double()) / torch.linalg.vector_norm(
        a[k].double())) for k in a if k.endswith(("running_mean", "bn1.bias"))]
    assert max(errors) > 5 * TOLERANCE["batchnorm-resnet"]


def test_a_last_batch_too_small_to_share_is_refused_in_one_line(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "fa-mean-uneven-shares")
    data = yaml.safe_load(cfg.read_text())
    data["train"]["batch_size"] = 133  # 400 training images: a last batch of 1
    cfg.write_text(yaml.safe_dump(data))
    two = _train(cfg, tmp_path / "two", 2)
    assert two.returncode != 0
    assert "too few to share among 2 processes" in two.stderr
    assert not (tmp_path / "two" / "tracking.json").exists()
