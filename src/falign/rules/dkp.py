from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._direct import DirectRule
from .registry import register_rule


@register_rule
@dataclass
class DKP(DirectRule):
    """Direct Kolen-Pollack (Webster, Choi & Ahn 2020): DFA whose B_i are trained KP-style.
    B_i is the backward twin of a direct forward connection from the layer input h to the
    logits and receives that connection's gradient, ``dL/dB_i = h^T e`` (h flattened per
    sample), plus its own weight decay, from the user's optimizer (which may give B_i a
    learning rate of its own: the authors train B with Adam, lr 1e-4, weight decay 1e-6).
    B_i's shape is known at the first forward only: convert with ``example_input`` so it
    exists before the optimizer is built."""

    name: ClassVar[str] = "dkp"
    description: ClassVar[str] = "direct Kolen-Pollack: DFA with B_i trained on h^T e"
    citation: ClassVar[str] = "Webster, Choi & Ahn 2020, arXiv:2012.06756"
    learned: ClassVar[bool] = True
    weighs_signal: ClassVar[bool] = False  # e carries a sample's weight and the loss scale
    feedback_group: ClassVar[str] = "any"


    def direct_signal(self, error, targets, weight):
        return error

    def feedback_grad(self, grad_weight=None, *, inputs=None, error=None, shape=None):
        # rows of (layer input, error), one a position or a sample: h^T e is B_i's (in, K) layout
        return inputs.T @ error
