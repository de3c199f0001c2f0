"""One registry, one factory: ``create_model("arch1", rule="usf")``.

Builders are plain functions registered under a name. Each takes keyword-only options plus
``num_classes`` and ``in_shape`` and returns a model made of plain torch layers; the learning
rule is applied afterwards by ``falign.layers.convert``, so no builder knows about rules.
``create_model`` records its arguments on the model as ``falign_spec`` (JSON-serialisable), and
``model_from_spec`` rebuilds the same architecture from it.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from ..errors import FalignError
from ..registry import Registry

__all__ = [
    "CompareDefaults",
    "InputTooSmallError",
    "ModelError",
    "available_models",
    "compare_options",
    "create_model",
    "model_from_spec",
    "register_model",
]

_SPEC_KEYS = ("name", "rule", "rule_options", "num_classes", "in_shape", "options")
_SHAPE_ARGS = ("num_classes", "in_shape")


class ModelError(FalignError, ValueError):
    """Unknown model name or invalid model option. The message is always one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class InputTooSmallError(ModelError):
    """The input is too small for a model's layers (a side shrinks below one pixel)."""


_REGISTRY: Registry = Registry("model", ModelError)


def suggest(word: str, choices: list[str]) -> str:
    """ " (did you mean 'x'?)" for the nearest of ``choices``, or "" when none is close."""
    close = difflib.get_close_matches(str(word), choices, n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


@dataclass(frozen=True)
class CompareDefaults:
    """The options a model takes in ``falign compare`` without a config (a quick, fair
    comparison): ``options`` on every dataset, updated by ``per_dataset[dataset]``."""

    options: Mapping[str, Any] = field(default_factory=dict)
    per_dataset: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


#: registered name -> its compare defaults (a model registered without any has none)
_COMPARE_DEFAULTS: dict[str, CompareDefaults] = {}


def register_model(name: str, *, compare: CompareDefaults | None = None,
                   ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model builder under ``name`` and returns it unchanged.
    ``compare``: the model's options in ``falign compare`` without a config
    (:func:`compare_options`)."""
    if not isinstance(name, str) or not name:
        raise ModelError(f"model name must be a non-empty string, got {name!r}")

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        existing = _REGISTRY.get(name)
        if existing is not None and _import_path(existing) != _import_path(builder):
            raise ModelError(f"model {name!r} is already registered by {_import_path(existing)}")
        registered = _REGISTRY.register(name, builder, identity=_import_path)
        if compare is not None:
            _COMPARE_DEFAULTS[name] = compare
        return registered

    return decorator


def compare_options(name: str, dataset: str) -> dict[str, Any]:
    """The options of model ``name`` in ``falign compare`` without a config, on ``dataset``, as
    its registration declares them ({} for a model that declares none, or an unknown name: that
    error is the factory's)."""
    builder = _REGISTRY.get(name) or _REGISTRY.get(name.strip().lower())
    defaults = _COMPARE_DEFAULTS.get(_registered_name(builder)) if builder is not None else None
    if defaults is None:
        return {}
    return copy.deepcopy({**defaults.options, **defaults.per_dataset.get(dataset, {})})


def available_models() -> list[str]:
    """Sorted names accepted by :func:`create_model`."""
    return sorted(_REGISTRY)


def create_model(
    name: str | type[nn.Module] | Callable[..., nn.Module],
    rule: Any = None,
    *,
    num_classes: int | None = None,
    in_shape: tuple[int, ...] | None = None,
    rule_options: dict | None = None,
    **options: Any,
) -> nn.Module:
    """Build a registered model (or call a class / builder) and convert it to ``rule``.

    ``rule=None`` keeps plain backprop layers. Otherwise the model is passed through
    ``falign.layers.convert(model, rule, inplace=True, **rule_options)``. The arguments are
    recorded on the result as ``model.falign_spec`` for :func:`model_from_spec`.
    """
    label, builder = _resolve(name)
    _check_num_classes(num_classes)
    in_shape = _check_in_shape(in_shape)
    if rule_options is not None and not isinstance(rule_options, dict):
        raise ModelError(f"rule_options must be a dict, got {type(rule_options).__name__}")
    if rule is None and rule_options:
        raise ModelError(f"model {label!r}: rule_options given without a rule")
    kwargs = _builder_kwargs(label, builder, num_classes, in_shape, options)
    recorded = {
        "name": label,
        "rule": _rule_label(rule),
        "rule_options": _as_json(label, "rule_options", _rule_options(rule, rule_options)),
        "options": _as_json(label, "options", _with_defaults(builder, options)),
    }

    model = builder(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {label!r} returned {type(model).__name__}, not an nn.Module")
    if rule is not None:
        try:
            from falign.layers import convert
        except ImportError as exc:
            raise ImportError("create_model(rule=...) needs falign.layers.convert") from exc
        # one example forward shapes every lazily made B now, so an optimizer built next holds
        # the ones a rule trains (direct Kolen-Pollack)
        converted = convert(model, rule, inplace=True, example_input=_example(model, in_shape),
                            **(rule_options or {}))
        model = model if converted is None else converted

    # Record what the model resolved them to (pins defaults) where the builder takes them.
    if _takes(builder, "num_classes") and isinstance(getattr(model, "num_classes", None), int):
        num_classes = model.num_classes
    if _takes(builder, "in_shape") and getattr(model, "in_shape", None) is not None:
        in_shape = tuple(model.in_shape)
    model.falign_spec = {
        "name": recorded["name"],
        "rule": recorded["rule"],
        "rule_options": recorded["rule_options"],
        "num_classes": num_classes,
        "in_shape": list(in_shape) if in_shape is not None else None,
        "options": recorded["options"],
    }
    return model


def model_from_spec(spec: dict) -> nn.Module:
    """Rebuild the model described by ``model.falign_spec`` (weights are not restored)."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ModelError("a model spec must be a dict with at least a 'name' key")
    unknown = sorted(set(spec) - set(_SPEC_KEYS))
    if unknown:
        raise ModelError(f"unknown model spec key(s) {unknown}; expected {list(_SPEC_KEYS)}")
    name = spec["name"]
    if isinstance(name, str) and name not in _REGISTRY and ":" in name:
        # A spec may come from an untrusted checkpoint: it may name a model class or a builder
        # registered with @register_model (its module is imported), never any other callable.
        name = _import_object(name)
        if not (inspect.isclass(name) and issubclass(name, nn.Module) or _registered_name(name)):
            raise ModelError(f"spec name {spec['name']!r} is neither an nn.Module class nor a builder "
                             "registered with falign.models.register_model")
    rule = spec.get("rule")  # a name, a variant or a Rule subclass's import path (checked there)
    in_shape = spec.get("in_shape")
    options = spec.get("options") or {}
    if not isinstance(options, dict):
        raise ModelError(f"spec 'options' must be a dict, got {type(options).__name__}")
    return create_model(
        name,
        rule,
        num_classes=spec.get("num_classes"),
        in_shape=tuple(in_shape) if in_shape is not None else None,
        rule_options=spec.get("rule_options"),
        **options,
    )


# --- helpers -------------------------------------------------------------------------------


def _example(model: nn.Module, in_shape: tuple[int, ...] | None):
    """A 2-sample input for ``model``: its own ``example_input(n)`` if it has one, else zeros
    of ``in_shape`` (None when neither is known)."""
    make = getattr(model, "example_input", None)
    if callable(make):
        return make(2)
    shape = in_shape or getattr(model, "in_shape", None)
    if shape is None:
        return None
    import torch

    param = next(model.parameters(), None)
    return torch.zeros((2, *shape), dtype=param.dtype if param is not None else None)


def _resolve(name: Any) -> tuple[str, Callable[..., nn.Module]]:
    """(label recorded in the spec, builder) for a registered name, a class or a callable."""
    if isinstance(name, str):
        builder = _REGISTRY.get(name) or _REGISTRY.get(name.strip().lower())
        if builder is None and ":" in name:  # a user's builder or class: "mypkg.models:build"
            obj = _import_object(name)
            if not callable(obj):
                raise ModelError(f"model {name!r} is not a class or a builder function")
            return name, obj
        if builder is None:
            raise ModelError(
                f"unknown model {name!r}{suggest(name.lower(), available_models())}; "
                f"available: {', '.join(available_models())}"
            )
        return _registered_name(builder), builder
    if isinstance(name, nn.Module):
        raise ModelError("create_model takes a model name, class or builder, not a module instance")
    if callable(name):
        return _registered_name(name) or _import_path(name), name
    raise ModelError(f"model must be a name, an nn.Module class or a builder, got {name!r}")


def _registered_name(builder: Callable[..., nn.Module]) -> str:
    for key, value in _REGISTRY.items():
        if value is builder:
            return key
    return ""


def _import_path(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


def _import_object(path: str) -> Any:
    module_name, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"cannot import {path!r} named in the model spec: {exc}") from exc
    return obj


def _rule_label(rule: Any) -> Any:
    """JSON form of ``rule``: a name passes through; a rule class or instance is recorded by
    its registered name when ``falign.rules`` knows it, else by import path."""
    if rule is None or isinstance(rule, str):
        return rule
    if inspect.isfunction(rule):
        return _import_path(rule)
    cls = rule if inspect.isclass(rule) else type(rule)
    name = getattr(cls, "name", None)
    if isinstance(name, str) and name:
        try:
            from falign.rules import get_rule

            if type(get_rule(name)) is cls:
                return name
        except (ImportError, ValueError):
            pass
    return _import_path(cls)


def _rule_options(rule: Any, rule_options: dict | None) -> dict | None:
    """``rule_options``, preceded by the options held by a rule instance (``rule.options()``)."""
    held = getattr(rule, "options", None)
    if rule is None or isinstance(rule, str) or inspect.isclass(rule) or not callable(held):
        return rule_options
    held = held()
    if not isinstance(held, dict):
        return rule_options
    return {**held, **(rule_options or {})}


def _check_num_classes(num_classes: Any) -> None:
    if num_classes is None:
        return
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive int, got {num_classes!r}")


def _check_in_shape(in_shape: Any) -> tuple[int, ...] | None:
    if in_shape is None:
        return None
    if isinstance(in_shape, int):
        in_shape = (in_shape,)
    try:
        shape = tuple(in_shape)
    except TypeError:
        shape = ()
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ModelError(f"in_shape must be a tuple of positive ints (no batch dim), got {in_shape!r}")
    return shape


def _signature(builder: Callable[..., nn.Module]) -> inspect.Signature | None:
    try:
        return inspect.signature(builder)
    except (TypeError, ValueError):
        return None


def _takes(builder: Callable[..., nn.Module], key: str) -> bool:
    sig = _signature(builder)
    return sig is not None and key in sig.parameters


def _accepted(sig: inspect.Signature) -> tuple[list[str], bool]:
    """(named options, whether **kwargs is accepted) of a builder signature."""
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in sig.parameters.values() if p.kind in kinds]
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    return [n for n in names if n not in _SHAPE_ARGS], var_kw


def _builder_kwargs(
    label: str,
    builder: Callable[..., nn.Module],
    num_classes: int | None,
    in_shape: tuple[int, ...] | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Keyword arguments for ``builder``, with unknown or missing options reported."""
    kwargs = dict(options)
    sig = _signature(builder)
    shape_args = {"num_classes": num_classes, "in_shape": in_shape}
    if sig is None:
        kwargs.update({k: v for k, v in shape_args.items() if v is not None})
        return kwargs
    accepted, var_kw = _accepted(sig)
    unknown = sorted(set(options) - set(accepted))
    if unknown and not var_kw:
        hint = suggest(unknown[0], accepted) if len(unknown) == 1 else ""
        raise ModelError(
            f"model {label!r} got unknown option(s) {', '.join(map(repr, unknown))}{hint}; "
            f"accepted options: {', '.join(sorted(accepted)) or 'none'}"
        )
    for key, value in shape_args.items():
        if value is None:
            continue  # the builder's own default applies
        if key not in sig.parameters and not var_kw:
            raise ModelError(f"model {label!r} does not take {key}")
        kwargs[key] = value
    try:
        sig.bind(**kwargs)
    except TypeError as exc:
        raise ModelError(f"model {label!r}: {exc}") from exc
    return kwargs


def _with_defaults(builder: Callable[..., nn.Module], options: dict[str, Any]) -> dict[str, Any]:
    """``options`` plus the builder's JSON-representable defaults, so a spec pins them."""
    out: dict[str, Any] = {}
    sig = _signature(builder)
    if sig is not None:
        accepted, _ = _accepted(sig)
        for name in accepted:
            default = sig.parameters[name].default
            if default is not inspect.Parameter.empty and _is_json(default):
                out[name] = default
    out.update(options)
    return out


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _as_json(label: str, what: str, value: Any) -> Any:
    """Canonical JSON form of ``value`` (tuples become lists), or a ModelError."""
    if value is None:
        return None
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        msg = f"model {label!r}: {what} must be JSON-serialisable for falign_spec ({exc})"
        raise ModelError(msg) from exc
