"""Imports point one way: no cycle between the package's top-level parts, lazy imports included.

A part is a subpackage (``data/``, ``generative/``...) or a top-level module (``hub.py``, ``cli.py``).
An import inside a function still ties two parts together, so it counts; one under
``if TYPE_CHECKING:`` runs only in type checkers, so it does not. The package's ``__init__`` may
load everything (its lazy exports) and is no part.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_medaug"

Edges = dict[tuple[str, str], list[str]]


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes in the body of ``if TYPE_CHECKING:`` blocks (not their ``else``)."""
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).split(".")[-1] == "TYPE_CHECKING":
            guarded |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    return guarded


def _exports(package: Path) -> dict[str, str]:
    """The ``__init__``'s lazy exports (``_EXPORTS = {name: module}``), so ``from pkg import Name`` resolves."""
    init = package / "__init__.py"
    if not init.is_file():
        return {}
    for node in ast.walk(ast.parse(init.read_text(encoding="utf-8"))):
        target = node.target if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [None])[0]
        if isinstance(target, ast.Name) and target.id == "_EXPORTS" and isinstance(node.value, ast.Dict):
            return {k.value: v.value for k, v in zip(node.value.keys, node.value.values)
                    if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)}
    return {}


def _imported_modules(node: ast.Import | ast.ImportFrom, module: list[str], exports: dict[str, str]) -> list[str]:
    """Dotted names of what ``node`` (in the file whose dotted name is ``module``) imports."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: resolved against the importing module's package
        base = module[:-node.level] if node.level <= len(module) else []
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    # ``from pkg import part`` imports that part; ``from pkg import Name`` the module exporting Name
    return [exports.get(alias.name, f"{target}.{alias.name}") if target == module[0] else target
            for alias in node.names]


def import_edges(package: Path) -> Edges:
    """``(part, other part) -> ["file:line", ...]`` for every import between two top-level parts."""
    root, exports = package.name, _exports(package)
    parts = {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    parts |= {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    edges: Edges = defaultdict(list)
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        part = rel.parts[0].removesuffix(".py")
        if part == "__init__":
            continue
        module = [root, *rel.with_suffix("").parts]  # an __init__ keeps its name: `.` is then its own package
        tree = ast.parse(path.read_text(encoding="utf-8"))
        guarded = _type_checking_only(tree)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in guarded:
                continue
            for name in _imported_modules(node, module, exports):
                names = name.split(".")
                if names[0] == root and len(names) > 1 and names[1] in parts and names[1] != part:
                    edges[(part, names[1])].append(f"{rel.as_posix()}:{node.lineno}")
    return dict(edges)


def import_cycles(edges: Edges) -> list[list[str]]:
    """The strongly connected sets of more than one part (Tarjan 1972), each sorted."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def describe(cycles: list[list[str]], edges: Edges) -> str:
    return "\n".join(
        "cycle " + ", ".join(c) + ": " + "; ".join(f"{a}->{b} ({edges[(a, b)][0]})" for a in c for b in c
                                                     if (a, b) in edges)
        for c in cycles)


def test_top_level_parts_import_one_way():
    edges = import_edges(PACKAGE)
    assert ("cli", "trainer_cli") in edges  # the walk sees the package (a wrong root would find nothing)
    cycles = import_cycles(edges)
    assert not cycles, "imports must point one way; move the shared code down:\n" + describe(cycles, edges)


def test_rendering_helpers_import_no_product():
    """``rendering/`` (grids, plots, HTML) sits below every part that renders: it may read the data convention only."""
    edges = import_edges(PACKAGE)
    assert {b for a, b in edges if a == "rendering"} <= {"data"}


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root / "pkg"


def test_checker_catches_a_lazy_cycle_and_ignores_type_checking(tmp_path):
    package = _write(tmp_path, {
        "pkg/__init__.py": '_EXPORTS = {"Thing": "pkg.low.thing"}\n',
        "pkg/low/__init__.py": "",
        "pkg/low/thing.py": ("from typing import TYPE_CHECKING\n"
                             "if TYPE_CHECKING:\n    from pkg.top import Product\n"
                             "class Thing: ...\n"),
        "pkg/top.py": "from .low.thing import Thing\nclass Product: ...\n",
    })
    edges = import_edges(package)
    assert edges == {("top", "low"): ["top.py:1"]}  # relative import resolved; TYPE_CHECKING one skipped
    assert import_cycles(edges) == []

    # a lazy back-edge inside a function, through the package's lazy exports, closes a cycle
    (package / "low" / "thing.py").write_text("def make():\n    from pkg import top\n    return top\n",
                                              encoding="utf-8")
    (package / "mid.py").write_text("def f():\n    import pkg.top\n", encoding="utf-8")
    (package / "top.py").write_text("from pkg import Thing\nfrom pkg.mid import f\n", encoding="utf-8")
    edges = import_edges(package)
    assert edges[("low", "top")] == ["low/thing.py:2"]
    assert edges[("top", "low")] == ["top.py:1"]  # `from pkg import Thing` is an import of pkg.low
    assert import_cycles(edges) == [["low", "mid", "top"]]
    assert "low->top (low/thing.py:2)" in describe(import_cycles(edges), edges)


def test_federated_sits_below_the_products():
    """``federated/`` trains generators: the bank, the model card and the CLI read its record, never the other way."""
    edges = import_edges(PACKAGE)
    assert {b for a, b in edges if a == "federated"} & {"bank", "model_card", "cli", "study", "evaluation"} == set()
