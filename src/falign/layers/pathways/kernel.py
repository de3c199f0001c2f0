"""The kernel pathway: B of W's shape takes W's place in the input gradient.

Linear: ``dL/dx = g @ B``.  Convolution: B runs inside the one fused ``convolution_backward``
call that backprop makes, so a kernel rule costs what BP costs.  Weight and bias gradients are
the ordinary local ones; a trained B (Kolen-Pollack) gets ``rule.feedback_grad(dL/dW)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..hardware import HardwareRule
from ._formulas import through_pad
from ._ops import as_dtype, conv_backward, linear_weight_grads
from .base import Pathway, register_pathway


class KernelLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, feedback, rule):
        ctx.rule = rule
        ctx.save_for_backward(x, weight, feedback)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, weight, feedback = ctx.saved_tensors
        need_x, need_w, need_b, need_fb = ctx.needs_input_grad[:4]
        gx = gfb = None
        if need_x:
            gx = (g @ ctx.rule.matrix(weight, feedback).to(g.dtype)).to(x.dtype)  # (..., in)
            if type(ctx.rule) is HardwareRule and ctx.rule.noisy:
                gx = ctx.rule.read_noise(gx)
        gw, gb = linear_weight_grads(g, x, weight, need_w or need_fb, need_b)
        if need_fb:
            gfb = ctx.rule.feedback_grad(gw).to(feedback.dtype)
        return gx, gw if need_w else None, gb, gfb, None


class KernelConvFn(torch.autograd.Function):
    """N-d convolution (no padding mode: the layer pre-pads)."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback, spec, rule):
        ctx.spec, ctx.rule, ctx.has_bias = spec, rule, bias is not None
        ctx.save_for_backward(x, weight, feedback)
        return spec.forward(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, weight, feedback = ctx.saved_tensors
        need_x, need_w, need_b, need_fb = ctx.needs_input_grad[:4]
        need_b = need_b and ctx.has_bias
        kernel = ctx.rule.matrix(weight, feedback) if need_x else weight
        gx, gw, gb = conv_backward(g, x, kernel, ctx.spec, [need_x, need_w or need_fb, need_b])
        gfb = ctx.rule.feedback_grad(gw.to(weight.dtype)).to(feedback.dtype) if need_fb else None
        if need_x and type(ctx.rule) is HardwareRule and ctx.rule.noisy:
            gx = ctx.rule.read_noise(gx)
        return (as_dtype(gx, x), as_dtype(gw, weight) if need_w else None, as_dtype(gb, weight),
                gfb, None, None)


def kernel_input_grad(layer: nn.Module, x: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The kernel pathway's formula: g @ B for a linear layer; the transposed convolution with
    kernel B (on the padded input) for a convolution."""
    if isinstance(layer, nn.Linear):
        return g @ b
    grad_input = {3: torch.nn.grad.conv1d_input, 4: torch.nn.grad.conv2d_input,
                  5: torch.nn.grad.conv3d_input}[layer.weight.dim()]
    return through_pad(layer, x, lambda xp: grad_input(xp.shape, b, g, layer.stride, 0, layer.dilation,
                                                       layer.groups))


@register_pathway
class Kernel(Pathway):
    name = "kernel"

    def reference_input_grad(self, layer, x, g, e, targets=None):
        return kernel_input_grad(layer, x, layer.effective_feedback(), g)

    def linear(self, layer, x, feedback):
        return self.apply(layer, KernelLinearFn, x, layer.weight, layer.bias, feedback, layer.backward_rule)

    def conv(self, layer, x, feedback):
        return self.apply(layer, KernelConvFn, layer.pad(x), layer.weight, layer.bias, feedback,
                          layer.spec, layer.backward_rule)
