"""``optim.feedback``: the trained feedback B stepped by an optimizer and schedule of its own.

The twin: a 4-6-5-3 tanh MLP under direct Kolen-Pollack in float64, trained by ``train()`` with
SGD-Nesterov for W and Adam with a per-epoch decay for B (Webster, Choi & Ahn 2020's protocol),
and by a loop written out here -- the DKP backward by formula, two torch optimizers, B's rate
multiplied by gamma after every epoch -- from the same initial weights and the same batches.
Then resume (a stop between epochs; a kill mid-epoch is a case of test_training_features.py),
the config's one-line errors, and a config without the section training exactly as before.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from falign.data import batches
from falign.data import registry as data_registry
from falign.data.core import Loaded, Split
from falign.training import parse_config, train
from falign.training.config import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = [4, 6, 5, 3]
FEEDBACK = {"name": "adam", "lr": 0.02, "weight_decay": 1e-3,
            "schedule": {"name": "exponential", "gamma": 0.8}}


class Keep:
    """The stored float64 rows as they are."""

    def __call__(self, x, generator=None, *, rows=None):
        return x


def _twin_data(root, **options) -> Loaded:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(12, SIZES[0], generator=gen, dtype=torch.float64)
    y = torch.randint(0, SIZES[-1], (12,), generator=gen)
    split = Split(x, y, torch.arange(12))
    return Loaded(title="twin", train=split, val=None, test=split, classes=["a", "b", "c"],
                  input_shape=(SIZES[0],), train_transform=Keep(), eval_transform=Keep())


@pytest.fixture
def float64_twin_data(monkeypatch):
    monkeypatch.setattr(data_registry, "_REGISTRY", data_registry._REGISTRY.copy())
    data_registry.register_dataset("dkp-twin")(_twin_data)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the model's W, b and B in float64
    yield
    torch.set_default_dtype(before)


def _twin_config(epochs: int) -> dict:
    return {"name": "twin", "seed": 3, "device": "cpu", "data": {"name": "dkp-twin", "val_size": 0},
            "model": {"name": "mlp", "options": {"sizes": SIZES, "activation": "tanh"}},
            "rule": {"name": "dkp"},
            "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3,
                      "feedback": FEEDBACK},
            "train": {"epochs": epochs, "batch_size": 5, "select_on": "last",
                      "checkpoint_every_epoch": True}}


def _by_hand(start: dict, split: Split, seed: int, epochs: int, batch_size: int) -> dict:
    """Direct Kolen-Pollack written out: layer i's input h_i receives e B_i^T (B_i of shape
    (in, K)), B_i receives h_i^T e, the output layer W_2 its true gradient; W and b stepped by
    SGD with Nesterov momentum, B by Adam whose rate is multiplied by 0.8 after each epoch."""
    p = {k: v.clone() for k, v in start.items() if k.endswith(("weight", "bias", "feedback"))}
    ws = [p[f"layers.{i}.weight"] for i in range(3)]
    bs = [p[f"layers.{i}.bias"] for i in range(3)]
    fb = [p[f"layers.{i}.feedback"] for i in range(3)]
    w_opt = torch.optim.SGD([t for pair in zip(ws, bs, strict=True) for t in pair], lr=0.1, momentum=0.9,
                            nesterov=True, weight_decay=1e-3)
    b_opt = torch.optim.Adam(fb, lr=0.02, weight_decay=1e-3)
    b_decay = torch.optim.lr_scheduler.StepLR(b_opt, step_size=1, gamma=0.8)
    gen = torch.Generator().manual_seed(seed)  # the order falign draws its batches in
    for _ in range(epochs):
        for x, y in batches(split, batch_size, transform=None, shuffle=True, generator=gen):
            h = [x]
            for i in range(2):
                h.append(torch.tanh(h[-1] @ ws[i].T + bs[i]))
            z = (h[-1] @ ws[2].T + bs[2]).requires_grad_()
            loss = F.cross_entropy(z.float(), y)  # falign's loss is taken in float32
            (e,) = torch.autograd.grad(loss, z)  # (N, K): dL/dz, the mean's 1/N in it
            grads_w = [None, None, e.T @ h[2]]
            grads_b = [None, None, e.sum(0)]
            for i in (1, 0):
                delta = (e @ fb[i + 1].T) * (1 - h[i + 1] ** 2)  # the signal at h_{i+1}, through tanh
                grads_w[i], grads_b[i] = delta.T @ h[i], delta.sum(0)
            for i in range(3):
                ws[i].grad, bs[i].grad = grads_w[i], grads_b[i]
                fb[i].grad = h[i].T @ e  # (in, K); B_0's input is x: trained, never used
            w_opt.step()
            b_opt.step()
        b_decay.step()
    return p


def test_a_separate_feedback_optimizer_is_the_hand_written_twin(float64_twin_data, tmp_path) -> None:
    epochs = 3
    cfg = parse_config(_twin_config(epochs))
    record = train(cfg, tmp_path / "run", log=None)
    assert record.status == "completed"
    start = torch.load(tmp_path / "run" / "epoch_000.pt", weights_only=True)["model"]
    end = torch.load(tmp_path / "run" / f"epoch_{epochs:03d}.pt", weights_only=True)["model"]
    assert start["layers.0.weight"].dtype == torch.float64
    split = data_registry.load_dataset("dkp-twin").train
    want = _by_hand(start, split, cfg.seed, epochs, cfg.train.batch_size)
    for key, value in want.items():
        assert torch.allclose(end[key], value, rtol=1e-10, atol=1e-12), key
        assert not torch.equal(end[key], start[key]), f"{key} never moved"
    # and the twin is not trivially close: B under W's optimizer instead ends elsewhere
    same = _twin_config(epochs)
    del same["optim"]["feedback"]
    train(parse_config(same), tmp_path / "shared", log=None)
    other = torch.load(tmp_path / "shared" / f"epoch_{epochs:03d}.pt", weights_only=True)["model"]
    assert not torch.allclose(other["layers.1.feedback"], want["layers.1.feedback"], atol=1e-6)


def test_the_feedback_schedule_and_its_optimizer_state_resume(float64_twin_data, tmp_path) -> None:
    cfg = parse_config(_twin_config(3))
    whole = train(cfg, tmp_path / "whole", log=None)
    first = train(cfg, tmp_path / "split", log=None, stop_after=1)
    assert first.status == "running" and len(first.epochs) == 1
    saved = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert saved["feedback_optimizer"]["state"] and saved["feedback_scheduler"]["last_epoch"] == 1
    resumed = train(cfg, tmp_path / "split", resume=True, log=None)
    strip = lambda r: [{k: v for k, v in e.to_dict().items() if k != "seconds"} for e in r.epochs]  # noqa: E731
    assert strip(resumed) == strip(whole) and resumed.test_acc == whole.test_acc
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert b["feedback_scheduler"]["_last_lr"] == pytest.approx([0.02 * 0.8 ** 3])
    assert torch.equal(a["feedback_optimizer"]["state"][0]["exp_avg_sq"],
                       b["feedback_optimizer"]["state"][0]["exp_avg_sq"])


@pytest.mark.parametrize(("section", "message"), [
    ({"name": "adamm"}, "optim.feedback.name: Input should be 'sgd', 'adam' or 'adamw'"),
    ({"lr": -1}, "optim.feedback.lr: Input should be greater than 0"),
    ({"lrr": 0.1}, "unknown key 'optim.feedback.lrr'; did you mean 'optim.feedback.lr'?"),
    ({"schedule": {"name": "step"}}, "optim.feedback.schedule.name: Input should be"),
    ({"schedule": {"gama": 0.8}}, "did you mean 'optim.feedback.schedule.gamma'?"),
])
def test_a_bad_feedback_section_is_one_line_naming_the_key(section, message) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"rule": {"name": "dkp"}, "optim": {"feedback": section}})
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("rule", "why"), [("fa", "trains no feedback B"), ("kp", "W's parameter group")])
def test_a_feedback_optimizer_is_refused_where_the_rule_allows_none(rule, why) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"rule": {"name": rule}, "optim": {"feedback": {"name": "adam"}}})
    assert why in str(err.value) and "\n" not in str(err.value)


def test_dotted_keys_set_the_feedback_section() -> None:
    from falign.training.config import apply_overrides, check_override_keys

    check_override_keys(["optim.feedback.lr=0.1", "optim.feedback.schedule.gamma=0.8"])
    with pytest.raises(ConfigError, match="did you mean 'optim.feedback.lr'"):
        check_override_keys(["optim.feedback.lrr=0.1"])
    data = apply_overrides({"rule": {"name": "dkp"}}, ["optim.feedback.name=adam", "optim.feedback.lr=1e-4"])
    cfg = parse_config(data)
    assert cfg.optim.feedback.lr == 1e-4 and cfg.optim.feedback.schedule.name == "constant"
    assert cfg.optim.name == "sgd"  # W's optimizer keeps its own keys


def test_without_the_section_nothing_changes(data_root, tmp_path) -> None:
    """dkp with B in W's optimizer: the checkpoint holds no second optimizer, and every
    parameter, B included, is in the one optimizer."""
    cfg = parse_config(tiny_config(rule={"name": "dkp"}))
    assert cfg.optim.feedback is None
    train(cfg, tmp_path / "run", log=None)
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert "feedback_optimizer" not in saved and "feedback_scheduler" not in saved
    assert len(saved["optimizer"]["param_groups"][0]["params"]) == len(
        [k for k in saved["model"] if k.endswith(("weight", "bias", "feedback"))])
