"""Converted models under ``torch.compile``: the same outputs, gradients and rule state as eager.

Each test trains an eager model and a compiled copy side by side for a few SGD steps on fresh
inputs (float64, so any difference is a bug, not rounding) and compares every output, every
parameter gradient and, at the end, every buffer (B, step counters).  It also checks that the
custom backward itself was compiled: a Function that dynamo gives up on runs eagerly and
leaves its own node (``KernelConvFnBackward``) in the autograd graph; a compiled one is
inside a ``CompiledFunctionBackward``.

The fast tests use dynamo + AOTAutograd with the ``aot_eager`` backend: that is where the
custom backward is traced (or refused); inductor only generates code for the traced graphs and
takes ~30 s a model on two busy cores, so the inductor check is marked slow.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import falign

DT = torch.float64
TOL = {"rtol": 1e-12, "atol": 1e-12}
FUNCTION_NODES = ("KernelLinearFnBackward", "KernelConvFnBackward", "DenseConvFnBackward")

#: B from W and a buffer, no per-step state: the whole model compiles as one graph
KERNEL_RULES = ["bp", "fa", "usf", "frsf", "usf_norm", "usf_norm:spectral"]
#: per-step state or lazily created B: dynamo breaks the graph around the state update only
STATEFUL_RULES = ["brsf", "sign_tracking", "kp", "fa:dense"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add spin-wait on a busy machine
    yield
    torch.set_num_threads(n)
    torch._dynamo.reset()


def _options(spec: str) -> tuple[str, dict]:
    name, _, variant = spec.partition(":")
    if not variant:
        return name, {}
    key = "norm" if name == "usf_norm" else "conv_feedback"
    return name, {key: variant}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        # reflect padding: the layer pre-pads with F.pad before the Function
        nn.Conv2d(4, 4, 3, stride=2, padding=1, padding_mode="reflect"), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.Tanh(), nn.Linear(6, 5),
    ).to(DT)


def _pair(spec: str) -> tuple[nn.Module, nn.Module]:
    """Two identical converted models (same W, same B, same seeds)."""
    name, opts = _options(spec)
    if name == "sign_tracking":
        opts["period"] = 2
    base = _net()
    return (falign.convert(base, name, warn=False, **opts),
            falign.convert(base, name, warn=False, **opts))


def _autograd_nodes(out: torch.Tensor) -> set[str]:
    seen, names, stack = set(), set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack += [n for n, _ in node.next_functions]
    return names


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(step)
    return torch.randn(4, 3, 8, 8, generator=gen, dtype=DT), torch.randint(0, 5, (4,), generator=gen)


def _train_side_by_side(eager: nn.Module, compiled_fn, compiled: nn.Module, steps: int,
                        first: int = 0) -> list[set[str]]:
    """SGD steps on both models, asserting equal outputs and gradients; autograd node names."""
    nodes = []
    for step in range(first, first + steps):
        x, y = _batch(step)
        out_e, out_c = eager(x), compiled_fn(x)
        F.cross_entropy(out_e, y).backward()
        F.cross_entropy(out_c, y).backward()
        nodes.append(_autograd_nodes(out_c))
        torch.testing.assert_close(out_c, out_e, **TOL, msg=f"step {step}: output")
        for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
            assert q.grad is not None, f"step {step}: {name} got no gradient"
            torch.testing.assert_close(q.grad, p.grad, **TOL, msg=f"step {step}: grad {name}")
        with torch.no_grad():
            for p, q in zip(eager.parameters(), compiled.parameters(), strict=True):
                p -= 0.1 * p.grad
                q -= 0.1 * q.grad
                p.grad = q.grad = None
    return nodes


def _same_buffers(eager: nn.Module, compiled: nn.Module) -> None:
    for (name, a), (_, b) in zip(eager.named_buffers(), compiled.named_buffers(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("spec", KERNEL_RULES)
def test_kernel_rules_compile_as_one_graph_with_the_custom_backward(spec: str) -> None:
    eager, model = _pair(spec)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # raises on any break
    nodes = _train_side_by_side(eager, compiled, model, steps=3)
    assert nodes[-1] == {"CompiledFunctionBackward", "AccumulateGrad"}, nodes[-1]
    _same_buffers(eager, model)
    explain = torch._dynamo.explain(model)(_batch(9)[0])
    assert explain.graph_count == 1 and explain.graph_break_count == 0, explain.break_reasons


@pytest.mark.parametrize("spec", STATEFUL_RULES)
def test_stateful_rules_compile_the_custom_backward_and_do_not_recompile_each_step(spec: str) -> None:
    from torch._dynamo.utils import counters

    eager, model = _pair(spec)
    compiled = torch.compile(model, backend="aot_eager")
    nodes = _train_side_by_side(eager, compiled, model, steps=2)
    graphs = counters["stats"]["unique_graphs"]
    # step counters, brsf redraws (period 1) and sign-tracking copies (period 2) go on changing;
    # before the state update ran outside the graph every step recompiled (dynamo specialises
    # on the int step), and after 8 recompiles the whole layer ran eagerly
    nodes += _train_side_by_side(eager, compiled, model, steps=3, first=2)
    assert counters["stats"]["unique_graphs"] == graphs, "recompiled after the first steps"
    for names in nodes:
        assert not names & set(FUNCTION_NODES), f"a Function ran eagerly: {sorted(names)}"
        assert "CompiledFunctionBackward" in names
    _same_buffers(eager, model)
    if model[2].rule.stateful:  # five optimizer steps, counted once read
        model[2].effective_feedback()
        assert int(model[2].feedback_step) == 5


@pytest.mark.parametrize("eager_first", [False, True])
def test_dfa_under_compile_matches_eager_even_with_an_earlier_error_in_the_context(
        eager_first: bool) -> None:
    # DFA's backward reads e from the wiring that the tap's pre-hook fills earlier in
    # the same pass.  Traced at forward time it would bake in the e of the previous step: with
    # ``eager_first`` the context holds one when compilation starts (this gave wrong gradients
    # before the DFA Function was kept out of the graph).
    eager, model = _pair("dfa")
    first = 0
    if eager_first:
        _train_side_by_side(eager, model, model, steps=1)  # both eager: makes B, leaves an e
        first = 1
    compiled = torch.compile(model, backend="aot_eager")
    nodes = _train_side_by_side(eager, compiled, model, steps=3, first=first)
    # the DFA Functions stay eager by design (see falign.layers.pathways.direct._eager)
    assert {"DirectConvFnBackward", "DirectLinearFnBackward"} <= nodes[-1]
    _same_buffers(eager, model)


def test_plain_use_of_the_layers_does_not_import_dynamo() -> None:
    import subprocess
    import sys

    code = ("import sys, torch, falign\n"
            "m = falign.convert(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh(),"
            " torch.nn.Linear(3, 2)), 'brsf', warn=False)\n"
            "m(torch.randn(2, 3)).sum().backward()\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["fa", "brsf"])
def test_inductor_matches_eager(spec: str) -> None:
    eager, model = _pair(spec)
    compiled = torch.compile(model, fullgraph=spec == "fa")
    x, y = _batch(0)
    out_e, out_c = eager(x), compiled(x)
    F.cross_entropy(out_e, y).backward()
    F.cross_entropy(out_c, y).backward()
    assert not _autograd_nodes(out_c) & set(FUNCTION_NODES)
    torch.testing.assert_close(out_c, out_e, rtol=1e-10, atol=1e-10)
    for (name, p), q in zip(eager.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-10, atol=1e-10, msg=name)
