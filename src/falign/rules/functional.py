"""The backward maths: one ``torch.autograd.Function`` per op kind (linear, convolution).

Each Function computes the forward exactly as the plain layer does.  In backward the weight and
bias gradients are the ordinary local ones (they depend only on the layer input and the incoming
gradient), while the gradient sent to the layer *input* is produced by a :class:`Signal`:

* :class:`KernelSignal` -- a matrix/kernel ``B`` of the weight's shape takes W's place
  (FA, the sign-symmetry family, KP, sign tracking). For convolutions it runs inside the same
  fused ``convolution_backward`` call that plain backprop makes, so it costs exactly what BP costs.
* :class:`DenseSignal` -- a dense matrix from the flattened output map to the flattened input map
  of one sample (Lance & Kieu's "FA (Random)" for convolutions).
* :class:`DirectSignal` -- direct feedback alignment (Nokland 2016): ``B_i e`` with ``e`` the
  gradient of the loss w.r.t. the network output; the incoming gradient is ignored.

No Function computes the exact input gradient ``W^T g`` and throws it away, and none computes an
input gradient when the input does not need one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

# (weight, feedback) -> B.  A pure function supplied by the rule.
MatrixFn = Callable[[Tensor, "Tensor | None"], Tensor]


class Signal:
    """How the gradient w.r.t. a layer's input is formed."""


@dataclass(frozen=True, eq=False)
class KernelSignal(Signal):
    """``B`` of W's shape replaces ``W`` in the input gradient."""

    matrix: MatrixFn


@dataclass(frozen=True, eq=False)
class DenseSignal(Signal):
    """``grad_in = grad_out.flatten(1) @ B`` with ``B`` of shape (out_numel, in_numel)."""

    matrix: MatrixFn


class DFAContext:
    """Per-network DFA state: the output error ``e`` of the backward pass under way.

    Set by :class:`OutputTapFn` during backward (the tap is the first node to run), before any
    hidden layer's backward reads it.
    """

    def __init__(self) -> None:
        self.error: Tensor | None = None

    def __deepcopy__(self, memo):  # a fresh, empty context per copy
        new = DFAContext()
        memo[id(self)] = new
        return new


@dataclass(eq=False)
class DirectSignal(Signal):
    """``grad_in = e.flatten(1) @ B^T`` with ``B = layer.feedback`` of shape
    (*input_shape[1:], *e_shape[1:]).  B is read at backward time because its shape is only
    known once the network output exists (it is created right after the first forward)."""

    context: DFAContext
    layer: Any  # the layer module (holds ``feedback``)


def direct_input_grad(error: Tensor | None, feedback: Tensor | None, x_shape, dtype) -> Tensor:
    if error is None:
        raise RuntimeError(
            "DFA layer got no output error: the backward pass did not start at the output the "
            "DFA hook taps (call backward on a loss computed from the converted model's output)"
        )
    if feedback is None:
        raise RuntimeError("DFA feedback matrix was never created (no training-mode forward)")
    if error.shape[0] != x_shape[0]:
        raise RuntimeError(
            f"DFA: output error has batch size {error.shape[0]} but the layer input has "
            f"{x_shape[0]}; DFA needs one output row per input sample"
        )
    b2d = feedback.reshape(-1, error[0].numel())  # (in_numel, e_numel)
    return (error.reshape(error.shape[0], -1).to(b2d.dtype) @ b2d.T).view(x_shape).to(dtype)


class FeedbackLinearFn(torch.autograd.Function):
    """``y = x W^T + b`` with the input gradient given by a :class:`Signal`."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback, signal: Signal):
        ctx.signal = signal
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, feedback)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, feedback = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        # Under autocast grad_out may be bf16/fp16 while x, W and B are fp32: compute in the
        # gradient's dtype, as autocast's own linear backward does, and return each grad in the
        # dtype of the tensor it belongs to.
        dt = grad_out.dtype
        if ctx.needs_input_grad[0]:
            signal = ctx.signal
            if isinstance(signal, KernelSignal):
                b = signal.matrix(weight, feedback).to(dt)  # (out, in)
                grad_x = (grad_out @ b).to(x.dtype)  # (..., in)
            else:
                grad_x = direct_input_grad(signal.context.error, signal.layer.feedback, x.shape, x.dtype)
        if ctx.needs_input_grad[1]:
            g2 = grad_out.reshape(-1, grad_out.shape[-1])  # (M, out)
            grad_w = (g2.T @ x.reshape(-1, x.shape[-1]).to(dt)).to(weight.dtype)  # (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(0).to(weight.dtype)
        return grad_x, grad_w, grad_b, None, None


@dataclass(frozen=True)
class ConvSpec:
    """Numeric convolution geometry (padding already resolved to ints per spatial dim)."""

    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        conv = (F.conv1d, F.conv2d, F.conv3d)[weight.dim() - 3]
        return conv(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


def conv_backward(grad_out, x, weight, spec: ConvSpec, mask: list[bool]):
    """One call of ATen's fused convolution backward; ``weight`` is what the input grad uses."""
    bias_sizes = [weight.shape[0]] if mask[2] else None
    return torch.ops.aten.convolution_backward(
        grad_out, x, weight, bias_sizes, list(spec.stride), list(spec.padding),
        list(spec.dilation), False, [0] * len(spec.stride), spec.groups, mask,
    )


class FeedbackConvFn(torch.autograd.Function):
    """N-d convolution (no padding mode: callers pre-pad) with a :class:`Signal` input gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback, spec: ConvSpec, signal: Signal):
        ctx.signal, ctx.spec = signal, spec
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, feedback)
        return spec.forward(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, feedback = ctx.saved_tensors
        signal, spec = ctx.signal, ctx.spec
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = ctx.has_bias and ctx.needs_input_grad[2]
        grad_x = grad_w = grad_b = None
        if isinstance(signal, KernelSignal) and need_x:
            # B takes W's place in the one fused call backprop would make.
            kernel = signal.matrix(weight, feedback)
            grad_x, grad_w, grad_b = conv_backward(
                grad_out, x, kernel, spec, [True, need_w, need_b]
            )
        else:
            if need_w or need_b:
                _, grad_w, grad_b = conv_backward(grad_out, x, weight, spec, [False, need_w, need_b])
            if need_x:
                if isinstance(signal, DenseSignal):
                    b = signal.matrix(weight, feedback)  # (out_numel, in_numel)
                    grad_x = (grad_out.reshape(grad_out.shape[0], -1) @ b).view(x.shape)
                else:
                    grad_x = direct_input_grad(signal.context.error, signal.layer.feedback, x.shape, x.dtype)
        return grad_x, grad_w, grad_b, None, None, None


class OutputTapFn(torch.autograd.Function):
    """Identity whose backward records the gradient w.r.t. the network output (DFA's ``e``)."""

    @staticmethod
    def forward(ctx, y, context: DFAContext):
        ctx.context = context
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):
        ctx.context.error = grad.detach()
        return grad, None
