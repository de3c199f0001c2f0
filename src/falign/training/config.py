"""Typed experiment configuration, validated once at the edge (pydantic).

A config is YAML with the sections below; every key is checked (unknown keys are refused with
the nearest valid name), and the whole config is saved in every checkpoint and in
``tracking.json`` so a resumed run cannot silently change shape.
"""

from __future__ import annotations

import copy
import difflib
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """An invalid config file, key, type or value; the message is one line."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    name: str = "mnist"
    root: str | None = None
    download: bool = False
    val_size: int | None = Field(default=None, ge=0)
    split_seed: int = 42
    subset: int | None = Field(default=None, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)


class ModelConfig(_Section):
    name: str = "mlp"
    options: dict[str, Any] = Field(default_factory=dict)


class RuleConfig(_Section):
    name: str = "bp"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_rule(cls, v: str) -> str:
        from ..rules import get_rule

        return get_rule(v).name  # raises RuleError with a suggestion


class OptimConfig(_Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(default=0.01, gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)


class ScheduleConfig(_Section):
    name: Literal["constant", "multistep", "cosine"] = "constant"
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(default=0.1, gt=0)
    warmup_epochs: int = Field(default=0, ge=0)
    min_lr: float = Field(default=0.0, ge=0)


class TrainConfig(_Section):
    epochs: int = Field(default=10, ge=0)
    batch_size: int = Field(default=128, ge=1)
    eval_batch_size: int = Field(default=1000, ge=1)
    loss: Literal["cross_entropy", "mse", "bce"] = "cross_entropy"
    loss_reduction: Literal["mean", "sum"] = "mean"
    #: DFA framework report loops: per-sample error, batch-averaged "master error", per-class.
    dfa_loop: Literal["sample", "batch", "class"] = "sample"
    select_on: Literal["val", "test"] = "val"
    checkpoint_every_epoch: bool = False
    #: stop when |change in training error count| <= tol between epochs (DFA report); None: off
    early_stop_tol: float | None = Field(default=None, ge=0)
    #: alignment measures every N training steps (0: off)
    alignment_every: int = Field(default=0, ge=0)
    #: GPU fast path: autocast dtype for forward/loss, channels-last convolutions, torch.compile
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    compile: bool = False
    alignment_batch: int = Field(default=256, ge=4)


class SearchSpace(_Section):
    """Parameters of one search: dotted config keys -> a list of values (grid / categorical) or
    a range ``{low, high, log}`` (TPE only)."""

    params: dict[str, list[Any] | dict[str, Any]] = Field(default_factory=dict)
    #: the rule (default: the label, with "name:variant" meaning conv_feedback=variant)
    rule: str | None = None
    rule_options: dict[str, Any] = Field(default_factory=dict)


class CompareEntry(_Section):
    """One method of a comparison: a label, a rule and its options."""

    label: str
    rule: str
    options: dict[str, Any] = Field(default_factory=dict)


class SweepConfig(_Section):
    sampler: Literal["grid", "tpe"] = "grid"
    params: dict[str, list[Any] | dict[str, Any]] = Field(default_factory=dict)
    #: tune each of these rules on its own, each with its own search space
    rules: dict[str, SearchSpace] = Field(default_factory=dict)
    trial_epochs: int = Field(default=3, ge=1)
    n_trials: int = Field(default=20, ge=1)
    metric: Literal["best_val_acc"] = "best_val_acc"
    final_epochs: int | None = Field(default=None, ge=1)
    final_seeds: list[int] = Field(default_factory=lambda: [0])


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; read it as the float everyone means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


class ExperimentConfig(_Section):
    name: str = "experiment"
    seed: int = 0
    device: str = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    rule: RuleConfig = Field(default_factory=RuleConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sweep: SweepConfig | None = None
    #: rules that ``falign compare --config`` trains on this config ("fa:dense" for a variant)
    compare: list[str | CompareEntry] = Field(default_factory=list)

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if v == "auto":
            return v
        import torch

        try:
            torch.device(v)
        except RuntimeError:
            raise ValueError(f"unknown device '{v}' (auto, cpu, cuda, cuda:N, mps)") from None
        return v

    @model_validator(mode="after")
    def _dfa_loop_needs_dfa_mlp(self) -> ExperimentConfig:
        if self.train.dfa_loop != "sample" and (self.rule.name != "dfa" or self.model.name != "mlp"):
            raise ValueError(f"train.dfa_loop '{self.train.dfa_loop}' (the DFA report's averaged loops) "
                             "needs rule 'dfa' and model 'mlp'")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _field_names(model: type[BaseModel], path: list[str | int]) -> list[str]:
    for key in path[:-1]:
        field = model.model_fields.get(str(key))
        if field is None:
            return []
        candidates = [field.annotation, *typing.get_args(field.annotation)]  # unwrap X | None
        sections = [a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)]
        if not sections:
            return []
        model = sections[0]
    return list(model.model_fields)


def _explain(err: ValidationError, where: str) -> ConfigError:
    first = err.errors()[0]
    loc = [p for p in first["loc"]]
    dotted = ".".join(str(p) for p in loc)
    if first["type"] == "extra_forbidden":
        names = _field_names(ExperimentConfig, loc)
        near = difflib.get_close_matches(str(loc[-1]), names, n=1)
        hint = f"; did you mean '{'.'.join(str(p) for p in loc[:-1] + [near[0]])}'?" if near else ""
        return ConfigError(f"{where}: unknown key '{dotted}'{hint}")
    msg = first["msg"]
    if first["type"] == "value_error" and "ctx" in first and "error" in first["ctx"]:
        msg = str(first["ctx"]["error"])
    if not loc:  # a check across sections: the message says it all
        return ConfigError(f"{where}: {msg}")
    got = repr(first.get("input"))
    return ConfigError(f"{where}: {dotted}: {msg} (got {got if len(got) <= 80 else got[:77] + '...'})")


def parse_config(data: dict[str, Any], where: str = "config") -> ExperimentConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise _explain(err, where) from None


def set_values(data: dict[str, Any], values: dict[str, Any], where: str = "--set") -> dict[str, Any]:
    """A copy of nested ``data`` with dotted keys set to ``values`` (``{"optim.lr": 0.1}``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(data).__name__}")
    data = copy.deepcopy(data)
    for key, value in values.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{where} {key!r}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str] | None,
                    where: str = "--set") -> dict[str, Any]:
    """``["optim.lr=0.1", "rule.name=fa"]`` applied to a nested dict (values parsed as YAML)."""
    values = {}
    for item in overrides or ():
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key.sub=value")
        try:
            values[key] = yaml_load(raw) if raw != "" else None
        except yaml.YAMLError:
            values[key] = raw
    return set_values(data, values, where)


SHIPPED = Path(__file__).resolve().parents[1] / "configs"


def shipped_configs() -> list[str]:
    """Names of the configs shipped with falign (``falign train NAME`` finds them)."""
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML config from a path, or a shipped config by name (e.g. ``dfa-mnist``)."""
    path = Path(path)
    if not path.exists() and path.suffix == "" and (SHIPPED / f"{path.name}.yaml").is_file():
        path = SHIPPED / f"{path.name}.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text (UTF-8) file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config ({err.strerror})") from None
    try:
        data = yaml_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}{at}: invalid YAML ({problem})") from None
    return parse_config(apply_overrides(data, overrides, where=str(path)), where=str(path))
