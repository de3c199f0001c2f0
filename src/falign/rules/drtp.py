from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._direct import DirectRule
from .registry import register_rule


@register_rule
@dataclass
class DRTP(DirectRule):
    """Direct random target projection (Frenkel, Lefebvre & Bol 2021): every converted layer's
    input receives ``w y* B_i^T`` -- the one-hot target takes the error's place, so the hidden
    updates need no backward pass from the output.  w is a sample's weight in the loss
    (``reduction``: "mean" -> 1/N over the whole batch, "sum" -> 1) times the loss scale, so
    the update scales with the loss like every other rule's.  The labels are a required input
    of each step: falign's runner and its callbacks give them, a loop of your own calls
    ``falign.set_step(model, targets=y)`` (a backward without them is an error: they cannot be
    read off e, whose target entry rounds to 0 once the softmax is confident)."""

    name: ClassVar[str] = "drtp"
    description: ClassVar[str] = "direct random target projection: input gradient B_i y* (the target)"
    citation: ClassVar[str] = "Frenkel, Lefebvre & Bol 2021, Front. Neurosci. 15:629892"
    needs_targets: ClassVar[bool] = True
    _reduction_choices: ClassVar[tuple[str, ...]] = ("mean", "sum")

    reduction: str = "mean"

    def direct_signal(self, error, targets, weight):
        return targets * weight
