"""The import contract of ``detflow/`` (DESIGN.md), read from the source: every ``import`` and ``from ...
import`` statement, function-local ones included (an import hidden in a function still makes a cycle).

- no import cycle between modules;
- kernels import no other detflow module (DQ flag values come in as arguments);
- steps import no io, runtime or CLI; io imports no steps, calib or runtime; calib and instruments import no
  runtime; reports compute nothing and import no runtime; nothing imports the CLI;
- no module over 500 lines without a reason at its top ("Over 500 lines: why" in its docstring).

``DEBTS`` lists what the engine issue has not removed yet: a debt that no longer exists fails the test too,
so the list only shrinks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "detflow"
MAX_LINES = 500

# (importer layer, imported layer) pairs that are forbidden; a layer is the first package under detflow/
FORBIDDEN = {
    "steps": {"io", "runtime", "cli", "cluster", "reports"},
    "io": {"steps", "calib", "runtime", "cli", "cluster", "reports"},
    "calib": {"io", "runtime", "cli", "cluster", "steps", "reports"},
    "instruments": {"runtime", "cli", "cluster", "reports"},
    "reports": {"runtime", "cli", "cluster"},
    "sim": {"runtime", "cli", "cluster"},
}

# still to be removed (issue 15): each entry must still be true, or the test says to strike it
DEBTS = {
    "cycles": set(),
    "layers": set(),
    "long": set(),
}


def _modules() -> dict[str, Path]:
    mods = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The detflow modules ``name`` imports (``from pkg import submodule`` is the submodule)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in mods]
            targets = subs + ([mod] if len(subs) < len(node.names) else [])
        else:
            continue
        for t in targets:
            while t not in mods and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in mods and t != name and t.split(".")[0] == "detflow":
                out.add(t)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """The strongly connected components of more than one module (Tarjan), each as a sorted tuple."""
    index, low, stack, on, out, counter = {}, {}, [], set(), set(), [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.add(tuple(sorted(comp)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def _violations(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    bad = set()
    for src, targets in graph.items():
        a = _layer(src)
        for dst in targets:
            b = _layer(dst)
            if a == "kernels" and b != "kernels":
                bad.add((src, dst))
            elif b in FORBIDDEN.get(a, ()) or (b == "cli" and a != "cli"):
                bad.add((src, dst))
    return bad


def test_the_graph_sees_function_local_imports(graph):
    """The reader itself: a function-local import is an edge (the CLI imports the runtime inside commands)."""
    assert "detflow.runtime.run" in graph["detflow.cli"]
    assert "detflow.kernels.linearity" in graph["detflow.kernels.ramp"]  # a relative import inside a layer


def test_no_import_cycles(graph):
    cycles = _cycles(graph)
    assert cycles - DEBTS["cycles"] == set(), "new import cycle(s)"
    assert DEBTS["cycles"] - cycles == set(), "cycle(s) gone: strike them from DEBTS"


def test_layers(graph):
    bad = _violations(graph)
    assert bad - DEBTS["layers"] == set(), "imports against the layers (DESIGN.md)"
    assert DEBTS["layers"] - bad == set(), "layer debt(s) paid: strike them from DEBTS"


def test_no_long_module_without_a_reason():
    long = set()
    for p in ROOT.rglob("*.py"):
        n = len(p.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(p.read_text())) or ""
        if n > MAX_LINES and "over 500 lines:" not in doc.lower():
            long.add(str(p.relative_to(ROOT.parent)))
    assert long - DEBTS["long"] == set(), f"modules over {MAX_LINES} lines without 'Over 500 lines: <why>' at the top"
    assert DEBTS["long"] - long == set(), "long module(s) split or explained: strike them from DEBTS"


def test_the_checks_catch_what_they_forbid():
    """The checks on a made-up graph: a cycle through a function-local import, a kernel importing the schema,
    io importing a step module, a module importing the CLI."""
    g = {"detflow.a": {"detflow.b"}, "detflow.b": {"detflow.a"}, "detflow.kernels.k": {"detflow.schema"},
         "detflow.io.r": {"detflow.steps.s"}, "detflow.steps.s": {"detflow.cli"}, "detflow.cli": set()}  # fmt: skip
    assert _cycles(g) == {("detflow.a", "detflow.b")}
    assert _violations(g) == {("detflow.kernels.k", "detflow.schema"), ("detflow.io.r", "detflow.steps.s"),
                              ("detflow.steps.s", "detflow.cli")}  # fmt: skip
