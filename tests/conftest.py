"""Shared fixtures: a tiny hand-built WFI exposure + CALDIR (fast), and simulated data sets."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("DETFLOW_CHECKSUM_CACHE", "off")  # tests leave nothing in ~/.cache
# numba's on-disk cache (detflow.kernels._config), for this test session only: a kernel is compiled once, not
# again in every process the tests start (LocalCluster and dask workers, CLI subprocesses, notebook kernels
# inherit the environment; the xdist workers the controller's directory). Set before detflow is imported.
if "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="detflow-tests-numba-")
    atexit.register(shutil.rmtree, os.environ["NUMBA_CACHE_DIR"], ignore_errors=True)
    os.environ.setdefault("DETFLOW_NUMBA_CACHE", "1")

import asdf
import numpy as np
import pytest
import yaml

from detflow.schema import DQ

RP = [[0], [1], [2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
FT = 3.04
BIAS = 1000.0


def write_tiny_wfi(root: Path, n: int = 32, seed: int = 1, nexp: int = 1) -> dict:
    """An L1 exposure with linear ramps (identity linearity model), and its CALDIR; returns paths."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    cal = root / "cal"
    cal.mkdir(exist_ok=True)
    slope = rng.uniform(0, 50, (n, n)).astype(np.float32)
    slope[:4] = slope[-4:] = slope[:, :4] = slope[:, -4:] = 0  # reference pixels see no light
    tb = np.array([(g[0] + (len(g) - 1) / 2) * FT for g in RP])
    files = []
    for e in range(nexp):
        data = (BIAS + slope[None] * tb[:, None, None] + rng.normal(0, 3, (len(RP), n, n))).astype(np.uint16)
        meta = {"exposure": {"read_pattern": RP, "frame_time": FT},
                "guide_star": {"window_xstart": -1, "window_xstop": -1, "window_ystart": -1, "window_ystop": -1}}  # fmt: skip
        f = root / f"l1_{e:02d}.asdf"
        amp33 = (BIAS + rng.normal(0, 3, (len(RP), n, max(n // 32, 1)))).astype(np.uint16)  # a dark output
        asdf.AsdfFile({"roman": {"data": data, "amp33": amp33, "meta": meta}}).write_to(f)
        files.append(f)
    nb = 4
    dq = np.zeros((n, n), np.uint32)
    ref = np.uint32(DQ.REFERENCE_PIXEL)
    dq[:nb] |= ref
    dq[-nb:] |= ref
    dq[:, :nb] |= ref
    dq[:, -nb:] |= ref
    smin = np.full((n, n), BIAS - 100, np.float32)
    smax = np.full((n, n), 60000, np.float32)
    c = np.zeros((3, n, n), np.float32)
    c[1] = (smax - smin) / 2  # phi(S) = S - BIAS exactly
    c[0] = smin + (smax - smin) / 2 - BIAS
    refs = {
        "mask": {"dq": dq},
        "saturation": {"data": np.full((n, n), 50000, np.float32), "dq": np.zeros((n, n), np.uint32)},
        "linearitylegendre": {
            "data": c,
            "Smin": smin,
            "Smax": smax,
            "Sref": np.full((n, n), BIAS, np.float32),
            "dq": dq.copy(),
        },  # fmt: skip
        "dark": {"dark_slope": np.zeros((n, n), np.float32), "data": np.full((len(RP), n, n), BIAS, np.float32)},
        "gain": {"data": np.full((n, n), 1.8, np.float32)},
        "read": {"data": np.full((n, n), 3.0, np.float32)},
    }
    caldir = {}
    for name, tree in refs.items():
        p = cal / f"{name}.asdf"
        asdf.AsdfFile({"roman": tree}).write_to(p)
        caldir[name] = str(p)
    job = {"IN": str(files[0]), "OUT": str(root / "out.zarr"), "CALDIR": caldir}
    (root / "job_pit.yaml").write_text(yaml.safe_dump(job))
    native = {"pipeline": "roman_wfi", "input": [str(f) for f in files], "output": str(root / "native.zarr"),
              "caldir": caldir, "cluster": {"n_workers": 1}}  # fmt: skip
    (root / "job.yaml").write_text(yaml.safe_dump(native))
    return {"files": files, "caldir": caldir, "slope": slope, "pit_yaml": root / "job_pit.yaml",
            "job_yaml": root / "job.yaml", "root": root}  # fmt: skip


@pytest.fixture
def tiny_wfi(tmp_path):
    return write_tiny_wfi(tmp_path / "tiny")


@pytest.fixture
def small_wfi(tmp_path):
    """128 x 128: big enough for the reference-pixel step of a PIT configuration (4-column channels)."""
    return write_tiny_wfi(tmp_path / "small", n=128)


@pytest.fixture(scope="session")
def corgidrp_home(tmp_path_factory):
    """A HOME for corgidrp 5.1.1 (a test dependency, pinned): it writes ``~/.corgidrp`` on its first
    import, so the import happens here with HOME at a temp dir. Tests import its modules after
    requesting this fixture; steps that read its configuration run with HOME set to this path."""
    import os
    from importlib.metadata import version

    home = tmp_path_factory.mktemp("corgidrp_home")
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        import corgidrp  # noqa: F401
        import corgidrp.combine  # noqa: F401
        import corgidrp.darks  # noqa: F401
        import corgidrp.data  # noqa: F401
        import corgidrp.detector  # noqa: F401
        import corgidrp.l1_to_l2a  # noqa: F401
        import corgidrp.l2a_to_l2b  # noqa: F401
        import corgidrp.mocks  # noqa: F401
        import corgidrp.photon_counting  # noqa: F401
    finally:
        if old is not None:
            os.environ["HOME"] = old
    assert version("corgidrp") == "5.1.1"
    return home


# The files with the longest tests first (measured with --durations; notebooks included), in that order. Under
# ``make test`` (``-n 2 --dist worksteal``) the first worker starts on them while the second takes the short
# tests of the other half and then steals from the end of the first's queue: no long test is left to run
# alone at the end, and a file's module fixtures are mostly built once.
SLOW_FIRST = ("test_submit.py", ".ipynb", "test_cli.py", "test_excam_truth.py", "test_i14_cli_sim.py",
              "test_i14_runtime_outputs.py", "test_excam_run.py", "test_wfi_noise.py", "test_distributed.py",
              "test_i14_wfi_fits.py", "test_cluster_factory.py")  # fmt: skip


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        return next((i for i, s in enumerate(SLOW_FIRST) if item.path.name.endswith(s)), len(SLOW_FIRST))

    items.sort(key=rank)  # (stable: the order within a file is kept)
