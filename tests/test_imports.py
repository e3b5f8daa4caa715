"""The import graph of the ``structmt`` package, read from its source files (every ``import``
and ``from ... import``, relative or absolute, at module level or inside functions): it has no
cycle, and its layers import one way.

* ``structmt.analysis`` and ``structmt.bench`` import nothing from ``structmt.pipeline``, and
  neither imports the other: what they share lives in the neutral top-level modules
  (``files``, ``provenance``, ``checkpoints``, ``fairseq_cli``).
* ``structmt.attention`` is the bottom layer: it imports nothing from ``models``, ``pipeline``,
  ``analysis``, ``bench`` or ``data``; ``structmt.models`` imports only ``attention`` of them, and
  ``structmt.data`` none.
* The shared top-level modules (``files``, ``paths``, ``checkpoints``, ...) import no subpackage.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "structmt"

Graph = dict[str, set[str]]


def _module_name(path: Path, package_dir: Path) -> str:
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_names(tree: ast.Module) -> set[str]:
    """Names a module binds at its top level (definitions, assignments, imports)."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def import_graph(package_dir: Path = PACKAGE_DIR) -> Graph:
    """Module → the modules of the package it imports (anywhere in its source).

    ``from P import N`` imports the submodule ``P.N`` when there is one, or when ``P`` is a
    package whose ``__init__`` does not bind ``N`` (a submodule without Python source, such as
    a compiled extension); otherwise it imports ``P``.  Importing a submodule is not counted as
    importing its parent packages (every submodule would otherwise depend on ``structmt``).
    """
    root = package_dir.name
    sources = {_module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}
    trees = {name: ast.parse(path.read_text(encoding="utf-8"), filename=str(path)) for name, path in sources.items()}
    packages = {name for name, path in sources.items() if path.name == "__init__.py"}
    bound = {name: _top_level_names(trees[name]) for name in packages}

    def target(prefix: str, name: str) -> str:
        sub = f"{prefix}.{name}"
        if sub in sources or (prefix in packages and name != "*" and name not in bound[prefix]):
            return sub
        return prefix

    graph: Graph = {}
    for name, tree in trees.items():
        package = name if name in packages else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = parts[: len(parts) - (node.level - 1)]
                    prefix = ".".join([*base, node.module] if node.module else base)
                else:
                    prefix = node.module or ""
                found.update(target(prefix, a.name) for a in node.names)
        graph[name] = {m for m in found if m == root or m.startswith(root + ".")}
    return graph


def find_cycle(graph: Graph) -> list[str]:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``[]`` when it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(graph: Graph, source: str, forbidden: tuple[str, ...]) -> list[str]:
    """``a -> b`` for every import of a module of ``source`` from one of the ``forbidden`` packages."""
    return sorted(
        f"{a} -> {b}"
        for a, targets in graph.items()
        if _within(a, source)
        for b in targets
        if any(_within(b, f) for f in forbidden)
    )


LAYERS = ("attention", "models", "data", "pipeline", "analysis", "bench")  # the subpackages


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph()


# --------------------------------------------------------------------------
# the tools themselves


@pytest.mark.parametrize(
    ("g", "cycle"),
    [
        ({}, []),
        ({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}, []),  # a diamond is no cycle
        ({"a": {"a"}}, ["a", "a"]),
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": {"d"}, "d": {"b"}}, ["b", "c", "d", "b"]),  # only the cycle, not the way in
        ({"x": {"y"}, "y": set(), "p": {"q"}, "q": {"r"}, "r": {"p"}}, ["p", "q", "r", "p"]),
    ],
)
def test_find_cycle_on_small_graphs(g, cycle):
    assert find_cycle(g) == cycle


def test_graph_reads_every_kind_of_import(tmp_path):
    pkg = tmp_path / "pkg"
    for folder in (pkg, pkg / "sub", pkg / "other"):
        folder.mkdir()
    (pkg / "__init__.py").write_text("from .sub import thing\nVALUE = 1\n")
    (pkg / "base.py").write_text("import os\nimport pkg.other as other\n")
    (pkg / "sub" / "__init__.py").write_text("thing = 1\n")
    (pkg / "sub" / "mod.py").write_text(
        "from __future__ import annotations\n"
        "from .. import base, VALUE, _compiled\n"
        "from . import thing\n"
        "from ..other import deep\n"
        "def late():\n"
        "    from pkg.other.deep import f\n"
        "    import pkg\n"
    )
    (pkg / "other" / "__init__.py").write_text("")
    (pkg / "other" / "deep.py").write_text("def f():\n    from ..sub.mod import late\n")
    assert import_graph(pkg) == {
        "pkg": {"pkg.sub"},
        "pkg.base": {"pkg.other"},
        "pkg.sub": set(),
        # VALUE is bound by pkg/__init__.py; _compiled is not, so it is a submodule without source
        "pkg.sub.mod": {"pkg", "pkg.base", "pkg._compiled", "pkg.sub", "pkg.other.deep"},
        "pkg.other": set(),
        "pkg.other.deep": {"pkg.sub.mod"},
    }
    assert find_cycle(import_graph(pkg)) == ["pkg.other.deep", "pkg.sub.mod", "pkg.other.deep"]


def test_graph_of_structmt_sees_known_imports(graph):
    assert "structmt.models" in graph["structmt"]  # relative, in a package __init__
    assert "structmt.pipeline.tracking" in graph["structmt.pipeline.leaderboard"]  # inside a function
    assert "structmt.pipeline.leaderboard" in graph["structmt.pipeline.evaluation"]  # from . import leaderboard
    assert "structmt.attention.options" in graph["structmt.pipeline.spec"]  # from ..attention.options import


def test_a_planted_cycle_is_found(graph):
    planted = {m: set(t) for m, t in graph.items()}
    planted["structmt.files"].add("structmt.pipeline.evaluation")  # evaluation imports files
    cycle = find_cycle(planted)
    assert cycle and cycle[0] == cycle[-1] and "structmt.files" in cycle


# --------------------------------------------------------------------------
# the rules


def test_no_import_cycle(graph):
    assert find_cycle(graph) == []


def test_analysis_and_bench_do_not_import_the_pipeline_or_each_other(graph):
    assert violations(graph, "structmt.analysis", ("structmt.pipeline", "structmt.bench")) == []
    assert violations(graph, "structmt.bench", ("structmt.pipeline", "structmt.analysis")) == []


def test_attention_imports_no_higher_layer(graph):
    higher = ("models", "pipeline", "analysis", "bench", "data")
    assert violations(graph, "structmt.attention", tuple(f"structmt.{p}" for p in higher)) == []


def _layers_but(*own: str) -> tuple[str, ...]:
    return tuple(f"structmt.{p}" for p in LAYERS if p not in own)


def test_models_import_only_attention_and_data_only_the_shared_helpers(graph):
    assert violations(graph, "structmt.models", _layers_but("models", "attention")) == []
    assert violations(graph, "structmt.data", _layers_but("data")) == []


def test_the_shared_helpers_import_no_layer(graph):
    """``files``, ``paths``, ``checkpoints``, ``fairseq_cli``, ... are what every layer shares: they import only
    each other."""
    helpers = [m for m in graph if m.count(".") == 1 and m.split(".")[1] not in LAYERS]
    assert len(helpers) >= 9
    assert [v for h in helpers for v in violations(graph, h, _layers_but())] == []
