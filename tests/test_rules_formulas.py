"""Learning-rule maths: every rule's gradients against formulas written out independently.

The expected input gradient is always built another way than the library builds it: the rule's B
is written out here from its definition (sign, norms, Xavier std computed by hand), linear layers
use ``g @ B``, kernel convolutions use ``torch.nn.grad.convNd_input`` on an explicitly padded input
(folded back through ``F.pad``'s autograd), dense convolutions ``g.flatten(1) @ B``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import falign

pytestmark = [pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning"),
              pytest.mark.usefixtures("one_thread")]

DT = torch.float64
RULES = sorted(falign.rules())
#: rules that send the error through B in W's place (the direct ones are tested in test_dfa_* and
#: test_rules_zoo); every one needs a formula in expected_kernel_b below
KERNEL_RULES = [r for r in RULES if falign.get_rule(r).pathway in ("kernel", "exact", "dense")]
TOL = {"rtol": 1e-12, "atol": 1e-12}


def close(actual, expected) -> None:
    torch.testing.assert_close(actual, expected, **TOL)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=DT)


# --------------------------------------------------------------------------- B written out


def xavier_std(w: torch.Tensor) -> float:
    """Glorot std with torch's fan convention: fan_in = size(1) * k, fan_out = size(0) * k."""
    k = math.prod(w.shape[2:])
    return math.sqrt(2.0 / (w.shape[1] * k + w.shape[0] * k))


def fro(t: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((t * t).sum())


def spectral(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(t.reshape(t.shape[0], -1))[0]


def expected_kernel_b(rule: str, opts: dict, layer) -> torch.Tensor:
    """B of W's shape from the rule's definition, using only W and the stored buffer."""
    w = layer.weight.detach()
    s = torch.sign(w)
    if rule == "bp":
        return w
    if rule == "fa":
        assert layer.feedback.shape == w.shape
        return layer.feedback
    if rule == "usf":
        assert layer.feedback.dim() == 0
        return opts.get("scale", xavier_std(w)) * s
    if rule in ("frsf", "brsf"):
        assert layer.feedback.shape == w.shape and bool((layer.feedback >= 0).all())
        return layer.feedback * s
    if rule == "usf_norm":
        norm = fro if opts.get("norm", "fro") == "fro" else spectral
        return opts.get("scale", 1.0) * norm(w) / norm(s) * s
    if rule == "sign_tracking":
        if opts.get("match_norm"):
            return fro(w) / fro(s) * s
        return opts.get("scale", 1.0) * s
    if rule == "kp":
        assert layer.feedback.shape == w.shape and isinstance(layer.feedback, nn.Parameter)
        return layer.feedback.detach()
    if rule == "wm":  # B itself is the mirror's state (its steps: tests/test_rules_zoo.py)
        assert layer.feedback.shape == w.shape
        return layer.feedback
    raise KeyError(f"no formula written for rule {rule!r}: add one to this test")


# --------------------------------------------------------------------------- layer cases


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], nn.Module]
    x_shape: tuple[int, ...]


CASES = [
    Case("linear", lambda: nn.Linear(5, 4, dtype=DT), (3, 5)),
    Case("linear_NTD", lambda: nn.Linear(5, 4, dtype=DT), (2, 3, 5)),
    Case("conv1d", lambda: nn.Conv1d(3, 4, 3, padding=1, dtype=DT), (2, 3, 9)),
    Case("conv1d_valid_stride_nobias",
         lambda: nn.Conv1d(2, 4, 3, stride=2, padding="valid", bias=False, dtype=DT), (2, 2, 10)),
    Case("conv2d_stride_pad_dil_groups",
         lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2, dtype=DT), (2, 4, 9, 8)),
    Case("conv2d_same_reflect",
         lambda: nn.Conv2d(3, 4, (3, 4), padding="same", padding_mode="reflect", dtype=DT), (2, 3, 7, 8)),
    Case("conv2d_same_zeros_even_kernel",
         lambda: nn.Conv2d(2, 3, (2, 4), padding="same", dilation=(2, 1), dtype=DT), (2, 2, 6, 7)),
    Case("conv2d_circular",
         lambda: nn.Conv2d(2, 3, 3, padding=(1, 2), padding_mode="circular", dtype=DT), (2, 2, 6, 7)),
    Case("conv2d_replicate_stride",
         lambda: nn.Conv2d(2, 4, 3, stride=(2, 1), padding=1, padding_mode="replicate", groups=2,
                           dtype=DT), (2, 2, 7, 6)),
    Case("conv3d",
         lambda: nn.Conv3d(2, 3, (2, 3, 3), stride=(1, 2, 1), padding=(1, 0, 1), dtype=DT), (2, 2, 4, 6, 5)),
]
CONV_CASES = [c for c in CASES if not c.id.startswith("linear")]

RULE_SPECS = [(r, {}) for r in KERNEL_RULES] + [
    ("fa", {"conv_feedback": "dense"}),
    ("fa", {"scale": 0.3}),
    ("usf", {"scale": 0.3}),
    ("usf_norm", {"norm": "spectral"}),
    ("usf_norm", {"scale": 2.5}),
    ("sign_tracking", {"match_norm": True}),
    ("sign_tracking", {"scale": 0.5, "period": 2}),
    ("kp", {"scale": 0.2}),
]


def spec_id(spec) -> str:
    rule, opts = spec
    return rule + "".join(f"[{k}={v}]" for k, v in opts.items())


def explicit_padding(conv: nn.Module) -> tuple[list[tuple[int, int]], str]:
    """(left, right) per spatial dim and the F.pad mode, worked out from the layer's arguments."""
    nd = conv.weight.dim() - 2
    if conv.padding == "same":
        pads = []
        for k, d in zip(conv.kernel_size, conv.dilation, strict=True):
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))
    elif conv.padding == "valid":
        pads = [(0, 0)] * nd
    else:
        pads = [(p, p) for p in conv.padding]
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return pads, mode


def fpad_arg(pads) -> list[int]:
    return [v for lr in reversed(pads) for v in lr]  # F.pad wants the last dim first


def prepadded(conv: nn.Module) -> bool:
    """Whether a dense B acts on the padded map (padding modes, asymmetric 'same')."""
    pads, mode = explicit_padding(conv)
    return mode != "constant" or any(a != b for a, b in pads)


CONV_INPUT = {1: torch.nn.grad.conv1d_input, 2: torch.nn.grad.conv2d_input, 3: torch.nn.grad.conv3d_input}


def fold_through_pad(conv: nn.Module, x: torch.Tensor, grad_of_padded: Callable) -> torch.Tensor:
    """Input gradient from the gradient w.r.t. the explicitly padded input."""
    pads, mode = explicit_padding(conv)
    xx = x.detach().clone().requires_grad_(True)
    xp = F.pad(xx, fpad_arg(pads), mode=mode)
    (gx,) = torch.autograd.grad(xp, xx, grad_of_padded(xp))
    return gx


def kernel_input_grad(conv: nn.Module, x: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    nd = conv.weight.dim() - 2
    return fold_through_pad(conv, x, lambda xp: CONV_INPUT[nd](
        xp.shape, b, g, conv.stride, 0, conv.dilation, conv.groups))


def dense_input_grad(conv: nn.Module, x: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    if not prepadded(conv):
        return (g.flatten(1) @ b).reshape(x.shape)
    return fold_through_pad(conv, x, lambda xp: (g.flatten(1) @ b).reshape(xp.shape))


def convert_one(plain: nn.Module, rule, **opts) -> nn.Module:
    return falign.convert(nn.Sequential(plain), rule, warn=False, **opts)[0]


# --------------------------------------------------------------------------- 1. every rule x layer


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("spec", RULE_SPECS, ids=spec_id)
def test_forward_local_weight_grads_and_input_grad_formula(spec, case) -> None:
    rule, opts = spec
    torch.manual_seed(0)
    plain = case.make()
    layer = convert_one(plain, rule, seed=7, **opts)
    assert type(layer) is not type(plain) and isinstance(layer, type(plain))
    x = randn(*case.x_shape, seed=1).requires_grad_(True)
    dense = opts.get("conv_feedback") == "dense" and case in CONV_CASES

    y_plain = plain(x)
    y = layer(x)
    close(y, y_plain)
    g = randn(*y.shape, seed=2)
    params = [p for p in (plain.weight, plain.bias) if p is not None]
    ref = torch.autograd.grad(y_plain, params, g)
    got = torch.autograd.grad(y, [x, *[p for p in (layer.weight, layer.bias) if p is not None]], g)
    for a, b in zip(got[1:], ref, strict=True):  # weight and bias gradients are the local ones
        close(a, b)

    b_used = layer.effective_feedback()
    if dense:
        xshape = F.pad(x, fpad_arg(explicit_padding(plain)[0])).shape if prepadded(plain) else x.shape
        assert layer.feedback.shape == (y[0].numel(), math.prod(xshape[1:]))
        close(b_used, layer.feedback)
        expected = dense_input_grad(plain, x, layer.feedback, g)
    else:
        b = expected_kernel_b(rule, opts, layer)
        close(b_used, b)
        if case in CONV_CASES:
            expected = kernel_input_grad(plain, x, b, g)
        else:
            expected = g @ b
    if rule != "bp":  # the test discriminates: the rule's input gradient is not backprop's
        (bp_grad,) = torch.autograd.grad(plain(x), x, g)
        assert not torch.allclose(expected, bp_grad)
    close(got[0], expected)


def test_the_registry_lists_every_documented_rule_with_a_citation() -> None:
    listed = falign.rules()
    assert set(listed) == {"bp", "fa", "usf", "frsf", "brsf", "usf_norm", "sign_tracking", "kp", "dfa", "wm",
                           "dkp", "drtp", "sdfa"}
    assert all(text.endswith("]") and "[" in text for text in listed.values())


# --------------------------------------------------------------------------- 2. literal numbers


def _hand_net(rule: str) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(2, 2, dtype=DT), nn.ReLU(), nn.Linear(2, 1, dtype=DT))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.5, 1.0], [1.0, 0.25]]))
        net[0].bias.copy_(torch.tensor([0.0, 0.5]))
        net[2].weight.copy_(torch.tensor([[1.5, -0.5]]))
        net[2].bias.copy_(torch.tensor([0.25]))
    net = falign.convert(net, rule)
    if rule == "fa":
        with torch.no_grad():
            net[0].feedback.copy_(torch.tensor([[2.0, 0.0], [0.0, -1.0]]))
            net[2].feedback.copy_(torch.tensor([[-1.0, 2.0]]))
    return net


# x = (1, 2): a1 = (0.5 + 2, 1 + 0.5 + 0.5) = (2.5, 2), h1 = a1, y = 3.75 - 1 + 0.25 = 3,
# loss = (y - 1)^2 / 2 = 2, e = 2; dW2 = e h1 = (5, 4), db2 = 2.
# bp: dh1 = W2^T e = (3, -1); dW1 = dh1 x^T = [[3, 6], [-1, -2]]; dx = W1^T dh1 = (0.5, 2.75).
# fa: dh1 = B2^T e = (-2, 4); dW1 = [[-2, -4], [4, 8]]; dx = B1^T dh1 = (-4, -4).
HAND = {
    "bp": ([[3.0, 6.0], [-1.0, -2.0]], [3.0, -1.0], [0.5, 2.75]),
    "fa": ([[-2.0, -4.0], [4.0, 8.0]], [-2.0, 4.0], [-4.0, -4.0]),
}


@pytest.mark.parametrize("rule", ["bp", "fa"])
def test_hand_computed_two_layer_gradients(rule) -> None:
    net = _hand_net(rule)
    x = torch.tensor([[1.0, 2.0]], dtype=DT, requires_grad=True)
    y = net(x)
    assert y.item() == 3.0
    loss = 0.5 * (y - 1.0).pow(2).sum()
    loss.backward()
    dw1, db1, dx = HAND[rule]
    assert net[2].weight.grad.tolist() == [[5.0, 4.0]]
    assert net[2].bias.grad.tolist() == [2.0]
    assert net[0].weight.grad.tolist() == dw1
    assert net[0].bias.grad.tolist() == db1
    assert x.grad.tolist() == [dx]


def test_hand_computed_conv1d_kernel_orientation() -> None:
    # x = (1, 2, 3), W = (1, -1): y = (-1, -1); loss = y . (1, 2), so g = (1, 2).
    # dW_k = sum_j g_j x_{j+k} = (1 + 4, 2 + 6) = (5, 8).
    # input grad dx_i = sum_j g_j K_{i-j}: with K = W (1, -1 + 2, -2); with K = B = (2, 3): (2, 3 + 4, 6).
    conv = nn.Conv1d(1, 1, 2, bias=False, dtype=DT)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[1.0, -1.0]]]))
    for rule, b, dx in [("bp", None, [1.0, 1.0, -2.0]), ("fa", [2.0, 3.0], [2.0, 7.0, 6.0])]:
        layer = convert_one(conv, rule)
        if b is not None:
            with torch.no_grad():
                layer.feedback.copy_(torch.tensor([[b]]))
        x = torch.tensor([[[1.0, 2.0, 3.0]]], dtype=DT, requires_grad=True)
        y = layer(x)
        assert y.tolist() == [[[-1.0, -1.0]]]
        (y * torch.tensor([1.0, 2.0], dtype=DT)).sum().backward()
        assert layer.weight.grad.tolist() == [[[5.0, 8.0]]]
        assert x.grad.tolist() == [[dx]]


# --------------------------------------------------------------------------- 3. FA with B = W is BP


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 7, dtype=DT), nn.Tanh(), nn.Linear(7, 5, dtype=DT), nn.ReLU(),
                         nn.Linear(5, 3, dtype=DT))


def _cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect", dtype=DT), nn.Tanh(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2, dtype=DT), nn.ReLU(),
        nn.Conv2d(4, 3, 2, dilation=2, dtype=DT), nn.Tanh(),
        nn.Flatten(), nn.Linear(3 * 2 * 2, 3, dtype=DT),
    )


def _grads(model, x, target_seed=5):
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    loss = (out - randn(*out.shape, seed=target_seed)).pow(2).mean()
    loss.backward()
    return [x.grad] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("make,x_shape", [(_mlp, (4, 6)), (_cnn, (3, 2, 8, 8))], ids=["mlp", "cnn"])
def test_fa_with_feedback_copied_from_weight_is_backprop(make, x_shape) -> None:
    torch.manual_seed(0)
    plain = make()
    model = falign.convert(plain, "fa", seed=3)
    x = randn(*x_shape, seed=1)
    bp = _grads(plain, x)
    fa_random = _grads(model, x)
    assert not torch.allclose(fa_random[0], bp[0])  # random B really is different
    model.zero_grad()
    for _, layer in falign.feedback_layers(model):
        with torch.no_grad():
            layer.feedback.copy_(layer.weight)
    for a, b in zip(_grads(model, x), bp, strict=True):
        close(a, b)


@pytest.mark.parametrize("make", [
    lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1, dtype=DT),
    lambda: nn.Conv2d(2, 4, (3, 2), padding="same", padding_mode="reflect", groups=2, dtype=DT),
    lambda: nn.Conv1d(2, 3, 3, padding=2, padding_mode="circular", dilation=2, dtype=DT),
], ids=["zeros_stride", "same_reflect_groups", "circular_dilation"])
def test_dense_fa_with_the_toeplitz_matrix_of_w_is_backprop(make) -> None:
    torch.manual_seed(0)
    plain = make()
    layer = convert_one(plain, "fa", conv_feedback="dense")
    x = randn(2, 2, *([7, 6] if plain.weight.dim() == 4 else [9]), seed=1).requires_grad_(True)
    layer(x)  # creates the dense B
    # the matrix of the (pre-padded) convolution of one sample, built column by column
    pads, _ = explicit_padding(plain)
    shape = F.pad(x[:1], fpad_arg(pads)).shape if prepadded(plain) else x[:1].shape
    pad_now = 0 if prepadded(plain) else plain.padding
    conv = {1: F.conv1d, 2: F.conv2d}[plain.weight.dim() - 2]
    eye = torch.eye(math.prod(shape), dtype=DT).reshape(-1, *shape[1:])
    cols = conv(eye, plain.weight.detach(), None, plain.stride, pad_now, plain.dilation, plain.groups)
    toeplitz = cols.reshape(cols.shape[0], -1).T  # (out_numel, in_numel)
    assert layer.feedback.shape == toeplitz.shape
    with torch.no_grad():
        layer.feedback.copy_(toeplitz)
    y = layer(x)
    g = randn(*y.shape, seed=2)
    (gx,) = torch.autograd.grad(y, x, g)
    (ref,) = torch.autograd.grad(plain(x), x, g)
    close(gx, ref)


# --------------------------------------------------------------------------- 4. DFA closed form


def _dfa_mlp(seed=11) -> tuple[nn.Sequential, nn.Sequential]:
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(4, 5, dtype=DT), nn.Tanh(), nn.Linear(5, 3, dtype=DT), nn.Tanh(),
                          nn.Linear(3, 2, dtype=DT))
    return plain, falign.convert(plain, "dfa", seed=seed)


def test_dfa_mlp_closed_form() -> None:
    _, model = _dfa_mlp()
    l1, l2, l3 = model[0], model[2], model[4]
    assert l1.feedback is None and l2.feedback is None  # created after the first forward
    x, t = randn(6, 4, seed=1), randn(6, 2, seed=2)
    y = model(x)
    F.mse_loss(y, t).backward()
    assert l1.feedback is None  # its input needs no gradient: no B at all
    b2, b3 = l2.feedback, l3.feedback
    assert b2.shape == (5, 2) and b3.shape == (3, 2)
    # by hand
    w1, w2, w3 = (m.weight.detach() for m in (l1, l2, l3))
    a1 = x @ w1.T + l1.bias.detach()
    h1 = torch.tanh(a1)
    a2 = h1 @ w2.T + l2.bias.detach()
    h2 = torch.tanh(a2)
    yy = h2 @ w3.T + l3.bias.detach()
    close(y.detach(), yy)
    e = 2.0 * (yy - t) / yy.numel()  # dL/dy for mean squared error
    d1 = (e @ b2.T) * (1 - h1 ** 2)
    d2 = (e @ b3.T) * (1 - h2 ** 2)
    close(l1.weight.grad, d1.T @ x)
    close(l1.bias.grad, d1.sum(0))
    close(l2.weight.grad, d2.T @ h1)
    close(l2.bias.grad, d2.sum(0))
    close(l3.weight.grad, e.T @ h2)
    close(l3.bias.grad, e.sum(0))


def test_dfa_first_layer_gets_b_when_its_input_needs_grad() -> None:
    _, model = _dfa_mlp()
    x = randn(3, 4, seed=1).requires_grad_(True)
    c = randn(3, 2, seed=3)
    (model(x) * c).sum().backward()
    assert model[0].feedback.shape == (4, 2)
    close(x.grad, c @ model[0].feedback.T)


def test_dfa_no_signal_passes_from_layer_to_layer() -> None:
    # loss = sum(y * c): e = c whatever the weights. The first layer's gradient must then not
    # depend on the later layers' weights (it would under backprop: checked too).
    x, c = randn(5, 4, seed=1), randn(5, 2, seed=3)

    def first_layer_grad(model, exact: bool):
        model.zero_grad()
        if exact:
            with falign.exact_backward(model):
                (model(x) * c).sum().backward()
        else:
            (model(x) * c).sum().backward()
        return model[0].weight.grad.clone()

    _, model = _dfa_mlp()
    dfa_before, bp_before = first_layer_grad(model, False), first_layer_grad(model, True)
    with torch.no_grad():
        model[4].weight.mul_(-3.0)
        model[2].weight.add_(randn(3, 5, seed=9))
    assert torch.equal(first_layer_grad(model, False), dfa_before)
    assert not torch.allclose(first_layer_grad(model, True), bp_before)


def test_dfa_cnn_feedback_shapes_and_conv_input_grad() -> None:
    torch.manual_seed(0)
    plain = nn.Sequential(
        nn.Conv2d(1, 2, 3, dtype=DT), nn.ReLU(),
        nn.Conv2d(2, 3, 3, padding=1, padding_mode="replicate", dtype=DT), nn.ReLU(),
        nn.Flatten(), nn.Linear(3 * 4 * 4, 4, dtype=DT),
    )
    model = falign.convert(plain, "dfa", seed=1)
    x, c = randn(2, 1, 6, 6, seed=1), randn(2, 4, seed=2)
    (model(x) * c).sum().backward()
    conv1, conv2, fc = model[0], model[2], model[5]
    assert conv1.feedback is None
    assert conv2.feedback.shape == (2, 4 + 2, 4 + 2, 4)  # its (pre-padded) input map x the output
    assert fc.feedback.shape == (48, 4)
    # conv1's upstream gradient is conv2's DFA input gradient, folded through the replicate pad
    a1 = F.conv2d(x, conv1.weight.detach(), conv1.bias.detach())
    gxp = torch.einsum("chwk,nk->nchw", conv2.feedback, c)
    h1 = torch.relu(a1).requires_grad_(True)
    (gh1,) = torch.autograd.grad(F.pad(h1, (1, 1, 1, 1), mode="replicate"), h1, gxp)
    ga1 = gh1 * (a1 > 0)
    close(conv1.weight.grad, torch.nn.grad.conv2d_weight(x, conv1.weight.shape, ga1))
    close(conv1.bias.grad, ga1.sum((0, 2, 3)))
    # the linear layer's input gradient reaches conv2's output as (c @ B^T) through ReLU
    h1p = F.pad(torch.relu(a1), (1, 1, 1, 1), mode="replicate")
    a2 = F.conv2d(h1p, conv2.weight.detach(), conv2.bias.detach())
    ga2 = (c @ fc.feedback.T).reshape(a2.shape) * (a2 > 0)
    close(conv2.weight.grad, torch.nn.grad.conv2d_weight(h1p, conv2.weight.shape, ga2))


def test_dfa_default_scale_is_xavier_of_b() -> None:
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(10, 300, dtype=DT), nn.ReLU(), nn.Linear(300, 200, dtype=DT))
    model = falign.convert(plain, "dfa")
    model(randn(2, 10, seed=1)).sum().backward()
    b = model[2].feedback
    assert b.shape == (300, 200)  # (input numel, output numel)
    assert b.std().item() == pytest.approx((2 / (300 + 200)) ** 0.5, rel=0.02)
    assert b.mean().item() == pytest.approx(0.0, abs=0.02)
    one = falign.convert(plain, "dfa", scale=1.0)  # the DFA report's N(0, 1)
    one(randn(2, 10, seed=1)).sum().backward()
    assert one[2].feedback.std().item() == pytest.approx(1.0, rel=0.02)


# --------------------------------------------------------------------------- scales of random B


@pytest.mark.parametrize("rule,opts,stat", [
    ("fa", {}, "std"), ("fa", {"scale": 0.05}, "std"), ("kp", {}, "std"),
    ("frsf", {}, "abs"), ("brsf", {}, "abs"), ("frsf", {"scale": 0.2}, "abs"),
], ids=lambda v: str(v))
@pytest.mark.parametrize("make", [lambda: nn.Linear(300, 200, dtype=DT),
                                  lambda: nn.Conv2d(16, 32, 5, dtype=DT)], ids=["linear", "conv"])
def test_random_feedback_has_the_documented_scale(rule, opts, stat, make) -> None:
    torch.manual_seed(0)
    plain = make()
    layer = convert_one(plain, rule, **opts)
    if rule == "brsf":
        layer(randn(1, *([300] if isinstance(plain, nn.Linear) else [16, 5, 5]), seed=1).requires_grad_())
    std = opts.get("scale", xavier_std(plain.weight))
    b = layer.effective_feedback()
    assert b.shape == plain.weight.shape
    if stat == "std":
        assert b.std().item() == pytest.approx(std, rel=0.03)
        assert abs(b.mean().item()) < 0.03 * std
        assert not torch.allclose(b, plain.weight)
    else:  # |N(0, std^2)| times sign(W): mean |B| = std sqrt(2 / pi), signs those of W
        assert b.abs().mean().item() == pytest.approx(std * math.sqrt(2 / math.pi), rel=0.03)
        assert torch.equal(torch.sign(b), torch.sign(plain.weight.detach()))


def test_dense_fa_default_scale_uses_the_dense_fans() -> None:
    torch.manual_seed(0)
    plain = nn.Conv2d(4, 8, 3, dtype=DT)
    layer = convert_one(plain, "fa", conv_feedback="dense")
    layer(randn(1, 4, 12, 12, seed=1).requires_grad_())
    b = layer.feedback
    assert b.shape == (8 * 10 * 10, 4 * 12 * 12)
    assert b.std().item() == pytest.approx(math.sqrt(2.0 / (b.shape[0] + b.shape[1])), rel=0.02)


# --------------------------------------------------------------------------- 10. structure of backward


class OpSpy(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((str(func.overloadpacket.__name__), args))
        return func(*args, **(kwargs or {}))

    def named(self, name: str) -> list[tuple]:
        return [a for n, a in self.calls if n == name]


def _conv_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, dtype=DT), nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2, dtype=DT), nn.ReLU(),
        nn.Conv2d(4, 3, 3, padding=1, padding_mode="reflect", dtype=DT),
    )


def _backward_ops(model, x) -> OpSpy:
    y = model(x)
    with OpSpy() as spy:
        y.backward(torch.ones_like(y))
    return spy


@pytest.mark.parametrize("spec", [s for s in RULE_SPECS if s[1].get("conv_feedback") != "dense"],
                         ids=spec_id)
def test_kernel_rule_conv_backward_is_one_fused_call_per_layer_like_bp(spec) -> None:
    rule, opts = spec
    torch.manual_seed(0)
    plain = _conv_net()
    x = randn(2, 2, 8, 8, seed=1)
    bp_calls = _backward_ops(plain, x).named("convolution_backward")
    model = falign.convert(plain, rule, **opts)
    calls = _backward_ops(model, x).named("convolution_backward")
    assert len(calls) == len(bp_calls) == 3
    assert [c[-1] for c in calls] == [c[-1] for c in bp_calls]  # the same output masks
    layers = [m for _, m in falign.feedback_layers(model)]
    for call in calls:
        if call[-1][0]:  # this call computes an input gradient: with B, never with W
            kernel = call[2]
            owner = [m for m in layers if m.weight.shape == kernel.shape and call[1].shape[1]
                     == m.in_channels]
            assert len(owner) == 1
            close(kernel, owner[0].effective_feedback())
            if rule == "fa":
                assert kernel.data_ptr() != owner[0].weight.data_ptr()


MATMULS = ("mm", "addmm", "bmm", "matmul", "convolution_backward", "convolution")


def _kernel_counts(spy: OpSpy) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, _ in spy.calls:
        if name in MATMULS:
            counts[name] = counts.get(name, 0) + 1
    return counts


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_every_rule_backward_makes_the_matmuls_and_convolutions_of_bp_and_no_more(rule, net) -> None:
    """Per backward: the same matrix products / convolution backward calls as backprop, for
    every registered rule (a direct rule's e B_i^T product takes the place of g W)."""
    torch.manual_seed(0)
    plain = _mlp() if net == "mlp" else _conv_net()
    x = randn(3, 6, seed=1) if net == "mlp" else randn(2, 2, 8, 8, seed=1)
    model = falign.convert(plain, rule, warn=False, example_input=x)
    bp = _kernel_counts(_backward_ops(plain, x))
    for _ in range(2):  # the second backward after B exists (lazy pathways) and a step
        falign.layers.set_targets(model, torch.zeros(x.shape[0], dtype=torch.long))
        got = _kernel_counts(_backward_ops(model, x))
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 0.01 * p.grad
                    p.grad = None
    layers = [m for _, m in falign.feedback_layers(model)]
    expected = dict(bp)
    if falign.get_rule(rule).pathway == "direct":
        # a conv layer's input gradient is one e B_i^T product instead of convolution_backward's
        # input part (the call stays for the weight); a trained B_i adds its h^T e
        extra = sum(m.op == "conv" for m in layers[1:]) + sum(isinstance(m.feedback, nn.Parameter)
                                                              for m in layers)
        if extra:
            expected["mm"] = expected.get("mm", 0) + extra
    assert got == expected, (got, bp)


def _ops_reading(spy: OpSpy, ptrs: set[int]) -> list[tuple[str, tuple]]:
    return [(n, a) for n, a in spy.calls
            if any(isinstance(t, torch.Tensor) and t.data_ptr() in ptrs for t in a)]


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_fa_backward_never_reads_w_for_an_input_gradient(net) -> None:
    torch.manual_seed(0)
    plain = _mlp() if net == "mlp" else _conv_net()
    x = randn(3, 6, seed=1) if net == "mlp" else randn(2, 2, 8, 8, seed=1)

    def weight_ptrs(m):
        return {p.data_ptr() for n, p in m.named_parameters() if n.endswith("weight")}

    assert _ops_reading(_backward_ops(plain, x), weight_ptrs(plain))  # the detector sees BP read W
    model = falign.convert(plain, "fa")
    reading = _ops_reading(_backward_ops(model, x), weight_ptrs(model))
    # only the first conv (input needs no gradient) may pass W, to a weight-only fused backward
    assert all(n == "convolution_backward" and args[-1][0] is False for n, args in reading), reading
    assert len(reading) == (0 if net == "mlp" else 1)


def test_dense_conv_backward_computes_no_exact_input_gradient() -> None:
    torch.manual_seed(0)
    model = falign.convert(_conv_net(), "fa", conv_feedback="dense")
    spy = _backward_ops(model, randn(2, 2, 8, 8, seed=1))
    masks = [c[-1] for c in spy.named("convolution_backward")]
    assert len(masks) == 3 and all(not m[0] for m in masks)


@pytest.mark.parametrize("rule,opts", [("fa", {}), ("usf", {}), ("kp", {}),
                                        ("sign_tracking", {}), ("brsf", {}),
                                        ("fa", {"conv_feedback": "dense"}), ("dfa", {})],
                         ids=lambda v: str(v))
def test_no_feedback_is_made_for_a_layer_whose_input_needs_no_grad(rule, opts, monkeypatch) -> None:
    cls = type(falign.get_rule(rule))
    seen: list[int] = []
    original = cls.matrix

    def spy(self, weight, feedback):
        seen.append(weight.data_ptr())
        return original(self, weight, feedback)

    monkeypatch.setattr(cls, "matrix", spy)
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(2, 3, 3, dtype=DT), nn.ReLU(), nn.Conv2d(3, 3, 3, dtype=DT),
                          nn.Flatten(), nn.Linear(3 * 4 * 4, 4, dtype=DT), nn.Tanh(),
                          nn.Linear(4, 2, dtype=DT))
    model = falign.convert(plain, rule, **opts)
    model(randn(2, 2, 8, 8, seed=1)).sum().backward()
    first, second = model[0], model[2]
    assert all(p.grad is not None for p in model.parameters())
    if rule == "dfa" or opts.get("conv_feedback") == "dense":  # lazy B: never even created
        assert first.feedback is None and second.feedback is not None
    if rule != "dfa":
        assert first.weight.data_ptr() not in seen
        assert second.weight.data_ptr() in seen  # the spy does see the layers that need B


# --------------------------------------------------------------------------- 11. dtypes


@pytest.mark.parametrize("spec", RULE_SPECS + [("dfa", {})], ids=spec_id)
def test_float32_training_and_feedback_dtype_follows_the_layer(spec) -> None:
    rule, opts = spec
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 3, 3), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 2))
    model = falign.convert(plain, rule, **opts)
    x = torch.randn(2, 2, 8, 8)
    model(x).square().sum().backward()
    for p in model.parameters():
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
    for _, layer in falign.feedback_layers(model)[1:]:
        b = layer.effective_feedback()
        assert b.dtype == torch.float32
        if layer.feedback is not None:
            assert layer.feedback.dtype == torch.float32
    model.to(DT)
    for _, layer in falign.feedback_layers(model)[1:]:
        assert layer.effective_feedback().dtype == DT
    model.zero_grad()
    model(x.to(DT)).square().sum().backward()
    assert all(p.grad.dtype == DT for p in model.parameters())


@pytest.mark.parametrize("net", [
    "mlp",
    "cnn",
])
def test_autocast_bfloat16_training_step(net) -> None:
    torch.manual_seed(0)
    if net == "mlp":
        plain, x = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)), torch.randn(3, 4)
    else:
        plain, x = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 4, 3)), torch.randn(2, 2, 8, 8)
    model = falign.convert(plain, "fa")
    for _, layer in falign.feedback_layers(model):
        with torch.no_grad():
            layer.feedback.copy_(layer.weight)  # then FA must equal autocast backprop
    for m in (plain, model):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
        y.float().square().sum().backward()
    for p, q in zip(plain.parameters(), model.parameters(), strict=True):
        assert q.grad.dtype == torch.float32
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-2, atol=1e-2)
