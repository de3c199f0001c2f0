"""Nothing above ``layers/`` branches on a rule or a pathway by name: a rule lives in its file
under ``rules/`` (and its pathway under ``layers/pathways/``); training, data, analysis,
plots, report and the CLI ask a rule's properties.  Reproduction targets may name rules, as data."""

from __future__ import annotations

import ast
from pathlib import Path

import falign
from falign.layers.pathways import pathway_names

SRC = Path(falign.__file__).parent
BELOW = ("rules", "layers", "reproduce")  # where names of rules may appear in code
NAMES = set(falign.rules()) | set(pathway_names()) | {"fa:dense"}


def _name_comparisons(path: Path, root: Path = SRC) -> list[str]:
    """`x == "bp"`, `"dfa" != x`, `x in ("kp", ...)` with a rule or pathway name as the constant."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Compare):
            continue
        for operand in [node.left, *node.comparators]:
            consts = [operand] if isinstance(operand, ast.Constant) else (
                list(operand.elts) if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [])
            hits = [c.value for c in consts if isinstance(c, ast.Constant) and c.value in NAMES]
            if hits:
                found.append(f"{path.relative_to(root)}:{node.lineno} compares with {hits}")
    return found


def test_no_code_above_layers_compares_with_a_rule_or_pathway_name():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] in BELOW or rel.name == "testing.py":
            continue
        found += _name_comparisons(path)
    assert found == []


def test_the_check_finds_a_comparison_with_a_rule_name(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(rule):\n    return rule.name == 'kp' or rule in ('dfa', 'x')\n")
    assert len(_name_comparisons(bad, root=tmp_path)) == 2
