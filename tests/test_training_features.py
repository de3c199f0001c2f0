"""Training-loop features against what they promise: the last epoch kept, thread counts recorded
and reused, mid-epoch checkpoints that resume bit-identically after SIGKILL, language models
(one label a position), and the experiment trackers read back by their own readers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import DATA, ONE_THREAD, tiny_config

from falign.training import RunRecord, parse_config, train
from falign.training.loop import default_threads

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**sections):
    return parse_config(tiny_config(**sections))


def test_select_on_last_keeps_and_tests_the_last_epoch(data_root, tmp_path) -> None:
    record = train(tiny(train={"epochs": 3, "select_on": "last"}), tmp_path / "r", log=None)
    assert record.best_epoch == 3 and record.selected_on == "last"
    best = torch.load(tmp_path / "r" / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert best["epoch"] == 3
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    assert record.test_loss is not None and record.test_loss > 0


def test_threads_are_recorded_and_a_resume_reuses_them(data_root, tmp_path) -> None:
    assert 1 <= default_threads() <= 8
    cfg = tiny(train={"epochs": 2})
    train(cfg, tmp_path / "r", log=None, stop_after=1, threads=1)
    assert RunRecord.read(tmp_path / "r" / "tracking.json").environment["threads"] == 1
    before = torch.get_num_threads()
    record = train(cfg, tmp_path / "r", log=None, resume=True)  # no threads given: the run's own
    assert record.environment["threads"] == 1
    assert torch.get_num_threads() == before  # restored after the run


def _run(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, **ONE_THREAD, "FALIGN_DATA": str(DATA)}
    return subprocess.Popen([sys.executable, "-m", "falign", "train", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


#: direct Kolen-Pollack with B's own optimizer and schedule (optim.feedback), SGD-Nesterov for W
DKP_OPTIM = {"momentum": 0.9, "nesterov": True,
             "feedback": {"name": "adam", "lr": 0.02, "weight_decay": 1e-3,
                          "schedule": {"name": "exponential", "gamma": 0.8}}}


@pytest.mark.parametrize(("rule", "optim"), [("brsf", {"momentum": 0.9}), ("kp", {"momentum": 0.9}),
                                             ("dkp", DKP_OPTIM)])
def test_a_kill_between_mid_epoch_checkpoints_resumes_bit_identically(data_root, tmp_path, rule,
                                                                      optim) -> None:
    cfg = tiny_config(rule={"name": rule}, optim=optim,
                      data={"subset": 2000, "val_size": 200},
                      train={"epochs": 2, "batch_size": 20, "checkpoint_steps": 7})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    whole = _run([str(path), "--out", str(tmp_path / "whole")])
    assert whole.wait(timeout=300) == 0, whole.stderr.read()
    victim = _run([str(path), "--out", str(tmp_path / "cut")])
    last = tmp_path / "cut" / "last.pt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill once a mid-epoch checkpoint of epoch 2 exists
        try:
            ckpt = torch.load(last, weights_only=True)
            if ckpt.get("partial", {}).get("epoch") == 2 and ckpt["partial"]["batches"] >= 14:
                break
        except Exception:  # not written yet, or being replaced
            pass
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert "partial" in torch.load(last, weights_only=True), "killed after the run finished"
    resumed = _run([str(path), "--out", str(tmp_path / "cut"), "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert ("feedback_scheduler" in a) == ("feedback" in optim)  # B's own schedule is saved
    assert a.get("feedback_scheduler") == b.get("feedback_scheduler")
    ta = json.loads((tmp_path / "whole" / "tracking.json").read_text())
    tb = json.loads((tmp_path / "cut" / "tracking.json").read_text())
    strip = lambda t: [{k: v for k, v in e.items() if k != "seconds"} for e in t["epochs"]]  # noqa: E731
    assert strip(ta) == strip(tb) and ta["test_acc"] == tb["test_acc"]


def _records(run) -> int:
    try:
        return len(json.loads((run / "tracking.json").read_text())["epochs"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_comparison_records_interrupted_and_the_report_lists_what_finished(data_root, tmp_path,
                                                                                     sig) -> None:
    epochs = 60  # long enough that a starved test process still signals a comparison under way
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(train={"epochs": epochs})))
    out = tmp_path / "cmp"
    compare = [sys.executable, "-m", "falign", "compare", "--config", str(path), "--rules", "bp,fa",
               "--out", str(out)]
    env = {**os.environ, **ONE_THREAD, "FALIGN_DATA": str(DATA)}
    victim = subprocess.Popen(compare, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _records(out / "bp") < 1 and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert victim.poll() is None, "the comparison ended before it could be signalled"
        victim.send_signal(sig)  # Ctrl-C, or a scheduler's or `kill`'s SIGTERM
        _, err = victim.communicate(timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert victim.returncode == 128 + sig, err  # the shell's convention for a death by that signal
    assert err.splitlines() == [err.strip()] and "interrupted" in err and "Traceback" not in err, err
    bp = RunRecord.read(out / "bp" / "tracking.json")
    assert 1 <= len(bp.epochs) < epochs, "the signal came after bp had finished"
    assert bp.status == "interrupted" and not bp.finished and bp.test_acc is None, bp.status
    assert torch.load(out / "bp" / "last.pt", weights_only=True)["epoch"] == len(bp.epochs)
    assert not (out / "fa").exists()
    assert json.loads((out / "compare.json").read_text())["status"] == "interrupted"

    report = subprocess.run([sys.executable, "-m", "falign", "report", str(out), "--out",
                             str(tmp_path / "report")], env=env, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    results = (tmp_path / "report" / "results.txt").read_text()
    assert next(line for line in results.splitlines() if line.startswith("bp ")).split()[-1] == "interrupted"
    notes = results.split("Notes:")[1]
    assert "fa" in notes and "--resume" in notes, results

    resumed = subprocess.run([*compare, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr  # the interrupted run is continued, not read back
    for rule in ("bp", "fa"):
        record = RunRecord.read(out / rule / "tracking.json")
        assert record.status == "completed" and len(record.epochs) == epochs


def test_a_character_language_model_trains_on_positions(tmp_path) -> None:
    text = "".join("the quick brown fox jumps over the lazy dog. " for _ in range(80))
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    cfg = parse_config({
        "name": "lm", "device": "cpu",
        "data": {"name": "text", "root": str(tmp_path), "options": {"path": "corpus.txt", "seq_len": 16}},
        "model": {"name": "char_transformer", "options": {"dim": 16, "depth": 1, "heads": 2}},
        "rule": {"name": "dfa", "options": {"output": "ln_f"}},
        "optim": {"name": "adam", "lr": 3e-3},
        "train": {"epochs": 2, "batch_size": 16},
    })
    record = train(cfg, tmp_path / "run", log=None)
    assert record.status == "completed" and record.test_loss is not None
    assert record.epochs[-1].train_loss < record.epochs[0].train_loss
    first = record.epochs[0]
    n_train = (int(len(text) * 0.9) - 1) // 16  # windows
    assert first.train_errors + round(first.train_acc * n_train * 16) == n_train * 16  # counted per position


def test_tensorboard_scalars_are_read_back_by_tensorboards_own_reader(data_root, tmp_path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny(train={"epochs": 2, "loggers": ["tensorboard"], "log_every": 3, "alignment_every": 4})
    record = train(cfg, tmp_path / "r", log=None)
    acc = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "lr", "train/step_loss"} <= tags
    assert any(t.startswith("alignment/") for t in tags)
    losses = [e.value for e in acc.Scalars("train/loss")]
    assert losses == pytest.approx([e.train_loss for e in record.epochs], rel=1e-6)


def test_wandb_offline_and_mlflow_file_store(data_root, tmp_path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    record = train(tiny(train={"epochs": 1, "loggers": ["wandb", "mlflow"]}), tmp_path / "r", log=None)
    assert list((tmp_path / "r" / "wandb").glob("offline-run-*")), "no offline W&B run written"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tmp_path / "r" / "mlruns").resolve().as_uri())
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert len(runs) == 1
    assert runs[0].data.metrics["train.loss"] == pytest.approx(record.epochs[0].train_loss, rel=1e-6)
    assert runs[0].data.params["optim.lr"] == "0.05"


def test_jsonl_step_losses_survive_a_resume_unchanged(data_root, tmp_path) -> None:
    from falign.training.loggers import read_steps

    cfg = tiny(train={"epochs": 3, "loggers": ["jsonl"], "log_every": 2})
    train(cfg, tmp_path / "whole", log=None)
    whole = read_steps(tmp_path / "whole")
    steps_per_epoch = len(whole) * 2 // 3
    assert [e["step"] for e in whole] == list(range(2, 3 * steps_per_epoch + 1, 2))
    train(cfg, tmp_path / "cut", log=None, stop_after=1)
    with (tmp_path / "cut" / "steps.jsonl").open("a") as f:  # what a kill after epoch 1 leaves
        f.write('{"step": 99999, "loss": 1.0}\n{"step": 1000')
    train(cfg, tmp_path / "cut", log=None, resume=True)
    assert read_steps(tmp_path / "cut") == whole


def test_a_run_records_the_commit_that_trained_it_and_the_summary_carries_it(data_root, tmp_path) -> None:
    from pathlib import Path

    from falign.reproduce.base import method_summary

    src = Path(__file__).resolve().parents[1] / "src"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("falign is not run from a git checkout here")
    record = train(tiny(), tmp_path / "r", log=None)
    assert record.environment["git"]["commit"] == head.stdout.strip()
    summary = method_summary("fa", [tmp_path / "r"], tmp_path, part=None, published=None)
    assert summary.runs[0].trained_by == record.environment["git"]


def test_the_progress_bar_shows_the_running_loss(data_root, tmp_path, capsys) -> None:
    record = train(tiny(train={"epochs": 1, "batch_size": 20}), tmp_path / "r", log=None, progress=True)
    err = capsys.readouterr().err
    shown = [float(v) for v in re.findall(r"loss=([0-9.]+)", err)]
    assert shown, err[-500:]
    # the last value shown is the running mean of the epoch's losses so far: near the epoch's mean
    assert abs(shown[-1] - record.epochs[0].train_loss) < 0.5 * record.epochs[0].train_loss
