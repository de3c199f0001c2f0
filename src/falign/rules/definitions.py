"""The registered learning rules.  Each is a few lines: how its B is made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .registry import Rule, gaussian, register_rule


def _sign(w: Tensor) -> Tensor:
    # sign(0) = 0 as in torch.sign; exact zeros do not occur in trained float weights.
    return torch.sign(w)


def _norm(t: Tensor, kind: str) -> Tensor:
    if kind == "fro":
        return torch.linalg.vector_norm(t)
    # spectral: largest singular value of W as a (out, in * k...) matrix
    return torch.linalg.matrix_norm(t.reshape(t.shape[0], -1), ord=2)


@register_rule
@dataclass
class BP(Rule):
    name: ClassVar[str] = "bp"
    description: ClassVar[str] = "backpropagation: B = W (the baseline)"
    citation: ClassVar[str] = "Rumelhart, Hinton & Williams 1986"

    def matrix(self, weight, feedback):
        return weight


@register_rule
@dataclass
class FA(Rule):
    """Fixed random feedback.  ``conv_feedback``: "kernel" (random kernel, transposed conv;
    Lance & Kieu's "FA (Toeplitz)") or "dense" (a dense matrix per sample map, "FA (Random)")."""

    name: ClassVar[str] = "fa"
    description: ClassVar[str] = "feedback alignment: fixed random B ~ N(0, scale^2)"
    citation: ClassVar[str] = "Lillicrap et al. 2016, Nat. Commun. 7:13276"
    _conv_feedback_choices: ClassVar[tuple[str, ...]] = ("kernel", "dense")

    conv_feedback: str = "kernel"

    def init_feedback(self, weight, shape, std, seed):
        return gaussian(shape, std, seed, dtype=weight.dtype, device=weight.device)

    def matrix(self, weight, feedback):
        return feedback


@register_rule
@dataclass
class USF(Rule):
    name: ClassVar[str] = "usf"
    description: ClassVar[str] = "uniform sign-concordant feedback: B = scale * sign(W), every step"
    citation: ClassVar[str] = "Liao, Leibo & Poggio 2016; Moskovitz et al. 2018"

    def init_feedback(self, weight, shape, std, seed):
        # B has no random part; keep the scale as a 0-d buffer so B is exact after a reload.
        return torch.tensor(std, dtype=weight.dtype, device=weight.device)

    def matrix(self, weight, feedback):
        return feedback * _sign(weight)


@register_rule
@dataclass
class FRSF(Rule):
    name: ClassVar[str] = "frsf"
    description: ClassVar[str] = "fixed random-magnitude sign-concordant feedback: |B0| * sign(W)"
    citation: ClassVar[str] = (
        "Moskovitz et al. 2018; Sanfiz & Akrout 2021; 'uSF Init' of Lance & Kieu 2026"
    )

    def init_feedback(self, weight, shape, std, seed):
        return gaussian(shape, std, seed, dtype=weight.dtype, device=weight.device).abs()

    def matrix(self, weight, feedback):
        return feedback * _sign(weight)


@register_rule
@dataclass
class BRSF(Rule):
    name: ClassVar[str] = "brsf"
    description: ClassVar[str] = "batchwise random-magnitude sign-concordant: |R| * sign(W), R new each step"
    citation: ClassVar[str] = "Moskovitz et al. 2018; Sanfiz & Akrout 2021"

    def init_feedback(self, weight, shape, std, seed):
        return self.update(weight, None, 0, std, seed)

    def update(self, weight, feedback, step, std, seed):
        # R_t depends on (layer seed, step) alone: identical on every rank and after a resume.
        gen = torch.Generator(device=weight.device).manual_seed(seed + 1_000_003 * step)
        r = torch.randn(weight.shape, generator=gen, dtype=weight.dtype, device=weight.device)
        return r.abs_().mul_(std)

    def matrix(self, weight, feedback):
        return feedback * _sign(weight)


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
        s = _sign(weight)
        factor = _norm(weight, self.norm) / _norm(s, self.norm).clamp_min(1e-30)
        if self.scale is not None:
            factor = factor * self.scale
        return s * factor


@register_rule
@dataclass
class SignTracking(Rule):
    """B <- scale * sign(W) copied every ``period`` training steps and held fixed in between
    ("slow" sign transport).  ``match_norm`` rescales B to norm(W) (Frobenius), which removes the
    effective-learning-rate confound when comparing with backprop."""

    name: ClassVar[str] = "sign_tracking"
    description: ClassVar[str] = "sign(W) copied into B every `period` steps (slow sign transport)"
    citation: ClassVar[str] = "Moskovitz et al. 2018; the 'soap' sign-tracking write-up"
    default_scale: ClassVar[float | None] = 1.0

    period: int = 10
    match_norm: bool = False

    def __post_init__(self):
        if not isinstance(self.period, int) or self.period < 1:
            from .registry import RuleError

            raise RuleError(f"rule 'sign_tracking' option period must be an integer >= 1, "
                            f"not {self.period!r}")

    def _copy(self, weight, std):
        s = _sign(weight)
        if self.match_norm:
            return s * (torch.linalg.vector_norm(weight) / torch.linalg.vector_norm(s).clamp_min(1e-30))
        return s * std

    def init_feedback(self, weight, shape, std, seed):
        return self._copy(weight.detach(), std)

    def update(self, weight, feedback, step, std, seed):
        if (step - 1) % self.period == 0:
            return self._copy(weight.detach(), std)
        return feedback

    def matrix(self, weight, feedback):
        return feedback


@register_rule
@dataclass
class KP(Rule):
    """Kolen-Pollack (Akrout et al. 2019): B starts random and receives the same update and the
    same weight decay as W.  Then B - W changes only through decay, so falign stores
    ``feedback = B - W`` and multiplies it by ``(1 - decay)`` each training step, which is the
    exact closed form of the two updates; B = W + feedback.  ``decay`` is the per-step shrink
    lr * weight_decay (the training runner fills it in from the optimiser when left None)."""

    name: ClassVar[str] = "kp"
    description: ClassVar[str] = "Kolen-Pollack: B gets W's updates and decay, so B -> W"
    citation: ClassVar[str] = "Akrout et al. 2019, NeurIPS; Kolen & Pollack 1994"

    decay: float | None = None

    def init_feedback(self, weight, shape, std, seed):
        b0 = gaussian(shape, std, seed, dtype=weight.dtype, device=weight.device)
        return b0 - weight.detach()

    def update(self, weight, feedback, step, std, seed):
        if not self.decay:
            return feedback
        return feedback * (1.0 - float(self.decay))

    def matrix(self, weight, feedback):
        return weight + feedback


@register_rule
@dataclass
class DFA(Rule):
    """Direct feedback alignment: hidden layer i receives B_i e, with e = dL/d(output).
    B_i ~ N(0, scale^2) has the full shape of the layer input times the output.  The default
    scale is the Xavier std of B seen as an (input numel, output numel) matrix, as BioTorch's
    DFA; the DFA framework report used N(0, 1) on its MLP (``scale=1``, its shipped config).
    N(0, 1) is far too large for convolutional feature maps: LeNet on MNIST with it stays at
    chance (measured)."""

    name: ClassVar[str] = "dfa"
    description: ClassVar[str] = "direct feedback alignment: input gradient B_i e from the output error"
    citation: ClassVar[str] = "Nokland 2016, NeurIPS"
    kind: ClassVar[str] = "direct"
    default_scale: ClassVar[float | None] = None

    output: str = ""  # qualified name of the module whose output is tapped ("" = the model)

    def init_feedback(self, weight, shape, std, seed):
        return gaussian(shape, std, seed, dtype=weight.dtype, device=weight.device)

    def matrix(self, weight, feedback):
        return feedback
