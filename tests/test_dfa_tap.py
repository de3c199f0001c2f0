"""DFA's error is taken at the logits, whatever ends the model.

A network that ends in LogSoftmax / Softmax / Sigmoid / Tanh (a module or a functional call)
must get exactly the updates of the same network whose final activation is moved into the
loss; the closed form ``dW_1 = ((e @ B_1^T) * tanh'(a_1))^T x`` is written out here as well.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import falign

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


class Net(nn.Module):
    def __init__(self, final: nn.Module | None = None, functional=None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(6, 5, dtype=DT)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(5, 4, dtype=DT)
        self.final = final
        self.functional = functional

    def forward(self, x):
        z = self.fc2(self.act(self.fc1(x)))
        if self.final is not None:
            z = self.final(z)
        if self.functional is not None:
            z = self.functional(z)
        return z


X = randn(7, 6, seed=1)
Y = torch.tensor([0, 1, 2, 3, 0, 1, 2])
ONEHOT = F.one_hot(Y, 4).to(DT)

# (model's final activation, loss on the model output, the same loss on the logits)
CASES = {
    "log_softmax_nll": (nn.LogSoftmax(dim=1), lambda o: F.nll_loss(o, Y), lambda z: F.cross_entropy(z, Y)),
    "functional_log_softmax_nll": (lambda z: F.log_softmax(z, 1), lambda o: F.nll_loss(o, Y),
                                   lambda z: F.cross_entropy(z, Y)),
    "softmax_mse": (nn.Softmax(dim=1), lambda o: F.mse_loss(o, ONEHOT),
                    lambda z: F.mse_loss(torch.softmax(z, 1), ONEHOT)),
    "sigmoid_bce": (nn.Sigmoid(), lambda o: F.binary_cross_entropy(o, ONEHOT, reduction="sum"),
                    lambda z: F.binary_cross_entropy_with_logits(z, ONEHOT, reduction="sum")),
    "tanh_mse": (nn.Tanh(), lambda o: F.mse_loss(o, ONEHOT), lambda z: F.mse_loss(torch.tanh(z), ONEHOT)),
}


def grads(model: nn.Module, loss_fn) -> list[torch.Tensor]:
    model.zero_grad()
    loss_fn(model(X)).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("case", list(CASES))
def test_dfa_updates_equal_those_of_the_network_ending_in_logits(case) -> None:
    final, on_output, on_logits = CASES[case]
    module = final if isinstance(final, nn.Module) else None
    ended = falign.convert(Net(final=module, functional=None if module else final), "dfa", seed=3)
    logits = falign.convert(Net(), "dfa", seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known activation: taken care of, no warning
        got = grads(ended, on_output)
    expected = grads(logits, on_logits)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # and the closed form of DFA at the logits
    z = logits.fc2(torch.tanh(logits.fc1(X))).detach().requires_grad_(True)
    (e,) = torch.autograd.grad(on_logits(z), z)
    b1 = logits.fc2.feedback  # (5, 4): the input of fc2 receives B e
    a1 = X @ logits.fc1.weight.T + logits.fc1.bias
    delta = (e @ b1.T) * (1 - torch.tanh(a1) ** 2)
    torch.testing.assert_close(got[0], (delta.T @ X).detach(), rtol=1e-10, atol=1e-12)
    # the test can fail: the error after the activation gives another update
    after = falign.convert(Net(final=module, functional=None if module else final), "dfa", seed=3,
                           output="final" if module else "")
    if module is not None:
        assert not torch.allclose(grads(after, on_output)[0], got[0])


def test_a_pointwise_output_falign_cannot_see_through_is_warned_with_the_module_to_tap() -> None:
    model = falign.convert(Net(functional=torch.exp), "dfa")
    with pytest.warns(UserWarning, match="output='<name of the module whose output is the logits>'"):
        model(X).sum().backward()


def test_an_explicit_output_module_is_the_tap() -> None:
    """output='fc2' taps fc2's output: the same as automatic for a LogSoftmax ending."""
    auto = falign.convert(Net(final=nn.LogSoftmax(1)), "dfa", seed=2)
    named = falign.convert(Net(final=nn.LogSoftmax(1)), "dfa", seed=2, output="fc2")
    for a, b in zip(grads(auto, lambda o: F.nll_loss(o, Y)), grads(named, lambda o: F.nll_loss(o, Y)),
                    strict=True):
        torch.testing.assert_close(a, b)


def test_the_wiring_of_a_converted_model_is_found_deep_in_a_module_tree() -> None:
    """set_step finds a converted model's wiring wherever the model sits (a wrapper, a
    Lightning module): the wiring of the first converted layer in ``modules()`` order."""
    from falign.layers.pathways.direct import DirectLayerState, wiring_of

    inner, other = falign.convert(Net(), "dfa", warn=False), falign.convert(Net(), "sdfa", warn=False)
    outer = nn.Sequential(nn.Identity(), nn.ModuleDict({"a": nn.Sequential(nn.ReLU(), inner), "b": other}))
    first = next(m.pathway_state.wiring for m in outer.modules()
                 if isinstance(getattr(m, "pathway_state", None), DirectLayerState))
    assert wiring_of(outer) is first is wiring_of(inner) is not wiring_of(other)
    assert wiring_of(other) is not None and wiring_of(Net()) is None


@pytest.mark.parametrize("copy_with", ["deepcopy", "pickle"])
def test_a_copied_or_unpickled_model_keeps_its_wiring_and_makes_its_lazy_feedback(copy_with) -> None:
    """``wiring_of`` answers None without walking a model while no wiring exists, so every way
    a wiring comes to exist must register it: a deep copy and an unpickled model (of a
    converted model whose B_i still waits for its first forward) are found by ``set_step``,
    and the copy's first forward makes its B_i, as the original's does."""
    import copy
    import gc
    import pickle

    from falign.layers.pathways.direct import wiring as wiring_module

    model = falign.convert(Net(), "drtp", warn=False)  # no example input: B_i made at the first forward
    clone = copy.deepcopy(model) if copy_with == "deepcopy" else pickle.loads(pickle.dumps(model))
    del model
    gc.collect()
    wiring = wiring_module.wiring_of(clone)
    assert wiring is not None and wiring in wiring_module._LIVE
    assert clone.fc2.feedback is None  # (fc1's input needs no gradient: it has no B_i)
    x, y = randn(3, 6, seed=1), torch.tensor([0, 3, 1])
    falign.set_step(clone, targets=y)
    F.cross_entropy(clone(x), y).backward()
    assert clone.fc2.feedback is not None and clone.fc1.weight.grad is not None
    assert wiring_module.wiring_of(Net()) is None


def test_a_backward_pass_asks_the_rule_for_its_signal_once(monkeypatch) -> None:
    """The layers that share a rule project one signal a backward pass (a function of e, the
    step's targets and weight): the rule's direct_signal runs once a pass, again at the next."""
    from falign.rules.sdfa import SDFA

    calls = []
    signal = SDFA.direct_signal
    monkeypatch.setattr(SDFA, "direct_signal", lambda self, *a: calls.append(1) or signal(self, *a))
    torch.manual_seed(0)
    model = falign.convert(nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(),
                                         nn.Linear(5, 4)), "sdfa", warn=False)
    x, y = torch.randn(3, 6, requires_grad=True), torch.tensor([0, 3, 1])
    for passes in (1, 2):
        falign.set_step(model, targets=y)
        F.cross_entropy(model(x), y).backward()
        assert len(calls) == passes
