"""Pieces the pathways' Functions share: the local weight gradients, conv geometry, and the
way per-step state stays outside ``torch.compile`` graphs."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


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


def conv_backward(grad_out: Tensor, x: Tensor, weight: Tensor, spec: ConvSpec, mask: list[bool]):
    """One call of ATen's fused convolution backward; ``weight`` is what the input grad uses.
    Under autocast grad_out may be bf16/fp16 while x and W are fp32: the call runs in the
    gradient's dtype, as autocast's own convolution backward does."""
    dt = grad_out.dtype
    bias_sizes = [weight.shape[0]] if mask[2] else None
    return torch.ops.aten.convolution_backward(
        grad_out, x.to(dt), weight.to(dt), bias_sizes, list(spec.stride), list(spec.padding),
        list(spec.dilation), False, [0] * len(spec.stride), spec.groups, mask,
    )


def linear_weight_grads(grad_out: Tensor, x: Tensor, weight: Tensor, need_w: bool, need_b: bool):
    """(dL/dW, dL/db) of ``y = x W^T + b`` for inputs of any leading shape, in W's dtype."""
    dt, wt = grad_out.dtype, weight.dtype
    # (M, out), (M, in); a 2-D input as it is (a reshape to its own shape is an op for nothing)
    g2 = grad_out if grad_out.dim() == 2 else grad_out.reshape(-1, grad_out.shape[-1])
    x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    gw = g2.T @ (x2 if x2.dtype == dt else x2.to(dt)) if need_w else None  # (out, in)
    gb = g2.sum(0) if need_b else None
    return _cast(gw, wt), _cast(gb, wt)


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """``t.to(dtype)`` only where the dtype changes (a no-op call costs microseconds a step)."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def as_dtype(t: Tensor | None, like: Tensor | None) -> Tensor | None:
    return None if t is None or like is None else t.to(like.dtype)


# torch.compiler.is_compiling arrived in torch 2.3; before it, layers trace as they always did
_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def outside_compile(method):
    """Run ``method`` eagerly, outside any ``torch.compile`` graph.

    The per-step rule state (a Python step counter, W's version counter, seeded
    ``torch.Generator`` draws, buffers created or replaced on the module) cannot be traced:
    dynamo refuses to build a Generator in a graph, and it would specialise on the int step and
    recompile every step until its recompile limit sends the whole layer, custom backward
    included, back to eager.  Calling the skipped ``torch.compiler.disable`` while tracing makes
    dynamo graph-break around this one call; the autograd Function after it is still compiled
    with its backward.  Outside compilation this is a plain call (and ``import falign`` does not
    import dynamo).
    """

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        if _is_compiling():
            return torch.compiler.disable(method)(*args, **kwargs)
        return method(*args, **kwargs)

    return wrapper
