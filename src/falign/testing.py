"""The contract every learning rule keeps, as checks a rule's author can run on their own rule.

    import falign.testing
    falign.testing.check_rule(MyRule)              # every check, on every layer case
    falign.testing.check_rule("mypkg.rules:MyRule", processes=False)

falign's own test suite runs the same checks over every registered rule
(``tests/test_contract.py``), so a rule registered by anyone gets them for free:

* ``forward`` -- the converted layer's forward equals the plain layer's, its weight and bias
  gradients are the ordinary local ones, and the gradient it sends to its input equals its
  pathway's formula, written out here in float64 with the B ``effective_feedback()`` returns:
  ``g @ B`` (linear, any leading dims), the transposed convolution with B on the padded input
  (Conv1d/2d/3d with stride, padding modes, 'same', dilation, groups), ``g.flatten(1) @ B``
  (dense), ``e @ B_i^T`` (direct feedback from the error e at the model output);
* ``seed`` -- B is fixed by the rule's seed and the layer's name alone, whatever the global RNG;
* ``state_dict`` -- a round trip into a model made with another seed continues training
  identically;
* ``exact`` -- inside ``falign.exact_backward`` the model computes backprop's gradients, and
  the flags are restored;
* ``autocast`` -- a bf16 autocast training step gives finite gradients close to float32's;
* ``compile`` -- ``torch.compile`` (aot_eager) gives the eager outputs and gradients;
* ``processes`` -- two gloo processes under torchrun end with one process's weights.

Each pathway declares its formula as ``Pathway.reference_input_grad`` (the built-in ones:
``kernel_input_grad``, ``dense_input_grad``, ``direct_input_grad``, importable from here);
a pathway of a user's own declares its own.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers import set_step
from .layers.pathways.dense import dense_input_grad  # noqa: F401  (the formulas, public here)
from .layers.pathways.direct import direct_input_grad  # noqa: F401
from .layers.pathways.kernel import kernel_input_grad  # noqa: F401

DT = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-12}


@dataclass(frozen=True)
class LayerCase:
    id: str
    make: Callable[[], nn.Module]  # the plain layer, float64
    x_shape: tuple[int, ...]


LAYER_CASES = [
    LayerCase("linear", lambda: nn.Linear(5, 4, dtype=DT), (3, 5)),
    LayerCase("linear_leading_dims", lambda: nn.Linear(5, 4, dtype=DT), (2, 3, 5)),
    LayerCase("conv1d_stride_nobias", lambda: nn.Conv1d(2, 4, 3, stride=2, bias=False, dtype=DT), (2, 2, 9)),
    LayerCase("conv2d_pad_dilation_groups",
              lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2, dtype=DT), (2, 4, 9, 8)),
    LayerCase("conv2d_same_reflect",
              lambda: nn.Conv2d(3, 4, (3, 4), padding="same", padding_mode="reflect", dtype=DT),
              (2, 3, 7, 8)),
    LayerCase("conv2d_circular",
              lambda: nn.Conv2d(2, 3, 3, padding=(1, 2), padding_mode="circular", dtype=DT), (2, 2, 6, 7)),
    LayerCase("conv3d", lambda: nn.Conv3d(2, 3, (2, 3, 3), stride=(1, 2, 1), padding=(1, 0, 1), dtype=DT),
              (2, 2, 4, 6, 5)),
]


class _Probe(nn.Module):
    """The layer under test between a gradient-carrying input and a linear head, so every
    pathway (direct ones need a model output) sees a whole model."""

    def __init__(self, layer: nn.Module, out_numel: int) -> None:
        super().__init__()
        self.layer = layer
        self.head = nn.Linear(out_numel, 3, dtype=DT)

    def forward(self, x):
        return self.head(torch.tanh(self.layer(x)).flatten(1))


def _rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=_rng(seed), dtype=DT)


def _rule(rule, options):
    from .rules import get_rule

    return get_rule(rule, **options)


def _convert(model: nn.Module, rule, options, seed: int = 7, example=None) -> nn.Module:
    """``model`` converted; ``example`` shapes every lazy B (rules that train one need it)."""
    from .layers import convert

    the_rule = _rule(rule, {**options, "seed": seed})
    return convert(model, the_rule, warn=False, example_input=example)


NET_INPUT = (2, 2, 5, 5)


def _probe_model(case: LayerCase, init: int = 0) -> nn.Module:
    torch.manual_seed(init)
    layer = case.make()
    with torch.no_grad():
        out_numel = layer(torch.zeros(case.x_shape, dtype=DT))[0].numel()
    return _Probe(layer, out_numel)


# -- the pathways' formulas, written out (each pathway declares its own) ------------------------

def reference_input_grad(layer, x, g, e, targets=None) -> torch.Tensor:
    """The layer's pathway's formula for the gradient sent to ``x`` (``Pathway.
    reference_input_grad``), from B = effective_feedback(); for direct feedback, what B
    multiplies is the rule's ``direct_signal(e, y*, 1/N)``."""
    try:
        return layer.pathway.reference_input_grad(layer, x, g, e, targets)
    except NotImplementedError as err:
        raise AssertionError(str(err)) from None


# -- the checks ---------------------------------------------------------------------------------

def _close(actual, expected, what: str) -> None:
    torch.testing.assert_close(actual, expected, **TOL, msg=lambda m: f"{what}: {m}")


def _pass(model: nn.Module, x: torch.Tensor, target_seed: int = 2, labels: torch.Tensor | None = None):
    """Forward + backward of a fixed loss; (x.grad, output, error at the output, layer's
    upstream gradient, the layer's input).  ``labels`` are the step's (``set_step``)."""
    x = x.detach().clone().requires_grad_(True)
    set_step(model, targets=labels)
    seen: dict[str, torch.Tensor] = {}
    layer = model.layer
    hook = layer.register_full_backward_hook(lambda m, gi, go: seen.__setitem__("g", go[0]))
    out = model(x)
    out.retain_grad()
    loss = (out * _randn(*out.shape, seed=target_seed)).sum() + 0.5 * (out ** 2).sum()
    loss.backward()
    hook.remove()
    return x.grad, out, out.grad, seen.get("g"), x


def check_forward(rule, options: dict[str, Any] | None = None, case: LayerCase = LAYER_CASES[0]) -> None:
    """Forward = the plain layer; local weight/bias gradients; input gradient = the pathway's
    formula with ``effective_feedback()``."""
    options = options or {}
    plain = _probe_model(case)
    model = _convert(copy.deepcopy(plain), rule, options, example=torch.zeros(case.x_shape, dtype=DT))
    x = _randn(*case.x_shape, seed=1)
    labels = torch.arange(case.x_shape[0]) % 3
    model.train()
    for step in range(2):  # the second step uses the B after one optimizer step
        gx, out, e, g, xx = _pass(model, x, labels=labels)
        gx_plain, out_plain, _, _, _ = _pass(plain, x)
        _close(out, out_plain, f"{case.id}: forward")
        layer, ref = model.layer, plain.layer
        # the local weight gradient, from the gradient that reached the layer's output
        y = ref(xx.detach())
        local = torch.autograd.grad(y, [p for p in (ref.weight, ref.bias) if p is not None], g)
        grads = [p.grad for p in (layer.weight, layer.bias) if p is not None]
        for got, want in zip(grads, local, strict=True):
            _close(got, want, f"{case.id}: weight/bias gradient is the local one")
        _close(gx, reference_input_grad(layer, xx.detach(), g, e, labels),
               f"{case.id}: input gradient (step {step})")
        with torch.no_grad():  # an SGD step, and the plain twin takes the new weights
            for p in model.parameters():
                if p.grad is not None:
                    p -= 0.1 * p.grad
            plain.load_state_dict({k: v for k, v in model.state_dict().items() if k in plain.state_dict()})
        model.zero_grad()
        plain.zero_grad()


def _feedbacks(model: nn.Module) -> list[torch.Tensor | None]:
    from .layers import feedback_layers

    return [m.effective_feedback() for _, m in feedback_layers(model)]


def _net(init: int = 123) -> nn.Sequential:
    torch.manual_seed(init)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, dtype=DT), nn.ReLU(),
                         nn.Conv2d(3, 3, 3, padding=1, dtype=DT), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 5 * 5, 4, dtype=DT), nn.Tanh(), nn.Linear(4, 3, dtype=DT))


def _train(model: nn.Module, steps: int, first: int = 0, lr: float = 0.05) -> list[torch.Tensor]:
    grads = []
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.5)
    for t in range(first, first + steps):
        opt.zero_grad()
        y = torch.tensor([t % 3, (t + 1) % 3])
        set_step(model, targets=y)
        out = model(_randn(2, 2, 5, 5, seed=t).requires_grad_(True))
        F.cross_entropy(out, y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        opt.step()
    return grads


def check_seed(rule, options: dict[str, Any] | None = None) -> None:
    """B depends on the rule's seed and the layer names only, not on the global RNG."""
    options = options or {}

    def bs(seed: int, global_seed: int):
        net = _net()  # the same W every time
        torch.manual_seed(global_seed)  # then another global RNG state for the conversion
        model = _convert(net, rule, options, seed=seed, example=torch.zeros(NET_INPUT, dtype=DT))
        torch.manual_seed(global_seed + 1)
        _train(model, 1)
        return _feedbacks(model)

    a, b = bs(4, 1), bs(4, 999)
    for x, y in zip(a, b, strict=True):
        assert (x is None) == (y is None), "B made in one run and not the other"
        if x is not None:
            assert torch.equal(x, y), "B depends on the global RNG"


def check_state_dict(rule, options: dict[str, Any] | None = None) -> None:
    """A round trip of state_dict into a model built with another seed and other weights
    continues training exactly."""
    options = options or {}
    a = _convert(_net(), rule, options, seed=1, example=torch.zeros(NET_INPUT, dtype=DT))
    _train(a, 2)
    buf = tempfile.SpooledTemporaryFile()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = _convert(_net(init=77), rule, options, seed=2, example=torch.zeros(NET_INPUT, dtype=DT))
    b.load_state_dict(torch.load(buf, weights_only=True))
    for x, y in zip(_feedbacks(a), _feedbacks(b), strict=True):
        assert (x is None) == (y is None) and (x is None or torch.equal(x, y)), "B differs after load"
    for ga, gb in zip(_train(a, 2, first=2), _train(b, 2, first=2), strict=True):
        assert torch.equal(ga, gb), "training after a state_dict round trip differs"


def check_exact(rule, options: dict[str, Any] | None = None) -> None:
    """exact_backward gives backprop's gradients and restores every flag."""
    from .layers import exact_backward, feedback_layers

    options = options or {}
    plain = _net()
    model = _convert(copy.deepcopy(plain), rule, options, example=torch.zeros(NET_INPUT, dtype=DT))
    _train(model, 1)  # state made, a step taken
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k in plain.state_dict()})
    x = _randn(2, 2, 5, 5, seed=3)
    y = torch.tensor([0, 2])

    def grads(m):
        xx = x.clone().requires_grad_(True)
        m.zero_grad()
        set_step(m, targets=y)
        F.cross_entropy(m(xx), y).backward()
        return [xx.grad] + [p.grad for n, p in m.named_parameters() if not n.endswith("feedback")]

    with exact_backward(model):
        got = grads(model)
    for a, b in zip(got, grads(plain), strict=True):
        _close(a, b, "exact_backward is backprop")
    assert all(not m.exact for _, m in feedback_layers(model)), "exact flags not restored"


def check_autocast(rule, options: dict[str, Any] | None = None) -> None:
    """A bf16 autocast training step (CPU) gives finite gradients close to float32's."""
    options = options or {}
    torch.manual_seed(0)
    net = _net().float()
    model = _convert(net, rule, options, example=torch.zeros(NET_INPUT))
    x = _randn(4, 2, 5, 5, seed=1).float()
    y = torch.tensor([0, 1, 2, 1])
    ref = copy.deepcopy(model)
    set_step(ref, targets=y)
    F.cross_entropy(ref(x), y).backward()
    set_step(model, targets=y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = F.cross_entropy(out.float(), y)
    loss.backward()
    for (n, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert p.grad is not None and p.grad.dtype == p.dtype and torch.isfinite(p.grad).all(), n
        # bf16 keeps 8 bits of mantissa: the direction of each gradient survives, not its digits
        cos = float(torch.nn.functional.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0))
        assert cos > 0.95, f"{n}: bf16 gradient at cosine {cos:.3f} to float32's"


def check_compile(rule, options: dict[str, Any] | None = None) -> None:
    """torch.compile (aot_eager) gives the eager outputs and gradients for a few steps."""
    options = options or {}
    eager = _convert(_net(), rule, options, example=torch.zeros(NET_INPUT, dtype=DT))
    compiled_model = _convert(_net(), rule, options, example=torch.zeros(NET_INPUT, dtype=DT))
    compiled = torch.compile(compiled_model, backend="aot_eager")
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.1)
    opt_c = torch.optim.SGD(compiled_model.parameters(), lr=0.1)
    for t in range(3):
        x = _randn(2, 2, 5, 5, seed=t).requires_grad_(True)
        y = torch.tensor([t % 3, (t + 2) % 3])
        set_step(eager, targets=y)
        set_step(compiled_model, targets=y)
        oe, oc = eager(x), compiled(x)
        _close(oc, oe, f"compile: output, step {t}")
        F.cross_entropy(oe, y).backward()
        F.cross_entropy(oc, y).backward()
        for (n, p), q in zip(eager.named_parameters(), compiled_model.parameters(), strict=True):
            _close(q.grad, p.grad, f"compile: gradient of {n}, step {t}")
        opt_e.step()
        opt_c.step()
        opt_e.zero_grad()
        opt_c.zero_grad()


_DDP_SCRIPT = """
import sys
from falign.testing import _ddp_worker
_ddp_worker(sys.argv[1], sys.argv[2])
"""


def _ddp_worker(specs: str, out_dir: str) -> None:
    """Under torchrun (or alone): train the tiny net with each (rule, options) of ``specs``
    (JSON) for four SGD-momentum steps of 7 examples (unequal shares) and save the weights."""
    import json

    import torch.distributed as dist

    from .data.core import share_rows
    from .layers import StepContext, train_step
    from .training.distributed import reduce_sum, setup, shard, teardown

    info = setup(torch.device("cpu"))
    for i, (rule, options) in enumerate(json.loads(specs)):
        model = _convert(_net(), rule, options, example=torch.zeros(NET_INPUT, dtype=DT)).float()
        net = nn.parallel.DistributedDataParallel(model) if info.enabled else model
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for t in range(4):
            x, y = _randn(7, 2, 5, 5, seed=t).float(), torch.arange(7) % 3
            n = y.shape[0]
            x, y = shard(info, x, y)

            def loss_fn(o, yy, n=n):  # this process's share of the mean loss
                return F.cross_entropy(o, yy, reduction="sum") * (info.world / n)

            opt.zero_grad()
            ctx = StepContext(loss_fn=loss_fn, world=info.world, reduce=reduce_sum(info), batch=n,
                              sample_offset=share_rows(n, info.rank, info.world)[0])
            train_step(model, net, x, y, ctx)
            opt.step()
        if info.rank == 0:
            torch.save(model.state_dict(), Path(out_dir) / f"{i}.pt")
        if info.enabled:
            dist.barrier()
    teardown(info)


def compare_processes(specs: list[tuple[str, dict[str, Any]]]) -> list[str | None]:
    """For each (rule spec, options): None when two gloo processes (torchrun) end with one
    process's weights, else what differs.  All specs share one launch of each."""
    import json

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "ddp_check.py"
        script.write_text(_DDP_SCRIPT)
        for n in (1, 2):
            (Path(tmp) / str(n)).mkdir()
            cmd = [sys.executable, str(script), json.dumps(specs), str(Path(tmp) / str(n))]
            if n > 1:
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                       str(n), *cmd[1:]]
            run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
            if run.returncode != 0:
                return [f"{n} process(es) failed: {run.stderr[-1500:]}"] * len(specs)
        results: list[str | None] = []
        for i in range(len(specs)):
            one = torch.load(Path(tmp) / "1" / f"{i}.pt", weights_only=True)
            two = torch.load(Path(tmp) / "2" / f"{i}.pt", weights_only=True)
            problem = None
            for key, a in one.items():
                err = float(torch.linalg.vector_norm(a.double() - two[key].double())
                            / torch.linalg.vector_norm(a.double()).clamp_min(1e-12))
                if err > 1e-4:
                    problem = f"2 processes != 1 process at {key}: relative error {err:.2e}"
                    break
            results.append(problem)
    return results


def check_processes(rule, options: dict[str, Any] | None = None, *, rule_path: str | None = None) -> None:
    """Two gloo processes (torchrun) end with the weights of one process.  A user's rule is
    found in the subprocesses by ``rule_path`` (``"mypkg.rules:MyRule"``) or its class's
    import path."""
    if rule_path is None:
        rule_path = rule if isinstance(rule, str) else _import_path(type(_rule(rule, {})))
    (problem,) = compare_processes([(rule_path, options or {})])
    assert problem is None, problem


def _import_path(cls: type) -> str:
    from .rules import rule_names

    return cls.name if cls.name in rule_names() and cls.__module__.startswith("falign.") else \
        f"{cls.__module__}:{cls.__qualname__}"


CHECKS: dict[str, Callable[..., None]] = {
    "seed": check_seed, "state_dict": check_state_dict, "exact": check_exact,
    "autocast": check_autocast, "compile": check_compile, "processes": check_processes,
}


def check_rule(rule, *, processes: bool = True, compile: bool = True, **options: Any) -> None:
    """Run the whole contract on ``rule`` (a registered name, an import path, a Rule class or
    instance) with ``options``; raises AssertionError naming the first broken promise."""
    for case in LAYER_CASES:
        check_forward(rule, options, case)
    for name, check in CHECKS.items():
        if (name == "processes" and not processes) or (name == "compile" and not compile):
            continue
        check(rule, options)
