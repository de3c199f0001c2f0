from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .registry import Rule, RuleError, gaussian, register_rule


@register_rule
@dataclass
class WM(Rule):
    """Weight mirror (Akrout et al. 2019, eq. 7): after every optimizer step, zero-mean noise
    x ~ U(-noise/2, noise/2) of ``mirror_batch`` samples goes through W (y = W x, W seen as the
    (out, in * kernel) matrix of one patch) and ``B <- (1 - decay) B + mirror_lr * y x^T``, so
    that B converges to a multiple of W.  B starts ~ N(0, scale^2); ``initial_steps`` mirror
    steps are taken at conversion.  The noise of step t is drawn from (layer seed, t).  The
    authors' code passes y through the layer's sigmoid and its normalisation has no effect (see
    the rules documentation)."""

    name: ClassVar[str] = "wm"
    description: ClassVar[str] = "weight mirror: B learns W from the layer's response to noise"
    citation: ClassVar[str] = "Akrout et al. 2019, NeurIPS (eq. 7)"

    mirror_lr: float = 0.01
    noise: float = 0.1
    mirror_batch: int = 128
    decay: float = 0.0
    initial_steps: int = 0

    def __post_init__(self):
        for key in ("mirror_lr", "noise"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or value <= 0:
                raise RuleError(f"rule 'wm' option {key} must be a positive number, not {value!r}")
        if not 0 <= self.decay < 1:
            raise RuleError(f"rule 'wm' option decay must be in [0, 1), not {self.decay!r}")
        for key in ("mirror_batch", "initial_steps"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if key == "mirror_batch" else 0):
                raise RuleError(f"rule 'wm' option {key} must be an integer >= "
                                f"{1 if key == 'mirror_batch' else 0}, not {v!r}")

    def mirror(self, weight, feedback, step: int, seed: int):
        """One mirror step with the noise of ``step``: the new B."""
        w = weight.detach().reshape(weight.shape[0], -1)  # (out, in * k)
        gen = torch.Generator(device="cpu").manual_seed(seed + 7_000_003 * (step + 1))
        x = (torch.rand(w.shape[1], self.mirror_batch, generator=gen, dtype=torch.float64) - 0.5)
        x = (self.noise * x).to(w.device, w.dtype)  # (in * k, m)
        y = w @ x  # (out, m)
        return (1 - self.decay) * feedback + self.mirror_lr * (y @ x.T).view_as(feedback)

    def init_feedback(self, weight, shape, std, seed):
        b = gaussian(shape, std, seed, dtype=weight.dtype, device=weight.device)
        for t in range(-self.initial_steps, 0):  # before training
            b = self.mirror(weight, b, t, seed)
        return b

    def update(self, weight, feedback, step, std, seed, *, since):
        # one mirror step per optimizer step (a layer that skipped steps takes them now, with
        # today's W); none for step 0, the state made at conversion
        for t in range(max(since, 0) + 1, step + 1):
            feedback = self.mirror(weight, feedback, t, seed)
        return feedback

    def matrix(self, weight, feedback):
        return feedback
