"""The CMOS code layout: modules under 500 lines, numerics in calib, figures and tables in reports, and the
layers apart (read from the source, function-local imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "detflow"
CMOS = ["io/cmos_raw", "calib/cmos", "calib/cmos_analysis", "reports"]
FORBIDDEN = {  # package -> detflow layers it must not import
    "calib": ("io", "runtime", "steps", "reports", "cli", "cluster"),
    "reports": ("runtime", "cli", "cluster", "steps"),
    "io": ("steps", "calib", "runtime", "reports", "cli", "cluster"),
}


def _modules(parts: list[str]) -> list[Path]:
    return sorted(p for part in parts for p in (ROOT / part).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every detflow module ``path`` imports, at any depth of the file."""
    pkg = path.relative_to(ROOT.parent).with_suffix("").parts[:-1]  # the package (of a module or an __init__)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(pkg[: len(pkg) - node.level + 1])
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out |= {name} | {f"{name}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] == "detflow"}


@pytest.mark.parametrize("path", _modules(CMOS), ids=lambda p: str(p.relative_to(ROOT)))
def test_cmos_modules_under_500_lines(path):
    assert len(path.read_text().splitlines()) <= 500


@pytest.mark.parametrize("path", _modules(CMOS), ids=lambda p: str(p.relative_to(ROOT)))
def test_cmos_modules_keep_their_layer(path):
    layer = path.relative_to(ROOT).parts[0]
    bad = {m for m in _imports(path) for f in FORBIDDEN[layer] if m.split(".")[1:2] == [f]}
    assert not bad, f"{layer} imports {sorted(bad)}"


def test_reports_hold_the_plots_and_calib_none():
    """No matplotlib in calib: every CMOS figure is drawn in reports."""
    for path in _modules(["calib"]):
        assert "matplotlib" not in path.read_text(), path
    assert "matplotlib" in (ROOT / "reports" / "cmos.py").read_text()
