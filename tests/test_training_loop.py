"""train(): what a run directory holds, bit-exact reproducibility and resume, divergence, early stop.

Runs are tiny (600 MNIST training images, a 784-32-10 MLP, batch 50, 1-3 epochs); what is
checked is bookkeeping and exactness, not accuracy.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config

from falign.analysis.alignment import Probe
from falign.data import load_dataset
from falign.layers import FeedbackError
from falign.training import (
    CheckpointError,
    RunDirError,
    RunRecord,
    evaluate,
    load_checkpoint,
    load_model,
    parse_config,
    train,
)
from falign.training.config import ConfigError
from falign.training.loop import config_from_run

EPOCH_KEYS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"}
CKPT_KEYS = {"format", "version", "config", "model_spec", "model"}
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**sections) -> dict:
    """tiny_config, but 2 epochs unless a test says otherwise."""
    return tiny_config(**{**sections, "train": {"epochs": 2, **sections.get("train", {})}})


def metrics(tracking: RunRecord | dict) -> dict:
    """Everything a run reports except wall-clock times and the machine description."""
    if isinstance(tracking, RunRecord):
        tracking = tracking.to_dict()
    out = {k: v for k, v in tracking.items() if k != "environment"}
    out["epochs"] = [{k: v for k, v in e.items() if k != "seconds"} for e in tracking["epochs"]]
    return out


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def model_state(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """One fa run of 2 epochs with a checkpoint per epoch: (config, run dir, returned record)."""
    cfg = parse_config(tiny(train={"checkpoint_every_epoch": True}))
    out = tmp_path_factory.mktemp("reference") / "run"
    return cfg, out, train(cfg, out, log=None)


# --------------------------------------------------------------------------- what a run writes

def test_tracking_json(reference):
    cfg, out, returned = reference
    tracking = json.loads((out / "tracking.json").read_text())
    assert isinstance(returned, RunRecord)
    assert tracking == json.loads(json.dumps(returned.to_dict()))
    assert tracking["schema_version"] == 3 and tracking["config"] == cfg.to_dict()
    assert tracking["status"] == "completed"
    assert [e["epoch"] for e in tracking["epochs"]] == [1, 2]
    for e in tracking["epochs"]:
        assert EPOCH_KEYS <= e.keys()
        assert all(math.isfinite(e[k]) for k in EPOCH_KEYS)
        assert 0 <= e["train_acc"] <= 1 and 0 <= e["val_acc"] <= 1
        assert e["lr"] == 0.05 and e["seconds"] >= 0
        assert e["train_errors"] == round(600 * (1 - e["train_acc"]))
    accs = [e["val_acc"] for e in tracking["epochs"]]
    assert tracking["best_val_acc"] == max(accs)
    assert tracking["best_epoch"] == 1 + accs.index(max(accs))
    assert 0 <= tracking["test_acc"] <= 1
    env = tracking["environment"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert yaml.safe_load((out / "config.yaml").read_text()) == cfg.to_dict()
    assert config_from_run(out) == cfg


def test_checkpoint_files(reference):
    _, out, record = reference
    assert sorted(p.name for p in out.glob("*.pt")) == [
        "best.pt", "epoch_000.pt", "epoch_001.pt", "epoch_002.pt", "last.pt"]
    for path in out.glob("*.pt"):
        ckpt = torch.load(path, weights_only=True)  # plain containers and tensors only
        assert CKPT_KEYS <= ckpt.keys(), path.name
        assert ckpt["format"] == "falign-checkpoint" and isinstance(ckpt["version"], int)
        assert ckpt["config"] == record.config
        assert ckpt["model_spec"] == record.model_spec
        assert all(isinstance(v, torch.Tensor) for v in ckpt["model"].values())
        assert load_checkpoint(path)["version"] == ckpt["version"]
    for k in range(3):
        assert torch.load(out / f"epoch_{k:03d}.pt", weights_only=True)["epoch"] == k
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and {"optimizer", "scheduler", "rng"} <= last.keys()
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == record.best_epoch
    # the per-epoch files hold the weights of their epoch
    assert same_state(model_state(out / "epoch_002.pt"), last["model"])
    assert same_state(model_state(out / f"epoch_{record.best_epoch:03d}.pt"),
                      model_state(out / "best.pt"))
    assert not same_state(model_state(out / "epoch_000.pt"), model_state(out / "epoch_001.pt"))


def test_load_model_rebuilds_the_best_model(reference):
    _, out, record = reference
    model = load_model(out / "best.pt")
    assert same_state(model.state_dict(), model_state(out / "best.pt"))
    data = load_dataset("mnist", subset=600, val_size=200)
    # accuracy counted by hand, in one batch, not through evaluate()
    model.eval()
    with torch.no_grad():
        logits = model(data.eval_transform(data.test.x))
    by_hand = (logits.argmax(1) == data.test.y).double().mean().item()
    assert by_hand == pytest.approx(record.test_acc, abs=1e-12)
    assert evaluate(model, data.test, data.eval_transform)["acc"] == record.test_acc
    # and the untrained model of epoch_000.pt is a different one
    untrained = load_model(out / "epoch_000.pt")
    assert evaluate(untrained, data.test, data.eval_transform)["acc"] != record.test_acc


def files(run: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of a run directory: its bytes and modification time."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run.iterdir()) if p.is_file()}


def test_the_same_finished_run_again_is_read_back_and_another_config_is_refused(reference, tmp_path):
    cfg, out, record = reference
    run = tmp_path / "run"
    shutil.copytree(out, run)
    before = files(run)
    lines: list[str] = []
    again = train(cfg, run, log=lines.append)  # the README's command, typed a second time
    assert metrics(again) == metrics(record) and files(run) == before  # nothing trained or written
    assert any("read back" in line for line in lines), lines
    for other in ({**cfg.to_dict(), "optim": {**cfg.to_dict()["optim"], "lr": 0.2}},
                  {**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "epochs": 3}}):
        with pytest.raises(RunDirError, match="holds another run"):
            train(parse_config(other), run, log=None)
    assert files(run) == before


def test_the_same_unfinished_run_again_without_resume_is_refused(data_root, tmp_path):
    cfg = parse_config(tiny())
    train(cfg, tmp_path / "run", log=None, stop_after=1)
    before = files(tmp_path / "run")
    with pytest.raises(RunDirError, match="not finished.*--resume"):
        train(cfg, tmp_path / "run", log=None)
    assert files(tmp_path / "run") == before


def test_resume_of_a_finished_run_whose_last_pt_is_gone_reads_it_back(reference, tmp_path):
    cfg, out, record = reference
    run = tmp_path / "run"
    shutil.copytree(out, run)
    (run / "last.pt").unlink()
    before = files(run)
    again = train(cfg, run, resume=True, log=None)
    assert metrics(again) == metrics(record)
    assert files(run) == before  # best.pt and the record kept, nothing trained from epoch 1
    longer = parse_config({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "epochs": 3}})
    with pytest.raises(RunDirError, match=r"last\.pt.*--overwrite"):  # cannot be continued
        train(longer, run, resume=True, log=None)
    assert files(run) == before


def test_resume_of_an_unfinished_run_whose_last_pt_is_gone_is_refused(data_root, tmp_path):
    cfg = parse_config(tiny())
    train(cfg, tmp_path / "run", log=None, stop_after=1)
    (tmp_path / "run" / "last.pt").unlink()
    before = files(tmp_path / "run")
    with pytest.raises(RunDirError) as err:
        train(cfg, tmp_path / "run", resume=True, log=None)
    message = str(err.value)
    assert str(tmp_path / "run" / "last.pt") in message and "--overwrite" in message
    assert len(message.splitlines()) == 1
    assert files(tmp_path / "run") == before


def test_resume_with_another_config_is_refused(reference):
    cfg, out, _ = reference
    other = parse_config({**cfg.to_dict(), "optim": {**cfg.to_dict()["optim"], "lr": 0.2}})
    with pytest.raises(CheckpointError, match="different 'optim'"):
        train(other, out, resume=True, log=None)


def test_overwrite_leaves_no_file_of_the_replaced_run(reference, tmp_path):
    cfg, out, _ = reference
    run = tmp_path / "run"
    shutil.copytree(out, run)
    shorter = parse_config({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "epochs": 1}})
    train(shorter, run, overwrite=True, log=None)
    assert sorted(p.name for p in run.glob("epoch_*.pt")) == ["epoch_000.pt", "epoch_001.pt"]


# ----------------------------------------------------------------------------- reproducibility

def test_same_seed_same_bits_other_seed_other_bits(reference, tmp_path):
    cfg, out, record = reference
    again = train(cfg, tmp_path / "again", log=None)
    assert metrics(again) == metrics(record)
    for name in ("last.pt", "best.pt", "epoch_000.pt"):
        assert same_state(model_state(tmp_path / "again" / name), model_state(out / name)), name

    other = train(parse_config({**cfg.to_dict(), "seed": 1}), tmp_path / "other", log=None)
    assert [e.train_loss for e in other.epochs] != [e.train_loss for e in record.epochs]
    a, b = model_state(tmp_path / "other" / "last.pt"), model_state(out / "last.pt")
    assert not torch.equal(a["layers.0.weight"], b["layers.0.weight"])
    assert not torch.equal(a["layers.1.feedback"], b["layers.1.feedback"])


# ---------------------------------------------------------------------------------------- resume

RESUME_RULES = {
    "bp": {},
    "fa": {},
    "brsf": {},  # B redrawn every step: the resumed run must continue the same sequence
    "sign_tracking": {"period": 7},  # refreshes at steps 1, 8, 15, ...: across epoch boundaries
    "kp": {},  # B is a parameter with its own momentum state, stepped with W
}


@pytest.mark.parametrize("rule", list(RESUME_RULES))
def test_stop_then_resume_equals_an_uninterrupted_run(data_root, tmp_path, rule):
    cfg = parse_config(tiny(
        rule={"name": rule, "options": RESUME_RULES[rule]},
        optim={"momentum": 0.9, "weight_decay": 0.01},
        schedule={"name": "multistep", "milestones": [2], "gamma": 0.5},
        train={"epochs": 3},
    ))
    whole = train(cfg, tmp_path / "whole", log=None)

    first = train(cfg, tmp_path / "split", log=None, stop_after=1)
    assert first.status == "running" and len(first.epochs) == 1
    assert torch.load(tmp_path / "split" / "last.pt", weights_only=True)["epoch"] == 1
    resumed = train(cfg, tmp_path / "split", resume=True, log=None)

    assert [e.lr for e in whole.epochs] == [0.05, 0.05, 0.025]  # the scheduler resumes too
    assert metrics(resumed) == metrics(whole)
    for name in ("last.pt", "best.pt"):
        a, b = model_state(tmp_path / "split" / name), model_state(tmp_path / "whole" / name)
        assert same_state(a, b), f"{rule}: {name} differs"
    if rule in ("brsf", "sign_tracking"):  # the stateful rules count their optimizer steps
        last = model_state(tmp_path / "split" / "last.pt")
        assert int(last["layers.1.feedback_step"]) == 36  # 12 steps per epoch, also after resume


def test_resume_of_a_finished_run_changes_nothing(reference, tmp_path):
    cfg, out, record = reference
    again = train(cfg, out, resume=True, log=None)
    assert metrics(again) == metrics(record)


# ------------------------------------------------------------------------------------ divergence

def test_divergence_is_a_status_not_an_exception(data_root, tmp_path):
    cfg = parse_config(tiny(optim={"lr": 1e6}, train={"loss": "mse", "epochs": 3}))
    record = train(cfg, tmp_path / "run", log=None)
    assert record.status == "diverged"
    assert record.epochs == [] and record.test_acc is None
    assert json.loads((tmp_path / "run" / "tracking.json").read_text())["status"] == "diverged"


def test_divergence_after_a_good_epoch_keeps_that_epoch(data_root, tmp_path):
    # epoch 1 at lr 0.05, then the schedule multiplies lr by 1e8: mse blows up in epoch 2
    cfg = parse_config(tiny(schedule={"name": "multistep", "milestones": [1], "gamma": 1e8},
                            train={"loss": "mse", "epochs": 3}))
    record = train(cfg, tmp_path / "run", log=None)
    assert record.status == "diverged"
    assert [e.epoch for e in record.epochs] == [1] and record.best_epoch == 1
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 1
    # the test accuracy is that of the last good (best) model
    data = load_dataset("mnist", subset=600, val_size=200)
    best = load_model(tmp_path / "run" / "best.pt")
    assert record.test_acc == evaluate(best, data.test, data.eval_transform)["acc"]
    assert all(torch.isfinite(v).all() for v in best.state_dict().values() if v.is_floating_point())


# ------------------------------------------------------------------------------------ early stop

def test_early_stop_on_a_large_tolerance(data_root, tmp_path):
    cfg = parse_config(tiny(train={"epochs": 4, "early_stop_tol": 1e9}))
    record = train(cfg, tmp_path / "run", log=None)
    assert len(record.epochs) == 2  # epoch 1 has nothing to compare with
    assert record.status == "completed" and record.test_acc is not None
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 2


def test_resume_after_early_stop_trains_no_further(data_root, tmp_path):
    cfg = parse_config(tiny(train={"epochs": 4, "early_stop_tol": 1e9}))
    record = train(cfg, tmp_path / "run", log=None)
    again = train(cfg, tmp_path / "run", resume=True, log=None)
    assert metrics(again) == metrics(record)


# ------------------------------------------------------------------------ DFA report loops, end to end

@pytest.mark.parametrize("loop", ["batch", "class"])
def test_averaged_dfa_loops_train(data_root, tmp_path, loop):
    cfg = parse_config(tiny(rule={"name": "dfa", "options": {"average": loop}}, optim={"lr": 0.5},
                            model={"options": {"sizes": [784, 32, 10], "activation": "tanh"}},
                            train={"epochs": 1, "loss": "bce", "checkpoint_every_epoch": True}))
    record = train(cfg, tmp_path / "run", log=None)
    assert record.status == "completed" and len(record.epochs) == 1
    before, after = (model_state(tmp_path / "run" / f"epoch_00{k}.pt") for k in (0, 1))
    for key in ("layers.0.weight", "layers.1.weight", "layers.1.bias"):
        assert not torch.equal(before[key], after[key]), key


def test_averaged_dfa_loop_refuses_other_rules_and_models(data_root, tmp_path):
    # another rule has no such option: refused when the config is read
    with pytest.raises(ConfigError, match="rule 'fa' has no option 'average'"):
        parse_config(tiny(rule={"name": "fa", "options": {"average": "batch"}}))
    # another model: refused when the model is built, before anything is written
    cfg = parse_config(tiny(rule={"name": "dfa", "options": {"average": "batch"}},
                            data={"options": {"pad_to": 32}}, model={"name": "lenet", "options": {}}))
    with pytest.raises(FeedbackError, match="averaged DFA loops need an 'mlp'"):
        train(cfg, tmp_path / "run", log=None)
    assert not (tmp_path / "run").exists()


def test_config_of_falign_0_1_with_train_dfa_loop_still_reads():
    cfg = parse_config(tiny(rule={"name": "dfa"}, train={"dfa_loop": "class"}))
    assert cfg.rule.options == {"average": "class"} and "dfa_loop" not in cfg.train.model_dump()
    assert parse_config(tiny(train={"dfa_loop": "sample"})).rule.options == {}


def test_metrics_helper_ignores_only_times():
    t = {"epochs": [{"epoch": 1, "seconds": 1.0, "val_acc": 0.5}], "environment": {"a": 1}, "x": 1}
    u = copy.deepcopy(t)
    u["epochs"][0]["seconds"], u["environment"] = 2.0, {}
    assert metrics(t) == metrics(u)
    u["epochs"][0]["val_acc"] = 0.6
    assert metrics(t) != metrics(u)


def test_a_run_started_by_falign_0_1_resumes(data_root, tmp_path):
    """An earlier falign saved configs with train.dfa_loop and without train.sync_batchnorm, and
    built BP models unconverted (no feedback_step / feedback_seed buffers)."""
    cfg = parse_config(tiny(rule={"name": "bp"}, train={"epochs": 2}))
    whole = train(cfg, tmp_path / "whole", log=None)
    train(cfg, tmp_path / "old", log=None, stop_after=1)
    path = tmp_path / "old" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    for config in (ckpt["config"],):
        config["train"]["dfa_loop"] = "sample"
        del config["train"]["sync_batchnorm"]
    ckpt["model"] = {k: v for k, v in ckpt["model"].items()
                     if not k.endswith(("feedback_step", "feedback_seed"))}
    torch.save(ckpt, path)
    resumed = train(cfg, tmp_path / "old", resume=True, log=None)
    assert metrics(resumed) == metrics(whole)


def test_resume_of_a_run_stopped_in_its_first_epoch_starts_it_again(data_root, tmp_path):
    """Stopped before its first epoch ended (a record, no last.pt yet): nothing is lost, so
    --resume trains it from epoch 1 rather than refusing, and ends as an uninterrupted run."""
    cfg = parse_config(tiny())
    whole = train(cfg, tmp_path / "whole", log=None)
    out = tmp_path / "stopped"
    train(cfg, out, log=None, stop_after=1)
    (out / "last.pt").unlink()
    record = json.loads((out / "tracking.json").read_text())
    record.update(status="interrupted", epochs=[])
    (out / "tracking.json").write_text(json.dumps(record))
    resumed = train(cfg, out, resume=True, log=None)
    assert metrics(resumed)["epochs"] == metrics(whole)["epochs"] and resumed.status == "completed"


# ------------------------------------------------------------------------- probes as objects

class _Counting(Probe):
    """A user's own probe: every third step, records when it was asked, bound and finished."""

    def __init__(self) -> None:
        self.model, self.asked, self.captured, self.finished = None, [], [], []
        self.step = None

    def bind(self, model, *, world=1, reduce=None):
        self.model = model

    def due(self, step):
        self.step = step
        self.asked.append(step)
        return step % 3 == 0

    @contextlib.contextmanager
    def capture(self):
        self.captured.append(self.step)
        yield

    def finish(self, x, y, loss_fn):
        # between the step's backward and the optimizer step: every weight has its gradient
        assert all(p.grad is not None for p in self.model.parameters() if p.requires_grad)
        self.finished.append((self.step, x.shape[0]))
        return None


def test_a_users_probe_object_is_called_on_its_schedule(data_root, tmp_path):
    probe = _Counting()
    record = train(parse_config(tiny()), tmp_path / "run", log=None, probes=[probe])
    steps = len(probe.asked)
    assert probe.asked == list(range(steps)) and steps > 6  # asked once on every training step
    assert isinstance(probe.model, torch.nn.Module)
    assert probe.captured == list(range(0, steps, 3))
    assert probe.finished == [(s, 50) for s in range(0, steps, 3)]
    assert record.alignment == []  # it returned nothing to record


def test_a_step_probe_object_records_what_the_config_key_records(data_root, tmp_path):
    from falign.analysis import StepProbe

    by_key = train(parse_config(tiny(train={"alignment_every": 5})), tmp_path / "key", log=None)
    by_object = train(parse_config(tiny()), tmp_path / "object", log=None, probes=[StepProbe(every=5)])
    assert [a.step for a in by_key.alignment] == [0, 5, 10, 15, 20]
    assert [a.to_dict() for a in by_object.alignment] == [a.to_dict() for a in by_key.alignment]
    assert metrics(by_object)["epochs"] == metrics(by_key)["epochs"]
