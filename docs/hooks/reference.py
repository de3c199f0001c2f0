"""MkDocs hook: pages generated from the code at build time, so they cannot drift from it.

* ``config.md``: each ``<!-- falign:config SECTION -->`` marker becomes the table of that
  section of :class:`falign.training.config.ExperimentConfig` (every key: type, default,
  constraints, and the ``#:`` doc comment above the field in the source). ``SECTION`` is
  ``top`` (the keys outside any section), a section name (``train``) or a nested table
  (``sweep.rules.<rule>``, ``compare[]``). Tables no marker asks for are appended at the end of
  the page, so a new section is documented the day it is added.
* ``<!-- falign:rules -->`` on any page: the registered learning rules (name, pathway,
  options, description, citation), read from ``falign.rules``.
* ``<!-- falign:cli COMMAND -->``: the ``--help`` text of ``falign COMMAND``, from the parser.
* Every page: Sphinx roles left in docstrings (``:func:`x```) are shown as plain code, and
  reST's ``text::`` before a literal block as ``text:``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
import textwrap
import types
import typing
from dataclasses import dataclass

from mkdocs.exceptions import PluginError

CONFIG_MARKER = re.compile(r"<!--\s*falign:config\s+(\S+)\s*-->")
RULES_MARKER = re.compile(r"<!--\s*falign:rules\s*-->")
CLI_MARKER = re.compile(r"<!--\s*falign:cli\s+(\S+)\s*-->")


# -- the config schema ---------------------------------------------------------------------------

@dataclass
class Table:
    key: str  # "train", "sweep.rules.<rule>", "compare[]", "top"
    model: type
    prefix: str  # what precedes each key in the first column ("train.", "")


def _models_in(annotation) -> list[tuple[type, str]]:
    """(pydantic model, how it is held) for each model an annotation holds: ``""`` (the section
    itself, or one side of a union), ``"dict"`` (the values of a mapping), ``"list"`` (items)."""
    from pydantic import BaseModel

    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, "")]
    if origin is typing.Annotated:
        return _models_in(args[0])
    if origin is dict:
        return [(m, "dict") for m, _ in _models_in(args[1])]
    if origin is list:
        return [(m, "list") for m, _ in _models_in(args[0])]
    return [found for arg in args for found in _models_in(arg)]  # a union


#: the placeholder for the free key of a mapping of sections (``sweep.rules.<rule>``)
MAPPING_KEY = {"rules": "rule"}


def _child_key(prefix: str, name: str, held: str) -> str:
    return {"": f"{prefix}{name}", "list": f"{prefix}{name}[]",
            "dict": f"{prefix}{name}.<{MAPPING_KEY.get(name, 'name')}>"}[held]


def tables() -> list[Table]:
    """Every table of the reference, in schema order: the top-level keys, then each section
    followed by the models nested in it."""
    from falign.training.config import ExperimentConfig

    out = [Table("top", ExperimentConfig, "")]

    def visit(model, path: str) -> None:
        for name, field in model.model_fields.items():
            for sub, held in _models_in(field.annotation):
                key = _child_key(path, name, held)
                prefix = key + "."
                out.append(Table(key, sub, prefix))
                visit(sub, prefix)

    visit(ExperimentConfig, "")
    return out


def _doc_comments(model: type) -> dict[str, str]:
    """Field name -> the ``#:`` comment lines just above its definition in the class source."""
    try:
        lines, _ = inspect.getsourcelines(model)
    except (OSError, TypeError):
        return {}
    source = textwrap.dedent("".join(lines))
    tree = ast.parse(source)
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    src_lines = source.splitlines()
    docs = {}
    for node in body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            comment: list[str] = []
            i = node.lineno - 2
            while i >= 0 and src_lines[i].strip().startswith("#:"):
                comment.insert(0, src_lines[i].strip()[2:].strip())
                i -= 1
            if comment:
                docs[node.target.id] = " ".join(comment)
    return docs


def _type_name(annotation, inside: bool = False) -> str:
    """A reader's name for a field's type; a model is a "section" at the top of a field, a
    "mapping" (a table below) inside a list or a mapping."""
    from pydantic import BaseModel

    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is typing.Any:
        return "any"
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0], inside)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a, inside) for a in args)
    if origin is dict:
        return f"mapping of {_type_name(args[0], True)} to {_type_name(args[1], True)}" if args else "mapping"
    if origin is list:
        return f"list of {_type_name(args[0], True)}" if args else "list"
    if origin is tuple:
        return "[" + ", ".join(_type_name(a, True) for a in args) + "]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping" if inside else "section"
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if annotation in names:
        return names[annotation]
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        factory = field.default_factory
        if isinstance(factory, type) and issubclass(factory, BaseModel):
            return "(section)"
        value = factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    return json.dumps(value, default=str)


_BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))


def _constraints(field) -> str:
    parts = []
    for item in field.metadata:
        for attr, sign in _BOUNDS:
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{sign} {value}")
    return ", ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(table: Table) -> str:
    docs = _doc_comments(table.model)
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in table.model.model_fields.items():
        kind = _type_name(field.annotation)
        bounds = _constraints(field)
        if bounds:
            kind += f", {bounds}"
        meaning = docs.get(name) or field.description or ""
        if meaning and not meaning.endswith("."):
            meaning += "."
        for _, held in _models_in(field.annotation)[:1]:
            child = _child_key(table.prefix, name, held)
            meaning = f"{meaning} See [`{child}`](#{_anchor(child)}).".lstrip()
        default = _cell(_default(field))
        rows.append(f"| `{table.prefix}{name}` | {_cell(kind)} | `{default}` | {_cell(meaning)} |")
    doc = table.model.__dict__.get("__doc__")  # the class's own, not pydantic's
    intro = _roles(" ".join(doc.split())) + "\n\n" if doc else ""
    return intro + "\n".join(rows) + "\n"


def _anchor(key: str) -> str:
    return "config-" + re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")


def render_config_page(markdown: str) -> str:
    by_key = {t.key: t for t in tables()}
    asked = CONFIG_MARKER.findall(markdown)
    unknown = [k for k in asked if k not in by_key]
    if unknown:
        raise PluginError(f"config.md: no config table {', '.join(map(repr, unknown))} "
                          f"(known: {', '.join(by_key)})")

    def table_html(key: str) -> str:
        # the anchor the "See ..." links of the parent table point at
        return f'<a id="{_anchor(key)}"></a>\n\n' + render_table(by_key[key])

    markdown = CONFIG_MARKER.sub(lambda m: table_html(m.group(1)), markdown)
    rest = [k for k in by_key if k not in asked]
    if rest:
        markdown += "\n\n## Other keys\n\n"
        for key in rest:
            markdown += f"### `{key}`\n\n{table_html(key)}\n"
    return markdown


# -- the rules -----------------------------------------------------------------------------------

def render_rules() -> str:
    from falign.rules import registry

    rows = ["| name | pathway | options (defaults) | description | citation |", "|---|---|---|---|---|"]
    for name in registry.rule_names():
        rule = registry.get_rule(name)
        cls = type(rule)
        options = ", ".join(f"`{f.name}={json.dumps(f.default, default=str)}`"
                            for f in dataclasses.fields(cls)
                            if f.name not in ("scale", "seed") and f.default is not dataclasses.MISSING)
        rows.append(f"| `{name}` | `{rule.pathway}` | {_cell(options) or '–'} | "
                    f"{_cell(cls.description)} | {_cell(cls.citation)} |")
    return "\n".join(rows) + "\n"


# -- the command line ----------------------------------------------------------------------------

def render_cli(command: str) -> str:
    """``falign COMMAND --help``, as argparse prints it at a width of 96 columns."""
    import contextlib
    import io
    import os

    from falign.cli.main import build_parser

    text = io.StringIO()
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "96"
    try:
        with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):
            build_parser().parse_args([command, "--help"])
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved
    if not text.getvalue().startswith("usage:"):
        raise PluginError(f"falign:cli {command}: no such command")
    return f"```text\n{text.getvalue().rstrip()}\n```\n"


# -- docstrings ----------------------------------------------------------------------------------

_ROLE_TEXT = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc|const|py:\w+):`~?([^`]+)`")
_ROLE_HTML = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc|const|py:\w+):(<code>)~?")


def _roles(text: str) -> str:
    return _ROLE_TEXT.sub(r"`\1`", text)


# -- the hooks -----------------------------------------------------------------------------------

def on_page_markdown(markdown: str, page, config, files) -> str:
    if CONFIG_MARKER.search(markdown) or page.file.src_uri == "config.md":
        markdown = render_config_page(markdown)
    if RULES_MARKER.search(markdown):
        markdown = RULES_MARKER.sub(lambda m: render_rules(), markdown)
    markdown = CLI_MARKER.sub(lambda m: render_cli(m.group(1)), markdown)
    return markdown


def on_page_content(html: str, page, config, files) -> str:
    # reST's "text::" (a literal block follows) reads "text:" in Markdown
    return _ROLE_HTML.sub(r"\1", html).replace("::</p>", ":</p>")
