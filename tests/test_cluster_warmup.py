"""The worker warm-up compiles the kernels of the WFI default recipe without building or running a pipeline,
and the cluster package stays out of the import cycle of the root package (it imports neither ``detflow`` nor
the drivers)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import write_tiny_wfi

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "detflow" / "runtime" / "cluster"

SCRIPT = r"""
import json, sys
import dask
from numba.core.dispatcher import Dispatcher

import detflow
import detflow.runtime.run
from detflow.runtime.cluster import worker as wu

def no_pipeline(*a, **k):
    raise AssertionError("the warm-up built a pipeline")

build = detflow.runtime.run.build
detflow.build = detflow.runtime.run.build = no_pipeline

def signatures():
    return {f"{m.__name__}.{name}": sorted(str(s) for s in obj.signatures)
            for m in wu._kernel_modules() for name, obj in vars(m).items()
            if isinstance(obj, Dispatcher) and obj.__module__ == m.__name__}

before = signatures()
info = wu.warmup("wfi")
warm = signatures()
products = build(sys.argv[1])
dask.compute(*products.values(), scheduler="sync")
print(json.dumps({"info": info, "before": before, "warm": warm, "after": signatures()}))
"""


def test_warmup_compiles_what_the_wfi_recipe_runs_without_a_pipeline(tmp_path):
    """A fresh process: the warm-up (the pipeline builder replaced by one that fails) compiles kernels; the
    WFI default recipe run afterwards on two exposures then compiles nothing more."""
    data = write_tiny_wfi(tmp_path / "wfi", n=64, nexp=2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "DETFLOW_NUMBA_CACHE": "0", "NUMBA_NUM_THREADS": "1"}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(data["job_yaml"])], capture_output=True, text=True, check=False,
                         env=env, cwd=tmp_path, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    info = res["info"]
    assert info["status"] == "done" and info["errors"] == [], info
    assert not any(res["before"].values())  # nothing compiled before the warm-up
    assert "ramp.linearize_dark_fit" in info["compiled"] and "saturation.apply_saturation" in info["compiled"]
    ran = {k for k, v in res["after"].items() if v}
    assert ran, "the recipe compiled nothing?"
    new = {k: sorted(set(res["after"][k]) - set(res["warm"][k])) for k in ran}
    assert not any(new.values()), f"compiled by the recipe after the warm-up: {new}"


def _imports(path: Path) -> set[str]:
    """Absolute names of the detflow modules a module imports (anywhere in it, function bodies too)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    pkg = parts[:-1]  # the package relative imports start from (for __init__ too)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else [])) if (
                node.level) else node.module  # fmt: skip
            for a in node.names:  # `from X import name`: the module X.name if there is one, else X
                sub = ROOT.joinpath(*f"{base}.{a.name}".split("."))
                out.add(f"{base}.{a.name}" if sub.with_suffix(".py").is_file() or sub.is_dir() else base)
    return {m for m in out if m.split(".")[0] == "detflow"}


def test_cluster_package_imports_neither_the_root_package_nor_the_drivers():
    files = sorted(PACKAGE.glob("*.py"))
    assert len(files) >= 8
    forbidden = {"detflow", "detflow.cli", "detflow.cluster"} | {f"detflow.runtime.{m}" for m in (
        "run", "excam", "cmos", "submit")}  # fmt: skip
    bad = {f.name: sorted(i for i in _imports(f) if i in forbidden or any(i.startswith(x + ".") for x in forbidden
                                                                            if x != "detflow"))
           for f in files}  # fmt: skip
    assert not any(bad.values()), bad
    assert all(len(f.read_text().splitlines()) <= 500 for f in files)
