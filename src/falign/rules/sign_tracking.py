from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ._sign import sign
from .registry import Rule, RuleError, register_rule


@register_rule
@dataclass
class SignTracking(Rule):
    """B <- scale * sign(W) copied after every ``period`` optimizer steps (after 0, period,
    2 period, ... steps) and held fixed in between ("slow" sign transport).  ``match_norm``
    rescales B to norm(W) (Frobenius), which removes the effective-learning-rate confound when
    comparing with backprop."""

    name: ClassVar[str] = "sign_tracking"
    description: ClassVar[str] = "sign(W) copied into B every `period` steps (slow sign transport)"
    citation: ClassVar[str] = ("Moskovitz, Litwin-Kumar & Abbott 2018 (sign-concordant feedback); "
                               "the periodic refresh is falign's")
    default_scale: ClassVar[float | None] = 1.0

    period: int = 10
    match_norm: bool = False

    def __post_init__(self):
        if isinstance(self.period, bool) or not isinstance(self.period, int) or self.period < 1:
            raise RuleError(f"rule 'sign_tracking' option period must be an integer >= 1, "
                            f"not {self.period!r}")

    def _copy(self, weight, std):
        s = sign(weight)
        if self.match_norm:
            return s * (torch.linalg.vector_norm(weight) / torch.linalg.vector_norm(s).clamp_min(1e-30))
        return s * std

    def init_feedback(self, weight, shape, std, seed):
        return self._copy(weight.detach(), std)

    def update(self, weight, feedback, step, std, seed, *, since):
        # a copy step in (since, step]; for a layer that skipped steps, W is the current one
        if step // self.period > since // self.period:
            return self._copy(weight.detach(), std)
        return feedback

    def matrix(self, weight, feedback):
        return feedback
