"""Learning rules: the registry and one file per rule (no modules, no data, no I/O).

Every module of this package except ``registry`` and ``hardware`` (the model of a device's
feedback path, an option of every rule) defines and registers rules; they are all
imported here, so adding a rule to falign is adding one file.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from ._direct import DirectRule
from .hardware import Hardware, HardwareError
from .registry import (
    Rule,
    RuleError,
    derive_seed,
    gaussian,
    get_rule,
    parse_rule,
    register_rule,
    rule_names,
    rule_spec,
    rules,
    xavier_std,
)

for _info in sorted(_pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name not in ("registry", "hardware") and not _info.name.startswith("_"):
        _importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["DirectRule", "Hardware", "HardwareError", "Rule", "RuleError", "derive_seed", "gaussian",
           "get_rule", "parse_rule", "register_rule", "rule_names", "rule_spec", "rules", "xavier_std"]
