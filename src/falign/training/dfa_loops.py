"""The averaged training loops of the DFA framework report (Bechet), for DFA-converted MLPs.

* ``"sample"`` -- the ordinary per-sample error (what ``loss.backward()`` gives; not here).
* ``"batch"`` -- the "master error": a_i, h_i, x, y_hat and y are averaged over the batch and one
  update is made from the averages: da_i = (B_i e) * f'(mean a_i), dW_i = da_i^T mean(h_{i-1}),
  with e = mean(y_hat) - mean(y).
* ``"class"`` -- the same averages taken per class present in the batch; the per-class updates
  are summed (the report applies them one after another from the same forward pass, which is
  the same thing, since B is fixed and a, h are computed once).

``y_hat`` is the prediction the loss compares with the target: sigmoid(logits) for ``bce``
(the report's setting, where e = y_hat - y), softmax for ``cross_entropy``, the output for
``mse``.  The gradients are written into ``.grad`` so any optimiser applies them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers import FeedbackLinear


def _prediction(logits: Tensor, loss: str) -> Tensor:
    if loss == "bce":
        return torch.sigmoid(logits)
    if loss == "cross_entropy":
        return torch.softmax(logits, dim=1)
    return logits


def _derivative(act: nn.Module, a: Tensor) -> Tensor:
    a = a.detach().requires_grad_(True)
    with torch.enable_grad():
        (d,) = torch.autograd.grad(act(a).sum(), a)
    return d


def averaged_dfa_grads(model: nn.Module, x: Tensor, target: Tensor, labels: Tensor, *,
                       mode: str, loss: str) -> Tensor:
    """Set ``.grad`` of an MLP converted with ``dfa`` from batch- or class-averaged signals.

    ``target`` is the one-hot (N, K) target; ``labels`` the class indices (N,).  Returns the
    model output (logits) of the batch for the caller's metrics.
    """
    layers = getattr(model, "layers", None)
    if layers is None or not all(isinstance(m, FeedbackLinear) and m.rule.name == "dfa"
                                 for m in layers):
        raise ValueError("the batch/class-averaged DFA loops need an 'mlp' model converted with "
                         "rule 'dfa'")
    captured: dict[int, tuple[Tensor, Tensor]] = {}
    hooks = [
        layer.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k, (i[0], o)))
        for k, layer in enumerate(layers)
    ]
    try:
        logits = model(x)  # training-mode forward: creates the B_i on first use
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        h_in = [captured[k][0].detach() for k in range(len(layers))]  # h_{i-1}: (N, in_i)
        a_out = [captured[k][1].detach() for k in range(len(layers))]  # a_i: (N, out_i)
        y_hat = _prediction(a_out[-1], loss)
        if mode == "batch":
            groups = [torch.arange(x.shape[0], device=x.device)]
        elif mode == "class":
            groups = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels)]
        else:
            raise ValueError(f"unknown DFA loop '{mode}' (sample, batch, class)")
        grads_w = [torch.zeros_like(m.weight) for m in layers]
        grads_b = [None if m.bias is None else torch.zeros_like(m.bias) for m in layers]
        for idx in groups:
            e = (y_hat[idx].mean(0) - target[idx].mean(0)).unsqueeze(0)  # (1, K) master error
            for i in range(len(layers)):
                h_mean = h_in[i][idx].mean(0, keepdim=True)  # (1, in_i)
                if i == len(layers) - 1:
                    delta = e
                else:
                    b_next = layers[i + 1].feedback.reshape(-1, e.shape[1])  # (out_i, K)
                    a_mean = a_out[i][idx].mean(0, keepdim=True)
                    delta = (e @ b_next.T) * _derivative(model.acts[i], a_mean)
                grads_w[i] += delta.T @ h_mean
                if grads_b[i] is not None:
                    grads_b[i] += delta.squeeze(0)
        for layer, gw, gb in zip(layers, grads_w, grads_b, strict=True):
            layer.weight.grad = gw
            if gb is not None:
                layer.bias.grad = gb
    return logits
