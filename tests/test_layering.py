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


# -- floors and cycles (docs/design.md) -----------------------------------------------------------

#: the floor of each room: a module imports only from its own room or from lower floors
FLOOR = {"registry": 0, "errors": 0, "provenance": 1, "records": 1, "rules": 1, "data": 1,
         "layers": 2, "models": 3, "analysis": 3,
         "__init__": 4, "training": 5, "integrations": 5, "plots": 6, "testing": 6, "report": 7,
         "reproduce": 8, "cli": 9, "__main__": 10}
#: import cycles between files that the design issue is removing (docs/design.md, "Moving"):
#: a new cycle fails the test, and a removed one must leave this list
KNOWN_CYCLES: list[set[str]] = []


def _module(path: Path, root: Path) -> tuple[list[str], bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return (parts[:-1], True) if parts[-1] == "__init__" else (parts, False)


def _imports(path: Path, root: Path) -> list[list[str]]:
    """Every falign module ``path`` imports (at the top or inside a function), as parts below the
    package root: ``from ..training.loop import x`` -> ["training", "loop"]."""
    parts, is_pkg = _module(path, root)
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = parts if is_pkg else parts[:-1]
            base = base[: len(base) - node.level + 1]
            target = base + (node.module.split(".") if node.module else [])
        elif node.module and node.module.split(".")[0] == root.name:
            target = node.module.split(".")[1:]
        else:
            continue
        for alias in node.names:  # a name that is a module of its own: that module
            sub = root.joinpath(*target, alias.name)
            if sub.with_suffix(".py").is_file() or (sub / "__init__.py").is_file():
                out.append([*target, alias.name])
            elif target not in out[-1:]:
                out.append(target)
    return out


def _file_of(target: list[str], root: Path) -> Path | None:
    for n in range(len(target), 0, -1):
        stem = root.joinpath(*target[:n])
        if stem.with_suffix(".py").is_file():
            return stem.with_suffix(".py")
        if (stem / "__init__.py").is_file():
            return stem / "__init__.py"
    return root / "__init__.py" if not target else None


def floor_violations(root: Path = SRC) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        parts, _ = _module(path, root)
        me = parts[0] if parts else "__init__"
        for target in _imports(path, root):
            other = target[0] if target and target[0] in FLOOR else "__init__"
            if other != me and FLOOR[other] >= FLOOR.get(me, 0):
                found.append(f"{path.relative_to(root)} (floor {FLOOR.get(me)}) imports "
                             f"{'.'.join(target) or root.name} (floor {FLOOR[other]})")
    return found


def import_cycles(root: Path = SRC) -> list[set[str]]:
    """The strongly connected components of more than one file in the file import graph."""
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        me = str(path.relative_to(root))
        graph[me] = set()
        for target in _imports(path, root):
            f = _file_of(target, root)
            if f is not None and f != path:
                graph[me].add(str(f.relative_to(root)))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_from_a_higher_floor():
    assert floor_violations() == []


def test_no_import_cycle_but_those_being_removed():
    cycles = import_cycles()
    assert [c for c in cycles if c not in KNOWN_CYCLES] == []
    assert [c for c in KNOWN_CYCLES if c not in cycles] == [], "a cycle is gone: take it off KNOWN_CYCLES"


def test_the_floor_and_cycle_checks_find_what_they_look_for(tmp_path):
    pkg = tmp_path / "falign"
    (pkg / "layers").mkdir(parents=True)
    (pkg / "training").mkdir()
    for f in ("__init__.py", "layers/__init__.py", "training/__init__.py"):
        (pkg / f).write_text("")
    (pkg / "layers" / "a.py").write_text("def f():\n    from ..training import loop\n")
    (pkg / "training" / "loop.py").write_text("from ..layers.a import f\n")
    (pkg / "layers" / "b.py").write_text("from .c import x\n")
    (pkg / "layers" / "c.py").write_text("from . import b\n")
    assert floor_violations(pkg) == ["layers/a.py (floor 2) imports training.loop (floor 5)"]
    assert sorted(map(sorted, import_cycles(pkg))) == [["layers/a.py", "training/loop.py"],
                                                       ["layers/b.py", "layers/c.py"]]


def test_a_moved_module_still_imports_with_one_warning():
    import subprocess
    import sys

    code = ("import warnings; warnings.simplefilter('always')\n"
            "from falign.layers.alignment import StepProbe, measure_alignment\n"
            "import falign.analysis.alignment as a\n"
            "assert StepProbe is a.StepProbe and a.__spec__.name == 'falign.analysis.alignment'\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("falign.layers.alignment moved to falign.analysis.alignment") == 1
