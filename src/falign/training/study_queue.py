"""The work queue several processes share one Optuna study through: take a queued trial, train
it with a heartbeat, fail and queue again the trials of dead workers, prune a grid point's copy.

Several processes, one study::

    falign sweep CFG --worker --out DIR [--storage URL]     # as many as wanted, anywhere
    falign sweep CFG --resume --out DIR [--storage URL]     # one: also trains the best, writes sweep.json

Every process runs the same loop: fail the trials of dead workers, take a trial from Optuna's
queue (or, TPE only, ask a new one while the budget lasts), train it, repeat; when nothing is
left to take it waits until no trial is running anywhere (so it can take over the trials of a
worker that dies), then a worker exits and the other process does the final runs.  Alone, that
process is the whole sweep.

Only Optuna's public API: a trial is queued with ``Study.enqueue_trial(point, user_attrs=...)``
and carries its point in the user attr ``queued``; it is taken with ``Study.ask()`` and read
through ``user_attrs`` and ``params``.  A study that an earlier falign made (no study user attr
``queue_form``) has trials queued without that attr; for those alone the point is read where
Optuna keeps it inside (see ``_params``), so such a study still resumes.

Grid: the process that creates the study queues every grid point and then marks the study
(user attr ``grid_points``); the others wait for the mark, and nobody ever trains a point the
sampler made.  Taking a queued trial is atomic in a journal file and in a server database (one
process wins the WAITING -> RUNNING change), so each point runs exactly once.  A sampler cannot
promise this: ``GridSampler`` gives a point that is still running to a second worker once the
unvisited points run out.  Nor can SQLite: there two processes can both take one trial and
both train it, so several processes want a journal file or, across machines, PostgreSQL
(``postgresql://``; the ``sweep`` extra brings its drivers).  ``ask()`` makes a new trial from
the sampler when other processes took the last queued trials since this one saw them; that
trial is failed untrained (user attr ``queue_empty``) and left out of the sweep's record
(``sweep_trials``).  Should a point be queued twice all the same (a creator killed while
filling the queue, so a later process fills in the missing points and may race another), the
copy with the higher trial number is pruned untrained (user attr ``duplicate_of``): every copy
exists with its parameters from its creation on, so all processes agree which one is first.

Dead workers: a running trial records a heartbeat (user attr ``heartbeat``, from a thread,
every ``heartbeat`` seconds).  A process that watches a RUNNING trial's heartbeat stay
unchanged for ``STALE_BEATS`` beats of its own clock fails that trial and queues its
parameters again (user attrs ``retry_of``, ``retries``; at most ``MAX_RETRIES`` times); the
retry trains in the dead trial's run directory, overwriting it.  Only a change is watched, so
the clocks of several machines need not agree.  Optuna's own heartbeat
(``RDBStorage(heartbeat_interval=...)``) is not used: journal storages do not have it and it
works only inside ``Study.optimize``, which would ask the sampler for a new trial when the
queue runs dry.  A worker stopped by Ctrl-C fails its trial and queues it again itself.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["HEARTBEAT_S", "MAX_RETRIES", "STALE_BEATS", "best_params", "open_study", "sweep_trials",
           "work"]

#: seconds between two heartbeats of a running trial
HEARTBEAT_S = 10.0
#: a RUNNING trial whose heartbeat has not changed for this many beats belongs to a dead worker
STALE_BEATS = 6
#: a trial whose workers keep dying is queued again at most this many times
MAX_RETRIES = 3
#: the form of the queue a study is marked with (study user attr ``queue_form``) when it is
#: created; a study without it is of form 1, made by an earlier falign, whose queued trials
#: lack the user attr ``queued``
QUEUE_FORM = 2


def open_study(name: str, storage, sampler, points: list[dict[str, Any]] | None, *,
                wait: float, log) -> Any:
    """Create the study (and queue the grid) or load it (and wait for the grid to be queued)."""
    import optuna

    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                    direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    else:
        study.set_user_attr("queue_form", QUEUE_FORM)
        if points is not None:
            for p in points:
                _enqueue(study, p)
            study.set_user_attr("grid_points", _grid_id(points))
        return study
    if points is None:
        return study
    deadline = time.monotonic() + wait
    while (mark := study.user_attrs.get("grid_points")) != _grid_id(points):
        # No mark: the creator is still queueing, or died doing it, or the study predates the
        # queue.  Another mark: the grid changed since the study was made.
        if mark is not None or time.monotonic() > deadline:
            old = _old_form(study)
            there = {_key(_params(t, old)) for t in study.get_trials(deepcopy=False)}
            missing = [p for p in points if _key(p) not in there]
            for p in missing:
                _enqueue(study, p)
            study.set_user_attr("grid_points", _grid_id(points))
            log(f"[{name}] queued {len(missing)} grid points missing from the study")
            break
        time.sleep(0.2)
    return study


def work(study, objective: Callable[[Any], float], *, grid: bool,
         may_ask: Callable[[list], bool], limit: int | None, heartbeat: float, log) -> None:
    """Take queued (or new) trials and run them until none is waiting or running anywhere."""
    import optuna

    running = (optuna.trial.TrialState.RUNNING,)
    watch = _Watch(STALE_BEATS * heartbeat)
    old = _old_form(study)
    done = 0
    while limit is None or done < limit:
        trials = study.get_trials(deepcopy=False)
        for t in watch.stale(trials):
            _fail_and_queue_again(study, t, f"no heartbeat for {watch.grace:g} s, worker dead", log,
                                  grid=grid, old=old)
        trial = _take(study, log)
        if trial is None and may_ask(trials):
            trial = study.ask()
        if trial is None:
            if not study.get_trials(deepcopy=False, states=running):
                return
            time.sleep(min(heartbeat, 1.0))  # other workers' trials are running: watch them
            continue
        if grid and (first := _first_copy(study, trial.number, old)) is not None:
            trial.set_user_attr("duplicate_of", first)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            log(f"[{study.study_name}] trial {trial.number}: duplicate of trial {first}, skipped")
            continue
        _run_trial(study, trial, objective, heartbeat, log, grid=grid, old=old)
        done += 1


# Optuna >= 4.3: before, a finished trial raised RuntimeError, not UpdateFinishedTrialError, here
# and elsewhere in this module.

def _take(study, log) -> Any:
    """A queued trial, now RUNNING in this process; None when the queue is empty.

    ``Study.ask()`` takes the first WAITING trial it wins (of two processes taking one trial,
    one gets it; not so on SQLite, see the module docstring) and makes a new trial from the
    sampler when it wins none.  So it is asked only while the queue holds a trial, and a new
    trial it makes because other processes took the last ones first is failed untrained: for a
    grid, its point would be one that is done or taken.
    """
    import optuna

    state = optuna.trial.TrialState
    waiting = {t.number for t in study.get_trials(deepcopy=False, states=(state.WAITING,))}
    if not waiting:
        return None
    trial = study.ask()
    if trial.number in waiting or "queued" in trial.user_attrs:  # the latter queued since read
        return trial
    trial.set_user_attr("queue_empty", True)
    study.tell(trial, state=state.FAIL)
    log(f"[{study.study_name}] trial {trial.number}: made by the sampler, the queue's last trial "
        "having been taken by another process; failed untrained")
    return None


def _enqueue(study, point: dict[str, Any], **attrs: Any) -> None:
    study.enqueue_trial(point, user_attrs={"queued": point, **attrs})


def _old_form(study) -> bool:
    """Whether an earlier falign made ``study``, queueing trials without the ``queued`` attr.

    A process that loads a new study before its creator marked it takes it for old, at no
    cost: every trial queued since carries ``queued``, which ``_params`` reads first.
    """
    return "queue_form" not in study.user_attrs


def _params(t, old: bool = False) -> dict[str, Any]:
    """A trial's parameters: the point it was queued with, else those it suggested."""
    if params := t.user_attrs.get("queued") or t.params:
        return params
    if old:
        # Fallback for studies of queue form 1 only: an earlier falign queued a point with
        # ``enqueue_trial(point)`` alone, so until the trial suggests it, the point is only where
        # Optuna keeps it inside, the undocumented system attr ``fixed_params``.
        return t.system_attrs.get("fixed_params", {})
    return {}


def _run_trial(study, trial, objective: Callable[[Any], float], heartbeat: float, log, *,
               grid: bool, old: bool) -> None:
    import optuna

    stop = threading.Event()
    beat = threading.Thread(target=_beat, args=(trial, heartbeat, stop), daemon=True)
    beat.start()
    try:
        try:
            value = objective(trial)
        finally:
            stop.set()
            beat.join()
    except optuna.TrialPruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED, skip_if_finished=True)
    except (KeyboardInterrupt, SystemExit):
        _fail_and_queue_again(study, _frozen(study, trial.number), "stopped", log, grid=grid,
                              old=old)
        raise
    except Exception:
        study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        raise
    else:
        # skip_if_finished: a process that took this worker for dead failed the trial and
        # queued it again; the retry's result is the one recorded.
        if study.tell(trial, value, skip_if_finished=True).state == optuna.trial.TrialState.FAIL:
            log(f"[{study.study_name}] trial {trial.number}: was taken for a dead worker's and "
                "queued again; this result is not recorded")


def _beat(trial, every: float, stop: threading.Event) -> None:
    import optuna

    while True:
        try:
            trial.set_user_attr("heartbeat", time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # failed by a process that took this worker for dead
        except Exception:  # a busy database: the next beat will do
            pass
        if stop.wait(every):
            return


class _Watch:
    """RUNNING trials whose heartbeat has not changed for ``grace`` seconds of this clock."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.seen: dict[int, tuple[Any, float]] = {}  # trial number -> (heartbeat, first seen)

    def stale(self, trials: list) -> list:
        import optuna

        now, seen, out = time.monotonic(), {}, []
        for t in trials:
            if t.state != optuna.trial.TrialState.RUNNING:
                continue
            beat = t.user_attrs.get("heartbeat")
            last = self.seen.get(t.number)
            seen[t.number] = last if last is not None and last[0] == beat else (beat, now)
            if now - seen[t.number][1] > self.grace:
                out.append(t)
        self.seen = seen
        return out


def _fail_and_queue_again(study, t, why: str, log, *, grid: bool, old: bool) -> None:
    """Fail a RUNNING trial and queue its parameters again; of several processes doing this
    at once, one succeeds and queues.  A grid's trial without a point (one ``ask()`` made
    when the queue ran dry, its process killed before it failed it) is only failed."""
    import optuna

    try:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
        return  # finished meanwhile, or failed by another process
    point = _params(t, old)
    if grid and not point:
        log(f"[{study.study_name}] trial {t.number}: {why}; failed, no grid point to queue again")
        return
    retries = t.user_attrs.get("retries", 0) + 1
    if retries > MAX_RETRIES:
        log(f"[{study.study_name}] trial {t.number}: {why}; failed, not queued again "
            f"after {MAX_RETRIES} retries")
        return
    _enqueue(study, point, retry_of=t.user_attrs.get("retry_of", t.number), retries=retries)
    log(f"[{study.study_name}] trial {t.number}: {why}; failed and queued again")


def _first_copy(study, number: int, old: bool) -> int | None:
    """The lowest-numbered other live trial of the same grid point as trial ``number``, if any."""
    import optuna

    state = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    mine = _key(_params(next(t for t in trials if t.number == number), old))
    for t in trials:
        live = t.state in (state.WAITING, state.RUNNING, state.COMPLETE) or (
            t.state == state.PRUNED and "duplicate_of" not in t.user_attrs)
        if t.number < number and live and _key(_params(t, old)) == mine:
            return t.number
    return None


def _frozen(study, number: int) -> Any:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def _grid_id(points: list[dict[str, Any]]) -> str:
    return hashlib.sha1(_key({"points": points}).encode()).hexdigest()[:16]


def best_params(study) -> dict[str, Any] | None:
    import optuna

    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    if not done:
        return None
    return max(done, key=lambda t: (t.value, -t.number)).params


def sweep_trials(study) -> list:
    """The study's trials, less those ``ask()`` made when the queue ran dry (failed untrained)."""
    return [t for t in study.get_trials(deepcopy=False) if "queue_empty" not in t.user_attrs]
