"""The ``falign`` command run as a user runs it: a subprocess, exit codes, stderr, files on disk.

Every bad input must end with exit code 2, exactly one stderr line ``falign: error: ...``, no
traceback, and the files already in the output directory untouched, byte for byte.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ONE_THREAD, tiny_config

from falign.training import parse_config, train

RULES = {"bp", "fa", "usf", "frsf", "brsf", "usf_norm", "sign_tracking", "kp", "dfa"}
VOLATILE = ("seconds",)
pytestmark = pytest.mark.usefixtures("one_thread")


def falign(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "falign", *args], capture_output=True, text=True,
                          env={**os.environ, **ONE_THREAD, **(env or {})}, cwd=cwd, timeout=timeout)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ bad inputs

def _write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _garbage_ckpt(data: bytes):
    def prepare(run: Path) -> None:
        (run / "last.pt").write_bytes(data)
    return prepare


def _truncated_ckpt(run: Path) -> None:
    raw = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(raw[: len(raw) // 2])


def _foreign_ckpt(run: Path) -> None:
    torch.save({"model": {"w": torch.zeros(3)}, "epoch": 3}, run / "last.pt")


# name -> (config: dict | str | bytes, extra args, env, prepare(run_dir), fragment of the message)
CASES = {
    "invalid_yaml": ("optim:\n  lr: 0.1\n  momentum: [0.9\ntrain: {epochs: 1}\n", ["--overwrite"],
                     {}, None, "line"),
    "unknown_key": (tiny_config(optim={"lrr": 0.1}), ["--overwrite"], {}, None,
                    "did you mean 'optim.lr'"),
    "unknown_rule": (tiny_config(rule={"name": "fq"}), ["--overwrite"], {}, None,
                     "did you mean 'fa'"),
    "unknown_model": (tiny_config(model={"name": "mlpp", "options": {}}), ["--overwrite"], {}, None,
                      "mlpp"),
    "unknown_dataset": (tiny_config(data={"name": "mnistt"}), ["--overwrite"], {}, None, "mnistt"),
    "missing_dataset_files": (tiny_config(), ["--overwrite"], {"FALIGN_DATA": "<empty>"}, None,
                              "train-images-idx3-ubyte"),
    "garbage_last_pt": (tiny_config(), ["--resume"], {},
                        _garbage_ckpt(random.Random(0).randbytes(4096)), "last.pt"),
    "foreign_checkpoint": (tiny_config(), ["--resume"], {}, _foreign_ckpt, "not a falign checkpoint"),
    "dir_holds_another_run": (tiny_config(), [], {}, None, "holds another run"),
}
# More bad inputs, run through ``falign.cli.main.main`` in this process (a subprocess costs a
# torch import each); same contract.
MORE_CASES = {
    "wrong_type": (tiny_config(train={"epochs": "ten"}), ["--overwrite"], None, "train.epochs"),
    "lr_not_positive": (tiny_config(optim={"lr": 0}), ["--overwrite"], None, "optim.lr"),
    "empty_last_pt": (tiny_config(), ["--resume"], _garbage_ckpt(b""), "last.pt"),
    "truncated_last_pt": (tiny_config(), ["--resume"], _truncated_ckpt, "last.pt"),
    "resume_other_config": (tiny_config(optim={"lr": 0.2}), ["--resume"], None, "different"),
    "missing_config": (None, ["--overwrite"], None, "not found"),
    "text_last_pt": (tiny_config(), ["--resume"], _garbage_ckpt(b"hello world\n"), "last.pt"),
    "text_last_pt_2": (tiny_config(), ["--resume"], _garbage_ckpt(b"this is not a checkpoint\n"),
                       "last.pt"),
    "binary_config": (b"\xff\xfe\x00\x80 not utf-8", ["--overwrite"], None, "config"),
    "list_yaml_with_set": ("- a\n- b\n", ["--overwrite", "--set", "optim.lr=0.1"], None, "mapping"),
    "dfa_loop_without_dfa": (tiny_config(train={"dfa_loop": "batch"}), ["--overwrite"], None, "dfa"),
    "unknown_device": (tiny_config(device="gpu"), ["--overwrite"], None, "device"),
}


def _write_config(path: Path, config) -> Path:
    if isinstance(config, dict):
        _write_yaml(path, config)
    elif isinstance(config, bytes):
        path.write_bytes(config)
    elif isinstance(config, str):
        path.write_text(config)
    return path


@pytest.fixture(scope="module")
def prior_run(data_root, tmp_path_factory) -> Path:
    """One finished run (plus a file of the user's own) that every bad-input case runs against."""
    prior = tmp_path_factory.mktemp("prior") / "run"
    train(parse_config(tiny_config()), prior, log=None)
    (prior / "notes.txt").write_text("the user's own notes\n")
    return prior


@pytest.fixture(scope="module")
def cli_results(prior_run, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, dict, dict]]:
    """Run every subprocess case once, a few at a time, each against a copy of ``prior_run``."""
    root = tmp_path_factory.mktemp("cli")
    empty = root / "empty-data"
    empty.mkdir()
    jobs = {}
    for name, (config, extra, env, prepare, _) in CASES.items():
        case_dir = root / name
        case_dir.mkdir()
        cfg_path = _write_config(case_dir / "config.yaml", config)
        run = case_dir / "run"
        shutil.copytree(prior_run, run)
        if prepare is not None:
            prepare(run)
        env = {k: (str(empty) if v == "<empty>" else v) for k, v in env.items()}
        jobs[name] = (["train", str(cfg_path), "--out", str(run), *extra], env, run, snapshot(run))

    def one(name):
        args, env, _, _ = jobs[name]
        return name, falign(*args, env=env)

    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        done = dict(pool.map(one, jobs))
    return {name: (done[name], jobs[name][3], snapshot(jobs[name][2])) for name in jobs}


def _check_error(rc: int, stderr: str, fragment: str, before: dict, after: dict) -> None:
    lines = stderr.splitlines()
    assert "Traceback" not in stderr, stderr
    assert rc == 2, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("falign: error: ")
    assert fragment in lines[0]
    assert after.keys() == before.keys()
    for name, content in before.items():
        assert after[name] == content, f"{name} was modified"


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line_and_touches_nothing(cli_results, case):
    proc, before, after = cli_results[case]
    _check_error(proc.returncode, proc.stderr, CASES[case][4], before, after)


@pytest.mark.parametrize("case", list(MORE_CASES))
def test_more_bad_inputs_in_process(prior_run, tmp_path, capsys, case):
    from falign.cli.main import main

    config, extra, prepare, fragment = MORE_CASES[case]
    cfg_path = _write_config(tmp_path / "config.yaml", config)
    run = tmp_path / "run"
    shutil.copytree(prior_run, run)
    if prepare is not None:
        prepare(run)
    before = snapshot(run)
    rc = main(["train", str(cfg_path), "--out", str(run), *extra])
    _check_error(rc, capsys.readouterr().err, fragment, before, snapshot(run))


def test_bad_input_cases_start_from_a_real_run(cli_results):
    # the copies the cases ran against hold a finished run, so "nothing overwritten" means something
    _, before, _ = cli_results["dir_holds_another_run"]
    assert {"tracking.json", "last.pt", "best.pt", "config.yaml", "notes.txt"} <= before.keys()
    assert json.loads(before["tracking.json"])["status"] == "completed"


def test_rules_lists_all_nine():
    proc = falign("rules")
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    assert sorted(names) == sorted(RULES)
    for line in proc.stdout.splitlines():
        assert len(line.split(None, 1)) == 2, f"rule without a description: {line!r}"


# ------------------------------------------------------------------------------ kill and resume

def _metrics(tracking: dict) -> dict:
    epochs = [{k: v for k, v in e.items() if k not in VOLATILE} for e in tracking["epochs"]]
    return {"epochs": epochs, **{k: tracking[k] for k in
                                 ("best_epoch", "best_val_acc", "test_acc", "status", "config")}}


def _epochs_done(run: Path) -> int:
    try:
        return len(json.loads((run / "tracking.json").read_text())["epochs"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def test_sigkill_mid_run_then_resume_matches_uninterrupted(data_root, tmp_path):
    epochs = 6
    cfg = _write_yaml(tmp_path / "cfg.yaml", tiny_config(data={"subset": 1000},
                                                         optim={"momentum": 0.9},
                                                         train={"epochs": epochs}))
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    cmd = [sys.executable, "-m", "falign", "train", str(cfg), "--out"]
    env = {**os.environ, **ONE_THREAD}
    reference = subprocess.Popen([*cmd, str(whole)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, env=env)
    victim = subprocess.Popen([*cmd, str(killed)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while _epochs_done(killed) < 1 and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL, "the run ended before it was killed"
        assert reference.wait(timeout=120) == 0
    finally:
        for p in (victim, reference):
            if p.poll() is None:
                p.kill()
                p.wait()
    saved = torch.load(killed / "last.pt", weights_only=True)
    assert 1 <= saved["epoch"] < epochs
    assert json.loads((killed / "tracking.json").read_text())["status"] == "running"

    proc = subprocess.run([*cmd, str(killed), "--resume"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr

    got = json.loads((killed / "tracking.json").read_text())
    want = json.loads((whole / "tracking.json").read_text())
    assert len(want["epochs"]) == epochs
    assert _metrics(got) == _metrics(want)
    a = torch.load(killed / "last.pt", weights_only=True)["model"]
    b = torch.load(whole / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
