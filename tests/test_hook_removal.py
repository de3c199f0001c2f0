"""Every hook falign installs is held by the converted model and removed with it (after
captum's ``test_hook_removal``): the pathway's ``detach`` (which ``falign.export`` calls)
leaves no hook on any module, and nothing falign hangs on a user's tensors or on the autograd
graph keeps a deleted model alive."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import falign

X = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 0, 1, 2])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.hidden, self.out = nn.Linear(5, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.out(torch.tanh(self.hidden(h) + h))  # a skip connection: above="cut" collects


def _hooks(model: nn.Module) -> int:
    return sum(len(d) for m in model.modules() for d in (
        m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks))


def _step(model: nn.Module, x: torch.Tensor) -> None:
    falign.set_step(model, targets=Y)
    F.cross_entropy(model(x), Y).backward()


RULES = [("fa", {}), ("kp", {}), ("dfa", {}), ("drtp", {}), ("dkp", {}),
         ("dfa", {"points": ["inp", "hidden"]})]


@pytest.mark.parametrize("rule, options", RULES, ids=[r + ("-points" if o else "") for r, o in RULES])
def test_detach_leaves_no_hook_and_no_falign_module(rule, options):
    model = falign.convert(Net(), rule, seed=1, example_input=X, **options)
    _step(model, X.clone().requires_grad_(True))
    model.falign_pathway.detach(model)
    assert _hooks(model) == 0
    assert not any("falign_point" in m._modules for m in model.modules())
    plain = falign.export(falign.convert(Net(), rule, seed=1, example_input=X, **options))
    assert _hooks(plain) == 0


@pytest.mark.parametrize("rule, options", RULES, ids=[r + ("-points" if o else "") for r, o in RULES])
def test_a_deleted_model_is_freed_while_its_input_lives(rule, options):
    model = falign.convert(Net(), rule, seed=1, example_input=X, **options)
    copy.deepcopy(model)  # a copy shares nothing that keeps the original
    x = X.clone().requires_grad_(True)  # the first layer's input: DFA's above="cut" hooks it
    _step(model, x)
    model(x)  # and a forward whose graph is dropped
    refs = [weakref.ref(m) for m in model.modules()]
    del model
    gc.collect()
    assert x.requires_grad  # x, and the hooks on it, are still there
    assert [r() for r in refs if r() is not None] == []


def test_the_kp_optimizer_pre_hook_goes_with_the_last_learned_layer():
    from torch.optim.optimizer import _global_optimizer_pre_hooks

    import falign.layers.feedback as fb

    gc.collect()
    if len(fb._LEARNED):
        pytest.skip("another test keeps a model with trained feedback alive")
    model = falign.convert(Net(), "kp", seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _step(model, X)
    opt.step()
    assert fb._check_learned in _global_optimizer_pre_hooks.values()
    del model, opt
    gc.collect()
    assert fb._check_learned not in _global_optimizer_pre_hooks.values() and fb._HOOK is None
