from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ._direct import DirectRule
from .registry import register_rule


@register_rule
@dataclass
class SDFA(DirectRule):
    """Sign-DFA (Frenkel, Lefebvre & Bol 2021): every converted layer's input receives
    ``w sign(e) B_i^T``, e the error at the logits, w a sample's weight in the loss
    (``reduction``: "mean" -> 1/N over the whole batch, "sum" -> 1) times the loss scale
    (``falign.set_step(model, loss_scale=...)``; falign's runner passes its GradScaler's), so
    the update scales with the loss like every other rule's while sign(e) drops e's magnitude.
    B_i ~ N(0, scale^2) as DFA's."""

    name: ClassVar[str] = "sdfa"
    description: ClassVar[str] = "sign-DFA: input gradient B_i sign(e), scaled like a mean loss"
    citation: ClassVar[str] = "Frenkel, Lefebvre & Bol 2021, Front. Neurosci. 15:629892"
    _reduction_choices: ClassVar[tuple[str, ...]] = ("mean", "sum")

    reduction: str = "mean"

    def direct_signal(self, error, targets, weight):
        return torch.sign(error) * weight
