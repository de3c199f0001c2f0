from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .registry import Rule, gaussian, register_rule


@register_rule
@dataclass
class KP(Rule):
    """Kolen-Pollack (Akrout et al. 2019; Kolen & Pollack 1994): B starts random, B0 ~
    N(0, scale^2), and is *trained like W*: it receives W's gradient and its own weight decay
    and is stepped by the same optimizer at the same learning rate, with its own momentum /
    Adam state.  ``feedback`` is therefore an ``nn.Parameter`` (the one exception to "feedback
    is a buffer"), in ``model.parameters()`` right after the layer's own parameters; an
    optimizer built over ``model.parameters()`` -- any torch optimizer, with or without a
    scheduler -- gives exact KP with no extra call.  Its gradient is a copy of W's computed in
    the same backward, so DDP all-reduces it, a GradScaler unscales it and ``clip_grad_norm_``
    clips it with the rest.  An optimizer that steps W but not B (in W's parameter group) is
    refused at its first step."""

    name: ClassVar[str] = "kp"
    description: ClassVar[str] = "Kolen-Pollack: B trained like W (W's gradient, same optimizer), so B -> W"
    citation: ClassVar[str] = "Akrout et al. 2019, NeurIPS; Kolen & Pollack 1994"
    learned: ClassVar[bool] = True

    def init_feedback(self, weight, shape, std, seed):
        return gaussian(shape, std, seed, dtype=weight.dtype, device=weight.device)

    def matrix(self, weight, feedback):
        return feedback

    def feedback_grad(self, grad_weight=None, *, inputs=None, error=None, shape=None):
        # B has W's shape (it takes W's place), so W's gradient needs no transpose
        return grad_weight.clone()
