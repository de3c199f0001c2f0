"""The dense pathway: one dense matrix B from a sample's flattened output map to its flattened
input map (Lance & Kieu's "FA (Random)" for convolutions).  B's shape (out_numel, in_numel) is
known at the layer's first forward, where it is made.  For a linear layer it is the kernel
pathway (B already maps output to input)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..hardware import HardwareRule
from ._formulas import prepadded, through_pad
from ._ops import as_dtype, conv_backward
from .base import register_pathway
from .kernel import Kernel, kernel_input_grad


class DenseConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, feedback, spec, rule):
        ctx.spec, ctx.rule, ctx.has_bias = spec, rule, bias is not None
        ctx.save_for_backward(x, weight, feedback)
        return spec.forward(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, weight, feedback = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and ctx.has_bias
        gx = gw = gb = None
        if need_w or need_b:
            _, gw, gb = conv_backward(g, x, weight, ctx.spec, [False, need_w, need_b])
        if need_x:
            b = ctx.rule.matrix(weight, feedback).to(g.dtype)  # (out_numel, in_numel)
            gx = (g.reshape(g.shape[0], -1) @ b).view(x.shape)
            if type(ctx.rule) is HardwareRule and ctx.rule.noisy:
                gx = ctx.rule.read_noise(gx)
        return as_dtype(gx, x), as_dtype(gw, weight), as_dtype(gb, weight), None, None, None


def dense_input_grad(layer: nn.Module, x: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The dense pathway's formula: g.flatten(1) @ B on the (padded) input map of one sample."""
    if isinstance(layer, nn.Linear):
        return g @ b
    if not prepadded(layer):
        return (g.flatten(1) @ b).reshape(x.shape)
    return through_pad(layer, x, lambda xp: (g.flatten(1) @ b).reshape(xp.shape))


@register_pathway
class Dense(Kernel):
    name = "dense"

    def reference_input_grad(self, layer, x, g, e, targets=None):
        b = layer.effective_feedback()
        if b.shape == layer.weight.shape:  # a linear layer: the kernel pathway
            return kernel_input_grad(layer, x, b, g)
        return dense_input_grad(layer, x, b, g)

    def lazy(self, layer):
        return layer.op == "conv"

    def prepare(self, layer, x):
        if layer.op != "conv" or layer.feedback is not None:
            return
        xp = layer.pad(x[:1])
        spatial = [
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, p, d, k, s in zip(xp.shape[2:], layer.spec.padding, layer.spec.dilation,
                                     layer.kernel_size, layer.spec.stride, strict=True)
        ]
        out_numel = layer.out_channels * math.prod(spatial)
        in_numel = xp[0].numel()
        layer.materialize((out_numel, in_numel), fan_in=in_numel, fan_out=out_numel)

    def conv(self, layer, x, feedback):
        return self.apply(layer, DenseConvFn, layer.pad(x), layer.weight, layer.bias, feedback,
                          layer.spec, layer.backward_rule)
