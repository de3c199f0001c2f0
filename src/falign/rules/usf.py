from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ._sign import sign
from .registry import Rule, register_rule


@register_rule
@dataclass
class USF(Rule):
    """B = scale * sign(W), recomputed from the current W at every use."""

    name: ClassVar[str] = "usf"
    description: ClassVar[str] = "uniform sign-concordant feedback: B = scale * sign(W), every step"
    citation: ClassVar[str] = "Liao, Leibo & Poggio 2016; Moskovitz et al. 2018"

    def init_feedback(self, weight, shape, std, seed):
        # B has no random part; keep the scale as a 0-d buffer so B is exact after a reload.
        return torch.tensor(std, dtype=weight.dtype, device=weight.device)

    def matrix(self, weight, feedback):
        return feedback * sign(weight)
