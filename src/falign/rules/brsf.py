from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ._sign import sign
from .registry import Rule, register_rule


@register_rule
@dataclass
class BRSF(Rule):
    """B_t = |R_t| * sign(W) with R_t ~ N(0, scale^2) drawn afresh after every optimizer step
    from a generator seeded by (layer seed, t) alone: identical on every rank and after a
    resume.  All micro-batches of one step use the same R_t."""

    name: ClassVar[str] = "brsf"
    description: ClassVar[str] = "batchwise random-magnitude sign-concordant: |R| * sign(W), R new each step"
    citation: ClassVar[str] = "Moskovitz et al. 2018; Sanfiz & Akrout 2021"

    def init_feedback(self, weight, shape, std, seed):
        return self.update(weight, None, 0, std, seed, since=-1)

    def update(self, weight, feedback, step, std, seed, *, since):
        # draw number step + 1: the first training step uses draw 1
        gen = torch.Generator(device=weight.device).manual_seed(seed + 1_000_003 * (step + 1))
        r = torch.randn(weight.shape, generator=gen, dtype=weight.dtype, device=weight.device)
        return r.abs_().mul_(std)

    def matrix(self, weight, feedback):
        return feedback * sign(weight)
