"""A feedback pathway of your own, in one file: feedback with automatic gain control.

    python examples/custom_pathway.py                    # define, check, train
    PYTHONPATH=examples falign train CONFIG --set rule.name=custom_pathway:NormalizedFA

A *rule* says what B is; a *pathway* says how the error reaches a layer's input.  This one
carries the kernel pathway's signal ``g @ B`` (B in W's place; for a convolution the
transposed convolution with kernel B) and then rescales each sample's signal to unit RMS,
as an analog feedback circuit with automatic gain control would deliver it: the direction of
the feedback is FA's, its size is fixed whatever the size of the error.

The file (1) defines and registers the pathway (a ``Pathway`` subclass: its ops and its
reference formula, written out on its own so the contract suite can hold the ops to it) and a
rule that takes it, (2) runs falign's contract suite on the rule (forward, local gradients,
the pathway's formula in float64, seeds, state_dict, exact_backward, bf16, torch.compile) and
(3) trains a small model with it.  A pathway can also be named by import path, e.g. a rule
with ``pathway = "custom_pathway:NormalizedKernel"``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

import falign
from falign.layers.pathways import register_pathway
from falign.layers.pathways.kernel import Kernel, kernel_input_grad
from falign.rules import gaussian

EPS = 1e-12


def unit_rms(s: torch.Tensor) -> torch.Tensor:
    """Each sample's signal (the first dimension is the batch) divided by its RMS."""
    rms = s.pow(2).mean(dim=tuple(range(1, s.dim())), keepdim=True).sqrt()
    return s / (rms + EPS)


class _GainControl(torch.autograd.Function):
    """Identity forward; the backward rescales the gradient at a layer's input to unit RMS."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return unit_rms(g)


@register_pathway
class NormalizedKernel(Kernel):
    """The kernel pathway with each sample's input signal rescaled to unit RMS."""

    name = "normalized_kernel"

    def forward(self, layer, x, plain):
        if torch.is_grad_enabled() and x.requires_grad:
            x = _GainControl.apply(x)  # what the layer sends to x passes through here first
        return super().forward(layer, x, plain)

    def reference_input_grad(self, layer, x, g, e, targets=None):
        return unit_rms(kernel_input_grad(layer, x, layer.effective_feedback(), g))


@falign.register_rule
@dataclass
class NormalizedFA(falign.Rule):
    """Fixed random feedback B ~ N(0, scale^2) through the gain-controlled kernel pathway."""

    name: ClassVar[str] = "normalized_fa"
    description: ClassVar[str] = "FA with each sample's feedback signal rescaled to unit RMS"
    citation: ClassVar[str] = "Lillicrap et al. 2016 (FA); the gain control is this example's"
    pathway: ClassVar[str] = "normalized_kernel"

    def init_feedback(self, weight, shape, std, seed):
        return gaussian(shape, std, seed, dtype=weight.dtype, device=weight.device)

    def matrix(self, weight, feedback):
        return feedback


def main(steps: int = 300) -> int:
    import falign.testing

    falign.testing.check_rule(NormalizedFA, processes=False)
    print("contract suite: passed")

    torch.manual_seed(0)
    x = torch.randn(256, 10)
    y = (x[:, :5].sum(1) > x[:, 5:].sum(1)).long()
    model = falign.convert(nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 2)),
                           NormalizedFA(), seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    accuracy = (model(x).argmax(1) == y).float().mean().item()
    print(f"normalized_fa learned the task: {accuracy > 0.9} (train accuracy {accuracy:.2f})")
    return 0 if accuracy > 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
