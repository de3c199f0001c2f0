"""Per-step state of the rules (redraws, refreshes, decay), seeds, and state_dict round trips.

After every training forward the B the rule's definition says is written out here from W and the
stored buffer, compared with ``effective_feedback()`` and with the input gradient backward produced.
"""

from __future__ import annotations

import hashlib
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import falign

DT = torch.float64
TOL = {"rtol": 1e-12, "atol": 1e-12}
pytestmark = pytest.mark.usefixtures("one_thread")


def close(actual, expected) -> None:
    torch.testing.assert_close(actual, expected, **TOL)


def randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def sign(t: torch.Tensor) -> torch.Tensor:
    return torch.sign(t.detach())


def fro(t: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((t * t).sum())


def linear_layer(rule, *, seed=0, in_f=6, out_f=4, init=0, **opts):
    torch.manual_seed(init)
    return falign.convert(nn.Sequential(nn.Linear(in_f, out_f, dtype=DT)), rule, seed=seed, **opts)[0]


def train_forward(layer, step_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One training forward + backward with a fixed upstream gradient; (input grad, g)."""
    x = randn(3, layer.in_features, seed=100 + step_seed).requires_grad_(True)
    y = layer(x)
    g = randn(*y.shape, seed=200 + step_seed)
    y.backward(g)
    return x.grad, g


def set_weight(layer, seed: int) -> torch.Tensor:
    with torch.no_grad():
        layer.weight.copy_(randn(*layer.weight.shape, seed=seed))
    return layer.weight.detach().clone()


def xavier(layer) -> float:
    return math.sqrt(2.0 / (layer.in_features + layer.out_features))


# --------------------------------------------------------------------------- 5. B per step


@pytest.mark.parametrize("rule,opts", [
    ("usf", {}), ("usf", {"scale": 0.7}), ("frsf", {}), ("usf_norm", {}), ("usf_norm", {"norm": "spectral"}),
    ("usf_norm", {"norm": "spectral", "scale": 3.0}),
], ids=lambda v: str(v))
def test_sign_family_b_follows_the_current_weight_every_step(rule, opts) -> None:
    layer = linear_layer(rule, **opts)
    stored0 = layer.feedback.clone() if layer.feedback is not None else None
    for t in range(1, 5):
        w = set_weight(layer, seed=t)  # as if an optimiser had moved W
        gx, g = train_forward(layer, t)
        s = sign(w)
        if rule == "usf":
            b = opts.get("scale", xavier(layer)) * s
            assert layer.feedback.dim() == 0
        elif rule == "frsf":
            assert torch.equal(layer.feedback, stored0)  # |B0| is fixed
            b = stored0 * s
        elif opts.get("norm") == "spectral":
            sv = torch.linalg.svdvals
            b = opts.get("scale", 1.0) * sv(w)[0] / sv(s)[0] * s
        else:
            b = fro(w) / fro(s) * s
        close(layer.effective_feedback(), b)
        close(gx, g @ b)


def test_frsf_magnitude_is_fixed_nonnegative_and_random() -> None:
    layer = linear_layer("frsf")
    b0 = layer.feedback
    assert bool((b0 >= 0).all()) and b0.shape == layer.weight.shape
    assert len(torch.unique(b0)) == b0.numel()


def sgd_step(layer, lr: float = 0.1) -> None:
    """A hand-written optimizer step (no torch optimizer): W changes in place."""
    with torch.no_grad():
        for p in layer.parameters():
            if p.grad is not None:
                p -= lr * p.grad
                p.grad = None


def brsf_draw(layer, t: int) -> torch.Tensor:
    """|R| of the B used after t optimizer steps: N(0, std^2) from the generator seeded with
    (layer seed, t + 1), written out here from the rule's definition."""
    gen = torch.Generator().manual_seed(int(layer.feedback_seed) + 1_000_003 * (t + 1))
    return torch.randn(layer.weight.shape, generator=gen, dtype=DT).abs() * xavier(layer)


def test_brsf_redraws_once_per_optimizer_step_and_backward_uses_that_draw() -> None:
    layer = linear_layer("brsf")
    seen = []
    for t in range(0, 5):
        close(layer.effective_feedback(), brsf_draw(layer, t) * sign(layer.weight))
        gx, g = train_forward(layer, t)
        r = layer.feedback
        assert all(not torch.equal(r, old) for old in seen)
        seen.append(r.clone())
        close(r, brsf_draw(layer, t))
        close(gx, g @ (r * sign(layer.weight)))
        assert int(layer.feedback_step) == t
        sgd_step(layer)
    assert int(layer.state_dict()["feedback_step"]) == 5


def test_brsf_does_not_redraw_without_a_step_in_eval_under_no_grad_or_inside_exact_backward() -> None:
    layer = linear_layer("brsf")
    train_forward(layer, 1)
    train_forward(layer, 2)  # a second micro-batch of the same step: the same draw
    r1, step1 = layer.feedback.clone(), int(layer.feedback_step)
    x = randn(3, 6, seed=5).requires_grad_(True)
    with torch.no_grad():
        layer(x)
    layer.eval()
    layer(x).sum().backward()
    close(x.grad, torch.ones(3, 4, dtype=DT) @ (r1 * sign(layer.weight)))  # eval uses the step's draw
    layer.train()
    with falign.exact_backward(layer):
        layer(x)
    assert torch.equal(layer.feedback, r1) and int(layer.feedback_step) == step1 == 0
    sgd_step(layer)
    train_forward(layer, 3)
    assert not torch.equal(layer.feedback, r1) and int(layer.feedback_step) == step1 + 1


def test_a_pending_backward_keeps_the_b_of_its_forward() -> None:
    layer = linear_layer("brsf")
    x1 = randn(3, 6, seed=1).requires_grad_(True)
    y1 = layer(x1)
    b1 = layer.effective_feedback().clone()
    layer.weight.grad = torch.ones_like(layer.weight)
    sgd_step(layer)  # a step (and the next draw) before y1's backward
    layer(randn(3, 6, seed=2).requires_grad_(True))
    assert not torch.equal(layer.effective_feedback(), b1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y1.backward(torch.ones_like(y1))  # autograd refuses: W changed under the pending graph


@pytest.mark.parametrize("match_norm", [False, True])
def test_sign_tracking_copies_after_0_3_6_steps_with_period_3(match_norm) -> None:
    layer = linear_layer("sign_tracking", period=3, match_norm=match_norm, scale=0.5)
    weights, copies = {}, []
    for t in range(0, 8):
        if t:
            with torch.no_grad():  # an optimizer step that moves W to a known value
                layer.weight.copy_(randn(*layer.weight.shape, seed=10 + t))
        weights[t] = layer.weight.detach().clone()
        gx, g = train_forward(layer, t)
        assert int(layer.feedback_step) == t
        last = max(c for c in (0, 3, 6) if c <= t)
        s = sign(weights[last])
        b = fro(weights[last]) / fro(s) * s if match_norm else 0.5 * s
        close(layer.effective_feedback(), b)
        close(gx, g @ b)
        if torch.equal(torch.sign(layer.feedback), sign(weights[t])) and (t == 0 or not torch.equal(
                sign(weights[t]), sign(weights[t - 1]))):
            copies.append(t)
    assert copies == [0, 3, 6]


def test_kp_b_is_a_parameter_that_starts_random_and_gets_w_gradient() -> None:
    layer = linear_layer("kp")
    assert isinstance(layer.feedback, nn.Parameter) and layer.feedback.requires_grad
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias", "feedback"]
    b0 = layer.feedback.detach().clone()
    assert not torch.allclose(b0, layer.weight.detach())
    gx, g = train_forward(layer, 1)
    close(gx, g @ b0)
    close(layer.feedback.grad, layer.weight.grad)
    assert layer.feedback.grad.data_ptr() != layer.weight.grad.data_ptr()  # a copy, never an alias


# --------------------------------------------------------------------------- seeds


SEEDED = [("fa", {}), ("frsf", {}), ("brsf", {}), ("kp", {}), ("fa", {"conv_feedback": "dense"}), ("dfa", {})]


def _net(init: int = 123) -> nn.Sequential:
    torch.manual_seed(init)  # the same W every time unless asked: only the seed may change B
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, dtype=DT), nn.ReLU(),
                         nn.Conv2d(3, 3, 3, padding=1, dtype=DT), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 5 * 5, 4, dtype=DT), nn.Tanh(), nn.Linear(4, 4, dtype=DT))


def _bs(rule, opts, seed, global_seed) -> list[torch.Tensor]:
    plain = _net()
    torch.manual_seed(global_seed)
    model = falign.convert(plain, rule, seed=seed, **opts)
    torch.manual_seed(global_seed + 1)
    model(randn(2, 2, 5, 5, seed=1)).sum().backward()
    return [m.effective_feedback() for _, m in falign.feedback_layers(model)[1:]]


@pytest.mark.parametrize("rule,opts", SEEDED, ids=lambda v: str(v))
def test_seed_alone_fixes_b_whatever_the_global_rng(rule, opts) -> None:
    a = _bs(rule, opts, seed=4, global_seed=1)
    b = _bs(rule, opts, seed=4, global_seed=999)
    c = _bs(rule, opts, seed=5, global_seed=1)
    assert len(a) == 3
    for x, y, z in zip(a, b, c, strict=True):
        assert torch.equal(x, y)
        assert not torch.allclose(x, z)
    # two layers of one shape, one seed: their names make their B differ
    twins = falign.convert(nn.Sequential(nn.Linear(5, 5, dtype=DT), nn.Tanh(), nn.Linear(5, 5, dtype=DT),
                                         nn.Tanh(), nn.Linear(5, 5, dtype=DT)), rule, seed=4, **opts)
    twins(randn(2, 5, seed=1).requires_grad_()).sum().backward()
    assert not torch.allclose(twins[0].effective_feedback(), twins[2].effective_feedback())


def test_directly_built_layers_take_their_name_into_the_seed() -> None:
    def layer(name):
        torch.manual_seed(0)
        return falign.FeedbackLinear(5, 3, rule="fa", name=name, seed=2, dtype=DT)

    assert torch.equal(layer("a").feedback, layer("a").feedback)
    assert not torch.allclose(layer("a").feedback, layer("b").feedback)


KERNEL_RULES = sorted(r for r in falign.rules() if falign.get_rule(r).pathway == "kernel")
STANDALONE = {
    "linear": lambda rule, **kw: falign.FeedbackLinear(6, 4, rule=rule, dtype=DT, **kw),
    "conv": lambda rule, **kw: falign.FeedbackConv2d(2, 3, 3, rule=rule, dtype=DT, **kw),
}


def _same_w_pair(kind: str, rule: str, **kw) -> tuple[nn.Module, nn.Module]:
    """Two standalone layers with one W (copied), built with the same arguments."""
    a, b = STANDALONE[kind](rule, **kw), STANDALONE[kind](rule, **kw)
    with torch.no_grad():
        b.weight.copy_(a.weight)
    return a, b


@pytest.mark.parametrize("kind", list(STANDALONE))
@pytest.mark.parametrize("rule", KERNEL_RULES)
def test_standalone_layers_without_a_seed_get_their_own_b(kind, rule) -> None:
    """Where two explicit seeds give two Bs for one W, two layers built with no seed differ too
    (the README's drop-in use: two FeedbackLinear(8, 8) must not share B)."""
    torch.manual_seed(0)
    p, q = STANDALONE[kind](rule, seed=1), STANDALONE[kind](rule, seed=2)
    with torch.no_grad():
        q.weight.copy_(p.weight)
    seed_matters = not torch.equal(p.effective_feedback(), q.effective_feedback())
    torch.manual_seed(0)
    a, b = _same_w_pair(kind, rule)
    assert int(a.feedback_seed) != int(b.feedback_seed)
    assert torch.equal(a.effective_feedback(), b.effective_feedback()) is not seed_matters
    # an explicit seed still pins B, whatever the global generator
    torch.manual_seed(7)
    c = STANDALONE[kind](rule, seed=1)
    with torch.no_grad():
        c.weight.copy_(p.weight)
    assert torch.equal(c.effective_feedback(), p.effective_feedback())


@pytest.mark.parametrize("rule", sorted(falign.rules()))
def test_every_layer_kind_without_a_seed_draws_one(rule) -> None:
    """Kernel, dense, direct and the slots that recurrent and attention layers hold: each layer
    built with no seed has a seed of its own."""
    from falign.layers.feedback import FeedbackSlot

    w = nn.Parameter(torch.zeros(4, 6, dtype=DT))
    torch.manual_seed(0)
    made = [falign.FeedbackLinear(6, 4, rule=rule, dtype=DT),
            falign.FeedbackLinear(6, 4, rule=rule, dtype=DT),
            falign.FeedbackConv2d(2, 3, 3, rule=rule, dtype=DT),
            FeedbackSlot(w, falign.get_rule(rule), ""), FeedbackSlot(w, falign.get_rule(rule), "")]
    seeds = [int(m.feedback_seed) for m in made]
    assert len(set(seeds)) == len(seeds)


def test_a_model_of_standalone_layers_is_reproducible_from_the_global_seed() -> None:
    def model(seed):
        torch.manual_seed(seed)
        return nn.Sequential(falign.FeedbackConv2d(2, 3, 3, rule="fa", dtype=DT), nn.Flatten(),
                             falign.FeedbackLinear(27, 8, rule="fa", dtype=DT),
                             falign.FeedbackLinear(8, 8, rule="fa", dtype=DT))

    a, b, c = model(3), model(3), model(4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() == sc.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
        if k.endswith("feedback"):
            assert not torch.equal(sa[k], sc[k]), k
    assert not torch.equal(a[2].feedback, a[3].feedback)  # one model, two layers of one shape


def test_a_seedless_layer_saves_the_seed_it_drew() -> None:
    """B is N(0, xavier^2) from a generator seeded with the saved seed (written out here); a
    state_dict round trip into another seedless layer gives its B and its redraw sequence."""
    torch.manual_seed(0)
    layer = falign.FeedbackLinear(6, 4, rule="fa", dtype=DT)
    gen = torch.Generator().manual_seed(int(layer.feedback_seed))
    expected = torch.randn(4, 6, generator=gen, dtype=torch.float64) * math.sqrt(2.0 / (6 + 4))
    assert torch.equal(layer.feedback, expected)

    a, b = _same_w_pair("linear", "brsf")
    assert not torch.equal(a.effective_feedback(), b.effective_feedback())
    b.load_state_dict(_roundtrip(a.state_dict()))
    for t in range(3):
        for m in (a, b):
            train_forward(m, t)
            with torch.no_grad():
                m.weight.sub_(0.1 * m.weight.grad)
                m.weight.grad = None
        assert torch.equal(a.effective_feedback(), b.effective_feedback())


def _derived_seed(seed: int, name: str) -> int:
    """convert's per-layer seed, written out: the first 8 bytes of sha256("falign:seed:name")."""
    digest = hashlib.sha256(f"falign:{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (1 << 63)


@pytest.mark.parametrize("opts", [{}, {"seed": 0}, {"seed": 9}], ids=["no seed", "seed 0", "seed 9"])
def test_convert_keeps_deriving_b_from_the_seed_and_the_layer_name(opts) -> None:
    """Without a seed convert uses 0, as it always has: committed results keep their Bs."""
    torch.manual_seed(11)  # the global generator plays no part
    model = falign.convert(_net(), "fa", **opts)
    layers = falign.feedback_layers(model)
    assert [n for n, _ in layers] == ["0", "2", "5", "7"]
    for name, layer in layers:
        fan_in = layer.weight[0].numel()
        std = math.sqrt(2.0 / (fan_in + layer.weight.shape[0] * layer.weight[0, 0].numel()))
        gen = torch.Generator().manual_seed(_derived_seed(opts.get("seed", 0), name))
        expected = torch.randn(tuple(layer.weight.shape), generator=gen, dtype=torch.float64) * std
        assert torch.equal(layer.feedback, expected)
        assert int(layer.feedback_seed) == _derived_seed(opts.get("seed", 0), name)


@pytest.mark.parametrize("rule,opts", [("dfa", {}), ("dfa", {"shared": True}), ("dfa", {"points": ["2"]}),
                                       ("fa", {"conv_feedback": "dense"}), ("brsf", {})],
                         ids=lambda v: str(v))
def test_convert_without_a_seed_is_convert_with_seed_0(rule, opts) -> None:
    """Lazy Bs, a shared DFA matrix and feedback points too: the global generator plays no part."""
    def feedback(global_seed, **seed):
        torch.manual_seed(global_seed)
        model = falign.convert(_net(), rule, **opts, **seed)
        model(randn(2, 2, 5, 5, seed=1)).sum().backward()
        return {k: v for k, v in model.state_dict().items() if "feedback" in k}

    a, b = feedback(1), feedback(2, seed=0)
    assert any(k.endswith(".feedback") for k in a) and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------- 6. state_dict


ROUND_TRIP = [("bp", {}), ("fa", {}), ("fa", {"conv_feedback": "dense"}), ("usf", {}), ("frsf", {}),
              ("brsf", {}),
              ("usf_norm", {}), ("sign_tracking", {"period": 2}), ("kp", {}), ("dfa", {})]


def _train(model, steps: int, first: int = 0) -> list[torch.Tensor]:
    """SGD steps (hand-written); the gradients of each."""
    grads = []
    for t in range(first, first + steps):
        model.zero_grad()
        out = model(randn(2, 2, 5, 5, seed=t))
        F.mse_loss(out, randn(*out.shape, seed=50 + t)).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.05 * p.grad
    return grads


def _roundtrip(sd: dict) -> dict:
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf)


@pytest.mark.parametrize("rule,opts", ROUND_TRIP, ids=lambda v: str(v))
def test_state_dict_round_trip_into_a_model_with_another_seed(rule, opts) -> None:
    a = falign.convert(_net(), rule, seed=1, **opts)
    _train(a, 3)
    sd = _roundtrip(a.state_dict())
    b = falign.convert(_net(init=77), rule, seed=2, **opts)  # other W, other seed
    layers_a = [m for _, m in falign.feedback_layers(a)]
    layers_b = [m for _, m in falign.feedback_layers(b)]
    if rule in ("fa", "frsf", "brsf", "kp") and not opts.get("conv_feedback"):
        assert not torch.equal(layers_a[1].effective_feedback(), layers_b[1].effective_feedback())
    b.load_state_dict(sd)
    for la, lb in zip(layers_a, layers_b, strict=True):
        ea, eb = la.effective_feedback(), lb.effective_feedback()
        assert (ea is None) == (eb is None)
        if ea is not None:
            assert torch.equal(ea, eb)
        assert int(la.feedback_step) == int(lb.feedback_step)
    for ga, gb in zip(_train(a, 3, first=3), _train(b, 3, first=3), strict=True):
        assert torch.equal(ga, gb)


@pytest.mark.parametrize("rule,opts", [
    ("fa", {}), ("brsf", {}), ("kp", {}), ("sign_tracking", {"period": 2}),
    ("fa", {"conv_feedback": "dense"}), ("dfa", {}),
], ids=lambda v: str(v))
def test_reloading_the_initial_checkpoint_replays_training_exactly(rule, opts) -> None:
    model = falign.convert(_net(), rule, seed=3, **opts)
    sd0 = _roundtrip(model.state_dict())
    first = _train(model, 3)
    model.load_state_dict(sd0)
    for a, b in zip(first, _train(model, 3), strict=True):
        assert torch.equal(a, b)


def test_brsf_sequence_continues_after_reload_with_the_same_seed() -> None:
    a = falign.convert(_net(), "brsf", seed=1)
    _train(a, 2)
    b = falign.convert(_net(), "brsf", seed=1)
    b.load_state_dict(_roundtrip(a.state_dict()))
    assert int(b[2].feedback_step) == 2
    for ga, gb in zip(_train(a, 3, first=2), _train(b, 3, first=2), strict=True):
        assert torch.equal(ga, gb)
    fresh = falign.convert(_net(), "brsf", seed=1)  # without the reload the draws are those of steps 1..
    _train(fresh, 1)
    assert not torch.equal(fresh[2].feedback, a[2].feedback)


@pytest.mark.parametrize("rule,opts", [("fa", {}), ("usf", {}), ("brsf", {}), ("kp", {}),
                                       ("fa", {"conv_feedback": "dense"}), ("dfa", {})],
                         ids=lambda v: str(v))
def test_feedback_is_a_buffer_that_to_moves_but_no_parameter(rule, opts) -> None:
    """...except where the rule trains B like W (KP): then B is a parameter, and moves too."""
    model = falign.convert(_net(), rule, **opts)
    _train(model, 1)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    learned = falign.get_rule(rule).learned
    assert any("feedback" in n for n in params) == learned
    assert ("2.feedback" in params if learned else "2.feedback" in buffers)
    assert "2.feedback_step" in buffers
    assert all(p.dtype == DT for p in params.values())
    model.to(torch.float32)
    for _, layer in falign.feedback_layers(model)[1:]:
        assert layer.feedback.dtype == torch.float32
        assert layer.effective_feedback().dtype == torch.float32
        assert layer.feedback_step.dtype == torch.long
    out = model(torch.randn(2, 2, 5, 5))
    out.sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())


def test_checkpoint_without_seed_buffer_still_loads() -> None:
    """Checkpoints written before ``feedback_seed`` was saved load, keeping the derived seed."""
    make = lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))  # noqa: E731
    old = falign.convert(make(), "brsf", seed=1)
    state = {k: v for k, v in old.state_dict().items() if not k.endswith("feedback_seed")}
    new = falign.convert(make(), "brsf", seed=1)
    new.load_state_dict(state)
    assert torch.equal(new[2].feedback, old[2].feedback)
    assert int(new[2].feedback_seed) == int(old[2].feedback_seed)
