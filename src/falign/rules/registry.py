"""Learning rules: how the feedback ``B`` that replaces ``W`` in the backward pass is produced.

A rule is a small dataclass of options plus pure functions.  The layers in ``falign.layers`` hold
the tensors (``weight`` W, buffer ``feedback`` for the stored random part of B, buffer
``feedback_step`` counting training steps) and ask the rule three things:

* :meth:`Rule.init_feedback` -- the stored random part at conversion time (or ``None``),
* :meth:`Rule.update` -- the new stored part before a training forward (redraws, refreshes, decay),
* :meth:`Rule.matrix` -- B itself, from W and the stored part; called only in backward, only
  when the layer input needs a gradient.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor


class RuleError(ValueError):
    """An unknown rule name or an invalid rule option."""


_REGISTRY: dict[str, type[Rule]] = {}


def register_rule(cls: type[Rule]) -> type[Rule]:
    _REGISTRY[cls.name] = cls
    return cls


def derive_seed(seed: int, name: str) -> int:
    """A per-layer seed that depends only on the user's seed and the layer's qualified name."""
    digest = hashlib.sha256(f"falign:{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def gaussian(shape, std: float, seed: int, *, dtype, device) -> Tensor:
    """N(0, std^2) drawn from its own generator: reproducible whatever the global RNG state."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = torch.randn(tuple(shape), generator=gen, dtype=torch.float64) * std
    return out.to(dtype=dtype, device=device)


def xavier_std(fan_in: int, fan_out: int) -> float:
    """Glorot & Bengio's std, sqrt(2 / (fan_in + fan_out)): BioTorch's default feedback scale."""
    return math.sqrt(2.0 / (fan_in + fan_out))


@dataclass
class Rule:
    """Base class.  Subclasses set the class variables and override what differs."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    #: "kernel": B has W's shape; "direct": DFA (B_i maps the output error to the layer input).
    kind: ClassVar[str] = "kernel"
    #: scale used when the user gives none; None means the layer's Xavier std.
    default_scale: ClassVar[float | None] = None

    scale: float | None = None
    seed: int = 0

    def resolved_scale(self, fan_in: int, fan_out: int) -> float:
        if self.scale is not None:
            return float(self.scale)
        if self.default_scale is not None:
            return float(self.default_scale)
        return xavier_std(fan_in, fan_out)

    # -- the three questions a layer asks ------------------------------------------------------
    def init_feedback(self, weight: Tensor, shape, std: float, seed: int) -> Tensor | None:
        """Stored random part of B for a layer (``shape`` is W's shape or the dense shape)."""
        return None

    def update(self, weight: Tensor, feedback: Tensor | None, step: int, std: float,
               seed: int) -> Tensor | None:
        """Stored part to use for training step ``step`` (1-based), given the previous one."""
        return feedback

    def matrix(self, weight: Tensor, feedback: Tensor | None) -> Tensor:
        """B, used in place of W when sending the error to the layer input."""
        raise NotImplementedError

    @property
    def stateful(self) -> bool:
        """Whether :meth:`update` can change anything (else layers skip calling it)."""
        return type(self).update is not Rule.update

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def rules() -> dict[str, str]:
    """Every registered rule name with its one-line description and citation."""
    return {name: f"{cls.description} [{cls.citation}]" for name, cls in _REGISTRY.items()}


def rule_names() -> list[str]:
    return list(_REGISTRY)


def get_rule(rule: str | type[Rule] | Rule, **options: Any) -> Rule:
    """A rule instance from a registry name, a Rule class or an instance (passed through)."""
    if isinstance(rule, Rule):
        if options:
            return dataclasses.replace(rule, **_check_options(type(rule), options))
        return rule
    if isinstance(rule, type) and issubclass(rule, Rule):
        cls = rule
    elif isinstance(rule, str):
        key = rule.strip().lower().replace("-", "_")
        if key not in _REGISTRY:
            near = difflib.get_close_matches(key, list(_REGISTRY), n=1, cutoff=0.5)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise RuleError(f"unknown rule '{rule}'{hint} (known: {', '.join(_REGISTRY)})")
        cls = _REGISTRY[key]
    else:
        raise RuleError(f"a rule is a name, a Rule class or a Rule instance, not {rule!r}")
    return cls(**_check_options(cls, options))


def _check_options(cls: type[Rule], options: dict[str, Any]) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in options.items():
        if key not in fields:
            near = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise RuleError(
                f"rule '{cls.name}' has no option '{key}'{hint} (options: {', '.join(fields)})"
            )
        allowed = getattr(cls, f"_{key}_choices", None)
        if allowed is not None and value not in allowed:
            raise RuleError(
                f"rule '{cls.name}' option {key}={value!r} is not one of {', '.join(allowed)}"
            )
        if key == "scale" and value is not None and not (
            isinstance(value, (int, float)) and value > 0
        ):
            raise RuleError(f"rule '{cls.name}' option scale must be a positive number, not {value!r}")
    return options
