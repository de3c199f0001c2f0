"""The averaged loops of the DFA framework report, against the closed form written out here.

A 6-5-4-3 tanh MLP converted with 'dfa', in float64. With a_i the pre-activation of layer i
(0-based), h_i = tanh(a_i), h_{-1} = x, K = 3 outputs and B_{i+1} = layers[i+1].feedback as a
(sizes[i+1], K) matrix:

    batch mode   e = mean(sigmoid(a_L)) - mean(y)                         (1, K)
                 (e_n is the loss's own gradient at the logits: sigmoid(a_L) - y for bce summed)
                 dW_L = e^T mean(h_{L-1}),  db_L = e
                 da_i = (e @ B_{i+1}^T) * (1 - tanh(mean a_i)^2)           (1, sizes[i+1])
                 dW_i = da_i^T mean(h_{i-1}),  db_i = da_i
    class mode   the batch-mode update of each class's samples, summed over the classes present
    per sample   e_n = sigmoid(a_L,n) - y_n; da_i,n = (e_n @ B_{i+1}^T) * (1 - h_i,n^2);
                 dW_i = sum_n da_i,n^T h_{i-1,n}   (what loss.backward() gives with bce, sum)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from falign.layers import FeedbackError, StepContext
from falign.layers.pathways.direct import averaged_step
from falign.models import create_model

LOSSES = {
    "bce": lambda o, t: F.binary_cross_entropy_with_logits(o, F.one_hot(t, K).double(), reduction="sum"),
    "cross_entropy": lambda o, t: F.cross_entropy(o, t, reduction="sum"),
    "mse": lambda o, t: F.mse_loss(o, F.one_hot(t, K).double(), reduction="sum"),
}


def averaged_dfa_grads(model, x, y, labels, *, mode, loss, step="mean", loss_fn=None):
    """The pathway's averaged step with a summed loss of the given kind (y: the one-hot target)."""
    ctx = StepContext(loss_fn=loss_fn or LOSSES[loss])
    out, _ = averaged_step(model, x, labels, ctx, mode=mode, step=step)
    return out

SIZES = [6, 5, 4, 3]
K = SIZES[-1]
LABELS = torch.tensor([0, 2, 1, 2, 2, 0, 1, 2, 0, 2])  # every class, in unequal numbers


def make_model(seed: int = 0):
    torch.manual_seed(seed)
    model = create_model("mlp", rule="dfa", sizes=SIZES, activation="tanh",
                         rule_options={"seed": seed})
    return model.double().train()


def batch(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(LABELS), SIZES[0], generator=gen, dtype=torch.float64)
    return x, F.one_hot(LABELS, K).double(), LABELS


def weights(model):
    return ([layer.weight.detach() for layer in model.layers],
            [layer.bias.detach() for layer in model.layers])


def feedback(model, i: int) -> torch.Tensor:
    """B_i as (sizes[i], K): maps the output error to the input of layer i (i >= 1)."""
    return model.layers[i].feedback.detach().reshape(SIZES[i], K)


def forward_by_hand(ws, bs, x):
    """Pre-activations a_i and the inputs h_{i-1} of every layer."""
    a, h_in, h = [], [], x
    for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
        h_in.append(h)
        a.append(h @ w.T + b)
        h = torch.tanh(a[-1]) if i < len(ws) - 1 else a[-1]
    return a, h_in


def batch_formula(model, x, y):
    """(dW, db) per layer from the batch-averaged signals, written out."""
    ws, bs = weights(model)
    a, h_in = forward_by_hand(ws, bs, x)
    e = torch.sigmoid(a[-1]).mean(0, keepdim=True) - y.mean(0, keepdim=True)  # (1, K)
    L = len(ws) - 1
    dws, dbs = [None] * len(ws), [None] * len(ws)
    dws[L], dbs[L] = e.T @ h_in[L].mean(0, keepdim=True), e[0]
    for i in range(L):
        da = (e @ feedback(model, i + 1).T) * (1 - torch.tanh(a[i].mean(0, keepdim=True)) ** 2)
        dws[i], dbs[i] = da.T @ h_in[i].mean(0, keepdim=True), da[0]
    return dws, dbs


def grads(model):
    return [m.weight.grad.clone() for m in model.layers], [m.bias.grad.clone() for m in model.layers]


def assert_grads(model, dws, dbs):
    gw, gb = grads(model)
    for i in range(len(dws)):
        torch.testing.assert_close(gw[i], dws[i], rtol=1e-12, atol=1e-14, msg=f"weight {i}")
        torch.testing.assert_close(gb[i], dbs[i], rtol=1e-12, atol=1e-14, msg=f"bias {i}")


def test_batch_mode_is_the_closed_form():
    model = make_model()
    x, y, labels = batch()
    out = averaged_dfa_grads(model, x, y, labels, mode="batch", loss="bce")
    ws, bs = weights(model)
    torch.testing.assert_close(out, forward_by_hand(ws, bs, x)[0][-1], rtol=1e-12, atol=1e-14)
    assert model.layers[0].feedback is None  # the first layer sends no signal anywhere
    dws, dbs = batch_formula(model, x, y)
    assert_grads(model, dws, dbs)
    assert all(dw.abs().sum() > 0 for dw in dws)


def test_class_mode_is_the_sum_of_per_class_batch_updates():
    model = make_model()
    x, y, labels = batch()
    averaged_dfa_grads(model, x, y, labels, mode="class", loss="bce")
    parts = [batch_formula(model, x[labels == c], y[labels == c]) for c in range(K)]
    dws = [sum(p[0][i] for p in parts) for i in range(len(SIZES) - 1)]
    dbs = [sum(p[1][i] for p in parts) for i in range(len(SIZES) - 1)]
    assert_grads(model, dws, dbs)
    # and it is not the batch-mode update (the test would not see a mode mix-up otherwise)
    whole, _ = batch_formula(model, x, y)
    assert not torch.allclose(dws[0], whole[0])


def test_class_mode_with_one_class_is_batch_mode():
    model = make_model()
    x, y, _ = batch()
    same = torch.zeros(len(LABELS), dtype=torch.long)
    y0 = F.one_hot(same, K).double()
    averaged_dfa_grads(model, x, y0, same, mode="class", loss="bce")
    by_class = grads(model)
    averaged_dfa_grads(model, x, y0, same, mode="batch", loss="bce")
    by_batch = grads(model)
    for a, b in zip(by_class[0] + by_class[1], by_batch[0] + by_batch[1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_feedback_is_the_one_autograd_uses():
    # the B read above is the B of the layer that receives the signal: plain DFA backward with
    # the same model must use the same matrices
    model = make_model()
    x, y, labels = batch()
    averaged_dfa_grads(model, x, y, labels, mode="batch", loss="bce")
    b1, b2 = feedback(model, 1), feedback(model, 2)
    model.zero_grad(set_to_none=True)
    F.binary_cross_entropy_with_logits(model(x), y, reduction="sum").backward()
    assert torch.equal(feedback(model, 1), b1) and torch.equal(feedback(model, 2), b2)


def test_per_sample_dfa_is_the_closed_form():
    model = make_model()
    x, y, _ = batch()
    model.zero_grad(set_to_none=True)
    out = model(x)
    F.binary_cross_entropy_with_logits(out, y, reduction="sum").backward()

    ws, bs = weights(model)
    a, h_in = forward_by_hand(ws, bs, x)
    e = torch.sigmoid(a[-1]) - y  # (N, K), one error per sample
    L = len(ws) - 1
    dws, dbs = [None] * len(ws), [None] * len(ws)
    dws[L], dbs[L] = e.T @ h_in[L], e.sum(0)
    for i in range(L):
        da = (e @ feedback(model, i + 1).T) * (1 - torch.tanh(a[i]) ** 2)  # (N, sizes[i+1])
        dws[i], dbs[i] = da.T @ h_in[i], da.sum(0)
    assert_grads(model, dws, dbs)


def test_per_sample_and_batch_modes_differ():
    model = make_model()
    x, y, labels = batch()
    averaged_dfa_grads(model, x, y, labels, mode="batch", loss="bce")
    avg = grads(model)[0][0]
    model.zero_grad(set_to_none=True)
    F.binary_cross_entropy_with_logits(model(x), y, reduction="mean").backward()
    assert not torch.allclose(model.layers[0].weight.grad, avg)


@pytest.mark.parametrize("loss, predict", [("cross_entropy", lambda a: torch.softmax(a, 1)),
                                           ("mse", lambda a: a)])  # summed mse: e = 2 (a - y)
def test_other_losses_compare_their_own_prediction(loss, predict):
    model = make_model()
    x, y, labels = batch()
    averaged_dfa_grads(model, x, y, labels, mode="batch", loss=loss)
    ws, bs = weights(model)
    a, h_in = forward_by_hand(ws, bs, x)
    e = predict(a[-1]).mean(0, keepdim=True) - y.mean(0, keepdim=True)
    e = 2 * e if loss == "mse" else e
    torch.testing.assert_close(model.layers[-1].weight.grad, e.T @ h_in[-1].mean(0, keepdim=True),
                               rtol=1e-12, atol=1e-14)


def test_grads_replace_rather_than_accumulate():
    model = make_model()
    x, y, labels = batch()
    averaged_dfa_grads(model, x, y, labels, mode="batch", loss="bce")
    first = grads(model)
    averaged_dfa_grads(model, x, y, labels, mode="batch", loss="bce")
    for a, b in zip(first[0], grads(model)[0], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_refuses_a_model_that_is_not_an_mlp():
    x, y, labels = batch()
    cnn = create_model("lenet", rule="dfa", in_shape=(1, 32, 32)).double()
    with pytest.raises(FeedbackError, match="need an 'mlp'"):
        averaged_dfa_grads(cnn, torch.zeros(2, 1, 32, 32, dtype=torch.float64), y, labels[:2],
                           mode="batch", loss="bce")
    with pytest.raises(FeedbackError, match="need an 'mlp'"):  # refused at conversion already
        create_model("lenet", rule="dfa", in_shape=(1, 32, 32), rule_options={"average": "batch"})


def test_refuses_an_unknown_mode():
    x, y, labels = batch()
    with pytest.raises(ValueError, match="sample, batch, class"):
        averaged_dfa_grads(make_model(), x, y, labels, mode="sample", loss="bce")


# -------------------------------------------------------------- the output activation, the step size


def per_sample(model, x, labels, loss_fn):
    model.zero_grad(set_to_none=True)
    loss_fn(model(x), labels).backward()
    return grads(model)


@pytest.mark.parametrize("mode", ["batch", "class"])
@pytest.mark.parametrize("step", ["mean", "sum"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_at_batch_size_one_every_loop_is_per_sample_dfa_whatever_ends_the_model(mode, step, reduction):
    """An MLP ending in a sigmoid, trained on the squared error of its output: the averaged
    loops take e at the logits through the sigmoid, as per-sample DFA does."""
    torch.manual_seed(0)
    model = create_model("mlp", rule="dfa", sizes=SIZES, activation="tanh", output="sigmoid",
                         rule_options={"seed": 0}).double().train()
    x, _, labels = batch()

    def loss_fn(o, t):
        return F.mse_loss(o, F.one_hot(t, K).double(), reduction=reduction)

    for n in range(3):
        xs, ls = x[n:n + 1], labels[n:n + 1]
        expected = per_sample(model, xs, ls, loss_fn)
        averaged_dfa_grads(model, xs, None, ls, mode=mode, loss=None, step=step, loss_fn=loss_fn)
        for a, b in zip(grads(model)[0] + grads(model)[1], expected[0] + expected[1], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_sum_step_is_the_group_size_times_the_mean_step():
    model = make_model()
    x, y, labels = batch()
    averaged_dfa_grads(model, x, y, labels, mode="class", loss="bce", step="mean")
    mean = grads(model)
    averaged_dfa_grads(model, x, y, labels, mode="batch", loss="bce", step="sum")
    whole = grads(model)
    averaged_dfa_grads(model, x, y, labels, mode="batch", loss="bce", step="mean")
    for a, b in zip(whole[0], grads(model)[0], strict=True):
        torch.testing.assert_close(a, len(LABELS) * b, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(mean[0][0], whole[0][0])
