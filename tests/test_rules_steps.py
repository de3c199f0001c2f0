"""Training dynamics against brute-force twins: Kolen-Pollack under any optimizer and schedule,
rule state once per optimizer step, and ``effective_feedback()`` at every point of the cycle.

The twins are written here without falign: a 5-7-6-3 tanh MLP whose backward is spelled out
by hand (``delta_i = (delta_{i+1} @ B_{i+1}) * tanh'(a_i)``), and for KP an explicit tensor B_i
in the same optimizer with ``B_i.grad = W_i.grad`` -- the definition of Kolen-Pollack.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import falign

DT = torch.float64
SIZES = [5, 7, 6, 3]
pytestmark = pytest.mark.usefixtures("one_thread")


def randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def mlp() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(5, 7, dtype=DT), nn.Tanh(), nn.Linear(7, 6, dtype=DT), nn.Tanh(),
                         nn.Linear(6, 3, dtype=DT))


def batch(t: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    return randn(n, 5, seed=1000 + t), torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(t))


class Twin:
    """The MLP with W_i, b_i, B_i as explicit tensors and the FA-style backward by hand."""

    def __init__(self, model: nn.Sequential) -> None:
        layers = [model[0], model[2], model[4]]
        self.w = [m.weight.detach().clone().requires_grad_(True) for m in layers]
        self.b = [m.bias.detach().clone().requires_grad_(True) for m in layers]
        self.fb = [m.feedback.detach().clone().requires_grad_(True) for m in layers]

    def params(self) -> list[torch.Tensor]:  # the converted model's parameters() order
        return [t for i in range(3) for t in (self.w[i], self.b[i], self.fb[i])]

    def backward(self, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> None:
        """Accumulate the rule's gradients into .grad (like loss.backward())."""
        hs, acts = [x], []
        for i in range(3):
            a = hs[-1] @ self.w[i].detach().T + self.b[i].detach()
            acts.append(a)
            hs.append(torch.tanh(a) if i < 2 else a)
        out = hs[-1].detach().requires_grad_(True)
        (delta,) = torch.autograd.grad(F.cross_entropy(out, y) * scale, out)  # dL/dlogits
        for i in (2, 1, 0):
            gw, gb = delta.T @ hs[i], delta.sum(0)
            for p, g in ((self.w[i], gw), (self.b[i], gb), (self.fb[i], gw.clone())):  # B.grad = W.grad
                p.grad = g if p.grad is None else p.grad + g
            if i:
                delta = (delta @ self.fb[i].detach()) * (1 - torch.tanh(acts[i - 1]) ** 2)


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05),
    "momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2),
    "nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}
SCHEDULES = {
    "constant": None,
    "multistep": lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[10, 30], gamma=0.3),
    "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=60),
}
STEPS = 60


def assert_same(model: nn.Sequential, twin: Twin, rtol: float = 1e-9) -> None:
    for i, m in enumerate([model[0], model[2], model[4]]):
        torch.testing.assert_close(m.weight.detach(), twin.w[i].detach(), rtol=rtol, atol=1e-12)
        torch.testing.assert_close(m.feedback.detach(), twin.fb[i].detach(), rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("optim", list(OPTIMIZERS))
def test_kp_equals_its_brute_force_twin_under_any_optimizer_and_schedule(optim, schedule) -> None:
    model = falign.convert(mlp(), "kp", seed=1)
    twin = Twin(model)
    opts = [OPTIMIZERS[optim](model.parameters()), OPTIMIZERS[optim](twin.params())]
    scheds = [SCHEDULES[schedule](o) for o in opts] if SCHEDULES[schedule] else []
    start = [m.feedback.detach().clone() for m in (model[0], model[2], model[4])]
    for t in range(STEPS):
        x, y = batch(t)
        for o in opts:
            o.zero_grad()
        F.cross_entropy(model(x), y).backward()
        twin.backward(x, y)
        for o in opts:
            o.step()
        for s in scheds:
            s.step()
    assert_same(model, twin)
    # the test can fail: B moved away from B0
    for m, b0 in zip((model[0], model[2], model[4]), start, strict=True):
        assert not torch.allclose(m.feedback.detach(), b0)


def test_kp_with_gradient_accumulation_grad_scaler_and_clipping() -> None:
    """B's gradient is W's final gradient: accumulated over micro-batches, scaled and unscaled
    once by a GradScaler, clipped together with the rest by clip_grad_norm_."""
    model = falign.convert(mlp(), "kp", seed=2)
    twin = Twin(model)
    opts = [torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2),
            torch.optim.SGD(twin.params(), lr=0.1, momentum=0.9, weight_decay=1e-2)]
    scalers = [torch.amp.GradScaler("cpu", init_scale=1024.0) for _ in opts]
    for t in range(20):
        for o in opts:
            o.zero_grad()
        for k in range(3):  # three micro-batches, one step
            x, y = batch(100 * t + k, n=4)
            scalers[0].scale(F.cross_entropy(model(x), y)).backward()
            scalers[1].scale(torch.zeros((), dtype=DT))  # the twin's scaler starts like the model's
            twin.backward(x, y, scale=scalers[1].get_scale())
        for o, s, params in zip(opts, scalers, (list(model.parameters()), twin.params()), strict=True):
            s.unscale_(o)
            torch.nn.utils.clip_grad_norm_(params, max_norm=0.5)
            s.step(o)
            s.update()
    assert_same(model, twin)


def test_kp_b_left_out_of_w_parameter_group_is_an_error() -> None:
    model = falign.convert(mlp(), "kp")
    F.cross_entropy(model(batch(0)[0]), batch(0)[1]).backward()
    without_b = [p for n, p in model.named_parameters() if not n.endswith("feedback")]
    with pytest.raises(falign.layers.FeedbackError, match="layer '0'.*'0.feedback'"):
        torch.optim.SGD(without_b, lr=0.1).step()
    with_b_apart = torch.optim.SGD([{"params": without_b},
                                    {"params": [p for n, p in model.named_parameters()
                                                if n.endswith("feedback")], "lr": 0.0}], lr=0.1)
    with pytest.raises(falign.layers.FeedbackError):
        with_b_apart.step()
    torch.optim.SGD(model.parameters(), lr=0.1).step()  # all of them: fine


def test_kp_checkpoint_of_the_old_format_still_loads() -> None:
    """Format 1 stored B - W (the closed form of an SGD-only KP); loading makes B."""
    model = falign.convert(mlp(), "kp", seed=4)
    sd = model.state_dict()
    old = {k: (v - sd[k[: -len("feedback")] + "weight"] if k.endswith(".feedback") else v)
           for k, v in sd.items()}
    old = type(sd)(old)
    old._metadata = {k: {**v, "version": 1} if k else dict(v) for k, v in sd._metadata.items()}
    fresh = falign.convert(mlp(), "kp", seed=9)
    fresh.load_state_dict(old)
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- one state change per step


class Twice(nn.Module):
    """One square layer used twice in a forward, then a head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.inp = nn.Linear(4, 6, dtype=DT)
        self.shared = nn.Linear(6, 6, dtype=DT)
        self.head = nn.Linear(6, 3, dtype=DT)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.shared(h))
        h = torch.tanh(self.shared(h))
        return self.head(h)


def expected_b(rule: str, layer, t: int, copies: dict[int, torch.Tensor]) -> torch.Tensor:
    """B after t optimizer steps from the rules' definitions (copies: W at each copy step)."""
    w = layer.weight.detach()
    std = math.sqrt(2.0 / sum(w.shape))
    if rule == "brsf":
        gen = torch.Generator().manual_seed(int(layer.feedback_seed) + 1_000_003 * (t + 1))
        return torch.randn(w.shape, generator=gen, dtype=DT).abs() * std * torch.sign(w)
    last = max(c for c in copies if c <= t)
    return torch.sign(copies[last])  # sign_tracking, scale 1


@pytest.mark.parametrize("loop", ["torch_optimizer", "hand_written"])
@pytest.mark.parametrize("rule", ["brsf", "sign_tracking"])
def test_one_state_change_per_optimizer_step_with_a_shared_layer_and_accumulation(rule, loop) -> None:
    model = falign.convert(Twice(), rule, **({"period": 2} if rule == "sign_tracking" else {}))
    layer = model.shared
    opt = torch.optim.SGD(model.parameters(), lr=0.2) if loop == "torch_optimizer" else None
    copies: dict[int, torch.Tensor] = {}
    for t in range(6):
        if t % 2 == 0:
            copies[t] = layer.weight.detach().clone()
        b = expected_b(rule, layer, t, copies)
        torch.testing.assert_close(layer.effective_feedback(), b)
        for k in range(3):  # three micro-batches, each using `shared` twice
            x = randn(4, 4, seed=10 * t + k)
            signals = []
            hook = layer.register_full_backward_hook(
                lambda m, gi, go, seen=signals: seen.append((gi[0], go[0])))
            F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
            hook.remove()
            assert len(signals) == 2  # both uses
            for grad_in, grad_out in signals:
                torch.testing.assert_close(grad_in, grad_out @ b)  # every use, every micro-batch: one B
            assert int(layer.feedback_step) == t
        if opt is not None:
            opt.step()
            opt.zero_grad()
        else:
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.2 * p.grad
                    p.grad = None
    model.state_dict()
    assert int(layer.feedback_step) == 6 == int(model.inp.feedback_step) == int(model.head.feedback_step)


def test_kp_makes_one_update_per_step_with_a_shared_layer_and_accumulation() -> None:
    model = falign.convert(Twice(), "kp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    b0 = model.shared.feedback.detach().clone()
    for k in range(3):
        F.cross_entropy(model(randn(4, 4, seed=k)), torch.tensor([0, 1, 2, 0])).backward()
    g = model.shared.weight.grad.clone()
    torch.testing.assert_close(model.shared.feedback.grad, g)  # both uses, three micro-batches
    opt.step()
    torch.testing.assert_close(model.shared.feedback.detach(), b0 - 0.1 * g)


# --------------------------------------------------------------------------- effective_feedback


def _probe_b(model: nn.Module, layer, seed: int) -> torch.Tensor:
    """The B the layer's backward actually uses, read off an input gradient (g = I rows)."""
    ins = layer.in_features
    x = randn(layer.out_features, ins, seed=seed).requires_grad_(True)
    out = layer(x)
    (gx,) = torch.autograd.grad(out, x, torch.eye(layer.out_features, dtype=DT))
    return gx  # row j = e_j @ B = B[j]


KERNEL_RULES = [r for r in falign.rules() if falign.get_rule(r).pathway in ("kernel", "exact")]


@pytest.mark.parametrize("rule", KERNEL_RULES)
def test_effective_feedback_is_the_b_of_the_next_backward_at_every_point_of_the_cycle(rule) -> None:
    model = falign.convert(mlp(), rule, **({"period": 2} if rule == "sign_tracking" else {}))
    layer = model[2]
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
    for t in range(5):
        x, y = batch(t)
        points = {"before forward": layer.effective_feedback()}
        out = model(x)
        points["after forward"] = layer.effective_feedback()
        F.cross_entropy(out, y).backward()
        points["after backward"] = layer.effective_feedback()
        used = _probe_b(model, layer, seed=t)  # same step: the B this step's backward used
        for where, b in points.items():
            torch.testing.assert_close(b, used, msg=f"step {t}, {where}")
        opt.step()
        opt.zero_grad()
        after_step = layer.effective_feedback()
        model.zero_grad()
        torch.testing.assert_close(after_step, _probe_b(model, layer, seed=50 + t),
                                   msg=f"step {t}, after step")
