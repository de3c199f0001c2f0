from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .registry import Rule, register_rule


@register_rule
@dataclass
class BP(Rule):
    """Backpropagation, the baseline: the layer runs the plain torch op and autograd's own
    backward (the ``exact`` pathway), so B = W at no extra cost."""

    name: ClassVar[str] = "bp"
    description: ClassVar[str] = "backpropagation: B = W (the baseline)"
    citation: ClassVar[str] = "Rumelhart, Hinton & Williams 1986"
    pathway: ClassVar[str] = "exact"

    def matrix(self, weight, feedback):
        return weight
