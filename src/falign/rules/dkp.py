from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .registry import Rule, gaussian, register_rule


@register_rule
@dataclass
class DKP(Rule):
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
    pathway: ClassVar[str] = "direct"
    learned: ClassVar[bool] = True
    feedback_group: ClassVar[str] = "any"

    output: str = ""

    def init_feedback(self, weight, shape, std, seed):
        return gaussian(shape, std, seed, dtype=weight.dtype, device=weight.device)

    def matrix(self, weight, feedback):
        return feedback

    def direct_signal(self, error, targets, weight):
        return error

    def feedback_grad(self, grad_weight=None, *, inputs=None, error=None):
        h = inputs.reshape(inputs.shape[0], -1).to(error.dtype)  # (N, in_numel)
        return h.T @ error.reshape(error.shape[0], -1)  # (in_numel, K): B_i's layout
