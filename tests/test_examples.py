"""The shipped examples run and check what they claim."""

from __future__ import annotations

import runpy
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_xor_example_learns_and_matches_the_hand_written_rule(capsys) -> None:
    main = runpy.run_path(str(EXAMPLES / "xor.py"))["main"]
    assert main() == 0
    out = capsys.readouterr().out
    assert "equals (d_logits @ B) * relu'(a) rule: True" in out
    assert "FA learned XOR: True" in out


# ------------------------------------------------------------------------ a rule of one's own

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import ClassVar  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402
from conftest import DATA, ONE_THREAD, mnist_or_skip, tiny_config  # noqa: E402

import falign  # noqa: E402


@pytest.fixture
def registry_as_before():
    """The example registers its rule in this process: take it out again afterwards, so the
    tests that list the registry see falign's own rules."""
    from falign.layers.pathways import base
    from falign.rules import registry

    before, pathways = dict(registry._REGISTRY), dict(base._PATHWAYS)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)
    dict.clear(base._PATHWAYS)
    dict.update(base._PATHWAYS, pathways)


def test_custom_rule_example_passes_the_contract_suite_and_learns(capsys, registry_as_before) -> None:
    main = runpy.run_path(str(EXAMPLES / "custom_rule.py"), run_name="custom_rule_example")["main"]
    assert main(steps=150) == 0
    out = capsys.readouterr().out
    assert "contract suite: passed" in out and "entries non-zero" in out


def test_register_rule_refuses_a_second_class_under_a_taken_name(registry_as_before) -> None:
    with pytest.raises(falign.RuleError, match="already registered"):
        @falign.register_rule
        @dataclass
        class Impostor(falign.Rule):
            name: ClassVar[str] = "fa"

            def matrix(self, weight, feedback):
                return weight


def _env() -> dict[str, str]:
    return {**os.environ, **ONE_THREAD, "FALIGN_DATA": str(DATA), "PYTHONPATH": str(EXAMPLES)}


def test_a_users_rule_from_a_config_trains_saves_and_reloads(tmp_path) -> None:
    mnist_or_skip()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(rule={"name": "custom_rule:SparseFA",
                                                    "options": {"density": 0.5}})))
    run = subprocess.run([sys.executable, "-m", "falign", "train", str(cfg), "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, env=_env(), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    tracking = json.loads((tmp_path / "r" / "tracking.json").read_text())
    assert tracking["config"]["rule"]["name"] == "custom_rule:SparseFA"
    assert tracking["model_spec"]["rule"] == "custom_rule:SparseFA"
    best = str(tmp_path / "r" / "best.pt")
    check = (f"from falign.training import load_model; m = load_model({best!r}); "
             "print(type(m.layers[1].rule).__name__, m.layers[1].rule.density)")
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=_env(),
                            timeout=120)
    assert loaded.stdout.split() == ["SparseFA", "0.5"], loaded.stderr[-2000:]


def test_a_users_rule_in_compare_and_with_set(tmp_path) -> None:
    mnist_or_skip()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(rule={"name": "bp"})))
    run = subprocess.run([sys.executable, "-m", "falign", "compare", "--config", str(cfg), "--rules",
                          "bp,custom_rule:SparseFA", "--out", str(tmp_path / "c")],
                         capture_output=True, text=True, env=_env(), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "c" / "custom_rule-SparseFA" / "tracking.json").exists()
    run = subprocess.run([sys.executable, "-m", "falign", "train", str(cfg), "--set",
                          "rule.name=custom_rule:SparseFA", "--set", "rule.options.density=0.25",
                          "--out", str(tmp_path / "t")], capture_output=True, text=True, env=_env(),
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


def test_a_users_rule_and_model_in_a_sweep(tmp_path) -> None:
    """A sweep's grid over a user's rule (``module:Class``) on a user's model
    (``model.name: module:function``): every grid point trains that rule on that model, and the
    final run's checkpoint rebuilds both (a builder it names must be registered, so that an
    untrusted checkpoint cannot call any function)."""
    mnist_or_skip()
    (tmp_path / "mymodels.py").write_text(
        "import math\n\nfrom torch import nn\n\nfrom falign.models import register_model\n\n\n"
        "@register_model('my-mlp')  # a checkpoint may rebuild only registered builders\n"
        "def build(in_shape=(1, 28, 28), num_classes=10, hidden=16):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), hidden), nn.Tanh(),\n"
        "                         nn.Linear(hidden, num_classes))\n")
    cfg = tiny_config(model={"name": "mymodels:build", "options": {"hidden": 16}},
                      rule={"name": "custom_rule:SparseFA"})
    cfg["sweep"] = {"sampler": "grid", "trial_epochs": 1, "final_epochs": 1, "final_seeds": [0],
                    "rules": {"custom_rule:SparseFA": {"params": {"rule.options.density": [0.25, 0.5]}}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**_env(), "PYTHONPATH": os.pathsep.join([str(EXAMPLES), str(tmp_path)])}
    run = subprocess.run([sys.executable, "-m", "falign", "sweep", str(path), "--out", str(tmp_path / "s")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    trials = sorted((tmp_path / "s" / "trials").glob("*/tracking.json"))
    densities = sorted(json.loads(t.read_text())["config"]["rule"]["options"]["density"] for t in trials)
    assert densities == [0.25, 0.5]
    for t in trials:
        record = json.loads(t.read_text())
        assert record["config"]["model"]["name"] == "mymodels:build"
        assert record["model_spec"]["rule"] == "custom_rule:SparseFA"
    finals = list((tmp_path / "s" / "final").glob("*/best.pt"))
    assert len(finals) == 1
    check = (f"from falign.training import load_model; m = load_model({str(finals[0])!r}); "
             "print(type(m[1].rule).__name__, m[1].weight.shape[0])")
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env,
                            timeout=120)
    assert loaded.stdout.split() == ["SparseFA", "16"], loaded.stderr[-2000:]


# ------------------------------------------------------------------------ the training stacks


def _shakespeare_or_skip() -> None:
    if not (DATA / "shakespeare" / "shakespeare.txt").is_file():
        pytest.skip(f"the Shakespeare text is not under {DATA} (set FALIGN_DATA)")


@pytest.mark.usefixtures("one_thread")
def test_lightning_example_trains_fa_logs_alignment_and_exports_a_plain_model(capsys, monkeypatch) -> None:
    pytest.importorskip("lightning")
    _shakespeare_or_skip()
    monkeypatch.setenv("FALIGN_DATA", str(DATA))
    main = runpy.run_path(str(EXAMPLES / "lightning_fa.py"), run_name="lightning_example")["main"]
    assert main(steps=30) == 0
    out = capsys.readouterr().out
    assert "step 25: update_angle" in out  # read back from Lightning's CSV logger
    assert "export: a plain CharTransformer, strict load, same outputs: True" in out


@pytest.mark.usefixtures("one_thread")
def test_hf_trainer_example_trains_dfa_at_ln_f_and_saves_a_plain_gpt2(capsys, monkeypatch) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    _shakespeare_or_skip()
    monkeypatch.setenv("FALIGN_DATA", str(DATA))
    main = runpy.run_path(str(EXAMPLES / "hf_trainer_dfa.py"), run_name="hf_example")["main"]
    assert main(steps=30) == 0
    out = capsys.readouterr().out
    assert "DFA taps transformer.ln_f (E = 64" in out
    assert "step 25: update_angle" in out  # read back from the Trainer's log history
    assert "same logits: True" in out


# ------------------------------------------------------------------------ a pathway of one's own

def test_custom_pathway_example_passes_the_contract_suite_and_learns(capsys, monkeypatch,
                                                                    registry_as_before) -> None:
    import importlib

    # imported as a module (not run from its path): torch.compile's check imports the module
    # that defines the example's autograd Function by name
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.delitem(sys.modules, "custom_pathway", raising=False)
    main = importlib.import_module("custom_pathway").main
    assert main(steps=200) == 0
    out = capsys.readouterr().out
    assert "contract suite: passed" in out and "learned the task: True" in out


def test_a_users_pathway_from_a_config_trains_saves_and_reloads(tmp_path) -> None:
    """The rule that takes the pathway is named by import path in the config; importing its
    module registers the pathway, in training and again when the checkpoint is reloaded."""
    mnist_or_skip()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(rule={"name": "custom_pathway:NormalizedFA"})))
    run = subprocess.run([sys.executable, "-m", "falign", "train", str(cfg), "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, env=_env(), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    best = str(tmp_path / "r" / "best.pt")
    check = (f"from falign.training import load_model; m = load_model({best!r}); "
             "print(m.layers[1].pathway.name, m.layers[1].pathway.reference_input_grad.__qualname__)")
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=_env(),
                            timeout=120)
    assert loaded.stdout.split() == ["normalized_kernel", "NormalizedKernel.reference_input_grad"], \
        loaded.stderr[-2000:]


def test_a_pathway_named_by_import_path(tmp_path, monkeypatch, registry_as_before) -> None:
    (tmp_path / "mypathways.py").write_text(
        "from falign.layers.pathways.kernel import Kernel\n\n\n"
        "class Twice(Kernel):\n    name = 'twice_kernel'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from falign.layers.pathways import PathwayError, get_pathway, pathway_names

    assert get_pathway("mypathways:Twice").name == "twice_kernel"
    assert "twice_kernel" in pathway_names()
    assert get_pathway("twice_kernel") is get_pathway("mypathways:Twice")
    with pytest.raises(PathwayError, match="cannot import"):
        get_pathway("mypathways:Nothing")
    with pytest.raises(PathwayError, match="not a falign Pathway"):
        get_pathway("mypathways:Kernel.__init__")
