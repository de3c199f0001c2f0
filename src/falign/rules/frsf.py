from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._sign import sign
from .registry import Rule, gaussian, register_rule


@register_rule
@dataclass
class FRSF(Rule):
    """B = |B0| * sign(W) with B0 ~ N(0, scale^2) drawn once ("uSF Init" of Lance & Kieu)."""

    name: ClassVar[str] = "frsf"
    description: ClassVar[str] = "fixed random-magnitude sign-concordant feedback: |B0| * sign(W)"
    citation: ClassVar[str] = (
        "Moskovitz et al. 2018; Sanfiz & Akrout 2021; 'uSF Init' of Lance & Kieu 2026"
    )

    def init_feedback(self, weight, shape, std, seed):
        return gaussian(shape, std, seed, dtype=weight.dtype, device=weight.device).abs()

    def matrix(self, weight, feedback):
        return feedback * sign(weight)
