"""The alignment measures against their definitions, written out here on a hand-set network.

A 5-6-4-3 tanh MLP in float64 with the gradients of both rules spelled out:

    delta_3 = e (both rules),  g_2 = delta_3 @ M_3 (M = B for the rule, W for backprop),
    delta_2 = g_2 * tanh'(a_2), g_1 = delta_2 @ M_2, delta_1 = g_1 * tanh'(a_1),
    dW_i = delta_i^T h_{i-1}

update angle = angle(dW_i rule, dW_i bp); signal angle of layer i = angle(g_{i-1} rule, bp);
delta angle = angle(delta_i rule, bp); feedback angle = angle(B_i, W_i); norm ratio ||B||/||W||;
sign concordance = mean(sign B == sign W); update sign concordance = mean(sign dW rule == bp).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import falign
from falign.analysis.alignment import StepProbe, measure_alignment

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def deg(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten(), b.flatten()
    return math.degrees(math.acos(float(torch.clamp(a @ b / (a.norm() * b.norm()), -1, 1))))


def mlp() -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(5, 6, dtype=DT), nn.Tanh(), nn.Linear(6, 4, dtype=DT), nn.Tanh(),
                         nn.Linear(4, 3, dtype=DT))


X = randn(8, 5, seed=1)
Y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def by_hand(model, rule_b: dict[int, torch.Tensor]):
    """(dW, g, delta) per layer index 1..3 under the matrices M_i (B for the rule, W for bp)."""
    lin = [model[0], model[2], model[4]]
    w = [m.weight.detach() for m in lin]
    h = [X]
    a = []
    for i, m in enumerate(lin):
        a.append(h[-1] @ w[i].T + m.bias.detach())
        h.append(torch.tanh(a[-1]) if i < 2 else a[-1])
    z = h[-1].detach().requires_grad_(True)
    (e,) = torch.autograd.grad(F.cross_entropy(z, Y), z)
    out = {}
    for name, mats in (("rule", rule_b), ("bp", {1: w[1], 2: w[2]})):
        delta = {2: e}
        g = {}
        for i in (2, 1):
            g[i] = delta[i] @ mats[i]  # what layer i sends to its input
            delta[i - 1] = g[i] * (1 - torch.tanh(a[i - 1]) ** 2)
        dw = {i: delta[i].T @ h[i] for i in range(3)}
        out[name] = (dw, g, delta)
    return out


def test_every_measure_equals_its_definition_for_fa() -> None:
    model = falign.convert(mlp(), "fa", seed=4)
    b = {1: model[2].feedback, 2: model[4].feedback}
    ref = by_hand(model, b)
    stats = measure_alignment(model, X, Y, F.cross_entropy)
    (dw, g, delta), (dw_bp, g_bp, delta_bp) = ref["rule"], ref["bp"]
    names = {0: "0", 1: "2", 2: "4"}
    for i in range(3):
        s = stats[names[i]]
        assert s.update_angle == pytest.approx(deg(dw[i], dw_bp[i]), abs=1e-9)
        assert s.delta_angle == pytest.approx(deg(delta[i], delta_bp[i]), abs=1e-6)
        w = [model[0], model[2], model[4]][i].weight.detach()
        bi = [model[0], model[2], model[4]][i].feedback
        assert s.feedback_angle == pytest.approx(deg(bi, w), abs=1e-9)
        assert s.norm_ratio == pytest.approx(float(bi.norm() / w.norm()), rel=1e-12)
        assert s.sign_concordance == pytest.approx(float((torch.sign(bi) == torch.sign(w)).double().mean()))
        assert s.update_sign_concordance == pytest.approx(
            float((torch.sign(dw[i]) == torch.sign(dw_bp[i])).double().mean()))
    assert stats["0"].signal_angle is None  # the first layer sends nothing
    assert stats["2"].signal_angle == pytest.approx(deg(g[1], g_bp[1]), abs=1e-9)
    assert stats["4"].signal_angle == pytest.approx(deg(g[2], g_bp[2]), abs=1e-9)
    assert stats["4"].delta_angle == pytest.approx(0.0, abs=1e-6)  # e is e under every rule
    assert stats["0"].update_angle > 10  # the test can fail: FA is not backprop


def test_backprop_through_falign_measures_zero_and_kp_b_equal_w_too() -> None:
    stats = measure_alignment(falign.convert(mlp(), "bp"), X, Y, F.cross_entropy)
    for s in stats.values():
        assert s.update_angle == pytest.approx(0, abs=1e-5) and s.feedback_angle == pytest.approx(0, abs=1e-5)
        assert s.sign_concordance == 1.0


def test_dfa_signal_angle_is_the_injected_b_e_against_backprops_signal() -> None:
    model = falign.convert(mlp(), "dfa", seed=5)
    F.cross_entropy(model(X.requires_grad_(False)), Y).backward()  # makes B_i
    ref = by_hand(model, {1: model[2].weight.detach(), 2: model[4].weight.detach()})  # bp's part
    # under DFA every layer receives e directly: g_i = e @ B_i^T, not delta_{i+1} @ B
    z = model(X).detach().requires_grad_(True)
    (e,) = torch.autograd.grad(F.cross_entropy(z, Y), z)
    g2_dfa = e @ model[4].feedback.T
    stats = measure_alignment(model, X, Y, F.cross_entropy)
    assert stats["4"].signal_angle == pytest.approx(deg(g2_dfa, ref["bp"][1][2]), abs=1e-9)
    g1_dfa = e @ model[2].feedback.T
    assert stats["2"].signal_angle == pytest.approx(deg(g1_dfa, ref["bp"][1][1]), abs=1e-9)
    assert stats["2"].feedback_angle is None and stats["2"].norm_ratio is None  # B is not W's shape


def test_the_training_probe_equals_the_standalone_measure_and_leaves_no_trace() -> None:
    model = falign.convert(nn.Sequential(nn.Linear(5, 6, dtype=DT), nn.BatchNorm1d(6, dtype=DT), nn.Tanh(),
                                         nn.Linear(6, 3, dtype=DT)), "brsf", seed=1)
    standalone = measure_alignment(model, X, Y, F.cross_entropy)
    stats_before = model[1].running_mean.clone()
    probe = StepProbe(model)
    with probe.capture():
        F.cross_entropy(model(X), Y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    stats = probe.finish(X, Y, F.cross_entropy)
    for name, s in stats.items():
        for key, value in s.to_dict().items():
            other = standalone[name].to_dict()[key]
            assert (value is None) == (other is None)
            if value is not None:
                assert value == pytest.approx(other, abs=1e-9), (name, key)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    assert not torch.equal(model[1].running_mean, stats_before)  # the training step moved it once...
    moved = model[1].running_mean.clone()
    measure_alignment(model, X, Y, F.cross_entropy)
    assert torch.equal(model[1].running_mean, moved)  # ...the measurement did not
