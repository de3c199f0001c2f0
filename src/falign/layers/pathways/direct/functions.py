"""The direct pathway's autograd Functions: a converted layer's forward is the plain op; its
backward sends the layer's input ``s B_i^T`` (``s`` the rule's function of the error e the
wiring recorded) in place of the gradient from above, and gives W, b and a trained B_i their
local gradients."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._ops import as_dtype, conv_backward, linear_weight_grads, outside_compile
from .signal import batch_axis, feedback_rows, project
from .state import timing


def input_signal(wiring, layer, feedback: Tensor | None, x_shape, dtype,
                 position: int | None = None, weight: Tensor | None = None) -> Tensor | None:
    """The signal a layer's input receives: ``s B_i^T`` per position (token-wise), per sample
    broadcast over positions, or for the whole per-sample map (``s`` the rule's function of e).
    A recurrent weight's input is a feedback point only under ``recurrent="step"``.  ``weight``:
    the W the layer's Function saved (None: ``layer.weight``, a lookup, for a slot an op)."""
    error = wiring.error
    feedback = layer.feedback if feedback is None else feedback  # lazy B: made after the forward
    weight = layer.weight if weight is None else weight
    state = layer.pathway_state
    if state.recurrent and layer.rule.recurrent != "step":
        return None
    if error is None:
        raise RuntimeError(
            "DFA layer got no output error: the backward pass did not start at the output the "
            "DFA hook taps (call backward on a loss computed from the converted model's output)"
        )
    if feedback is None:
        raise RuntimeError("DFA feedback matrix was never created (no training-mode forward)")
    source = wiring.source(layer.backward_rule, error)
    if position is not None and source.dim() > 2:  # the error of one time step
        source = source.select(state.time_dim, position)
    rule = layer.backward_rule
    if rule is layer.rule:
        return project(source, rule.matrix(weight, feedback), tuple(x_shape), dtype, op=layer.op)
    if rule.device_projection is not None:
        signal = device_signal(rule.device_projection, source, layer, feedback, tuple(x_shape), dtype)
    else:
        signal = project(source, rule.matrix(weight, feedback), tuple(x_shape), dtype, op=layer.op)
    return rule.read_noise(signal) if rule.noisy else signal


def device_signal(projection, source: Tensor, layer, feedback: Tensor, x_shape: tuple[int, ...],
                  dtype) -> Tensor:
    """The signal a device computes from ``source`` (N, *e) for a layer input of ``x_shape``:
    ``projection(e, point, out_features)`` on e as (rows, E) -- one row a position where B_i
    is token-wise, a sample otherwise -- reshaped to the input."""
    token_wise = feedback is not None and feedback.dim() == 2 and layer.op == "linear" \
        and feedback.shape[0] == x_shape[-1]
    if token_wise and tuple(source.shape[:-1]) == x_shape[:-1]:
        e, out = source.reshape(-1, source.shape[-1]), x_shape[-1]
    elif token_wise:  # every position receives the sample's (mean) signal
        if batch_axis(x_shape, tuple(source.shape)) != 0:
            raise RuntimeError(f"hardware projection: an error of shape {tuple(source.shape)} cannot "
                               f"feed an input of shape {x_shape} (the batch must lead both)")
        e, out = source.reshape(source.shape[0], -1, source.shape[-1]).mean(1), x_shape[-1]
    else:
        e, out = source.reshape(source.shape[0], -1), math.prod(x_shape[1:])
    name = getattr(layer, "layer_name", None) or getattr(layer, "point_name", "")
    signal = projection(e, name, out)
    if tuple(signal.shape) != (e.shape[0], out):
        raise RuntimeError(f"hardware projection returned a signal of shape {tuple(signal.shape)} for "
                           f"'{name}'; expected {(e.shape[0], out)}")
    if token_wise and tuple(source.shape[:-1]) != x_shape[:-1]:
        view = [x_shape[0]] + [1] * (len(x_shape) - 2) + [out]
        return signal.reshape(view).expand(x_shape).to(dtype)
    return signal.reshape(x_shape).to(dtype)


def feedback_grad(ctx, x: Tensor, feedback: Tensor) -> Tensor:
    """A trained B_i's gradient, from the layer input and e as pairs of rows (the rule says
    what to make of them)."""
    error = ctx.wiring.error
    recurrent, time_dim, _ = timing(ctx.layer)
    if recurrent and (ctx.layer.rule.recurrent != "step" or ctx.position is None):
        return torch.zeros_like(feedback)  # no feedback point at this state: B is not used
    if ctx.position is not None and error.dim() > 2:
        error = error.select(time_dim, ctx.position)
    h, e = feedback_rows(x, error, tuple(feedback.shape))
    g = ctx.layer.rule.feedback_grad(inputs=h.to(e.dtype), error=e, shape=tuple(feedback.shape))
    return g.reshape(feedback.shape).to(feedback.dtype)


class Collect(torch.autograd.Function):
    """Identity; its backward adds the gradient a layer sends to its input to the wiring's
    record for that input (``collected``, see ``DirectWiring.watch``): for a layer that pads its
    input first, whose Function sees the padded map."""

    @staticmethod
    def forward(ctx, x, collected, key):
        ctx.collected, ctx.key = collected, key
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        _record(ctx.collected, ctx.key, g)
        return g, None, None


class Inject(torch.autograd.Function):
    """Identity at a feedback point's module output; its backward sends ``s B^T`` in place of
    the gradient from above (``above="cut"``) or adds it (``"keep"``)."""

    @staticmethod
    def forward(ctx, out, point, wiring):
        ctx.point, ctx.wiring = point, wiring
        return out.view_as(out)

    @staticmethod
    def backward(ctx, g):
        signal = input_signal(ctx.wiring, ctx.point, None, g.shape, g.dtype)
        return (signal if ctx.wiring.cut else g + signal), None, None


def _record(collected: dict, key: int | None, gx: Tensor | None) -> None:
    """Add the signal a layer sends to its input to the wiring's record for that input (what
    ``Collect`` does, made by the Function whose input is the watched tensor itself)."""
    if key is not None and gx is not None:
        collected[key] = gx if key not in collected else collected[key] + gx


class DirectLinearFn(torch.autograd.Function):
    """A converted linear layer (see the module docstring); the layer's ``pathway_state`` gives
    the wiring and the record its signal goes to (``key``, ``DirectWiring.watch``)."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback, layer):
        state = layer.pathway_state
        ctx.layer, ctx.wiring, ctx.key = layer, state.wiring, state.key
        ctx.position = layer.position if state.recurrent else None  # (``timing``)
        ctx.save_for_backward(x, weight, feedback)
        return nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, weight, feedback = ctx.saved_tensors
        need_x, need_w, need_b, need_fb = ctx.needs_input_grad[:4]
        gx = input_signal(ctx.wiring, ctx.layer, feedback, x.shape, x.dtype,
                          ctx.position, weight) if need_x else None
        _record(ctx.wiring.collected, ctx.key, gx)
        gw, gb = linear_weight_grads(g, x, weight, need_w, need_b)
        gfb = feedback_grad(ctx, x, feedback) if need_fb else None
        return gx, gw, gb, gfb, None


class DirectConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, feedback, layer):
        state = layer.pathway_state
        ctx.layer, ctx.wiring, ctx.has_bias, ctx.position = layer, state.wiring, bias is not None, None
        ctx.key = state.key
        ctx.save_for_backward(x, weight, feedback)
        return layer.spec.forward(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, weight, feedback = ctx.saved_tensors
        need_x, need_w, need_b, need_fb = ctx.needs_input_grad[:4]
        need_b = need_b and ctx.has_bias
        gw = gb = None
        if need_w or need_b:
            _, gw, gb = conv_backward(g, x, weight, ctx.layer.spec, [False, need_w, need_b])
        gx = input_signal(ctx.wiring, ctx.layer, feedback, x.shape, x.dtype,
                          weight=weight) if need_x else None
        _record(ctx.wiring.collected, ctx.key, gx)
        gfb = feedback_grad(ctx, x, feedback) if need_fb else None
        return gx, as_dtype(gw, weight), as_dtype(gb, weight), gfb, None


def _eager(fn):
    """``fn.apply`` outside any ``torch.compile`` graph.  DFA's backward reads e from the
    wiring, written by the tap's pre-hook earlier in the same pass: a dependency no traced graph
    holds.  Dynamo traces a Function's backward at forward time and would bake in the e the
    wiring held then (the previous step's), so these Functions stay eager."""
    return outside_compile(fn.apply)


_APPLY = {DirectLinearFn: _eager(DirectLinearFn), DirectConvFn: _eager(DirectConvFn)}


def apply_eager(fn, x, layer, feedback):
    """Apply a direct Function (eagerly, see ``_eager``) to a layer's input.  The wiring and
    the record the signal goes to are read from ``layer.pathway_state`` (fewer arguments: each
    costs ``Function.apply`` work a step)."""
    return _APPLY[fn](x, layer.weight, layer.bias, feedback, layer)
