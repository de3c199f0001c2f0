"""Hyper-parameter search on Optuna: grid (a paper's grid exactly) or TPE, short-budget trials,
then full training of the best configuration on several seeds (mean and standard deviation).

Each rule is tuned on its own study.  Storage is a journal file in the sweep directory by
default (for several worker processes on one machine); a database URL (``postgresql://...``)
lets workers on several machines share one study (``sqlite:///...``: one process, see below).
A trial whose loss becomes NaN or infinite is recorded as diverged (pruned) and the sweep goes
on.

Several processes, one study::

    falign sweep CFG --worker --out DIR [--storage URL]     # as many as wanted, anywhere
    falign sweep CFG --resume --out DIR [--storage URL]     # one: also trains the best, writes sweep.json

Every process runs the same loop: fail the trials of dead workers, take a trial from Optuna's
queue (or, TPE only, ask a new one while the budget lasts), train it, repeat; when nothing is
left to take it waits until no trial is running anywhere (so it can take over the trials of a
worker that dies), then a worker exits and the other process does the final runs.  Alone, that
process is the whole sweep.

Grid: the process that creates the study queues every grid point (``Study.enqueue_trial``)
and then marks the study (user attr ``grid_points``); the others wait for the mark, and nobody
ever asks the sampler for a point.  Taking a queued trial is atomic in a journal file and in a
server database (one process wins the WAITING -> RUNNING change), so each point runs exactly
once.  A sampler cannot promise this: ``GridSampler`` gives a point that is still running to a
second worker once the unvisited points run out.  Nor can SQLite: there two processes can both
take one trial and both train it, so several processes want a journal file or, across
machines, PostgreSQL (``postgresql://``; the ``sweep`` extra brings its drivers).  Should a
point be queued twice all the same (a creator killed while filling the queue, so a later
process fills in the missing points and may race another), the copy with the higher trial
number is pruned untrained (user attr ``duplicate_of``): every copy exists with its parameters
from its creation on, so all processes agree which one is first.

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
import itertools
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import FalignError
from ..rules import parse_rule
from .config import (
    ConfigError,
    ExperimentConfig,
    SearchSpace,
    SweepConfig,
    parse_config,
    set_values,
)
from .loop import RunDirError, train
from .record import write_json
from .results import format_table

#: seconds between two heartbeats of a running trial
HEARTBEAT_S = 10.0
#: a RUNNING trial whose heartbeat has not changed for this many beats belongs to a dead worker
STALE_BEATS = 6
#: a trial whose workers keep dying is queued again at most this many times
MAX_RETRIES = 3


class SweepError(FalignError, ValueError):
    """An invalid sweep specification or storage; one-line message."""


def _grid(params: dict[str, Any], where: str) -> dict[str, list[Any]]:
    for key, values in params.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: grid parameter '{key}' needs a non-empty list of values")
    return params


def _storage(out: Path, url: str | None):
    import optuna

    if url:
        return _database(url)
    from optuna.storages.journal import JournalFileBackend

    out.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(out / "optuna-journal.log")))


def _database(url: str, attempts: int = 5):
    """An RDB storage; workers started together on a new database race to create its tables
    (PostgreSQL reports the loser's ``CREATE TABLE`` as an integrity or a programming error)."""
    import optuna
    import sqlalchemy.exc

    race = (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError,
            sqlalchemy.exc.ProgrammingError)
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except race as err:
            if attempt == attempts - 1:
                raise SweepError(f"storage {url}: {str(err).splitlines()[0]}") from None
            time.sleep(0.2 * (attempt + 1))
        except sqlalchemy.exc.ArgumentError as err:
            raise SweepError(f"storage {url}: {err}") from None
        except ImportError as err:  # Optuna's "Failed to import DB access module"
            driver = err.__cause__ or err
            raise SweepError(f"storage {url}: no database driver for this URL ({driver}); "
                             "pip install 'falign[sweep]' brings the PostgreSQL drivers") from None


def _delete_study(name: str, url: str) -> None:
    import optuna

    try:
        optuna.delete_study(study_name=name, storage=url)
    except KeyError:  # not in the database
        pass


def _trial_config(base: ExperimentConfig, overrides: dict[str, Any], epochs: int, name: str,
                  seed: int | None = None) -> ExperimentConfig:
    data = base.to_dict()
    data.pop("sweep", None)
    data = set_values(data, overrides, where=f"sweep trial {name}")
    data["train"]["epochs"] = epochs
    data["name"] = name
    data["compare"] = []
    if seed is None:  # a short search trial: no per-epoch checkpoints, no alignment probes
        data["train"]["checkpoint_every_epoch"] = False
        data["train"]["alignment_every"] = 0
    if seed is not None:
        data["seed"] = seed
    return parse_config(data, where=f"sweep trial {name}")


def _check_keys(base: ExperimentConfig, params: dict[str, Any], where: str) -> None:
    for key in params:
        try:
            _trial_config(base, {key: params[key][0] if isinstance(params[key], list) else
                                 params[key].get("low")}, 1, "check")
        except ConfigError as err:
            raise SweepError(f"{where}: sweep parameter '{key}': {err}") from None


def run_study(base: ExperimentConfig, spec: SweepConfig, params: dict[str, Any], out: Path, *,
              storage: str | None, study_name: str, worker: bool = False,
              n_trials: int | None = None, heartbeat: float = HEARTBEAT_S, log=print) -> Any:
    """Run (or join, or resume) one study until no trial is waiting or running; returns it.

    ``n_trials``: a worker runs at most that many trials (TPE: new ones beyond the budget);
    otherwise it replaces ``spec.n_trials`` as the budget of a TPE study.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _check_keys(base, params, study_name)
    points = None
    if spec.sampler == "grid":
        grid = _grid(params, study_name)
        points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
        sampler = optuna.samplers.RandomSampler(seed=base.seed)  # never asked: every point is queued
    else:
        # Workers draw their own seeds: with one seed, two workers asking at once propose the same.
        sampler = optuna.samplers.TPESampler(seed=None if worker else base.seed)
    store = _storage(out, storage)
    study = _open_study(study_name, store, sampler, points, wait=STALE_BEATS * heartbeat, log=log)
    budget = n_trials if n_trials is not None and not worker else spec.n_trials

    def may_ask(trials) -> bool:
        if points is not None:
            return False
        if worker and n_trials is not None:
            return True
        return sum(t.state != optuna.trial.TrialState.FAIL for t in trials) < budget

    def objective(trial) -> float:
        chosen = {}
        for key, space in params.items():
            if isinstance(space, list):
                chosen[key] = trial.suggest_categorical(key, space)
            elif isinstance(space.get("low"), int) and isinstance(space.get("high"), int):
                chosen[key] = trial.suggest_int(key, space["low"], space["high"],
                                                log=bool(space.get("log")))
            else:
                chosen[key] = trial.suggest_float(key, float(space["low"]), float(space["high"]),
                                                  log=bool(space.get("log")))
        # A retry trains in the directory of the trial it replaces.
        label = f"{study_name}-{trial.user_attrs.get('retry_of', trial.number):03d}"
        run_dir = out / "trials" / label
        cfg = _trial_config(base, chosen, spec.trial_epochs, label)
        log(f"[{study_name}] trial {trial.number}: {chosen}")
        record = train(cfg, run_dir, overwrite=True, log=None)
        try:
            trial.set_user_attr("run_dir", str(run_dir))
            trial.set_user_attr("status", record.status)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # taken for a dead worker's and failed meanwhile: its retry records the result
        if record.status == "diverged" or record.best_val_acc is None:
            log(f"[{study_name}] trial {trial.number}: diverged")
            raise optuna.TrialPruned("diverged: loss became NaN or infinite")
        log(f"[{study_name}] trial {trial.number}: best val acc {100 * record.best_val_acc:.2f}%")
        return record.best_val_acc

    _work(study, store, objective, grid=points is not None, may_ask=may_ask,
          limit=n_trials if worker else None, heartbeat=heartbeat, log=log)
    return study


# -- the shared study: queue, heartbeats, dead workers -----------------------------------------

def _open_study(name: str, storage, sampler, points: list[dict[str, Any]] | None, *,
                wait: float, log) -> Any:
    """Create the study (and queue the grid) or load it (and wait for the grid to be queued)."""
    import optuna

    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                    direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    else:
        if points is not None:
            for p in points:
                study.enqueue_trial(p)
            study.set_user_attr("grid_points", _grid_id(points))
        return study
    if points is None:
        return study
    deadline = time.monotonic() + wait
    while (mark := study.user_attrs.get("grid_points")) != _grid_id(points):
        # No mark: the creator is still queueing, or died doing it, or the study predates the
        # queue.  Another mark: the grid changed since the study was made.
        if mark is not None or time.monotonic() > deadline:
            missing = [p for p in points
                       if _key(p) not in {_key(_params(t)) for t in study.get_trials(deepcopy=False)}]
            for p in missing:
                study.enqueue_trial(p)
            study.set_user_attr("grid_points", _grid_id(points))
            log(f"[{name}] queued {len(missing)} grid points missing from the study")
            break
        time.sleep(0.2)
    return study


def _work(study, storage, objective: Callable[[Any], float], *, grid: bool,
          may_ask: Callable[[list], bool], limit: int | None, heartbeat: float, log) -> None:
    """Take queued (or new) trials and run them until none is waiting or running anywhere.

    ``storage``: the one ``study`` was created or loaded with.
    """
    import optuna

    running = (optuna.trial.TrialState.RUNNING,)
    watch = _Watch(STALE_BEATS * heartbeat)
    done = 0
    while limit is None or done < limit:
        trials = study.get_trials(deepcopy=False)
        for t in watch.stale(trials):
            _fail_and_queue_again(study, t, f"no heartbeat for {watch.grace:g} s, worker dead", log)
        trial = _take(study, storage)
        if trial is None and may_ask(trials):
            trial = study.ask()
        if trial is None:
            if not study.get_trials(deepcopy=False, states=running):
                return
            time.sleep(min(heartbeat, 1.0))  # other workers' trials are running: watch them
            continue
        if grid and (first := _first_copy(study, trial.number)) is not None:
            trial.set_user_attr("duplicate_of", first)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            log(f"[{study.study_name}] trial {trial.number}: duplicate of trial {first}, skipped")
            continue
        _run_trial(study, trial, objective, heartbeat, log)
        done += 1


# The two places that lean on how Optuna works inside, each known to work with Optuna 4.3.0,
# 4.9.0 and 5.0.0 (tests/test_sweep_workers.py tests both directly).  Before 4.3 a finished
# trial raised RuntimeError, not UpdateFinishedTrialError, here and elsewhere in this module.

def _take(study, storage) -> Any:
    """A queued trial, now RUNNING in this process; None when the queue is empty.

    ``Study.ask()`` does this first but then makes a new trial from the sampler, which for a
    grid would be a point that is done or taken.  Only documented calls: the storage's own
    WAITING -> RUNNING change (of two processes taking one trial, one gets it, the other is
    told False or that the trial is finished; not so on SQLite, see the module docstring),
    then the ``Trial`` that ``ask()`` builds around the taken id (documented, its direct use
    "not recommended").
    """
    import optuna

    state = optuna.trial.TrialState
    waiting = study.get_trials(deepcopy=False, states=(state.WAITING,))
    if not waiting:
        return None
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in waiting:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            if storage.set_trial_state_values(trial_id, state=state.RUNNING):
                return optuna.trial.Trial(study, trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # finished by another process since it was read
    return None


def _params(t) -> dict[str, Any]:
    """A trial's parameters; a queued one has them only as the queue's fixed parameters, which
    ``Study.enqueue_trial`` keeps in the (undocumented) system attr ``fixed_params``."""
    return t.params or t.system_attrs.get("fixed_params", {})


def _run_trial(study, trial, objective: Callable[[Any], float], heartbeat: float, log) -> None:
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
        _fail_and_queue_again(study, _frozen(study, trial.number), "stopped", log)
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


def _fail_and_queue_again(study, t, why: str, log) -> None:
    """Fail a RUNNING trial and queue its parameters again; of several processes doing this
    at once, one succeeds and queues."""
    import optuna

    try:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
        return  # finished meanwhile, or failed by another process
    retries = t.user_attrs.get("retries", 0) + 1
    if retries > MAX_RETRIES:
        log(f"[{study.study_name}] trial {t.number}: {why}; failed, not queued again "
            f"after {MAX_RETRIES} retries")
        return
    study.enqueue_trial(_params(t), user_attrs={"retry_of": t.user_attrs.get("retry_of", t.number),
                                                "retries": retries})
    log(f"[{study.study_name}] trial {t.number}: {why}; failed and queued again")


def _first_copy(study, number: int) -> int | None:
    """The lowest-numbered other live trial of the same grid point as trial ``number``, if any."""
    import optuna

    state = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    mine = _key(_params(next(t for t in trials if t.number == number)))
    for t in trials:
        live = t.state in (state.WAITING, state.RUNNING, state.COMPLETE) or (
            t.state == state.PRUNED and "duplicate_of" not in t.user_attrs)
        if t.number < number and live and _key(_params(t)) == mine:
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


def final_runs(base: ExperimentConfig, params: dict[str, Any], spec: SweepConfig, out: Path,
               label: str, log=print, overwrite: bool = False) -> dict[str, Any]:
    epochs = spec.final_epochs or base.train.epochs
    results = []
    for seed in spec.final_seeds:
        cfg = _trial_config(base, params, epochs, f"{label}-final-s{seed}", seed=seed)
        run_dir = out / "final" / f"{label}-seed{seed}"
        log(f"[{label}] final training, seed {seed}, {epochs} epochs: {params}")
        record = train(cfg, run_dir, resume=not overwrite, overwrite=overwrite, log=log)
        results.append({"seed": seed, "best_val_acc": record.best_val_acc,
                        "test_acc": record.test_acc, "best_epoch": record.best_epoch,
                        "status": record.status, "run_dir": str(run_dir)})
    tests = [r["test_acc"] for r in results if r["test_acc"] is not None]
    return {
        "params": params, "runs": results,
        "test_acc_mean": statistics.fmean(tests) if tests else None,
        "test_acc_std": statistics.stdev(tests) if len(tests) > 1 else 0.0 if tests else None,
    }


def search_spaces(base: ExperimentConfig, spec: SweepConfig) -> dict[str, tuple[ExperimentConfig, dict]]:
    """rule label -> (base config for that rule, its parameters)."""
    if not spec.rules:
        return {base.rule.name: (base, spec.params)}
    out = {}
    for label, space in spec.rules.items():
        space = space if isinstance(space, SearchSpace) else SearchSpace.model_validate(space)
        spec_name = space.rule or label
        cls, variant = parse_rule(spec_name)  # a name, a variant or a user's import path
        name = spec_name if ":" in spec_name and not variant else cls.name
        opts = dict(space.rule_options)
        if name == base.rule.name:  # the config's own rule keeps the config's rule options
            opts = {**base.rule.options, **opts}
        opts.update(variant)
        cfg = base.model_copy(deep=True)
        cfg.rule = cfg.rule.model_validate({"name": name, "options": opts})
        out[label] = (cfg, {**spec.params, **space.params})
    return out


def run_sweep(base: ExperimentConfig, spec: SweepConfig, out: str | Path, *,
              storage: str | None = None, worker: bool = False, resume: bool = False,
              overwrite: bool = False, n_trials: int | None = None, final: bool = True,
              heartbeat: float = HEARTBEAT_S, log=print) -> dict[str, Any]:
    """Run the sweep in ``out``, or (``worker``) only its trials; see the module docstring."""
    out = Path(out)
    fresh = overwrite and not resume and not worker
    marker = out / "sweep.json"
    if marker.exists() and not (resume or overwrite or worker):
        raise RunDirError(f"{out}: holds another sweep (use --resume to continue it, --worker "
                          "to join it, or --overwrite to replace it)")
    if fresh:
        import shutil

        (out / "optuna-journal.log").unlink(missing_ok=True)
        for sub in ("trials", "final"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"name": base.name, "sampler": spec.sampler, "rules": {}}
    for label, (cfg, params) in search_spaces(base, spec).items():
        study_name = f"{base.name}-{label.replace(':', '-')}"
        if fresh and storage:
            _delete_study(study_name, storage)
        study = run_study(cfg, spec, params, out, storage=storage, study_name=study_name,
                          worker=worker, n_trials=n_trials, heartbeat=heartbeat, log=log)
        trials = [{"number": t.number, "params": t.params, "value": t.value, "state": t.state.name,
                   "status": t.user_attrs.get("status")} for t in study.get_trials(deepcopy=False)]
        entry: dict[str, Any] = {"trials": trials, "best_params": best_params(study)}
        if final and not worker and entry["best_params"] is not None:
            entry["final"] = final_runs(cfg, entry["best_params"], spec, out,
                                        label.replace(":", "-"), log=log,
                                        overwrite=overwrite and not resume)
        summary["rules"][label] = entry
    if not worker:
        write_json(marker, summary)
        log(format_sweep(summary))
    return summary


def format_sweep(summary: dict[str, Any]) -> str:
    """One row per rule: its trials, best parameters and final test accuracy (mean ± std)."""
    cells = []
    for label, entry in summary["rules"].items():
        fin = entry.get("final") or {}
        mean, std = fin.get("test_acc_mean"), fin.get("test_acc_std")
        acc = "-" if mean is None else f"{100 * mean:.2f} ± {100 * (std or 0):.2f}"
        params = ", ".join(f"{k}={v}" for k, v in (entry["best_params"] or {}).items())
        cells.append([label, str(len(entry["trials"])), params or "-", acc])
    return format_table(["rule", "trials", "best params", "test % (mean ± std)"], cells)


def grid_size(params: dict[str, list[Any]]) -> int:
    return len(list(itertools.product(*params.values())))
