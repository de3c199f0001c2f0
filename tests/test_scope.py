"""Scoped looks into a model leave nothing behind: every hook an analysis installs is removed and
every module's train/eval flag restored, after a normal exit and after an error (captum's
``test_hook_removal`` is the model)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import falign
from falign.analysis.alignment import StepProbe, capture_inputs, measure_alignment
from falign.analysis.cka import cka_matrix, layer_activations
from falign.analysis.gradcam import channel_importance, exemplars, gradcam_map, top_activating
from falign.layers.scope import INPUT, capture, eval_mode

pytestmark = pytest.mark.usefixtures("one_thread")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(self.act(self.bn(self.conv(x))).flatten(1))


def hooks(model: nn.Module) -> dict[str, tuple[int, int, int, int]]:
    return {n: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                len(m._backward_pre_hooks)) for n, m in model.named_modules()}


def modes(model: nn.Module) -> dict[str, bool]:
    return {n: m.training for n, m in model.named_modules()}


X = torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(0))
Y = torch.arange(8) % 3


@pytest.mark.parametrize("rule", ["bp", "fa", "dfa", "kp"])
def test_no_analysis_leaves_a_hook_or_a_changed_mode(rule) -> None:
    torch.manual_seed(0)
    model = falign.convert(Net(), rule, example_input=X)
    model.train()
    model.bn.eval()  # a frozen part: its own flag must survive
    before, flags = hooks(model), modes(model)
    analyses = [
        lambda: layer_activations(model, X, ["conv", "fc"]),
        lambda: cka_matrix(model, model, X, ["conv"], ["fc"]),
        lambda: channel_importance(model, "conv", X, Y),
        lambda: gradcam_map(model, "conv", X, Y, gradient="feedback"),
        lambda: exemplars(model, "conv", X, Y, k=2, n=3),
        lambda: top_activating(model, "conv", X, [0, 1], n=3),
        lambda: measure_alignment(model, X, Y, F.cross_entropy),
    ]
    for run in analyses:
        run()
        assert hooks(model) == before and modes(model) == flags
    probe = StepProbe(model)
    with probe.capture():
        falign.set_step(model, targets=Y)
        F.cross_entropy(model(X), Y).backward()
    probe.finish(X, Y, F.cross_entropy)
    assert hooks(model) == before and modes(model) == flags


def test_hooks_and_modes_are_restored_after_an_error() -> None:
    model = Net().train()
    before = hooks(model)
    with pytest.raises(ZeroDivisionError), eval_mode(model), capture(model, ["conv", "fc"], inputs=True):
        assert not model.training and not model.conv.training
        assert hooks(model) != before
        model(X)
        raise ZeroDivisionError
    assert hooks(model) == before and all(modes(model).values())
    with pytest.raises(RuntimeError, match="ran more than once"), capture(model, ["conv"]):
        model.conv(X)
        model.conv(X)
    assert hooks(model) == before


def test_capture_keeps_copies_leaves_and_views() -> None:
    model = Net().eval()
    with capture(model, ["bn"], inputs=True) as store:
        out = model(X)
    # a copy: the in-place ReLU after bn did not reach it
    assert (store["bn"] < 0).any() and torch.equal(store["bn" + INPUT], model.conv(X).detach())
    with capture(model, ["conv"], leaf=True) as store:
        out = model(X)
    out.sum().backward()
    assert store["conv"].grad is not None and model.conv.weight.grad is None  # backward stopped there
    with capture(model, ["conv"], retain_grad=True, once=False) as store:
        model(X).sum().backward()
        model(X)
    assert store["conv"].grad is None  # the last run's view, before its backward
    with pytest.raises(ValueError, match="no submodule named \\['nope'\\]"), capture(model, ["nope"]):
        pass


def test_capture_inputs_keeps_its_keys() -> None:
    """The public capture_inputs: a layer's input under its name, its output under name + OUT."""
    from falign.analysis.alignment import OUT

    model = falign.convert(Net(), "fa")
    with capture_inputs(model) as inputs:
        model(X.clone().requires_grad_(True)).sum().backward()
    assert sorted(inputs) == sorted(["conv", "conv" + OUT, "fc", "fc" + OUT])
    assert inputs["fc"].shape == (8, 144) and inputs["fc" + OUT].shape == (8, 3)
    assert inputs["fc" + OUT].grad is not None


def test_the_optimizer_hook_of_trained_feedback_goes_with_the_last_such_layer() -> None:
    """Kolen-Pollack's check that B is stepped with W is an optimizer step pre-hook, which
    torch offers process-wide only: it exists while a layer with trained B does."""
    import gc

    from torch.optim.optimizer import _global_optimizer_pre_hooks

    import falign.layers.feedback as fb

    def installed() -> bool:
        return fb._check_learned in _global_optimizer_pre_hooks.values()

    gc.collect()
    alive = len(fb._LEARNED)
    a = falign.convert(Net(), "kp", example_input=X)
    b = falign.convert(Net(), "dkp", example_input=X)
    assert installed() and list(_global_optimizer_pre_hooks.values()).count(fb._check_learned) == 1
    del a
    gc.collect()
    assert installed()  # b still trains its B
    del b
    gc.collect()
    assert len(fb._LEARNED) == alive
    if not alive:
        assert not installed() and fb._HOOK is None
