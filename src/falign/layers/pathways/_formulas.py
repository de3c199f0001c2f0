"""What the pathways' reference formulas share: the padding a convolution applies, written out.

The formulas themselves (``Pathway.reference_input_grad``) are the independent computations the
contract suite (``falign.testing``) holds each pathway's autograd Functions to: float64, plain
torch, no code shared with the Functions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def padding(conv: nn.Module) -> tuple[list[int], str]:
    """F.pad argument and mode equivalent to the layer's padding."""
    nd = conv.weight.dim() - 2
    if conv.padding == "same":
        pads = []
        for k, d in zip(conv.kernel_size, conv.dilation, strict=True):
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))
    elif conv.padding == "valid":
        pads = [(0, 0)] * nd
    else:
        pads = [(p, p) for p in conv.padding]
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return [v for lr in reversed(pads) for v in lr], mode


def prepadded(conv: nn.Module) -> bool:
    """Whether a per-sample-map B (dense, direct) acts on the padded map: padding modes other
    than zeros, and asymmetric 'same' padding, are applied before the convolution."""
    pad, mode = padding(conv)
    return mode != "constant" or any(a != b for a, b in zip(pad[::2], pad[1::2], strict=True))


def through_pad(conv: nn.Module, x: torch.Tensor, grad_of_padded: Callable) -> torch.Tensor:
    """The gradient at ``x`` of a gradient given on its padded map (F.pad's backward)."""
    pad, mode = padding(conv)
    xx = x.detach().clone().requires_grad_(True)
    xp = F.pad(xx, pad, mode=mode)
    (gx,) = torch.autograd.grad(xp, xx, grad_of_padded(xp))
    return gx
