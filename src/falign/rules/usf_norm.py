from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._sign import norm, sign
from .registry import Rule, register_rule


@register_rule
@dataclass
class USFNorm(Rule):
    """B = scale * norm(W) * sign(W) / norm(sign(W)).  Lance & Kieu call it "uSF SN" (spectral
    norm) but their code uses the Frobenius norm of the whole tensor; ``norm="fro"`` (default)
    matches their published numbers, ``norm="spectral"`` is what the name says."""

    name: ClassVar[str] = "usf_norm"
    description: ClassVar[str] = "norm-scaled sign feedback: norm(W) sign(W) / norm(sign(W))"
    citation: ClassVar[str] = "'uSF SN' of Lance & Kieu 2026"
    default_scale: ClassVar[float | None] = 1.0
    _norm_choices: ClassVar[tuple[str, ...]] = ("fro", "spectral")

    norm: str = "fro"

    def matrix(self, weight, feedback):
        s = sign(weight)
        factor = norm(weight, self.norm) / norm(s, self.norm).clamp_min(1e-30)
        if self.scale is not None:
            factor = factor * self.scale
        return s * factor
