"""Several ``falign sweep --worker`` processes on one Optuna storage: every grid point is trained
exactly once, a worker killed mid-trial leaves a study the next worker repairs, and one run
without ``--worker`` finishes the sweep without training a trial again."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from conftest import DATA, ONE_THREAD, tiny_config  # noqa: E402

from falign.training.study_queue import (  # noqa: E402
    MAX_RETRIES,
    _enqueue,
    _grid_id,
    _params,
    _take,
    open_study,
    sweep_trials,
    work,
)

GRID = {"optim.lr": [0.02, 0.1], "rule.options.scale": [0.5, 2.0]}
STATE = optuna.trial.TrialState


def write_config(path: Path, grid: dict, trial_epochs: int = 1) -> Path:
    path.write_text(yaml.safe_dump(tiny_config(
        name="sw", data={"subset": 300, "val_size": 100}, model={"options": {"sizes": [784, 8, 10]}},
        train={"batch_size": 100},
        sweep={"sampler": "grid", "params": grid, "trial_epochs": trial_epochs,
               "final_epochs": 1, "final_seeds": [0]},
    )))
    return path


def sweep(cfg: Path, out: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, **ONE_THREAD, "FALIGN_DATA": str(DATA), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "falign", "sweep", str(cfg), "--out", str(out),
                             *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    try:
        text, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        text, _ = proc.communicate()
        pytest.fail(f"sweep process still running after {timeout} s:\n{text}")
    assert proc.returncode == 0, text
    return text


def storage_of(out: Path, url: str | None):
    if url:
        return url
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(out / "optuna-journal.log")))


def load_trials(out: Path, url: str | None) -> list:
    """The sweep's trials: all but those ``ask()`` made when another worker took the queue's last
    trial first (failed untrained)."""
    return sweep_trials(optuna.load_study(study_name="sw-fa", storage=storage_of(out, url)))


def point(params: dict, grid: dict) -> tuple:
    return tuple(params[k] for k in grid)


def trained(log: str) -> list[int]:
    """Numbers of the trials a process started training, from its log lines."""
    return [int(n) for n in re.findall(r"\[sw-fa\] trial (\d+): \{", log)]


@pytest.mark.parametrize("db", [False, True], ids=["journal-file", "sqlite-url"])
def test_two_workers_train_every_grid_point_once(data_root, tmp_path, db):
    cfg = write_config(tmp_path / "sw.yaml", GRID)
    out = tmp_path / "sw"
    url = f"sqlite:///{tmp_path / 'study.db'}" if db else None
    where = ["--storage", url] if db else []
    logs = [finish(p) for p in [sweep(cfg, out, "--worker", *where) for _ in range(2)]]

    trials = load_trials(out, url)
    assert [t.state for t in trials] == [STATE.COMPLETE] * 4
    assert sorted(point(t.params, GRID) for t in trials) == sorted(itertools.product(*GRID.values()))
    ran = trained(logs[0]) + trained(logs[1])  # no process trained a trial another one trained
    assert sorted(ran) == [t.number for t in trials]
    dirs = sorted(p.name for p in (out / "trials").iterdir())
    assert dirs == [f"sw-fa-{t.number:03d}" for t in trials]
    for t in trials:  # each directory holds the run of its own trial
        tracking = json.loads((out / "trials" / f"sw-fa-{t.number:03d}" / "tracking.json").read_text())
        assert tracking["config"]["optim"]["lr"] == t.params["optim.lr"]
        assert tracking["best_val_acc"] == t.value
    assert not (out / "sweep.json").exists() and not (out / "final").exists()  # workers: trials only

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("trials/*/tracking.json")}
    log = finish(sweep(cfg, out, "--resume", *where))
    assert trained(log) == []
    assert {p: p.stat().st_mtime_ns for p in out.glob("trials/*/tracking.json")} == stamps
    assert [(t.number, t.state, t.value) for t in load_trials(out, url)] == \
        [(t.number, t.state, t.value) for t in trials]
    summary = json.loads((out / "sweep.json").read_text())
    entry = summary["rules"]["fa"]
    best = max(trials, key=lambda t: (t.value, -t.number))
    assert entry["best_params"] == best.params
    assert [t["number"] for t in entry["trials"]] == [0, 1, 2, 3]
    (run,) = entry["final"]["runs"]
    final = json.loads((Path(run["run_dir"]) / "tracking.json").read_text())
    assert final["status"] == "completed" and final["config"]["optim"]["lr"] == best.params["optim.lr"]
    assert run["test_acc"] == final["test_acc"] is not None


def test_a_worker_killed_mid_trial_leaves_a_study_the_next_worker_repairs(data_root, tmp_path):
    grid = {"optim.lr": [0.02, 0.1]}
    cfg = write_config(tmp_path / "sw.yaml", grid, trial_epochs=3)
    out = tmp_path / "sw"
    victim = sweep(cfg, out, "--worker")
    deadline = time.monotonic() + 120
    running = None
    while running is None:  # a trial whose heartbeat has begun: the worker is inside it
        assert victim.poll() is None and time.monotonic() < deadline, "no trial was seen running"
        time.sleep(0.05)
        if (out / "optuna-journal.log").exists():
            try:
                trials = load_trials(out, None)
            except KeyError:  # the study is not created yet
                continue
            running = next((t for t in trials if t.state == STATE.RUNNING
                            and "heartbeat" in t.user_attrs), None)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    (left,) = [t for t in load_trials(out, None) if t.state == STATE.RUNNING]
    assert left.number == running.number

    log = finish(sweep(cfg, out, "--worker", "--heartbeat", "0.5"))
    assert "worker dead" in log
    trials = load_trials(out, None)
    assert trials[left.number].state == STATE.FAIL
    done = [t for t in trials if t.state == STATE.COMPLETE]
    assert sorted(point(t.params, grid) for t in done) == sorted(itertools.product(*grid.values()))
    assert all(t.state in (STATE.COMPLETE, STATE.FAIL) for t in trials)
    (retry,) = [t for t in done if t.user_attrs.get("retry_of") == left.number]
    assert retry.params == _params(left)  # killed before or after its suggest_* calls
    # The retry trained in the killed trial's directory: one directory per grid point.
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["sw-fa-000", "sw-fa-001"]
    assert retry.user_attrs["run_dir"] == str(out / "trials" / f"sw-fa-{left.number:03d}")
    tracking = json.loads((Path(retry.user_attrs["run_dir"]) / "tracking.json").read_text())
    assert tracking["status"] == "completed" and tracking["best_val_acc"] == retry.value


# -- the queue rules in one process, without training ------------------------------------------

def quiet(_: str) -> None:
    pass


def journal_study(tmp_path: Path):
    """A new study in a journal file, as the queue makes it (TPE: none queued), and its storage."""
    storage = storage_of(tmp_path, None)
    return open_study("q", storage, None, None, wait=0, log=quiet), storage


def fake_objective(calls: list):
    def objective(trial) -> float:
        x = trial.suggest_categorical("x", [1, 2, 3])
        calls.append((trial.number, x))
        return float(x)

    return objective


def test_a_grid_point_queued_twice_is_trained_once(tmp_path):
    study, storage = journal_study(tmp_path)
    for x in (1, 2, 1, 3, 2):
        _enqueue(study, {"x": x})
    calls: list = []
    work(study, fake_objective(calls), grid=True, may_ask=lambda trials: False, limit=None,
         heartbeat=0.05, log=quiet)
    assert calls == [(0, 1), (1, 2), (3, 3)]
    trials = study.get_trials()
    assert [t.state for t in trials] == [STATE.COMPLETE] * 2 + [STATE.PRUNED, STATE.COMPLETE,
                                                                STATE.PRUNED]
    assert [t.user_attrs.get("duplicate_of") for t in trials] == [None, None, 0, None, 1]


def test_a_silent_running_trial_is_failed_and_queued_again_a_beating_one_is_waited_for(tmp_path):
    study, storage = journal_study(tmp_path)
    _enqueue(study, {"x": 1})
    _enqueue(study, {"x": 2})
    dead = study.ask()  # taken by a worker that died: it never beats
    dead.suggest_categorical("x", [1, 2, 3])
    alive = study.ask()  # taken by a worker that beats for 1.5 s, then finishes
    alive.suggest_categorical("x", [1, 2, 3])

    def other_worker() -> None:
        stop = time.monotonic() + 1.5
        while time.monotonic() < stop:
            alive.set_user_attr("heartbeat", time.time())
            time.sleep(0.02)
        study.tell(alive, 0.5)

    thread = threading.Thread(target=other_worker)
    thread.start()
    calls: list = []
    start = time.monotonic()
    work(study, fake_objective(calls), grid=True, may_ask=lambda trials: False, limit=None,
         heartbeat=0.2, log=quiet)  # dead after 6 silent beats: 1.2 s
    assert time.monotonic() - start >= 1.4  # it waited for the beating trial to finish
    thread.join()
    trials = study.get_trials()
    assert [t.state for t in trials] == [STATE.FAIL, STATE.COMPLETE, STATE.COMPLETE]
    assert trials[1].value == 0.5
    assert trials[2].params == {"x": 1} and calls == [(2, 1)]
    assert trials[2].user_attrs["retry_of"] == 0 and trials[2].user_attrs["retries"] == 1


def test_a_trial_whose_workers_keep_dying_is_not_queued_forever(tmp_path):
    study, storage = journal_study(tmp_path)
    _enqueue(study, {"x": 1}, retry_of=0, retries=MAX_RETRIES)
    study.ask()  # taken, never beats
    calls: list = []
    work(study, fake_objective(calls), grid=True, may_ask=lambda trials: False, limit=None,
         heartbeat=0.05, log=quiet)
    assert calls == [] and [t.state for t in study.get_trials()] == [STATE.FAIL]


def test_a_stopped_worker_hands_its_trial_back(tmp_path):
    study, storage = journal_study(tmp_path)
    _enqueue(study, {"x": 3})

    def interrupted(trial) -> float:
        trial.suggest_categorical("x", [1, 2, 3])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        work(study, interrupted, grid=True, may_ask=lambda trials: False, limit=None,
             heartbeat=0.05, log=quiet)
    trials = study.get_trials()
    assert [t.state for t in trials] == [STATE.FAIL, STATE.WAITING]
    assert trials[1].user_attrs["queued"] == {"x": 3} and trials[1].user_attrs["retry_of"] == 0
    assert _params(trials[1]) == {"x": 3}


# -- taking a queued trial with Study.ask() --------------------------------------------------

def take_race(make_storage: Callable[[], Any], takers: int = 4, queued: int = 24) -> None:
    """``takers`` threads, each on its own storage as a process would be, take queued trials until
    none is left: every trial is taken exactly once, and runs with the point it was queued with."""
    storage = make_storage()
    study = open_study("take", storage, None, None, wait=0, log=quiet)
    for x in range(queued):
        _enqueue(study, {"x": x})
    assert [_params(t) for t in study.get_trials()] == [{"x": x} for x in range(queued)]  # queued
    taken: list[list[tuple[int, int]]] = [[] for _ in range(takers)]
    errors: list[BaseException] = []

    def taker(i: int) -> None:
        try:
            own = make_storage()
            mine = optuna.load_study(study_name="take", storage=own)
            while (trial := _take(mine, quiet)) is not None:
                taken[i].append((trial.number, trial.suggest_int("x", 0, queued)))
        except BaseException as err:  # failed in the test's own thread below
            errors.append(err)

    threads = [threading.Thread(target=taker, args=(i,)) for i in range(takers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(itertools.chain(*taken)) == [(x, x) for x in range(queued)]
    # A taker that saw a queued trial and lost it, and every other one, to the others: ask() made
    # it a new trial, failed untrained.
    extra = [t for t in study.get_trials() if "queue_empty" in t.user_attrs]
    assert all(t.state == STATE.FAIL and t.params == {} for t in extra)
    trials = sweep_trials(study)
    assert [t.state for t in trials] == [STATE.RUNNING] * queued
    assert [t.params for t in trials] == [{"x": x} for x in range(queued)]  # suggested
    assert _take(study, quiet) is None


def test_take_gives_each_queued_trial_to_exactly_one_taker(tmp_path):
    take_race(lambda: storage_of(tmp_path, None))


@pytest.mark.xfail(strict=True, reason="SQLite: Optuna reads WAITING, then writes RUNNING, and "
                   "SQLAlchemy's pysqlite starts the write transaction only at the write, so two "
                   "takers can both win one trial")
def test_take_on_sqlite_is_not_atomic(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    take_race(lambda: optuna.storages.RDBStorage(url))  # an engine each, like processes


def test_take_passes_over_trials_other_processes_took_or_finished_since_it_read_the_queue(
        tmp_path, monkeypatch):
    study, storage = journal_study(tmp_path)
    for x in (1, 2, 3):
        _enqueue(study, {"x": x})
    queue = study.get_trials(states=(STATE.WAITING,))  # this process reads the queue, then ...
    other = optuna.load_study(study_name="q", storage=storage_of(tmp_path, None))
    other.tell(other.ask(), 1.0)  # ... another takes trial 0 and finishes it
    other.ask()  # ... and takes trial 1
    monkeypatch.setattr(study, "get_trials", lambda **_: queue)
    trial = _take(study, quiet)
    assert trial.number == 2 and trial.suggest_categorical("x", [1, 2, 3]) == 3
    monkeypatch.undo()
    assert [t.state for t in study.get_trials()] == [STATE.COMPLETE, STATE.RUNNING, STATE.RUNNING]
    assert _take(study, quiet) is None  # all three taken


def test_a_trial_ask_makes_when_others_took_the_last_queued_one_is_failed_untrained(
        tmp_path, monkeypatch):
    study, storage = journal_study(tmp_path)
    for x in (1, 2):
        _enqueue(study, {"x": x})
    queue = study.get_trials(states=(STATE.WAITING,))  # this process reads the queue, then ...
    other = optuna.load_study(study_name="q", storage=storage_of(tmp_path, None))
    other.ask(), other.ask()  # ... another takes both trials
    monkeypatch.setattr(study, "get_trials", lambda **_: queue)
    assert _take(study, quiet) is None  # ask() made trial 2 from the sampler
    monkeypatch.undo()
    trials = study.get_trials()
    assert [t.state for t in trials] == [STATE.RUNNING, STATE.RUNNING, STATE.FAIL]
    assert trials[2].params == {} and trials[2].user_attrs == {"queue_empty": True}
    assert [t.number for t in sweep_trials(study)] == [0, 1]  # left out of the sweep's record


def test_a_grid_trial_without_a_point_left_running_is_failed_not_queued_again(tmp_path):
    study, _ = journal_study(tmp_path)
    study.ask()  # made by ask() on a dry queue, its process killed before it failed the trial
    calls: list = []
    work(study, fake_objective(calls), grid=True, may_ask=lambda trials: False, limit=None,
         heartbeat=0.05, log=quiet)
    assert calls == [] and [t.state for t in study.get_trials()] == [STATE.FAIL]


def test_a_study_an_earlier_falign_made_still_resumes(tmp_path):
    """Queue form 1: points queued with ``enqueue_trial(point)`` alone, the study marked only with
    ``grid_points``; a trial done, one taken by a worker that died before its suggest call, one
    waiting.  Resumed with a grid grown by one point, each point is trained once, with its own x."""
    storage = storage_of(tmp_path, None)
    old = optuna.create_study(study_name="q", storage=storage, direction="maximize")
    for x in (1, 2, 3):
        old.enqueue_trial({"x": x})
    old.set_user_attr("grid_points", _grid_id([{"x": x} for x in (1, 2, 3)]))
    done = old.ask()
    old.tell(done, float(done.suggest_categorical("x", [1, 2, 3, 4])))
    old.ask()  # trial 1 (x=2): its worker died at once

    lines: list[str] = []
    study = open_study("q", storage, None, [{"x": x} for x in (1, 2, 3, 4)], wait=0,
                       log=lines.append)
    assert lines == ["[q] queued 1 grid points missing from the study"]  # x=4, trial 3
    calls: list = []

    def objective(trial) -> float:
        x = trial.suggest_categorical("x", [1, 2, 3, 4])
        calls.append((trial.number, x))
        return float(x)

    work(study, objective, grid=True, may_ask=lambda trials: False, limit=None, heartbeat=0.05,
         log=lines.append)
    assert calls == [(2, 3), (3, 4), (4, 2)]  # trial 4: trial 1's point, read from the old form
    trials = study.get_trials()
    assert [t.state for t in trials] == [STATE.COMPLETE, STATE.FAIL] + [STATE.COMPLETE] * 3
    assert trials[4].user_attrs["retry_of"] == 1 and trials[4].user_attrs["queued"] == {"x": 2}
    assert "queue_form" not in study.user_attrs  # its old trials keep the old form
