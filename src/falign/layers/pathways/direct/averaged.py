"""The DFA framework report's averaged training loops (rule option ``average``): one update
per batch, or per class in the batch, from averaged activations and error.

A whole training step, not a layer's backward: it lives apart from the pathway's core (the
wiring, the signal maths, the Functions), which never import it; ``Direct.train_step`` calls
it for rules whose ``average`` is not ``"sample"``.  It stays on the layers floor because the
pathway's ``train_step`` is where ``falign.layers.train_step`` (and through it the runner, the
Lightning and Hugging Face callbacks) reaches a pathway's own step, and it needs nothing from
above: the converted MLP's ``layers`` and ``acts`` and the step's ``StepContext``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...errors import FeedbackError
from ..base import StepContext


def _derivative(act: nn.Module, a: Tensor) -> Tensor:
    a = a.detach().requires_grad_(True)
    with torch.enable_grad():
        (d,) = torch.autograd.grad(act(a).sum(), a)
    return d


def check_mlp(model: nn.Module) -> None:
    """Refuse a model the averaged loops cannot train (one line)."""
    layers = getattr(model, "layers", None)
    acts = getattr(model, "acts", None)
    if layers is None or acts is None or not all(
            getattr(m, "op", "") == "linear" and m.pathway is not None for m in layers):
        raise FeedbackError("the batch/class-averaged DFA loops need an 'mlp' model "
                            "(falign.create_model('mlp')) converted with a direct-feedback rule")


def averaged_step(model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext, *, mode: str,
                  step: str = "mean") -> tuple[Tensor, Tensor]:
    """Set ``.grad`` of a DFA-converted MLP from batch- or class-averaged signals (Bechet's
    report): for each group G (the batch, or each class present in it)

        e_G = mean_{n in G} e_n,   da_i = (B_i e_G) * f'(mean_G a_i),   dW_i = da_i^T mean_G h_{i-1},

    where e_n is the error autograd gives at sample n's logits for the loss (through the
    model's output activation), a_i, h_i the pre-activations and activations.  The group
    updates are summed (the report applies them one after another from the same forward pass,
    which is the same thing: B is fixed and a, h are computed once).  ``step="sum"`` multiplies
    each group's update by |G|, the step size of the summed per-sample update; at batch size 1
    both equal per-sample DFA.  Under several processes the group sums and counts are summed
    over the processes first, so every process computes the whole batch's update.
    Returns (logits, loss) of the batch.
    """
    check_mlp(model)
    layers, acts = model.layers, model.acts
    captured: dict[int, tuple[Tensor, Tensor]] = {}
    hooks = [layer.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k, (i[0], o)))
             for k, layer in enumerate(layers)]
    try:
        with ctx.autocast():
            out = model(x)  # training-mode forward: makes the B_i on first use
            loss = ctx.loss_fn(out, y)
    finally:
        for h in hooks:
            h.remove()
    logits = captured[len(layers) - 1][1]
    # e_n at the logits, as one process would see it (a share's loss carries the factor N)
    (e,) = torch.autograd.grad(loss, logits, retain_graph=False)
    e = e.detach() / ctx.world
    with torch.no_grad():
        h_in = [captured[k][0].detach() for k in range(len(layers))]  # h_{i-1}: (N, in_i)
        a_out = [captured[k][1].detach() for k in range(len(layers))]  # a_i: (N, out_i)
        k_classes = e.shape[1]
        if mode == "batch":
            member = torch.ones(x.shape[0], 1, dtype=e.dtype, device=e.device)  # (N, 1)
        elif mode == "class":
            member = nn.functional.one_hot(y, k_classes).to(e.dtype)  # (N, K): one group a class
        else:
            raise ValueError(f"unknown DFA loop '{mode}' (sample, batch, class)")
        # per group: count, sum of e, of each h_{i-1} and of each a_i; summed over processes
        sums = [member.T @ t for t in (e, *h_in, *a_out)]
        flat = ctx.reduce(torch.cat([member.sum(0)] + [s.flatten() for s in sums]))
        count, rest = flat[: member.shape[1]], flat[member.shape[1]:]
        sizes = [s.numel() for s in sums]
        sums = [t.view_as(s) for t, s in zip(torch.split(rest, sizes), sums, strict=True)]
        present = count > 0
        count = count[present].unsqueeze(1)  # (G, 1)
        means = [s[present] / count for s in sums]
        e_g, h_g, a_g = means[0], means[1:1 + len(layers)], means[1 + len(layers):]
        weight = count if step == "sum" else torch.ones_like(count)  # (G, 1)
        for i, layer in enumerate(layers):
            if i == len(layers) - 1:
                delta = e_g
            else:
                b_next = layers[i + 1].feedback.reshape(-1, math.prod(e.shape[1:]))  # (out_i, K)
                delta = (e_g @ b_next.T) * _derivative(acts[i], a_g[i])  # (G, out_i)
            delta = delta * weight
            layer.weight.grad = delta.T @ h_g[i]
            if layer.bias is not None:
                layer.bias.grad = delta.sum(0)
    return out, loss
