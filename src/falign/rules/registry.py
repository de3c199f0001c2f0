"""Learning rules: how the feedback ``B`` that replaces ``W`` in the backward pass is made.

A rule is a small dataclass of options plus a few pure functions; it picks a *pathway* (how the
error reaches a layer's input: ``falign.layers.pathways``) and says how B is made and updated.
The layers in ``falign.layers`` hold the tensors (``weight`` W; ``feedback``, the stored part of
B; ``feedback_step``, the optimizer steps W has taken) and ask the rule:

* :meth:`Rule.init_feedback` -- the stored part at conversion (or at the first forward, when
  the pathway gives B its shape only then);
* :meth:`Rule.update` -- the stored part after an optimizer step (redraws, refreshes, mirror
  steps); called once per optimizer step, never per forward;
* :meth:`Rule.matrix` -- B itself, from W and the stored part; called only where B is used.

A rule whose B is *trained* like W (``learned = True``, Kolen-Pollack) keeps ``feedback`` as an
``nn.Parameter``: the user's own optimizer steps it, and the pathway gives it the gradient
:meth:`Rule.feedback_grad` names.

Adding a rule is one file::

    @falign.register_rule
    @dataclass
    class MyRule(falign.Rule):
        name: ClassVar[str] = "mine"
        description: ClassVar[str] = "..."
        citation: ClassVar[str] = "..."
        def init_feedback(self, weight, shape, std, seed): ...
        def matrix(self, weight, feedback): ...

and ``falign.testing.check_rule(MyRule)`` runs the contract suite on it.  A config names it by
its registered name once its module is imported, or as ``mypkg.rules:MyRule``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import FalignError
from ..registry import Registry
from ._seeds import text_seed
from .hardware import B_KEYS, DIRECT_KEYS, Hardware, HardwareError, hardware_from


class RuleError(FalignError, ValueError):
    """An unknown rule name or an invalid rule option."""


_REGISTRY: Registry = Registry("rule", RuleError)


def register_rule(cls: type[Rule]) -> type[Rule]:
    """Register a :class:`Rule` subclass under ``cls.name``; returns ``cls`` (a decorator).

    Contract: ``name`` is a non-empty lower-case identifier not registered by another class;
    ``pathway`` names a registered pathway; options are dataclass fields with defaults (a field
    ``foo`` may list its allowed values in a class variable ``_foo_choices``); ``init_feedback``,
    ``update`` and ``matrix`` are pure functions of their arguments (no global RNG: draw from a
    generator seeded by the ``seed`` argument), so every process and every resume makes the same
    B.  Registering the same class again (a module imported twice) is allowed.
    """
    if not (isinstance(cls, type) and issubclass(cls, Rule)):
        raise RuleError(f"register_rule takes a Rule subclass, not {cls!r}")
    name = cls.name
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise RuleError(f"rule {cls.__qualname__}: name must be a lower-case identifier, not {name!r}")
    old = _REGISTRY.get(name)
    if old is not None and _path(old) != _path(cls):
        raise RuleError(f"rule name '{name}' is already registered by {_path(old)}")
    if not dataclasses.is_dataclass(cls) or "__dataclass_fields__" not in cls.__dict__:
        raise RuleError(f"rule '{name}': decorate {cls.__qualname__} with @dataclass (under "
                        "@register_rule) so its options are fields")
    return _REGISTRY.register(name, cls, identity=_path)


def _path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def derive_seed(seed: int, name: str) -> int:
    """A per-layer seed that depends only on the user's seed and the layer's qualified name."""
    return text_seed(f"falign:{seed}:{name}")


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
    #: the registered pathway that carries the error to the layer input (``falign.layers.pathways``)
    pathway: ClassVar[str] = "kernel"
    #: scale used when the user gives none; None means the layer's Xavier std.
    default_scale: ClassVar[float | None] = None
    #: B is an ``nn.Parameter`` trained by the user's optimizer (gradient: :meth:`feedback_grad`)
    learned: ClassVar[bool] = False
    #: whether the backward needs each step's labels (``falign.set_step(model, targets=y)``)
    needs_targets: ClassVar[bool] = False
    #: where a trained B must be stepped: "weight" (in W's parameter group: KP's same learning
    #: rate and schedule) or "any" (by some optimizer, e.g. with a learning rate of its own)
    feedback_group: ClassVar[str] = "weight"
    #: ``"name:value"`` means this option set to value (``"fa:dense"``: conv_feedback="dense")
    variant_option: ClassVar[str | None] = None

    scale: float | None = None
    #: fixes every layer's B with the layer's name (:func:`derive_seed`); ``convert`` takes None
    #: as 0, a layer built on its own with None draws a seed of its own (``FeedbackLayer``)
    seed: int | None = None
    #: the feedback path a device has (``falign.hardware.Hardware``, or its keys as a mapping);
    #: None: the ideal one
    hardware: Any = None

    def resolved_scale(self, fan_in: int, fan_out: int) -> float:
        if self.scale is not None:
            return float(self.scale)
        if self.default_scale is not None:
            return float(self.default_scale)
        return xavier_std(fan_in, fan_out)

    # -- what a layer asks ---------------------------------------------------------------------
    def init_feedback(self, weight: Tensor, shape, std: float, seed: int) -> Tensor | None:
        """Stored part of B for a layer (``shape``: W's shape, or the pathway's lazy shape)."""
        return None

    def update(self, weight: Tensor, feedback: Tensor | None, step: int, std: float, seed: int, *,
               since: int) -> Tensor | None:
        """Stored part after ``step`` optimizer steps, given the stored part after ``since``
        steps (``step - 1``, or less where a layer that sends no signal skipped steps)."""
        return feedback

    def matrix(self, weight: Tensor, feedback: Tensor | None) -> Tensor:
        """B, used in place of W when sending the error to the layer input."""
        raise NotImplementedError

    def feedback_grad(self, grad_weight: Tensor | None = None, *, inputs: Tensor | None = None,
                      error: Tensor | None = None, shape: tuple[int, ...] | None = None) -> Tensor:
        """For ``learned`` rules: the gradient B receives (a new tensor, never an alias).  The
        kernel pathway gives W's gradient; the direct pathway the layer input, the error e and
        B's shape (token-wise (D, E), or a sample's whole map)."""
        raise NotImplementedError(f"rule '{self.name}' does not train its feedback")

    @property
    def exact(self) -> bool:
        """Whether the rule is backprop itself (its pathway sends W^T g): a comparison's reference."""
        return self.pathway == "exact"

    @property
    def stateful(self) -> bool:
        """Whether :meth:`update` can change anything (else layers never call it)."""
        noisy = isinstance(self.hardware, Hardware) and self.hardware.signal_noise is not None
        return type(self).update is not Rule.update or noisy  # read noise is keyed by the step

    def options(self) -> dict[str, Any]:
        """The rule's options; ``hardware`` only where it is set (as its keys)."""
        plain = self if self.hardware is None else dataclasses.replace(self, hardware=None)
        out = dataclasses.asdict(plain)
        del out["hardware"]
        if self.hardware is not None:
            out["hardware"] = hardware_from(self.hardware).to_dict()
        return out


def rules() -> dict[str, str]:
    """Every registered rule name with its one-line description and citation."""
    return {name: f"{cls.description} [{cls.citation}]" for name, cls in _REGISTRY.items()}


def rule_names() -> list[str]:
    return list(_REGISTRY)


def _lookup(name: str) -> type[Rule]:
    key = name.strip().lower().replace("-", "_")
    if key not in _REGISTRY:
        near = difflib.get_close_matches(key, list(_REGISTRY), n=1, cutoff=0.5)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise RuleError(f"unknown rule '{name}'{hint} (known: {', '.join(_REGISTRY)})")
    return _REGISTRY[key]


def parse_rule(spec: str) -> tuple[type[Rule], dict[str, Any]]:
    """(rule class, options) of a rule spec, the one place specs are read: a registered name
    (``"fa"``), a variant (``"fa:dense"``: the rule's ``variant_option`` set to ``"dense"``) or
    an import path (``"mypkg.rules:MyRule"``, imported and registered)."""
    head, sep, tail = spec.partition(":")
    if sep and head.strip().lower().replace("-", "_") not in _REGISTRY:
        return _import_rule(spec), {}
    cls = _lookup(head)
    if not sep:
        return cls, {}
    if cls.variant_option is None:
        raise RuleError(f"rule '{cls.name}' has no variants ('{spec}')")
    return cls, {cls.variant_option: tail}


def rule_spec(name: str, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """The inverse of :func:`parse_rule`: (spec, the other options) of a rule and its options,
    e.g. ``("fa", {"conv_feedback": "dense", "scale": 0.1})`` -> ``("fa:dense", {"scale": 0.1})``."""
    options = dict(options or {})
    try:
        cls, _ = parse_rule(name)
    except RuleError:
        return name, options
    key = cls.variant_option
    if key is None or key not in options or ":" in name:
        return name, options
    value = options.pop(key)
    default = {f.name: f.default for f in dataclasses.fields(cls)}.get(key)
    return (name if value == default else f"{name}:{value}"), options


def _import_rule(path: str) -> type[Rule]:
    module_name, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise RuleError(f"cannot import rule '{path}': {exc}") from None
    if not (isinstance(obj, type) and issubclass(obj, Rule)):
        raise RuleError(f"'{path}' is not a falign Rule subclass")
    return register_rule(obj)


def get_rule(rule: str | type[Rule] | Rule, **options: Any) -> Rule:
    """A rule instance from a registry name (or variant, or import path), a Rule class or an
    instance (passed through)."""
    if isinstance(rule, Rule):
        if options:
            return _check_hardware(dataclasses.replace(rule, **_check_options(type(rule), options)))
        return rule
    if isinstance(rule, type) and issubclass(rule, Rule):
        cls = rule
    elif isinstance(rule, str):
        cls, variant = parse_rule(rule)
        options = {**variant, **options}
    else:
        raise RuleError(f"a rule is a name, a Rule class or a Rule instance, not {rule!r}")
    return _check_hardware(cls(**_check_options(cls, options)))


def _check_hardware(rule: Rule) -> Rule:
    """The rule with its ``hardware`` keys as a :class:`~falign.hardware.Hardware`; keys the rule
    cannot honour are refused in one line."""
    if rule.hardware is None:
        return rule
    hw = hardware_from(rule.hardware, f"rule '{rule.name}' option hardware")
    keys = hw.keys()
    b_keys = [k for k in keys if k in B_KEYS]
    if rule.exact and b_keys:
        raise HardwareError(f"rule '{rule.name}': hardware {', '.join(b_keys)} transform a feedback B, "
                            "and backprop has none (its B is W)")
    direct = [k for k in keys if k in DIRECT_KEYS]
    if direct and rule.pathway != "direct":
        raise HardwareError(f"rule '{rule.name}': hardware {', '.join(direct)} act on the output error "
                            "that direct-feedback rules (dfa, sdfa, drtp, dkp) project; this rule "
                            "sends the error layer by layer")
    object.__setattr__(rule, "hardware", hw if keys else None)
    return rule


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
                f"rule '{cls.name}' option {key}={value!r} is not one of {', '.join(map(str, allowed))}"
            )
        if key == "scale" and value is not None and not (
            isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        ):
            raise RuleError(f"rule '{cls.name}' option scale must be a positive number, not {value!r}")
    return options
