from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .registry import Rule, gaussian, register_rule


@register_rule
@dataclass
class FA(Rule):
    """Fixed random feedback B ~ N(0, scale^2) (Lillicrap et al. 2016).  ``conv_feedback``:
    "kernel" (a random kernel in W's place, transposed convolution; Lance & Kieu's
    "FA (Toeplitz)") or "dense" (a dense matrix per sample map, fixed at the first forward:
    "FA (Random)"); ``"fa:dense"`` names the second."""

    name: ClassVar[str] = "fa"
    description: ClassVar[str] = "feedback alignment: fixed random B ~ N(0, scale^2)"
    citation: ClassVar[str] = "Lillicrap et al. 2016, Nat. Commun. 7:13276"
    variant_option: ClassVar[str] = "conv_feedback"
    _conv_feedback_choices: ClassVar[tuple[str, ...]] = ("kernel", "dense")

    conv_feedback: str = "kernel"

    @property
    def pathway(self) -> str:  # type: ignore[override]
        return "dense" if self.conv_feedback == "dense" else "kernel"

    def init_feedback(self, weight, shape, std, seed):
        return gaussian(shape, std, seed, dtype=weight.dtype, device=weight.device)

    def matrix(self, weight, feedback):
        return feedback
