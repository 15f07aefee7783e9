"""Several detectors of one exposure (Roman's 18 SCAs): one graph, one store group per detector."""

from __future__ import annotations

import asdf
import dask
import numpy as np
import pytest

import detflow
from detflow.errors import DetflowInputError
from detflow.instruments.roman_wfi_job import WFIJob
from detflow.runtime.job import load_job
from detflow.sim.wfi import SimConfig, simulate

NAMES = ("mask", "saturation", "linearitylegendre", "dark", "gain", "read")


def _two_detectors(tmp_path):
    files = []
    for det, seed in (("WFI01", 1), ("WFI07", 2)):
        prod = simulate(tmp_path / det, SimConfig(nside=64, seed=seed, n_exposures=1))
        src = prod.l1_files[0]
        with asdf.open(src) as af:
            tree = {"roman": {"data": np.array(af["roman"]["data"]), "amp33": np.array(af["roman"]["amp33"]),
                              "meta": dict(af["roman"]["meta"])}}  # fmt: skip
        tree["roman"]["meta"]["instrument"] = dict(tree["roman"]["meta"]["instrument"], detector=det)
        out = tmp_path / f"exposure_{det}.asdf"
        asdf.AsdfFile(tree).write_to(out)
        files.append(out)
        (tmp_path / "cal").mkdir(exist_ok=True)
        (tmp_path / "cal" / det).symlink_to(prod.caldir["dark"].parent, target_is_directory=True)
    caldir = {n: str(tmp_path / "cal" / "{detector}" / f"{n}.asdf") for n in NAMES}
    return files, caldir


def test_one_group_per_detector_equal_to_single_runs(tmp_path):
    files, caldir = _two_detectors(tmp_path)
    noise = {"layers": ["Ra", "Pbr"], "seed": 4}
    job = WFIJob(input=[str(f) for f in files], output=tmp_path / "exposure.zarr", caldir=caldir, noise=noise,
                 cluster={"n_workers": 1, "threads_per_worker": 2, "dashboard_address": "127.0.0.1:0"})  # fmt: skip
    tree = detflow.run(job, progress=False)
    assert set(tree["l2"].children) == {"WFI01", "WFI07"} and set(tree["noise"].children) == {"WFI01", "WFI07"}
    for f, det in zip(files, ("WFI01", "WFI07")):
        single = WFIJob(input=str(f), output=tmp_path / f"{det}.zarr", noise=noise,
                        caldir={k: v.replace("{detector}", det) for k, v in caldir.items()})  # fmt: skip
        with dask.config.set(scheduler="sync"):
            products = detflow.build(single)
            want, want_noise = products["l2"].compute(), products["noise"].compute()
        np.testing.assert_array_equal(tree[f"noise/{det}"]["noise"].values, want_noise["noise"].values)
        got = tree[f"l2/{det}"].to_dataset()
        for v in ("data", "dq", "var_rnoise", "var_poisson"):
            np.testing.assert_array_equal(got[v].values, want[v].values, err_msg=f"{det} {v}")
        assert tree[f"l2/{det}"].attrs["detector"] == det
        assert all(det in r["path"] for r in tree[f"l2/{det}"].attrs["reference_files"])
    assert len(tree.attrs["inputs"]) == 2
    # one seed for the exposure, independent realizations per detector (the SCA number joins the seed)
    a, b = (tree[f"noise/{d}"]["noise"].sel(layer="Pbr").values.ravel() for d in ("WFI01", "WFI07"))
    ok = np.isfinite(a) & np.isfinite(b)
    assert abs(np.corrcoef(a[ok], b[ok])[0, 1]) < 0.1


def test_one_caldir_for_several_detectors_is_an_error(tmp_path):
    files, caldir = _two_detectors(tmp_path)
    flat = {k: v.replace("{detector}", "WFI01") for k, v in caldir.items()}
    job = load_job({"input": [str(f) for f in files], "output": str(tmp_path / "x.zarr"), "caldir": flat})
    with pytest.raises(DetflowInputError, match=r"CALDIR: expected per-detector reference files"):
        detflow.build(job)
