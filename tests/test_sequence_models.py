"""Transformers and recurrent networks under every rule, in float64 on tiny models built here.

For each model kind: the forward equals the unconverted model; FA with every B set to its W is
exactly backprop; the input gradient of a converted attention / LSTM equals the formula with B
in each weight's place (a twin written here with its own FA product); token-wise DFA equals its
closed form and its feedback does not grow with the sequence length; a feedback point receives
nothing from above (skip connections included) unless asked to; every parameter that gets a
gradient under BP gets a finite one under every registered rule.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import falign

DT = torch.float64
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:enable_nested_tensor is True:UserWarning")]


def randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def close(a, b, tol=1e-10) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# --------------------------------------------------------------------------- the models


class MHAModel(nn.Module):
    def __init__(self, **kw) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kdim = kw.get("kdim", 8)
        self.attn = nn.MultiheadAttention(8, 2, dtype=DT, **kw)
        self.head = nn.Linear(8, 3, dtype=DT)

    def forward(self, x):  # (L, N, 8) or batch first
        kv = x if self.kdim == 8 else x[..., : self.kdim]
        axis = 1 if self.attn.batch_first else 0
        mask = torch.triu(torch.ones(x.shape[axis], kv.shape[axis], dtype=torch.bool), 1)
        out, _ = self.attn(x, kv, kv, attn_mask=mask, need_weights=False)
        return self.head(torch.tanh(out))


def lstm_lm(kind: str = "lstm", **kw) -> nn.Module:
    torch.manual_seed(0)

    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(11, 6, dtype=DT)
            cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind]
            self.rnn = cls(6, 5, batch_first=True, dtype=DT, **kw)
            width = 5 * (2 if kw.get("bidirectional") else 1)
            width = kw.get("proj_size", 0) * (2 if kw.get("bidirectional") else 1) or width
            self.head = nn.Linear(width, 11, dtype=DT)

        def forward(self, ids):
            return self.head(self.rnn(self.emb(ids))[0])  # (N, T, V)

    return LM()


def tiny_transformer() -> nn.Module:
    torch.manual_seed(0)

    class T(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Transformer(d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                                        dim_feedforward=16, dropout=0.0, dtype=DT)
            self.head = nn.Linear(8, 5, dtype=DT)

        def forward(self, src):  # (S, N, 8)
            return self.head(self.model(src, src[:4]))

    return T()


def cells() -> nn.Module:
    torch.manual_seed(0)

    class C(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTMCell(4, 5, dtype=DT)
            self.gru = nn.GRUCell(5, 5, dtype=DT)
            self.rnn = nn.RNNCell(5, 4, dtype=DT)

        def forward(self, x):  # (N, 4)
            h, _ = self.lstm(x)
            return self.rnn(self.gru(h, h))

    return C()


def hf(name: str) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    if name == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=40, n_positions=32,
                                      bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                                      attn_pdrop=0.0)
        return _logits(transformers.GPT2LMHeadModel(cfg).double())
    if name == "bert":
        cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=32, max_position_embeddings=16,
                                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        return _logits(transformers.BertForSequenceClassification(cfg).double())
    cfg = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16,
                                 num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                 num_labels=3,
                                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return _logits(transformers.ViTForImageClassification(cfg).double())


class _logits(nn.Module):  # noqa: N801  (a wrapper that returns the logits tensor)
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).logits


MODELS = {
    "mha_packed": (lambda: MHAModel(), lambda: randn(5, 3, 8, seed=1)),
    "mha_kdim_batch_first_bias_kv": (lambda: MHAModel(kdim=5, vdim=5, batch_first=True, add_bias_kv=True),
                                     lambda: randn(3, 5, 8, seed=1)),
    "lstm_2layer_bidir": (lambda: lstm_lm("lstm", num_layers=2, bidirectional=True),
                          lambda: torch.randint(0, 11, (3, 6), generator=torch.Generator().manual_seed(1))),
    "lstm_proj": (lambda: lstm_lm("lstm", proj_size=3), lambda: torch.randint(0, 11, (3, 6))),
    "gru": (lambda: lstm_lm("gru", num_layers=2), lambda: torch.randint(0, 11, (3, 6))),
    "rnn_relu": (lambda: lstm_lm("rnn", nonlinearity="relu"), lambda: torch.randint(0, 11, (3, 6))),
    "cells": (cells, lambda: randn(3, 4, seed=1)),
    "transformer": (tiny_transformer, lambda: randn(6, 2, 8, seed=1)),
    "gpt2": (lambda: hf("gpt2"), lambda: torch.randint(0, 40, (2, 7))),
    "bert": (lambda: hf("bert"), lambda: torch.randint(0, 50, (2, 7))),
    "vit": (lambda: hf("vit"), lambda: randn(2, 3, 8, 8, seed=1)),
}


def _loss(out: torch.Tensor) -> torch.Tensor:
    return (out * randn(*out.shape, seed=7)).sum() + 0.5 * (out ** 2).sum()


def _grads(model, x):
    model.zero_grad()
    x = x.detach().clone().requires_grad_(x.is_floating_point())
    _loss(model(x)).backward()
    return ([x.grad] if x.is_floating_point() else []) + [
        p.grad for n, p in model.named_parameters() if not n.endswith("feedback")]


# --------------------------------------------------------------------------- conversion and forward


@pytest.mark.parametrize("kind", list(MODELS))
def test_conversion_reaches_every_weight_and_the_forward_is_unchanged(kind) -> None:
    make, inp = MODELS[kind]
    plain, x = make(), inp()
    model = falign.convert(plain, "fa", example_input=x, warn=False)
    report = model.falign_conversion
    assert report.unreachable == [], report.unreachable
    close(model(x), plain(x), 1e-12)


@pytest.mark.parametrize("kind", list(MODELS))
def test_fa_with_every_b_set_to_its_w_is_backprop(kind) -> None:
    make, inp = MODELS[kind]
    plain, x = make(), inp()
    model = falign.convert(plain, "fa", example_input=x, warn=False)
    random_b = _grads(model, x)
    for _, layer in falign.feedback_layers(model):
        with torch.no_grad():
            layer.feedback.copy_(layer.weight)  # W in the slot's own (canonical) layout
    ref, got = _grads(plain, x), _grads(model, x)
    assert any(not torch.allclose(a, b) for a, b in zip(random_b, ref, strict=True))  # B = random differs
    for a, b in zip(got, ref, strict=True):
        close(a, b)


def test_the_embedding_is_reported_exact_not_unreachable() -> None:
    model = falign.convert(lstm_lm(), "fa", warn=False)
    exact = dict(model.falign_conversion.exact)
    assert "needs no gradient" in exact["emb"] and not model.falign_conversion.unreachable


# --------------------------------------------------------------------------- input gradients by formula


class FAMatmul(torch.autograd.Function):
    """The twin's own FA product: forward x W^T, backward g B (input) and g^T x (weight)."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, b)
        return x @ w.T

    @staticmethod
    def backward(ctx, g):
        x, b = ctx.saved_tensors
        return g @ b, g.reshape(-1, g.shape[-1]).T @ x.reshape(-1, x.shape[-1]), None


def test_attention_input_gradient_is_the_formula_with_b_in_each_weights_place() -> None:
    model = falign.convert(MHAModel(), "fa", seed=3)
    attn = model.attn
    x = randn(5, 3, 8, seed=1).requires_grad_(True)
    _loss(model(x)).backward()
    # the twin: the same attention, each projection an FAMatmul with the layer's B
    xx = x.detach().clone().requires_grad_(True)
    slots, e = attn.falign_slots, 8
    w, bias = attn.in_proj_weight, attn.in_proj_bias
    q = FAMatmul.apply(xx, w[:e], slots["q"].feedback) + bias[:e]
    k = FAMatmul.apply(xx, w[e:2 * e], slots["k"].feedback) + bias[e:2 * e]
    v = FAMatmul.apply(xx, w[2 * e:], slots["v"].feedback) + bias[2 * e:]
    heads = lambda t: t.reshape(5, 3 * 2, 4).transpose(0, 1)  # noqa: E731
    mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    additive = torch.zeros(5, 5, dtype=DT).masked_fill(mask, float("-inf"))
    scores = heads(q) @ heads(k).transpose(1, 2) / 2.0 + additive
    out = (torch.softmax(scores, -1) @ heads(v)).transpose(0, 1).reshape(5, 3, 8)
    out = FAMatmul.apply(out, attn.out_proj.weight, attn.out_proj.feedback) + attn.out_proj.bias
    head = FAMatmul.apply(torch.tanh(out), model.head.weight, model.head.feedback) + model.head.bias
    _loss(head).backward()
    close(x.grad, xx.grad)


def test_lstm_input_gradient_is_the_formula_with_b_in_each_weights_place() -> None:
    torch.manual_seed(0)
    plain = nn.Sequential(nn.LSTM(4, 5, dtype=DT))
    model = falign.convert(plain, "fa", seed=2)
    lstm, slots = model[0], model[0].falign_slots
    x = randn(6, 2, 4, seed=1).requires_grad_(True)
    out, (h, c) = lstm(x)
    _loss(out).backward()
    xx = x.detach().clone().requires_grad_(True)
    hs, h, c = [], torch.zeros(2, 5, dtype=DT), torch.zeros(2, 5, dtype=DT)
    for t in range(6):  # the cell written out, each product an FAMatmul
        gates = (FAMatmul.apply(xx[t], lstm.weight_ih_l0, slots["weight_ih_l0"].feedback) + lstm.bias_ih_l0
                 + FAMatmul.apply(h, lstm.weight_hh_l0, slots["weight_hh_l0"].feedback) + lstm.bias_hh_l0)
        i, f, g, o = gates.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        hs.append(h)
    _loss(torch.stack(hs)).backward()
    close(x.grad, xx.grad)


# --------------------------------------------------------------------------- token-wise DFA


class OneBlock(nn.Module):
    """A one-block (post-norm-free) transformer LM: x -> x + attn(x) -> x + fc2(relu(fc1(x)))."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(7, 8, dtype=DT)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True, dtype=DT)
        self.fc1 = nn.Linear(8, 16, dtype=DT)
        self.fc2 = nn.Linear(16, 8, dtype=DT)
        self.head = nn.Linear(8, 7, dtype=DT)

    def forward(self, ids):
        x = self.emb(ids)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        x = x + self.fc2(torch.relu(self.fc1(x)))
        return self.head(x)


def test_token_wise_dfa_closed_form_on_a_one_block_transformer() -> None:
    model = falign.convert(OneBlock(), "dfa", seed=1)
    ids = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(2))
    F.cross_entropy(model(ids).reshape(-1, 7), ids.reshape(-1)).backward()  # makes the B_i
    model.zero_grad()
    out = model(ids)
    F.cross_entropy(out.reshape(-1, 7), ids.reshape(-1)).backward()
    z = out.detach().requires_grad_(True)
    (e,) = torch.autograd.grad(F.cross_entropy(z.reshape(-1, 7), ids.reshape(-1)), z)  # (3, 5, 7)
    # fc1's input (x after attention) receives e_t B_fc1^T at every position t; fc1's update is
    # the local one: (that signal through fc2? no -- fc2's input gets its own) -> fc1 learns from
    # fc2's injection through relu
    x0 = model.emb(ids)
    x1 = x0 + model.attn(x0, x0, x0, need_weights=False)[0]
    a1 = model.fc1(x1)
    b_fc2 = model.fc2.feedback  # (16, 7): one position's error to one position's input
    assert b_fc2.shape == (16, 7) and model.fc1.feedback.shape == (8, 7)
    delta1 = (e @ b_fc2.T) * (a1 > 0)
    close(model.fc1.weight.grad, (delta1.reshape(-1, 16).T @ x1.reshape(-1, 8)).detach())
    close(model.fc1.bias.grad, delta1.reshape(-1, 16).sum(0).detach())


def test_token_wise_dfa_feedback_does_not_grow_with_the_sequence_length() -> None:
    sizes = {}
    for t in (8, 16):
        model = falign.convert(OneBlock(), "dfa")
        ids = torch.randint(0, 7, (2, t))
        model(ids).sum().backward()
        sizes[t] = sum(layer.feedback.numel() for _, layer in falign.feedback_layers(model)
                       if layer.feedback is not None)
    assert sizes[8] == sizes[16] > 0


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(4, 6, dtype=DT)
        self.f = nn.Linear(6, 6, dtype=DT)
        self.head = nn.Linear(6, 3, dtype=DT)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        self.h = h
        h.retain_grad()
        return self.head(h + torch.tanh(self.f(h)))  # a skip connection around f


@pytest.mark.parametrize("above", ["cut", "keep"])
def test_a_feedback_point_receives_nothing_from_above_unless_the_skip_is_kept(above) -> None:
    model = falign.convert(Residual(), "dfa", seed=4, above=above)
    x = randn(5, 4, seed=1)
    out = model(x)
    z = out.detach().requires_grad_(True)
    (e,) = torch.autograd.grad(F.cross_entropy(z, torch.tensor([0, 1, 2, 0, 1])), z)
    F.cross_entropy(out, torch.tensor([0, 1, 2, 0, 1])).backward()
    h = model.h
    injected = e @ model.f.feedback.T  # what f sends to its input h
    if above == "cut":
        close(h.grad, injected)  # the skip path's e @ B_head^T is gone
    else:
        skip = e @ model.head.feedback.T  # the head's injection reaches h through the skip
        close(h.grad, injected + skip)


def test_block_outputs_as_feedback_points_with_backprop_inside() -> None:
    """Launay et al.'s "macro" placement: the block's output receives e B^T, its layers learn
    from it by backprop, and nothing passes from above."""
    model = falign.convert(Residual(), "dfa", seed=4, points=["inp"])
    x = randn(5, 4, seed=1)
    y = torch.tensor([0, 1, 2, 0, 1])
    out = model(x)
    F.cross_entropy(out, y).backward()
    point = model.inp.falign_point
    z = out.detach().requires_grad_(True)
    (e,) = torch.autograd.grad(F.cross_entropy(z, y), z)
    a = x @ model.inp.weight.T + model.inp.bias
    delta = e @ point.feedback.T  # the point is inp's output: it receives e B^T itself
    close(model.inp.weight.grad, (delta.T @ x).detach())
    # above the point, backprop: f and head learn by their true gradients
    h = torch.tanh(a).detach().requires_grad_(False)
    ref = Residual()
    ref.load_state_dict({k: v for k, v in model.state_dict().items() if k in ref.state_dict()})
    for p in ref.inp.parameters():
        p.requires_grad_(False)
    F.cross_entropy(ref.head(h + torch.tanh(ref.f(h))), y).backward()
    close(model.f.weight.grad, ref.f.weight.grad)
    close(model.head.weight.grad, ref.head.weight.grad)


def test_recurrent_weight_is_no_feedback_point_by_default_and_one_per_step_if_asked() -> None:
    for mode in ("none", "step"):
        torch.manual_seed(0)

        class M(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.rnn = nn.RNN(3, 4, batch_first=True, dtype=DT)
                self.head = nn.Linear(4, 5, dtype=DT)

            def forward(self, x):
                return self.head(self.rnn(x)[0])

        model = falign.convert(M(), "dfa", seed=1, recurrent=mode)
        x = randn(2, 4, 3, seed=2)
        out = model(x)
        z = out.detach().requires_grad_(True)
        (e,) = torch.autograd.grad(_loss(z), z)  # (2, 4, 5)
        _loss(out).backward()
        rnn, slots = model.rnn, model.rnn.falign_slots
        hs, h = [], torch.zeros(2, 4, dtype=DT)
        for t in range(4):
            a = x[:, t] @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + h @ rnn.weight_hh_l0.T + rnn.bias_hh_l0
            h = torch.tanh(a)
            hs.append(h)
        hs = torch.stack(hs, 1).detach()  # (2, 4, 4)
        signal = e @ model.head.feedback.T  # each step's output receives its error
        if mode == "step":  # h_t is also the input of step t + 1's W_hh: it receives e_t B_hh^T
            signal[:, :-1] += e[:, :-1] @ slots["weight_hh_l0"].feedback.T
        delta = signal * (1 - hs ** 2)
        close(rnn.weight_ih_l0.grad, torch.einsum("ntd,nti->di", delta, x))
        prev = torch.cat([torch.zeros(2, 1, 4, dtype=DT), hs[:, :-1]], 1)
        close(rnn.weight_hh_l0.grad, torch.einsum("ntd,nti->di", delta, prev))


# --------------------------------------------------------------------------- every rule, every model


@pytest.mark.parametrize("rule", list(falign.rules()))
@pytest.mark.parametrize("kind", ["mha_packed", "lstm_2layer_bidir", "transformer", "gpt2", "vit"])
def test_every_parameter_that_bp_trains_gets_a_finite_gradient_under_every_rule(kind, rule) -> None:
    make, inp = MODELS[kind]
    plain, x = make(), inp()
    model = falign.convert(copy.deepcopy(plain), rule, example_input=x, warn=False)
    falign.layers.set_targets(model, torch.zeros(x.shape[0], dtype=torch.long))
    out = model(x)
    if rule == "drtp":  # targets per sample: project onto the first output width
        falign.layers.set_targets(model, torch.zeros(*out.shape[:-1], dtype=torch.long))
    _loss(out).backward()
    _loss(plain(x)).backward()
    got = dict(model.named_parameters())
    for name, p in plain.named_parameters():
        if p.grad is not None:
            g = got[name].grad
            assert g is not None and torch.isfinite(g).all(), (kind, rule, name)


# --------------------------------------------------------------------------- masks, weights, packed input


class MaskedMHA(nn.Module):
    """Attention with a key-padding mask, returning its attention weights too."""

    def __init__(self, average: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True, dtype=DT)
        self.head = nn.Linear(8, 3, dtype=DT)
        self.average = average

    def forward(self, x):  # (N, L, 8); the last two keys of sample 0 are padding
        pad = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bool)
        pad[0, -2:] = True
        out, weights = self.attn(x, x, x, key_padding_mask=pad, need_weights=True,
                                 average_attn_weights=self.average)
        return self.head(torch.tanh(out)) + weights.sum() * 0.1  # the weights reach the loss


@pytest.mark.parametrize("average", [True, False])
def test_key_padding_mask_and_returned_weights_are_those_of_the_plain_module(average) -> None:
    plain, x = MaskedMHA(average), randn(3, 5, 8, seed=2)
    model = falign.convert(plain, "fa", example_input=x, warn=False)
    close(model(x), plain(x), 1e-12)
    got_w = model.attn(x, x, x, key_padding_mask=torch.eye(3, 5, dtype=torch.bool), need_weights=True,
                       average_attn_weights=average)[1]
    want_w = plain.attn(x, x, x, key_padding_mask=torch.eye(3, 5, dtype=torch.bool), need_weights=True,
                        average_attn_weights=average)[1]
    close(got_w, want_w, 1e-12)
    for _, layer in falign.feedback_layers(model):
        with torch.no_grad():
            layer.feedback.copy_(layer.weight)
    for a, b in zip(_grads(model, x), _grads(plain, x), strict=True):  # B = W: backprop, mask and all
        close(a, b)


class PackedLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.LSTM(4, 5, num_layers=2, bidirectional=True, dtype=DT)
        self.head = nn.Linear(10, 3, dtype=DT)

    def forward(self, x):  # (T, N, 4), sequences of lengths 6, 3, 5 (unsorted)
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        packed = pack_padded_sequence(x, torch.tensor([6, 3, 5]), enforce_sorted=False)
        out, (h, c) = self.rnn(packed)
        padded, _ = pad_packed_sequence(out)  # (T, N, 10), zeros past each length
        return self.head(padded) + h.sum(0)[..., :3] + c.sum(0)[..., :3]


def test_a_packed_sequence_runs_as_the_plain_lstm_and_fa_with_b_equal_w_is_backprop() -> None:
    plain, x = PackedLSTM(), randn(6, 3, 4, seed=3)
    model = falign.convert(plain, "fa", example_input=x, warn=False)
    assert model.falign_conversion.unreachable == []
    close(model(x), plain(x), 1e-12)
    random_b = _grads(model, x)
    for _, layer in falign.feedback_layers(model):
        with torch.no_grad():
            layer.feedback.copy_(layer.weight)
    ref = _grads(plain, x)
    assert any(not torch.allclose(a, b) for a, b in zip(random_b, ref, strict=True))
    for a, b in zip(_grads(model, x), ref, strict=True):
        close(a, b)


# ------------------------------------------------------------------- where e is taken, shared B, micro


class Tapped(nn.Module):
    """inp -> tanh -> f -> tanh -> last (the tap: "the last hidden state") -> head."""

    def __init__(self, hidden: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(4, 6, dtype=DT)
        self.f = nn.Linear(6, hidden, dtype=DT)
        self.last = nn.Identity()
        self.head = nn.Linear(hidden, 3, dtype=DT)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        self.h = h
        h.retain_grad()
        z = self.last(torch.tanh(self.f(h)))
        self.z = z
        z.retain_grad()
        return self.head(z)


def test_e_taken_at_the_last_hidden_state_is_its_true_gradient_and_the_head_learns_by_it() -> None:
    """``output="last"`` (Launay et al.'s tap before the vocabulary projection): e is the true
    gradient at the tap's output, E = its width; f's input receives e B_f^T with B_f (6, E);
    the head above the tap keeps backprop."""
    model = falign.convert(Tapped(), "dfa", seed=3, output="last", warn=False)
    x, y = randn(5, 4, seed=1), torch.tensor([0, 1, 2, 0, 1])
    F.cross_entropy(model(x), y).backward()
    z = model.z.detach().requires_grad_(True)
    (e,) = torch.autograd.grad(F.cross_entropy(z @ model.head.weight.T + model.head.bias, y), z)
    close(model.z.grad, e)
    assert model.f.feedback.shape == (6, 6) and model.head.feedback is None
    close(model.h.grad, e @ model.f.feedback.T)
    (g_head,) = torch.autograd.grad(F.cross_entropy(model.head(model.z.detach()), y), model.head.weight)
    close(model.head.weight.grad, g_head)


def test_shared_feedback_gives_every_point_the_first_rows_of_one_matrix() -> None:
    x, y = randn(5, 4, seed=1), torch.tensor([0, 1, 2, 0, 1])
    shapes = {}
    for shared in (True, False):
        model = falign.convert(Tapped(hidden=5), "dfa", seed=3, shared=shared, warn=False)
        F.cross_entropy(model(x), y).backward()
        shapes[shared] = (model.f.feedback.clone(), model.head.feedback.clone())
    (bf, bh), (bf_own, bh_own) = shapes[True], shapes[False]
    assert bf.shape == (6, 3) and bh.shape == (5, 3)
    torch.testing.assert_close(bh, bf[:5], rtol=0, atol=0)  # head's input: the first 5 rows
    assert not torch.equal(bh_own, bf_own[:5])  # one B per point otherwise


def test_several_points_per_block_each_receive_their_projection_with_backprop_between() -> None:
    """Launay et al.'s "micro" placement: two points (the outputs of inp and f); each point's
    output receives e B^T, and the layers between learn from it by backprop."""
    model = falign.convert(Tapped(), "dfa", seed=4, points=["inp", "f"], warn=False)
    x, y = randn(5, 4, seed=1), torch.tensor([0, 1, 2, 0, 1])
    out = model(x)
    F.cross_entropy(out, y).backward()
    z = out.detach().requires_grad_(True)
    (e,) = torch.autograd.grad(F.cross_entropy(z, y), z)
    for name, inputs in (("inp", x), ("f", model.h.detach())):
        layer = getattr(model, name)
        delta = e @ layer.falign_point.feedback.T  # the point is the layer's output
        close(layer.weight.grad, (delta.T @ inputs).detach())
        close(layer.bias.grad, delta.sum(0).detach())
