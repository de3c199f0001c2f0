"""Every shipped config carries its published protocol.

``src/falign/configs/protocols/<config>.yaml`` holds the protocol as data: ``facts`` (dotted
config keys -> published values), ``methods`` (facts of one compared method), ``deviations``
(key, value used, why; optionally ``method``) and ``published`` (the numbers). Each fact must
equal the config's value, for the config itself and for the config ``compare_configs`` makes
for every method; each difference must be a listed deviation whose value is the config's; a key
the protocol is silent on may be listed as a choice, and its value must be the config's too; a
deviation that does not deviate fails. A new config without a protocol fails here.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

from falign.training.compare import compare_configs
from falign.training.config import SHIPPED, ExperimentConfig, load_config, shipped_configs, yaml_load

PROTOCOLS = SHIPPED / "protocols"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "protocols.md"
TOP_KEYS = {"config", "source", "facts", "methods", "published", "deviations"}
DEVIATION_KEYS = {"key", "value", "why", "method"}


class _Missing:
    def __repr__(self) -> str:
        return "not set"


MISSING = _Missing()


def load_protocol(name: str) -> dict[str, Any]:
    return yaml_load((PROTOCOLS / f"{name}.yaml").read_text(encoding="utf-8"))


def _default(data: dict[str, Any], section: str, option: str) -> Any:
    """The default of a dataset loader's / model builder's option the config leaves unset."""
    if section == "data":
        from falign.data.registry import _REGISTRY, _canonical

        fn = _REGISTRY[_canonical(data["data"]["name"])]
    else:
        import falign.models  # noqa: F401 (registers the builders)
        from falign.models.registry import _REGISTRY

        fn = _REGISTRY[data["model"]["name"]]
    param = inspect.signature(fn).parameters.get(option)
    return MISSING if param is None or param.default is inspect.Parameter.empty else param.default


def lookup(data: dict[str, Any], key: str) -> Any:
    """The value of dotted ``key`` in a config dict; a data / model option the config leaves
    unset is the loader's / builder's default; MISSING if nothing gives one."""
    node: Any = data
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif depth == 2 and parts[0] in ("data", "model") and parts[1] == "options":
            return _default(data, parts[0], part)
        else:
            return MISSING
    return node


def same(a: Any, b: Any) -> bool:
    """Equal as config values: 1e-3 == 0.001 and 0 == 0.0, but True is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def _as_listed(value: Any, got: Any) -> bool:
    """A deviation's value matches the config's (``null`` lists a key left unset)."""
    return (value is None and got is MISSING) or same(value, got)


def schema_problems(name: str, protocol: Any) -> list[str]:
    if not isinstance(protocol, dict):
        return [f"{name}: the protocol file is not a mapping"]
    problems = [f"{name}: unknown protocol key '{k}' ({', '.join(sorted(TOP_KEYS))})"
                for k in sorted(set(protocol) - TOP_KEYS)]
    if protocol.get("config") != name:
        problems.append(f"{name}: 'config' is {protocol.get('config')!r}, not the config's name")
    if not isinstance(protocol.get("source"), str) or not protocol["source"].strip():
        problems.append(f"{name}: no 'source' (the citation)")
    if not isinstance(protocol.get("facts"), dict) or not protocol["facts"]:
        problems.append(f"{name}: no 'facts'")
    if not all(isinstance(v, dict) for v in (protocol.get("methods") or {}).values()):
        problems.append(f"{name}: 'methods' must map each method label to its facts")
    seen = set()
    for i, dev in enumerate(protocol.get("deviations") or []):
        if not isinstance(dev, dict) or not {"key", "value", "why"} <= set(dev) \
                or not set(dev) <= DEVIATION_KEYS:
            problems.append(f"{name}: deviation {i} needs key, value and why (and may name a method)")
            continue
        if not isinstance(dev["why"], str) or len(dev["why"].split()) < 5:
            problems.append(f"{name}: deviation '{dev['key']}' gives no reason")
        if (dev["key"], dev.get("method")) in seen:
            problems.append(f"{name}: deviation '{dev['key']}' is listed twice")
        seen.add((dev["key"], dev.get("method")))
    published = protocol.get("published")
    if published is not None and (not isinstance(published, dict) or set(published) != {"metric", "values"}):
        problems.append(f"{name}: 'published' needs 'metric' and 'values'")
    return problems


def protocol_problems(cfg: ExperimentConfig, protocol: dict[str, Any]) -> list[str]:
    """Each way ``cfg`` (and each method's config) differs from ``protocol`` without saying so."""
    facts = protocol.get("facts") or {}
    methods = protocol.get("methods") or {}
    devs = protocol.get("deviations") or []
    configs = compare_configs(cfg, cfg.compare)
    problems = [f"facts for method '{m}', which the config does not compare ({', '.join(configs)})"
                for m in methods if m not in configs]
    problems += [f"published number for method '{m}', which the config does not compare"
                 for m in (protocol.get("published") or {}).get("values", {}) if m not in configs]
    flagged, used = set(), set()
    for i, dev in enumerate(devs):
        if dev.get("method") is not None and dev["method"] not in configs:
            problems.append(f"deviation '{dev['key']}' of method '{dev['method']}', which the config "
                            "does not compare")
            flagged.add(i)
    for label, c in [(None, cfg), *configs.items()]:
        data = c.to_dict()
        where = "the config" if label is None else f"method '{label}'"
        want = {**facts, **(methods.get(label, {}) if label is not None else {})}
        listed: dict[str, int] = {}  # key -> the deviation in scope (a method's own one first)
        for i, dev in enumerate(devs):
            if dev.get("method") in (None, label) and (dev.get("method") is not None
                                                       or dev["key"] not in listed):
                listed[dev["key"]] = i
        for key in {**want, **listed}:
            got, i = lookup(data, key), listed.get(key)
            if key in want and same(got, want[key]):
                if i is not None:
                    problems.append(f"{where}: {key} is {got!r} as published, yet listed as a deviation")
                    flagged.add(i)
            elif i is None:
                problems.append(f"{where}: {key} is {got!r}, the protocol says {want[key]!r}, and no "
                                "deviation lists it")
            elif not _as_listed(devs[i]["value"], got):
                problems.append(f"{where}: {key} is {got!r}, its deviation says {devs[i]['value']!r}")
                flagged.add(i)
            else:
                used.add(i)
    problems += [f"deviation '{dev['key']}' never deviates" for i, dev in enumerate(devs)
                 if i not in used and i not in flagged]
    return problems


def check(name: str, cfg: ExperimentConfig) -> list[str]:
    path = PROTOCOLS / f"{name}.yaml"
    if not path.is_file():
        return [f"{name}: no protocol file {path.relative_to(SHIPPED.parent)}: write down the "
                "published protocol (facts, deviations, source) beside the config"]
    protocol = load_protocol(name)
    return schema_problems(name, protocol) or [f"{name}: {p}" for p in protocol_problems(cfg, protocol)]


@pytest.mark.parametrize("name", shipped_configs())
def test_shipped_config_follows_its_protocol(name):
    assert check(name, load_config(name)) == []


def test_every_protocol_has_a_shipped_config():
    assert sorted(p.stem for p in PROTOCOLS.glob("*.yaml")) == shipped_configs()


def test_a_config_without_a_protocol_is_reported():
    problems = check("no-such-config", load_config("lillicrap-mnist"))
    assert len(problems) == 1 and "no protocol file" in problems[0]


def test_an_unlisted_difference_is_reported():
    cfg = load_config("lillicrap-mnist", ["optim.momentum=0.9"])
    problems = check("lillicrap-mnist", cfg)
    # the config itself and both compared methods
    assert len(problems) == 3 and all("optim.momentum is 0.9, the protocol says 0.0" in p
                                      for p in problems), problems


def test_a_deviation_that_does_not_deviate_is_reported():
    protocol = load_protocol("lillicrap-mnist")
    protocol["deviations"].append({"key": "optim.lr", "value": 0.001, "why": "x " * 5})
    problems = protocol_problems(load_config("lillicrap-mnist"), protocol)
    assert problems and all("optim.lr is 0.001 as published, yet listed" in p for p in problems)


def test_a_choice_whose_value_changed_is_reported():
    problems = check("lillicrap-mnist", load_config("lillicrap-mnist", ["train.batch_size=64"]))
    assert problems and all("train.batch_size is 64, its deviation says 32" in p for p in problems)


def test_a_deviation_of_a_method_not_compared_is_reported():
    protocol = load_protocol("dfa-mnist")
    cfg = load_config("dfa-mnist")
    cfg.compare = ["dfa"]
    problems = protocol_problems(cfg, protocol)
    assert any("facts for method 'bp'" in p for p in problems)
    assert any("deviation 'optim.name' of method 'bp'" in p for p in problems)


def test_a_per_method_fact_is_checked_on_that_methods_config():
    cfg = load_config("resnet20-cifar10")
    cfg.compare = ["dfa" if getattr(c, "label", c) == "dfa" else c for c in cfg.compare]  # no own lr
    problems = check("resnet20-cifar10", cfg)
    assert problems == ["resnet20-cifar10: method 'dfa': optim.lr is 0.1, the protocol says 0.001, "
                        "and no deviation lists it"]


def test_an_option_left_at_its_default_is_checked():
    assert lookup(load_config("arch1-cifar10").to_dict(), "data.options.crop") == 24
    cfg = load_config("arch1-cifar10", ["data.options.crop=32"])
    assert any("data.options.crop is 32, the protocol says 24" in p for p in check("arch1-cifar10", cfg))


def _doc_sections() -> dict[str, str]:
    text = DOCS.read_text(encoding="utf-8")
    sections = {}
    for chunk in text.split("\n## ")[1:]:
        heading = chunk.splitlines()[0]
        for name in shipped_configs():
            if f"`{name}`" in heading:
                sections[name] = chunk
    return sections


@pytest.mark.parametrize("name", shipped_configs())
def test_the_docs_tell_each_protocol(name):
    """docs/protocols.md has a section per config naming its source, numbers and deviations."""
    section = _doc_sections().get(name)
    assert section is not None, f"docs/protocols.md: no '## ... `{name}`' section"
    protocol = load_protocol(name)
    first_author = protocol["source"].split()[0].rstrip(",")
    assert first_author in section
    for label, value in ((protocol.get("published") or {}).get("values") or {}).items():
        assert f"{value:.2f}" in section or f"{value:g}" in section, f"{name}: {label} {value}"
    for dev in protocol.get("deviations") or []:
        assert f"`{dev['key']}`" in section, f"{name}: deviation {dev['key']}"


def test_the_docs_stand_alone():
    text = DOCS.read_text(encoding="utf-8")
    for word in ("REFERENCES", "shared/", "seed 00"):
        assert word not in text
