"""The benchmarks' own tools: the step-time reference ``floor`` (``python -m bench.step_time
--rules floor``: backprop's gradients from a minimal Python autograd Function, whose ratio only
means "what routing a layer's backward through Python costs" if its gradients are backprop's)
and the count of bytecodes a step runs (``python -m bench.python_work``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's bench/
step_time = pytest.importorskip("bench.step_time")

pytestmark = pytest.mark.usefixtures("one_thread")


def _grads(model, x, y):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return [p.grad for p in model.parameters()]


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_the_floor_computes_backprops_gradients_through_its_own_function(kind) -> None:
    torch.manual_seed(0)
    if kind == "mlp":
        base = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 3)).double()
        x = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    else:
        base = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(4, 3, 3, stride=2, bias=False), nn.ReLU(), nn.Flatten(),
                             nn.Linear(3 * 2 * 2, 3)).double()
        x = torch.randn(5, 2, 6, 6, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1, 0])
    floor = step_time.floor_model(base)
    nodes = []
    out = floor(x)
    fn = out.grad_fn
    while fn is not None:  # the layers above the first (whose input needs no gradient) use it
        nodes.append(type(fn).__name__)
        fn = next((f for f, _ in fn.next_functions
                   if f is not None and "AccumulateGrad" not in type(f).__name__), None)
    assert "_FloorFnBackward" in nodes
    for a, b in zip(_grads(base, x, y), _grads(floor, x, y), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def test_the_bytecode_count_of_a_step_is_the_same_every_time_and_sees_the_rules_python() -> None:
    """``bench.python_work`` is useful because it does not spread: two counts of the same steps
    agree exactly, a step of a rule's layers runs more Python than plain PyTorch's, and the
    count includes what autograd calls back into (the rule's backward)."""
    python_work = pytest.importorskip("bench.python_work")
    first = python_work.measure(["fa"], steps=2, warmup=1)
    again = python_work.measure(["fa"], steps=2, warmup=1)
    assert {k: sum(v.values()) for k, v in first.items()} == {k: sum(v.values()) for k, v in again.items()}
    assert sum(first["fa"].values()) > sum(first["plain"].values()) > 0
    assert any(name == "backward" and "kernel.py" in path for path, name, _ in first["fa"])
