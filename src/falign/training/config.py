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
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import FalignError


class ConfigError(FalignError, ValueError):
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
    """A registered rule name (or a variant such as ``fa:dense``, or a user's rule as an import
    path ``mypkg.rules:MyRule``) and its options, checked against the rule's fields."""

    name: str = "bp"
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _hardware_as_option(cls, data: Any) -> Any:
        """``rule: {name: dfa, hardware: {...}}``: the hardware model of the feedback path is
        the rule option ``hardware`` (``falign.rules.hardware``)."""
        if isinstance(data, dict) and "hardware" in data:
            data = dict(data)
            options = dict(data.get("options") or {})
            if "hardware" in options:
                raise ValueError("give the hardware once: as rule.hardware or as rule.options.hardware")
            options["hardware"] = data.pop("hardware")
            data["options"] = options
        return data

    @field_validator("name")
    @classmethod
    def _known_rule(cls, v: str) -> str:
        from ..rules import parse_rule

        rule_cls, _ = parse_rule(v)  # raises RuleError with a suggestion
        # a registered rule by its canonical name; a variant or a user's import path as given,
        # so a saved config finds it again in a fresh process
        return v if ":" in v else rule_cls.name

    @model_validator(mode="after")
    def _known_options(self) -> RuleConfig:
        from ..rules import get_rule

        get_rule(self.name, **self.options)  # raises RuleError naming the option
        return self


class ScheduleConfig(_Section):
    #: the rate's factor per epoch: constant, multistep (gamma at each milestone), exponential
    #: (gamma after every epoch: StepLR(step_size=1)) or cosine (down to min_lr)
    name: Literal["constant", "multistep", "exponential", "cosine"] = "constant"
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(default=0.1, gt=0)
    warmup_epochs: int = Field(default=0, ge=0)
    min_lr: float = Field(default=0.0, ge=0)


class _OptimFields(_Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(default=0.01, gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)


class FeedbackOptimConfig(_OptimFields):
    """The optimizer of a rule's trained feedback B (``optim.feedback``), separate from W's:
    Webster, Choi & Ahn 2020 train W with SGD-Nesterov and direct Kolen-Pollack's B with Adam
    whose rate is multiplied by 0.8 after every epoch."""

    #: B's learning-rate schedule (the top-level ``schedule`` is W's), from this section's lr
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)


class OptimConfig(_OptimFields):
    #: an optimizer and schedule of their own for the trained feedback B of a rule that allows
    #: one (dkp); None: B, where a rule trains it, is stepped with W by this optimizer
    feedback: FeedbackOptimConfig | None = None


class TrainConfig(_Section):
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=128, ge=1)
    eval_batch_size: int = Field(default=1000, ge=1)
    loss: Literal["cross_entropy", "mse", "bce"] = "cross_entropy"
    loss_reduction: Literal["mean", "sum"] = "mean"
    #: the epoch whose model is kept as best.pt and tested: the best on the validation split, on
    #: the test split (BioTorch's protocol), or the last one (a paper's "final" accuracy)
    select_on: Literal["val", "test", "last"] = "val"
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
    #: under several processes, batch-norm statistics over the whole global batch (False: each
    #: process normalises its own share, a different computation from one process)
    sync_batchnorm: bool = True
    #: experiment trackers the run reports to: tensorboard, wandb, mlflow, jsonl, one a user
    #: registered (falign.training.loggers.register_tracker), or a Logger class by import path
    #: (``mypkg.trackers:MyTracker``, found in any process, the command line's included)
    loggers: list[str] = Field(default_factory=list)
    #: per-step scalars (the training loss) to the trackers every N steps (0: per epoch only)
    log_every: int = Field(default=0, ge=0)
    #: a resumable checkpoint every N training steps within an epoch too (0: after epochs only);
    #: a kill then loses at most N steps, and the resumed run ends bit-identical
    checkpoint_steps: int = Field(default=0, ge=0)

    @field_validator("loggers")
    @classmethod
    def _known_trackers(cls, v: list[str]) -> list[str]:
        from .loggers import TRACKERS

        for name in v:
            if ":" not in name:  # module:Class, a user's tracker, is imported when the run starts
                TRACKERS.lookup(name)  # one line naming the nearest tracker
        return v


class SearchSpace(_Section):
    """Parameters of one search: dotted config keys -> a list of values (grid / categorical) or
    a range ``{low, high, log}`` (TPE only)."""

    params: dict[str, list[Any] | dict[str, Any]] = Field(default_factory=dict)
    #: the rule (default: the label, with "name:variant" meaning conv_feedback=variant)
    rule: str | None = None
    rule_options: dict[str, Any] = Field(default_factory=dict)


class CompareEntry(_Section):
    """One method of a comparison: a label, a rule, its options, and config values of its own.

    ``set`` holds dotted config keys -> values for this method only, applied over the base config
    (``{label: dfa, rule: dfa, set: {optim.lr: 0.001}}``: BioTorch's DFA runs used their own
    learning rate). The rule itself is ``rule`` / ``options``, never ``set``."""

    label: str
    rule: str
    options: dict[str, Any] = Field(default_factory=dict)
    set: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _check(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data  # pydantic says what it expected
        where = f"compare entry '{data.get('label', data.get('rule', '?'))}'"
        fields = list(cls.model_fields)
        for key in data:
            if key not in fields:
                near = difflib.get_close_matches(str(key), fields, n=1)
                hint = f"; did you mean '{near[0]}'?" if near else f" ({', '.join(fields)})"
                raise ValueError(f"{where}: unknown key '{key}'{hint}")
        missing = [k for k in ("label", "rule") if k not in data]
        if missing:
            raise ValueError(f"{where}: needs {' and '.join(repr(k) for k in missing)}")
        if isinstance(data["rule"], str):
            from ..rules import get_rule

            try:
                get_rule(data["rule"])
            except ValueError as err:
                raise ValueError(f"{where}: rule: {err}") from None
        values = data.get("set")
        for key in values if isinstance(values, dict) else ():
            top = str(key).partition(".")[0]
            if top == "rule":
                raise ValueError(f"{where}: set '{key}': give the rule as the entry's 'rule' and "
                                 "'options'")
            if top in _DERIVED:
                raise ValueError(f"{where}: set '{key}': a method's {top} comes from the comparison")
            problem = _dotted_key_problem(str(key))
            if problem:
                raise ValueError(f"{where}: set: {problem}")
        return data


#: what a comparison derives for each method itself (its run name; no nested comparison)
_DERIVED = ("name", "compare")

#: an item of ``compare``: "fa" / "fa:dense", or a mapping read as a CompareEntry (only the
#: entry's own errors are reported for a mapping, not "expected a string")
CompareItem = Annotated[
    Annotated[str, Tag("name")] | Annotated[CompareEntry, Tag("entry")],
    Discriminator(lambda v: "name" if isinstance(v, str) else "entry"),
]


def _dotted_key_problem(key: str) -> str | None:
    """Why dotted ``key`` names no value of an experiment config ("optim.lrr"), or None.

    Below a free mapping (``model.options``, ``data.options``) any key goes; a whole section
    (``optim``) is refused, as setting it would reset its other keys to their defaults."""
    model: type[BaseModel] = ExperimentConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            near = difflib.get_close_matches(part, list(fields), n=1)
            hint = f"; did you mean '{'.'.join([*parts[:i], near[0]])}'?" if near else ""
            return f"unknown key '{key}'{hint}"
        annotation = fields[part].annotation
        sections = [a for a in (annotation, *typing.get_args(annotation))  # unwrap X | None
                    if isinstance(a, type) and issubclass(a, BaseModel)]
        if not sections:
            if i < len(parts) - 1 and typing.get_origin(annotation) is not dict:
                return f"unknown key '{key}': '{'.'.join(parts[:i + 1])}' is a value, not a section"
            return None
        model = sections[0]
    return f"'{key}' is a section: set its keys (e.g. '{key}.{next(iter(model.model_fields))}')"


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
    compare: list[CompareItem] = Field(default_factory=list)

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        """A device torch knows and this machine has: a run that cannot start is refused here,
        before any file is written, not by a traceback from the first ``.to(device)``."""
        if v == "auto":
            return v
        import torch

        try:
            dev = torch.device(v)
        except RuntimeError:
            raise ValueError(f"unknown device '{v}' (auto, cpu, cuda, cuda:N, mps)") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"'{v}' is not available on this machine: "
                                 "torch.cuda.is_available() is False; use cpu or auto")
            n = torch.cuda.device_count()
            if dev.index is not None and dev.index >= n:
                have = "cuda:0" if n == 1 else f"cuda:0 to cuda:{n - 1}"
                raise ValueError(f"'{v}' is not available on this machine: it has {n} CUDA "
                                 f"device{'s' if n != 1 else ''} ({have}); use one of those, cuda or auto")
        elif dev.type == "mps":
            if not torch.backends.mps.is_available():
                raise ValueError(f"'{v}' is not available on this machine: "
                                 "torch.backends.mps.is_available() is False; use cpu or auto")
        elif dev.type != "cpu":
            backend = getattr(torch, dev.type, None)
            if not callable(getattr(backend, "is_available", None)):
                raise ValueError(f"'{v}' is not a device falign trains on (auto, cpu, cuda, cuda:N, mps)")
            if not backend.is_available():
                raise ValueError(f"'{v}' is not available on this machine: "
                                 f"torch.{dev.type}.is_available() is False; use cpu or auto")
        return v

    @model_validator(mode="after")
    def _feedback_optimizer_fits_the_rule(self) -> ExperimentConfig:
        """``optim.feedback`` only for a rule whose trained B may have an optimizer of its own
        (dkp): a rule that trains no B has nothing for it to step, and Kolen-Pollack's B must
        stay in W's parameter group (same rate and decay, or B - W no longer shrinks)."""
        if self.optim.feedback is None:
            return self
        from ..rules import get_rule

        rule = get_rule(self.rule.name, **self.rule.options)
        if not rule.learned:
            raise ValueError(f"optim.feedback: rule '{self.rule.name}' trains no feedback B; "
                             "remove optim.feedback")
        if rule.feedback_group == "weight":
            raise ValueError(f"optim.feedback: rule '{self.rule.name}' trains B with W's own "
                             "optimizer and rate (its B must stay in W's parameter group); "
                             "remove optim.feedback")
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
    if loc[:1] == ["compare"] and loc[2:3] == ["entry"]:  # a mapping entry (CompareItem's tag)
        if first["type"] == "value_error":  # CompareEntry's own check, which names the entry
            return ConfigError(f"{where}: {first['ctx']['error']}")
        loc = [*loc[:2], *loc[3:]]
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


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Configs written by falign 0.1: ``train.dfa_loop`` is now the DFA rule's option
    ``average`` (the default "sample" is simply dropped)."""
    train = data.get("train")
    if isinstance(train, dict) and "dfa_loop" in train:
        data = copy.deepcopy(data)
        loop = data["train"].pop("dfa_loop")
        if loop != "sample":
            rule = data.setdefault("rule", {}) or {}
            data["rule"] = rule
            rule.setdefault("options", {})["average"] = loop
    return data


def parse_config(data: dict[str, Any], where: str = "config") -> ExperimentConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(data).__name__}")
    data = _migrate(data)
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


def shipped_configs_with(section: str) -> list[str]:
    """Names of the shipped configs that set ``section`` (e.g. ``sweep``)."""
    return [name for name in shipped_configs()
            if getattr(load_config(name), section, None) not in (None, [], {})]


def _section(annotation: Any) -> type[BaseModel] | None:
    candidates = [annotation, *typing.get_args(annotation)]  # unwrap X | None
    return next((a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)), None)


def _schema_keys(model: type[BaseModel] = ExperimentConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the schema, sections included (``data``, ``data.name``, ...)."""
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        section = _section(field.annotation)
        if section is not None:
            keys += _schema_keys(section, f"{prefix}{name}.")
    return keys


def _key_hint(parts: list[str]) -> str:
    """" ; did you mean 'optim.lr'?" for a dotted key the schema lacks, "" for one it has.

    The nearest name in the same section first, else the shallowest keys of that name (or the
    nearest name) in any section: ``train.lr`` -> ``optim.lr``, ``train.seed`` -> ``seed``."""
    model: type[BaseModel] = ExperimentConfig
    for depth, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return _guess(model, parts[:depth], part, parts[depth + 1:])
        section = _section(field.annotation)
        if section is None:  # a value, or a free-form mapping (options, params) that takes the rest
            return ""
        model = section
    return ""


def _guess(model: type[BaseModel], here: list[str], name: str, rest: list[str]) -> str:
    near = difflib.get_close_matches(name, list(model.model_fields), n=1)
    if near:
        guesses = [".".join(here + near)]
    else:
        everywhere = _schema_keys()
        near = difflib.get_close_matches(name, sorted({k.rsplit(".", 1)[-1] for k in everywhere}), n=1)
        found = [k for k in everywhere if near and k.rsplit(".", 1)[-1] == near[0]]
        # the shallowest of them: a section's own key before a subsection's (optim.lr, not also
        # optim.feedback.lr)
        guesses = [k for k in found if k.count(".") == min(k.count(".") for k in found)][:3]
    if not guesses:
        return ""
    return "; did you mean " + " or ".join(repr(".".join([g, *rest])) for g in guesses) + "?"


def check_override_keys(overrides: list[str] | None) -> None:
    """Refuse a ``--set KEY=VALUE`` whose key the schema lacks, naming the nearest valid key in
    any section (a config file's own keys are checked by :func:`parse_config`)."""
    for item in overrides or ():
        key = item.partition("=")[0]
        hint = _key_hint(key.split("."))
        if hint:
            raise ConfigError(f"--set {item}: unknown key '{key}'{hint}")


def _not_found(path: Path) -> ConfigError:
    names = shipped_configs()
    near = difflib.get_close_matches(path.stem, names, n=1)
    if path.suffix:  # a file name
        hint = f"; did you mean the shipped config '{near[0]}'?" if near else ""
        return ConfigError(f"{path}: config file not found{hint}")
    hint = f"did you mean '{near[0]}'? " if near else ""
    return ConfigError(f"{path}: config file not found, nor a shipped config of that name; {hint}"
                       f"shipped configs: {', '.join(names)}")


def load_config(path: str | Path, overrides: list[str] | None = None, *,
                values: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load a YAML config from a path, or a shipped config by name (e.g. ``dfa-mnist``).

    ``values`` (dotted keys, ``{"seed": 3}``: a front end's own flags) are set before the
    ``overrides`` (``["optim.lr=0.1"]``: ``--set``)."""
    path = Path(path)
    if not path.exists() and path.suffix == "" and (SHIPPED / f"{path.name}.yaml").is_file():
        path = SHIPPED / f"{path.name}.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _not_found(path) from None
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
    check_override_keys(overrides)
    data = set_values(data, values or {}, where=str(path))
    return parse_config(apply_overrides(data, overrides, where=str(path)), where=str(path))
