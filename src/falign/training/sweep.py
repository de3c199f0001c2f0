"""Hyper-parameter search on Optuna: grid (a paper's grid exactly) or TPE, short-budget trials,
then full training of the best configuration on several seeds (mean and standard deviation).

Each rule is tuned on its own study.  Storage is a journal file in the sweep directory by
default (safe for several worker processes on one machine); a database URL
(``sqlite:///...``, ``postgresql://...``) lets workers on several machines share one study.
A trial whose loss becomes NaN or infinite is recorded as diverged (pruned) and the sweep
goes on.
"""

from __future__ import annotations

import itertools
import math
import statistics
from pathlib import Path
from typing import Any

from .config import (
    ConfigError,
    ExperimentConfig,
    SearchSpace,
    SweepConfig,
    parse_config,
    set_values,
)
from .loop import RunDirError, train, write_json


class SweepError(ValueError):
    """An invalid sweep specification or storage; one-line message."""


def _grid(params: dict[str, Any], where: str) -> dict[str, list[Any]]:
    for key, values in params.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: grid parameter '{key}' needs a non-empty list of values")
    return params


def _storage(out: Path, url: str | None):
    import optuna

    if url:
        return url
    from optuna.storages.journal import JournalFileBackend

    out.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(out / "optuna-journal.log")))


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
              n_trials: int | None = None, log=print) -> Any:
    """Run (or join, or resume) one study; returns it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _check_keys(base, params, study_name)
    if spec.sampler == "grid":
        grid = _grid(params, study_name)
        sampler = optuna.samplers.GridSampler(grid, seed=base.seed)
        total = math.prod(len(v) for v in grid.values())
    else:
        sampler = optuna.samplers.TPESampler(seed=base.seed)
        total = spec.n_trials
    study = optuna.create_study(study_name=study_name, storage=_storage(out, storage),
                                sampler=sampler, direction="maximize", load_if_exists=True)

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
        run_dir = out / "trials" / f"{study_name}-{trial.number:03d}"
        cfg = _trial_config(base, chosen, spec.trial_epochs, f"{study_name}-{trial.number:03d}")
        log(f"[{study_name}] trial {trial.number}: {chosen}")
        tracking = train(cfg, run_dir, overwrite=True, log=None)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("status", tracking["status"])
        if tracking["status"] == "diverged" or tracking["best_val_acc"] is None:
            log(f"[{study_name}] trial {trial.number}: diverged")
            raise optuna.TrialPruned("diverged: loss became NaN or infinite")
        log(f"[{study_name}] trial {trial.number}: best val acc "
            f"{100 * tracking['best_val_acc']:.2f}%")
        return tracking["best_val_acc"]

    def finished() -> int:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                  optuna.trial.TrialState.FAIL)
        return len(study.get_trials(deepcopy=False, states=states))

    budget = n_trials if n_trials is not None else total
    # Resume / workers: only the trials still missing from the shared study are run.
    remaining = budget if (worker and n_trials is not None) else max(budget - finished(), 0)
    if remaining:
        study.optimize(objective, n_trials=remaining,
                       callbacks=[_stop_when_complete(total)] if spec.sampler == "grid" else None)
    return study


def _stop_when_complete(total: int):
    def cb(study, trial) -> None:
        done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
        if len(done) >= total:
            study.stop()

    return cb


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
        tracking = train(cfg, run_dir, resume=not overwrite, overwrite=overwrite, log=log)
        results.append({"seed": seed, "best_val_acc": tracking["best_val_acc"],
                        "test_acc": tracking["test_acc"], "best_epoch": tracking["best_epoch"],
                        "status": tracking["status"], "run_dir": str(run_dir)})
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
        name, _, variant = (space.rule or label).partition(":")
        opts = dict(space.rule_options)
        if variant:
            opts["conv_feedback"] = variant
        cfg = base.model_copy(deep=True)
        cfg.rule = cfg.rule.model_validate({"name": name, "options": opts})
        out[label] = (cfg, {**spec.params, **space.params})
    return out


def run_sweep(base: ExperimentConfig, spec: SweepConfig, out: str | Path, *,
              storage: str | None = None, worker: bool = False, resume: bool = False,
              overwrite: bool = False, n_trials: int | None = None, final: bool = True,
              log=print) -> dict[str, Any]:
    out = Path(out)
    marker = out / "sweep.json"
    if marker.exists() and not (resume or overwrite or worker):
        raise RunDirError(f"{out}: holds another sweep (use --resume to continue it, --worker "
                          "to join it, or --overwrite to replace it)")
    if overwrite and not resume and not worker:
        import shutil

        (out / "optuna-journal.log").unlink(missing_ok=True)
        for sub in ("trials", "final"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"name": base.name, "sampler": spec.sampler, "rules": {}}
    for label, (cfg, params) in search_spaces(base, spec).items():
        study_name = f"{base.name}-{label.replace(':', '-')}"
        study = run_study(cfg, spec, params, out, storage=storage, study_name=study_name,
                          worker=worker, n_trials=n_trials, log=log)
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
    lines = [f"{'rule':<14}{'trials':>7}  {'best params':<40}{'test % (mean ± std)':>22}"]
    for label, entry in summary["rules"].items():
        fin = entry.get("final") or {}
        mean, std = fin.get("test_acc_mean"), fin.get("test_acc_std")
        acc = "-" if mean is None else f"{100 * mean:.2f} ± {100 * (std or 0):.2f}"
        params = ", ".join(f"{k}={v}" for k, v in (entry["best_params"] or {}).items())
        lines.append(f"{label:<14}{len(entry['trials']):>7}  {params:<40}{acc:>22}")
    return "\n".join(lines)


def grid_size(params: dict[str, list[Any]]) -> int:
    return len(list(itertools.product(*params.values())))
