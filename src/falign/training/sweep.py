"""Hyper-parameter search on Optuna: grid (a paper's grid exactly) or TPE, short-budget trials,
then full training of the best configuration on several seeds (mean and standard deviation).

Each rule is tuned on its own study.  Storage is a journal file in the sweep directory by
default (for several worker processes on one machine); a database URL (``postgresql://...``)
lets workers on several machines share one study (``sqlite:///...``: one process, see below).
A trial whose loss becomes NaN or infinite is recorded as diverged (pruned) and the sweep goes
on.

Several processes share one study through the work queue of :mod:`falign.training.study_queue`
(its docstring says how).
"""

from __future__ import annotations

import itertools
import statistics
import time
from pathlib import Path
from typing import Any

from ..errors import FalignError
from ..records import FinalRun, SweepFinal, SweepRecord, SweepRule, SweepTrial
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
from .results import format_table
from .study_queue import HEARTBEAT_S, STALE_BEATS, best_params, open_study, sweep_trials, work


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
    study = open_study(study_name, store, sampler, points, wait=STALE_BEATS * heartbeat, log=log)
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

    work(study, objective, grid=points is not None, may_ask=may_ask,
         limit=n_trials if worker else None, heartbeat=heartbeat, log=log)
    return study


def final_runs(base: ExperimentConfig, params: dict[str, Any], spec: SweepConfig, out: Path,
               label: str, log=print, overwrite: bool = False) -> SweepFinal:
    epochs = spec.final_epochs or base.train.epochs
    results: list[FinalRun] = []
    for seed in spec.final_seeds:
        cfg = _trial_config(base, params, epochs, f"{label}-final-s{seed}", seed=seed)
        run_dir = out / "final" / f"{label}-seed{seed}"
        log(f"[{label}] final training, seed {seed}, {epochs} epochs: {params}")
        record = train(cfg, run_dir, resume=not overwrite, overwrite=overwrite, log=log)
        results.append(FinalRun(seed=seed, best_val_acc=record.best_val_acc, test_acc=record.test_acc,
                                best_epoch=record.best_epoch, status=record.status, run_dir=str(run_dir)))
    tests = [r.test_acc for r in results if r.test_acc is not None]
    return SweepFinal(params=params, runs=tuple(results),
                      test_acc_mean=statistics.fmean(tests) if tests else None,
                      test_acc_std=statistics.stdev(tests) if len(tests) > 1 else 0.0 if tests else None)


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
    """Run the sweep in ``out``, or (``worker``) only its trials; see the module docstring.
    Returns the plain form of the :class:`~falign.records.SweepRecord` written to ``sweep.json``."""
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
    rules: dict[str, SweepRule] = {}
    for label, (cfg, params) in search_spaces(base, spec).items():
        study_name = f"{base.name}-{label.replace(':', '-')}"
        if fresh and storage:
            _delete_study(study_name, storage)
        study = run_study(cfg, spec, params, out, storage=storage, study_name=study_name,
                          worker=worker, n_trials=n_trials, heartbeat=heartbeat, log=log)
        trials = tuple(SweepTrial(number=t.number, params=t.params, value=t.value, state=t.state.name,
                                  status=t.user_attrs.get("status"))
                       for t in sweep_trials(study))
        best = best_params(study)
        fin = None
        if final and not worker and best is not None:
            fin = final_runs(cfg, best, spec, out, label.replace(":", "-"), log=log,
                             overwrite=overwrite and not resume)
        rules[label] = SweepRule(trials=trials, best_params=best, final=fin)
    summary = SweepRecord(name=base.name, sampler=spec.sampler, rules=rules)
    if not worker:
        summary.save(marker)
        log(format_sweep(summary))
    return summary.to_dict()


def format_sweep(summary: SweepRecord) -> str:
    """One row per rule: its trials, best parameters and final test accuracy (mean ± std)."""
    cells = []
    for label, entry in summary.rules.items():
        mean = entry.final.test_acc_mean if entry.final else None
        std = entry.final.test_acc_std if entry.final else None
        acc = "-" if mean is None else f"{100 * mean:.2f} ± {100 * (std or 0):.2f}"
        params = ", ".join(f"{k}={v}" for k, v in (entry.best_params or {}).items())
        cells.append([label, str(len(entry.trials)), params or "-", acc])
    return format_table(["rule", "trials", "best params", "test % (mean ± std)"], cells)


def grid_size(params: dict[str, list[Any]]) -> int:
    return len(list(itertools.product(*params.values())))
