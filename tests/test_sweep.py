"""Sweeps on Optuna: a grid runs exactly its points, diverging trials are pruned, final runs on
several seeds give mean and std, and a resumed sweep runs nothing twice."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from conftest import tiny_config  # noqa: E402

from falign.training import RunDirError, parse_config  # noqa: E402
from falign.training.sweep import SweepError, grid_size, run_sweep  # noqa: E402

GRID = {"optim.lr": [1e-3, 1e-2], "rule.options.scale": [0.5, 2.0]}
pytestmark = pytest.mark.usefixtures("one_thread")


def sweep_config(params: dict, *, name: str = "sw", loss: str = "cross_entropy", seeds=(0, 1),
                 rule: str = "fa"):
    return parse_config(tiny_config(
        name=name, rule={"name": rule}, train={"loss": loss},
        sweep={"sampler": "grid", "params": params, "trial_epochs": 1, "final_epochs": 1,
               "final_seeds": list(seeds)},
    ))


def quiet(_: str) -> None:
    pass


def trial_dirs(out: Path) -> list[Path]:
    return sorted(p for p in (out / "trials").iterdir() if p.is_dir())


def study_trials(out: Path, study_name: str) -> list:
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(out / "optuna-journal.log")))
    return optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)


@pytest.fixture(scope="module")
def grid_sweep(data_root, tmp_path_factory):
    cfg = sweep_config(GRID)
    out = tmp_path_factory.mktemp("sweep") / "grid"
    return cfg, out, run_sweep(cfg, cfg.sweep, out, log=quiet)


def test_grid_runs_exactly_its_points(grid_sweep):
    cfg, out, summary = grid_sweep
    assert grid_size(GRID) == 4
    entry = summary["rules"]["fa"]
    trials = entry["trials"]
    assert len(trials) == 4
    assert all(t["state"] == "COMPLETE" and t["status"] == "completed" for t in trials)
    points = sorted(tuple(t["params"][k] for k in GRID) for t in trials)
    assert points == sorted(itertools.product(*GRID.values()))
    assert len(trial_dirs(out)) == 4
    assert len(study_trials(out, "sw-fa")) == 4


def test_each_trial_ran_its_own_configuration(grid_sweep):
    _, out, summary = grid_sweep
    for t in summary["rules"]["fa"]["trials"]:
        run = out / "trials" / f"sw-fa-{t['number']:03d}"
        tracking = json.loads((run / "tracking.json").read_text())
        c = tracking["config"]
        assert c["optim"]["lr"] == t["params"]["optim.lr"]
        assert c["rule"]["options"]["scale"] == t["params"]["rule.options.scale"]
        assert tracking["model_spec"]["rule_options"]["scale"] == t["params"]["rule.options.scale"]
        assert c["train"]["epochs"] == 1 and c["sweep"] is None
        assert len(tracking["epochs"]) == 1
        assert t["value"] == tracking["best_val_acc"]


def test_best_params_and_final_runs(grid_sweep):
    _, out, summary = grid_sweep
    entry = summary["rules"]["fa"]
    best = max(entry["trials"], key=lambda t: (t["value"], -t["number"]))
    assert entry["best_params"] == best["params"]
    final = entry["final"]
    assert final["params"] == best["params"]
    assert [r["seed"] for r in final["runs"]] == [0, 1]
    accs = []
    for run in final["runs"]:
        tracking = json.loads((Path(run["run_dir"]) / "tracking.json").read_text())
        assert tracking["config"]["seed"] == run["seed"]
        assert tracking["config"]["optim"]["lr"] == best["params"]["optim.lr"]
        assert tracking["status"] == "completed" and run["test_acc"] == tracking["test_acc"]
        accs.append(tracking["test_acc"])
    a, b = accs
    assert final["test_acc_mean"] == pytest.approx((a + b) / 2, abs=1e-15)
    assert final["test_acc_std"] == pytest.approx(abs(a - b) / math.sqrt(2), abs=1e-15)  # n - 1
    assert json.loads((out / "sweep.json").read_text()) == json.loads(json.dumps(summary))


def test_a_second_sweep_needs_resume(grid_sweep):
    cfg, out, _ = grid_sweep
    with pytest.raises(RunDirError, match="holds another sweep"):
        run_sweep(cfg, cfg.sweep, out, log=quiet)


def test_resume_runs_no_new_trial(grid_sweep):
    cfg, out, summary = grid_sweep
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("trials/*/tracking.json")}
    again = run_sweep(cfg, cfg.sweep, out, resume=True, log=quiet)
    assert len(trial_dirs(out)) == 4
    assert len(study_trials(out, "sw-fa")) == 4
    assert {p: p.stat().st_mtime_ns for p in out.glob("trials/*/tracking.json")} == stamps
    assert again["rules"]["fa"]["trials"] == summary["rules"]["fa"]["trials"]
    assert again["rules"]["fa"]["final"] == summary["rules"]["fa"]["final"]


def test_diverging_trial_is_pruned_and_the_sweep_goes_on(data_root, tmp_path):
    cfg = sweep_config({"optim.lr": [1e6, 1e-2]}, loss="mse")
    summary = run_sweep(cfg, cfg.sweep, tmp_path / "div", final=False, log=quiet)
    trials = {t["params"]["optim.lr"]: t for t in summary["rules"]["fa"]["trials"]}
    assert set(trials) == {1e6, 1e-2}
    assert trials[1e6]["state"] == "PRUNED" and trials[1e6]["status"] == "diverged"
    assert trials[1e6]["value"] is None
    assert trials[1e-2]["state"] == "COMPLETE" and trials[1e-2]["status"] == "completed"
    assert summary["rules"]["fa"]["best_params"] == {"optim.lr": 1e-2}
    assert "final" not in summary["rules"]["fa"]


def test_unknown_sweep_parameter_is_refused_before_any_trial(data_root, tmp_path):
    cfg = sweep_config({"optim.lrr": [0.1]})
    with pytest.raises(SweepError, match="optim.lrr"):
        run_sweep(cfg, cfg.sweep, tmp_path / "bad", log=quiet)
    assert not (tmp_path / "bad" / "trials").exists()


def test_grid_parameter_needs_a_list(data_root, tmp_path):
    cfg = sweep_config({"optim.lr": {"low": 0.01, "high": 0.1}})
    with pytest.raises(SweepError, match="non-empty list"):
        run_sweep(cfg, cfg.sweep, tmp_path / "bad", log=quiet)


def test_grid_values_in_exponent_notation_stay_numbers(data_root, tmp_path):
    cfg = sweep_config({"rule.options.scale": [1e-5]})
    summary = run_sweep(cfg, cfg.sweep, tmp_path / "exp", final=False, log=quiet)
    (trial,) = summary["rules"]["fa"]["trials"]
    assert trial["state"] == "COMPLETE"
    tracking = json.loads((tmp_path / "exp" / "trials" / "sw-fa-000" / "tracking.json").read_text())
    assert tracking["config"]["rule"]["options"]["scale"] == 1e-5


def test_overwrite_replaces_the_final_runs(data_root, tmp_path):
    first = sweep_config({"optim.lr": [0.01]}, seeds=(0,))
    run_sweep(first, first.sweep, tmp_path / "sw", log=quiet)
    second = sweep_config({"optim.lr": [0.05]}, seeds=(0,))
    summary = run_sweep(second, second.sweep, tmp_path / "sw", overwrite=True, log=quiet)
    (run,) = summary["rules"]["fa"]["final"]["runs"]
    tracking = json.loads((Path(run["run_dir"]) / "tracking.json").read_text())
    assert tracking["config"]["optim"]["lr"] == 0.05
