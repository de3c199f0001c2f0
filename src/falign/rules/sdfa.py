from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .registry import Rule, gaussian, register_rule


@register_rule
@dataclass
class SDFA(Rule):
    """Sign-DFA (Frenkel, Lefebvre & Bol 2021): every converted layer's input receives
    ``w sign(e) B_i^T``, e the error at the logits, w a sample's weight in the loss
    (``reduction``: "mean" -> 1/N over the whole batch, "sum" -> 1), so that the update does
    not depend on the batch size beyond the mean.  B_i ~ N(0, scale^2) as DFA's."""

    name: ClassVar[str] = "sdfa"
    description: ClassVar[str] = "sign-DFA: input gradient B_i sign(e), scaled like a mean loss"
    citation: ClassVar[str] = "Frenkel, Lefebvre & Bol 2021, Front. Neurosci. 15:629892"
    pathway: ClassVar[str] = "direct"
    _reduction_choices: ClassVar[tuple[str, ...]] = ("mean", "sum")

    output: str = ""
    reduction: str = "mean"

    def init_feedback(self, weight, shape, std, seed):
        return gaussian(shape, std, seed, dtype=weight.dtype, device=weight.device)

    def matrix(self, weight, feedback):
        return feedback

    def direct_signal(self, error, targets, weight):
        return torch.sign(error) * weight
