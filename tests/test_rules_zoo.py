"""The rules past the seeds -- weight mirror, direct Kolen-Pollack, DRTP and sign-DFA -- against
their definitions written out here on tiny hand-set networks, in float64.

    wm    after step t:  x ~ U(-a/2, a/2)^(in x m) from (seed, t);  B <- (1 - decay) B + eta y x^T, y = W x
    dkp   input of layer i gets e B_i^T;  dL/dB_i = h_{i-1}^T e
    drtp  input of layer i gets (y* / N) B_i^T          (reduction mean; y* the one-hot target)
    sdfa  input of layer i gets (sign(e) / N) B_i^T
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import falign
from falign.layers import FeedbackError, StepContext, set_targets, train_step

DT = torch.float64
TOL = {"rtol": 1e-12, "atol": 1e-12}
pytestmark = pytest.mark.usefixtures("one_thread")


def close(actual, expected) -> None:
    torch.testing.assert_close(actual, expected, **TOL)


def randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6, dtype=DT), nn.Tanh(), nn.Linear(6, 4, dtype=DT), nn.Tanh(),
                         nn.Linear(4, 3, dtype=DT))


def forward_by_hand(model, x):
    ws = [model[i].weight.detach() for i in (0, 2, 4)]
    bs = [model[i].bias.detach() for i in (0, 2, 4)]
    a1 = x @ ws[0].T + bs[0]
    h1 = torch.tanh(a1)
    a2 = h1 @ ws[1].T + bs[1]
    h2 = torch.tanh(a2)
    z = h2 @ ws[2].T + bs[2]
    return a1, h1, a2, h2, z


X = randn(6, 5, seed=1)
Y = torch.tensor([0, 1, 2, 2, 1, 0])


# --------------------------------------------------------------------------- weight mirror


def mirror_noise(layer, t: int, rule) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(layer.feedback_seed) + 7_000_003 * (t + 1))
    u = torch.rand(layer.weight[0].numel(), rule.mirror_batch, generator=gen, dtype=DT)
    return rule.noise * (u - 0.5)


def test_wm_takes_one_mirror_step_per_optimizer_step_by_the_equation() -> None:
    model = falign.convert(mlp(), "wm", mirror_lr=0.05, noise=0.2, mirror_batch=16, decay=0.1)
    layer, rule = model[2], model[2].rule
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    b = layer.feedback.detach().clone()
    for t in range(1, 4):
        for _ in range(2):  # two micro-batches, one step
            F.cross_entropy(model(X), Y).backward()
        opt.step()
        opt.zero_grad()
        x = mirror_noise(layer, t, rule)  # (in, m)
        y = layer.weight.detach() @ x  # the new W
        b = (1 - 0.1) * b + 0.05 * (y @ x.T)
        close(layer.effective_feedback(), b)
        assert int(layer.feedback_step) == t
    # and the backward uses it: the signal to the layer's input is g @ B
    x_in = randn(3, 6, seed=9).requires_grad_(True)
    out = layer(x_in)
    (gx,) = torch.autograd.grad(out, x_in, torch.ones_like(out))
    close(gx, torch.ones(3, 4, dtype=DT) @ b)


def test_wm_mirror_steps_align_b_with_w() -> None:
    """E[y x^T] = (a^2 / 12) W: mirror steps alone turn a random B towards W's direction."""
    layer = falign.convert(nn.Sequential(nn.Linear(20, 10, dtype=DT)), "wm", mirror_lr=1.0)[0]
    rule, w = layer.rule, layer.weight.detach()

    def angle(b, w=w):
        cos = float((b * w).sum() / (b.norm() * w.norm()))
        return math.degrees(math.acos(max(-1.0, min(1.0, cos))))

    start = angle(layer.feedback)
    b = layer.feedback.detach()
    for t in range(1, 301):
        b = rule.mirror(layer.weight, b, t, int(layer.feedback_seed))
    assert start > 60 and angle(b) < 10, (start, angle(b))
    # initial_steps at conversion do the same before training
    torch.manual_seed(0)
    warm = falign.convert(nn.Sequential(nn.Linear(20, 10, dtype=DT)), "wm", mirror_lr=1.0,
                          initial_steps=300)[0]
    assert angle(warm.feedback, warm.weight.detach()) < 10


def test_wm_convolution_mirrors_the_patch_matrix() -> None:
    torch.manual_seed(0)
    conv = falign.convert(nn.Sequential(nn.Conv2d(2, 3, 3, dtype=DT)), "wm", mirror_batch=8)[0]
    b0 = conv.feedback.detach().clone()
    conv(randn(1, 2, 5, 5, seed=3).requires_grad_(True))  # a training forward: W is watched
    with torch.no_grad():
        conv.weight.add_(0.01)  # a step
    b1 = conv.effective_feedback()
    x = mirror_noise(conv, 1, conv.rule)  # (2 * 3 * 3, 8)
    y = conv.weight.detach().reshape(3, -1) @ x
    close(b1, b0 + 0.01 * (y @ x.T).view_as(b0))


@pytest.mark.parametrize("bad", [{"mirror_lr": 0}, {"noise": -1.0}, {"mirror_batch": 0}, {"decay": 1.0},
                                 {"initial_steps": -2}])
def test_wm_refuses_bad_options(bad) -> None:
    with pytest.raises(falign.RuleError, match="rule 'wm' option"):
        falign.get_rule("wm", **bad)


# --------------------------------------------------------------------------- direct Kolen-Pollack


def test_dkp_b_is_trained_on_h_transposed_e_and_the_signal_is_e_b_transposed() -> None:
    model = falign.convert(mlp(), "dkp", seed=2, example_input=X)
    b2, b3 = model[2].feedback, model[4].feedback
    assert isinstance(b2, nn.Parameter) and b2.shape == (6, 3) and b3.shape == (4, 3)
    F.cross_entropy(model(X), Y).backward()
    a1, h1, a2, h2, z = forward_by_hand(model, X)
    zz = z.detach().requires_grad_(True)
    (e,) = torch.autograd.grad(F.cross_entropy(zz, Y), zz)
    close(b2.grad, h1.T @ e)
    close(b3.grad, h2.T @ e)
    d1 = (e @ b2.detach().T) * (1 - h1 ** 2)
    close(model[0].weight.grad, d1.T @ X)
    d2 = (e @ b3.detach().T) * (1 - h2 ** 2)
    close(model[2].weight.grad, d2.T @ h1)
    close(model[4].weight.grad, e.T @ h2)


def test_dkp_b_moves_with_its_own_optimizer_and_learning_rate() -> None:
    model = falign.convert(mlp(), "dkp", example_input=X)
    fb = [p for n, p in model.named_parameters() if n.endswith("feedback")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("feedback")]
    forward, backward = torch.optim.SGD(rest, lr=0.1, momentum=0.9), torch.optim.Adam(fb, lr=1e-3)
    b0 = [b.detach().clone() for b in fb]
    for _ in range(3):
        forward.zero_grad()
        backward.zero_grad()
        F.cross_entropy(model(X), Y).backward()
        forward.step()
        backward.step()
    assert all(not torch.equal(b, c) for b, c in zip(fb, b0, strict=True))


def test_dkp_without_example_input_or_with_b_in_no_optimizer_is_an_error() -> None:
    model = falign.convert(mlp(), "dkp")
    with pytest.raises(FeedbackError, match="example_input"):
        model(X)
    model = falign.convert(mlp(), "dkp", example_input=X)
    opt = torch.optim.SGD([p for n, p in model.named_parameters() if not n.endswith("feedback")], lr=0.1)
    for _ in range(2):
        F.cross_entropy(model(X), Y).backward()
        if _ == 0:
            opt.step()  # one step's grace: another optimizer may step B right after
    with pytest.raises(FeedbackError, match="not stepped by any optimizer"):
        opt.step()


# --------------------------------------------------------------------------- DRTP and sign-DFA


def hidden_signals(rule: str, x, y, **opts):
    """(update of the first layer, of the second layer) with the CE loss, targets given."""
    model = falign.convert(mlp(), rule, seed=3, **opts)
    set_targets(model, y)
    F.cross_entropy(model(x), y).backward()
    return model


@pytest.mark.parametrize("rule", ["drtp", "sdfa"])
def test_projection_of_the_target_or_the_error_sign_by_formula(rule) -> None:
    model = hidden_signals(rule, X, Y)
    a1, h1, a2, h2, z = forward_by_hand(model, X)
    zz = z.detach().requires_grad_(True)
    (e,) = torch.autograd.grad(F.cross_entropy(zz, Y), zz)
    source = F.one_hot(Y, 3).to(DT) if rule == "drtp" else torch.sign(e)
    source = source / X.shape[0]  # reduction mean: a sample weighs 1/N
    b2, b3 = model[2].feedback, model[4].feedback
    d1 = (source @ b2.T) * (1 - h1 ** 2)
    d2 = (source @ b3.T) * (1 - h2 ** 2)
    close(model[0].weight.grad, d1.T @ X)
    close(model[2].weight.grad, d2.T @ h1)
    close(model[4].weight.grad, e.T @ h2)  # the output layer's local gradient
    # reduction sum: no 1/N
    summed = hidden_signals(rule, X, Y, reduction="sum")
    close(summed[0].weight.grad, model[0].weight.grad * X.shape[0])


@pytest.mark.parametrize("rule", ["drtp", "sdfa", "dfa"])
def test_the_update_does_not_depend_on_the_batch_size_beyond_the_mean(rule) -> None:
    one = hidden_signals(rule, X, Y)
    three = hidden_signals(rule, X.repeat(3, 1), Y.repeat(3))  # the same samples, three times
    for i in (0, 2, 4):
        close(three[i].weight.grad, one[i].weight.grad)


def test_drtp_without_the_steps_labels_is_an_error_at_the_first_backward() -> None:
    """The labels are a required input: never read off e (under cross-entropy, the target's
    entry of e rounds to 0 once the softmax is confident), whatever the loss."""
    for loss in (lambda z: F.cross_entropy(z, Y), lambda z: F.mse_loss(z, F.one_hot(Y, 3).to(DT))):
        model = falign.convert(mlp(), "drtp", seed=3)
        with pytest.raises(FeedbackError, match=r"drtp rule projects each step's labels: call "
                                                r"falign.set_step\(model, targets=y\)"):
            loss(model(X)).backward()


def test_drtp_is_exact_where_the_softmax_is_confident() -> None:
    """Logits so confident that softmax - y* underflows at the target in float32: the
    projection of the given labels is still y* B^T / N."""
    model = falign.convert(nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)), "drtp", seed=3)
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].bias.copy_(torch.tensor([60.0, 0.0, 0.0]))
    x, y = X.float(), torch.zeros(6, dtype=torch.long)
    z = model(x)
    assert bool((torch.softmax(z, 1)[:, 0] == 1).all())  # e's target entry is exactly 0
    falign.set_step(model, targets=y)
    F.cross_entropy(z, y).backward()
    h = torch.tanh(x @ model[0].weight.T + model[0].bias).detach()
    d = ((F.one_hot(y, 3).float() / 6) @ model[2].feedback.T) * (1 - h ** 2)
    torch.testing.assert_close(model[0].weight.grad, d.T @ x)


def test_drtp_labels_at_the_ignore_index_count_in_no_loss() -> None:
    """A label -100 (PyTorch's and Hugging Face's ignored position) projects nothing: the
    update is the one of the other samples alone."""
    ignored = torch.tensor([0, 1, -100, 2, -100, 0])
    model = falign.convert(mlp(), "drtp", seed=3)
    falign.set_step(model, targets=ignored)
    F.cross_entropy(model(X), ignored).backward()
    a1, h1, *_ = forward_by_hand(model, X)
    keep = ignored != -100
    # a mean over the labels that count, as cross_entropy's own: 4 of 6
    source = F.one_hot(ignored.clamp_min(0), 3).to(DT) * keep[:, None] / 4
    close(model[0].weight.grad, (((source @ model[2].feedback.T) * (1 - h1 ** 2)).T @ X))


@pytest.mark.parametrize("rule", ["sdfa", "drtp"])
def test_a_sequences_default_weight_is_one_over_its_positions(rule) -> None:
    """One label a position and a mean loss over the N x T positions: without a weight given,
    a position weighs 1/(N T), as in cross_entropy over the flattened positions."""
    torch.manual_seed(0)
    model = falign.convert(nn.Sequential(nn.Linear(5, 6, dtype=DT), nn.Tanh(), nn.Linear(6, 3, dtype=DT)),
                           rule, seed=3)
    x, y = randn(2, 4, 5, seed=2), torch.tensor([[0, 1, 2, 1], [2, 2, 0, 1]])
    falign.set_step(model, targets=y)
    z = model(x)
    F.cross_entropy(z.reshape(-1, 3), y.reshape(-1)).backward()
    zz = z.detach().requires_grad_(True)
    (e,) = torch.autograd.grad(F.cross_entropy(zz.reshape(-1, 3), y.reshape(-1)), zz)
    source = (F.one_hot(y, 3).to(DT) if rule == "drtp" else torch.sign(e)) / 8
    h = torch.tanh(x @ model[0].weight.T + model[0].bias).detach()
    d = (source @ model[2].feedback.T) * (1 - h ** 2)
    close(model[0].weight.grad, d.reshape(-1, 6).T @ x.reshape(-1, 5))


@pytest.mark.parametrize("rule", sorted(falign.rules()))
def test_every_rules_update_scales_with_the_loss(rule) -> None:
    """The loss times 1024, and falign told so (set_step's loss_scale: what a GradScaler does):
    every gradient times 1024, sign-DFA's and DRTP's included (their signal drops e's
    magnitude, so they take the scale from the step)."""
    grads = []
    for factor in (1.0, 1024.0):
        model = falign.convert(mlp(), rule, seed=3, example_input=X)
        falign.set_step(model, targets=Y, loss_scale=factor)
        (factor * F.cross_entropy(model(X), Y)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any(k.startswith("0.") for k in grads[0])
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], 1024 * g, rtol=1e-12, atol=0, msg=name)


@pytest.mark.parametrize("rule", ["sdfa", "drtp", "dfa"])
def test_under_a_grad_scaler_the_unscaled_update_is_the_plain_one(rule) -> None:
    """A GradScaler's scaled backward, then unscale_: the gradients the optimizer steps on are
    those of the plain loss, through falign's step (StepContext.loss_scale) and by hand."""
    plain = falign.convert(mlp(), rule, seed=3)
    train_step(plain, plain, X, Y, StepContext(loss_fn=F.cross_entropy))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    scaled = falign.convert(mlp(), rule, seed=3)
    opt = torch.optim.SGD(scaled.parameters(), lr=0.1)
    ctx = StepContext(loss_fn=F.cross_entropy, backward=lambda loss: scaler.scale(loss).backward(),
                      loss_scale=scaler.get_scale)
    train_step(scaled, scaled, X, Y, ctx)
    scaler.unscale_(opt)
    for (name, p), q in zip(plain.named_parameters(), scaled.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-12, atol=1e-15, msg=name)


def test_drtp_refuses_the_targets_of_an_earlier_step() -> None:
    model = falign.convert(mlp(), "drtp", seed=3)
    set_targets(model, Y)
    F.mse_loss(model(X), F.one_hot(Y, 3).to(DT)).backward()  # their step
    with pytest.raises(FeedbackError, match="earlier step"):
        F.mse_loss(model(X), F.one_hot(Y, 3).to(DT)).backward()  # the next one, none given


def test_drtp_through_the_runners_step_gets_the_labels() -> None:
    model = falign.convert(mlp(), "drtp", seed=3)
    ctx = StepContext(loss_fn=lambda o, t: F.mse_loss(o, F.one_hot(t, 3).to(DT)))
    train_step(model, model, X, Y, ctx)  # the step gives the labels: any loss works
    a1, h1, *_ = forward_by_hand(model, X)
    d1 = ((F.one_hot(Y, 3).to(DT) / 6) @ model[2].feedback.T) * (1 - h1 ** 2)
    close(model[0].weight.grad, d1.T @ X)
    assert model[0].pathway_state.wiring.step.targets is None  # cleared after the step
