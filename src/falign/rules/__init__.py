"""Learning rules: the registry and the backward maths (no modules, no data, no I/O)."""

from . import definitions as _definitions  # noqa: F401  (registers the rules)
from .registry import Rule, RuleError, get_rule, register_rule, rule_names, rules

__all__ = ["Rule", "RuleError", "get_rule", "register_rule", "rule_names", "rules"]
