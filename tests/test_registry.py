"""One Registry for every kind of extension; datasets and trackers open to users' registration
like rules and models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import falign.data.registry as data_registry
import falign.training.loggers as loggers
from falign.data import DatasetError, load_dataset
from falign.data.core import Loaded, Split
from falign.data.transforms import ToFloat
from falign.registry import Registry
from falign.training.config import ConfigError, parse_config
from falign.training.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_registry_refuses_a_taken_name_and_names_the_nearest_one() -> None:
    reg = Registry("widget", LookupError)

    def a():
        pass

    def b():
        pass

    assert reg.register("alpha", a) is a and reg.register("alpha", a) is a  # the same object again
    with pytest.raises(LookupError, match="widget name .alpha. is already registered by .*<locals>.a"):
        reg.register("alpha", b)
    assert reg.lookup("alpha") is a and "alpha" in reg and reg.names() == ["alpha"]
    with pytest.raises(LookupError, match=r"unknown widget 'alpah'; did you mean 'alpha'\? \(known: alpha\)"):
        reg.lookup("alpah")
    assert reg.resolve("falign.registry:Registry") is Registry
    with pytest.raises(LookupError, match="widget 'nope.mod:x': cannot import it"):
        reg.resolve("nope.mod:x")
    scratch = reg.copy()
    scratch.register("beta", b)
    assert "beta" not in reg and scratch.kind == "widget"


def _ring(root: Path, n: int = 40) -> Loaded:
    """Points on two rings, a user's own dataset."""
    g = torch.Generator().manual_seed(0)
    angle = torch.rand(n, generator=g) * 6.283
    y = torch.arange(n) % 2
    r = 1.0 + y.float()
    x = torch.stack([r * angle.cos(), r * angle.sin()], 1)
    split = Split(x, y, torch.arange(n))
    return Loaded(title="rings", train=split, val=split, test=split, classes=["in", "out"],
                  input_shape=(2,), train_transform=ToFloat(), eval_transform=ToFloat())


class Collect(loggers.Logger):
    seen: list[float] = []

    def epoch(self, record, entry) -> None:
        Collect.seen.append(entry.train_loss)


def test_a_users_dataset_and_tracker_are_found_by_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(data_registry, "_REGISTRY", data_registry._REGISTRY.copy())
    monkeypatch.setattr(loggers, "TRACKERS", loggers.TRACKERS.copy())
    data_registry.register_dataset("Two_Rings")(_ring)
    loggers.register_tracker("collect")(Collect)
    assert load_dataset("two-rings", tmp_path).train.x.shape == (40, 2)
    cfg = parse_config({"name": "user", "device": "cpu", "data": {"name": "two_rings"},
                        "model": {"name": "mlp", "options": {"sizes": [2, 8, 2]}}, "rule": {"name": "fa"},
                        "optim": {"name": "sgd", "lr": 0.1}, "train": {"epochs": 2, "batch_size": 10,
                                                                      "loggers": ["collect"]}})
    Collect.seen = []
    record = train(cfg, tmp_path / "run", log=None)
    assert [e.train_loss for e in record.epochs] == Collect.seen and len(Collect.seen) == 2
    with pytest.raises(DatasetError, match="already registered"):
        data_registry.register_dataset("two-rings")(lambda root: None)


def test_an_unknown_tracker_in_a_config_is_one_line_naming_the_nearest() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"train": {"loggers": ["tensorbord"]}})
    msg = str(err.value)
    assert "unknown tracker 'tensorbord'; did you mean 'tensorboard'?" in msg and "\n" not in msg


def test_every_falign_error_is_a_falign_error() -> None:
    """The command line catches one root class: every error class falign defines derives from
    it (control flow -- nothing to plot, a stopped target, an interrupt -- excepted)."""
    import importlib
    import inspect
    import pkgutil

    import falign
    from falign import FalignError

    control = {"NothingToPlot", "_Stop", "Interrupted"}
    found = []
    for info in pkgutil.walk_packages(falign.__path__, "falign."):
        if info.name.startswith("falign.integrations") or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == info.name and issubclass(cls, Exception) and not issubclass(cls, Warning) \
                    and name not in control:
                found.append(cls)
    assert len(found) >= 12
    assert [c.__qualname__ for c in found if not issubclass(c, FalignError)] == []
    # and each kept the built-in class it had: code catching ValueError still catches it
    from falign.training.config import ConfigError

    assert issubclass(ConfigError, ValueError)


def test_a_users_tracker_by_import_path_needs_no_registration(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(data_registry, "_REGISTRY", data_registry._REGISTRY.copy())
    data_registry.register_dataset("two-rings")(_ring)
    cfg = parse_config({"name": "user", "device": "cpu", "data": {"name": "two-rings"},
                        "model": {"name": "mlp", "options": {"sizes": [2, 8, 2]}}, "rule": {"name": "fa"},
                        "optim": {"name": "sgd", "lr": 0.1},
                        "train": {"epochs": 1, "batch_size": 10, "loggers": ["test_registry:Collect"]}})
    Collect.seen = []
    train(cfg, tmp_path / "run", log=None)
    assert len(Collect.seen) == 1
