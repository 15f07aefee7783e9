"""Issue 14, WFI references and L1 values that cannot be used: flagged per pixel (stcal/romancal bits), never
a NaN with a clean DQ in any L2 variable; an L1 of another size than its references is named as the culprit."""

from __future__ import annotations

import subprocess
import sys

import asdf
import dask
import numpy as np
import yaml
from conftest import write_tiny_wfi

import detflow
from detflow.instruments.roman_wfi_job import WFIJob
from detflow.schema import DQ

DNU = int(DQ.DO_NOT_USE)
NB = 4


def _edit(path, field, fn):
    with asdf.open(path) as af:
        tree = {k: (np.array(v) if k != "meta" else v) for k, v in af["roman"].items()}
    fn(tree[field])
    asdf.AsdfFile({"roman": tree}).write_to(path)


def _bad_values(root):
    """A 64x64 exposure whose references and L1 hold unusable values at known pixels; flat and ipc4d added."""
    t = write_tiny_wfi(root, n=64)
    cal, a = t["caldir"], 64 - 2 * NB
    k = np.zeros((3, 3, a, a), np.float32)
    k[0, 1] = k[2, 1] = k[1, 0] = k[1, 2] = 0.015
    k[1, 1] = 1 - 4 * 0.015
    for name, tree in {"flat": {"data": np.ones((64, 64), np.float32)}, "ipc4d": {"data": k}}.items():
        cal[name] = str(root / "cal" / f"{name}.asdf")
        asdf.AsdfFile({"roman": tree}).write_to(cal[name])

    def gain(g):
        g[10, 10], g[10, 20], g[10, 30], g[10, 40] = 0.0, -np.inf, np.nan, -1.0

    def dark(d):
        d[20, 10], d[20, 20] = np.nan, np.inf

    def dark_cube(d):
        d[2, 20, 30] = np.nan

    def read(r):
        r[30, 10], r[30, 20] = np.nan, -1.0

    def lin(c):
        c[:, 40, 10] = np.nan

    def sref(s):
        s[40, 20] = np.nan

    for name, field, fn in (("gain", "data", gain), ("dark", "dark_slope", dark), ("dark", "data", dark_cube),
                            ("read", "data", read), ("linearitylegendre", "data", lin),
                            ("linearitylegendre", "Sref", sref)):  # fmt: skip
        _edit(cal[name], field, fn)

    def l1(d):
        d[3, 50, 10] = 0  # one resultant at the A/D floor
        d[:, 50, 20] = 0  # a pixel reading 0 throughout

    _edit(t["files"][0], "data", l1)
    return t


def test_unusable_values_are_flagged_in_every_l2_variable(tmp_path):
    t = _bad_values(tmp_path / "bad")
    recipe = ["dq_init", "saturation", "refpix", "linearity", "ipc", "dark_current", "ramp_fit", "flat", "sky"]
    job = WFIJob(pipeline="roman_wfi", input=str(t["files"][0]), output=str(tmp_path / "o.zarr"), caldir=t["caldir"],
                 recipe=recipe, steps={"sky": {"order": 1}}, chunks={"y": 24, "x": 40})  # fmt: skip
    with dask.config.set(scheduler="sync"):
        l2 = detflow.build(job)["l2"].compute().isel(frame=0)
    dq = l2["dq"].values
    for v in ("data", "err", "var_rnoise", "var_poisson", "data_withsky"):
        bad = ~np.isfinite(l2[v].values) & ((dq & DNU) == 0)
        assert not bad.any(), f"{v}: NaN without DO_NOT_USE at {np.argwhere(bad)[:5].tolist()} (active pixels)"

    def at(y, x):  # full-frame pixel -> (value of each variable, dq)
        names = ("data", "data_withsky", "var_rnoise", "var_poisson")
        return {v: float(l2[v].values[y - NB, x - NB]) for v in names}, int(dq[y - NB, x - NB])

    truth = t["slope"]
    for x in (10, 20, 30, 40):  # gain 0, -inf, NaN, -1: NO_GAIN_VALUE, no Poisson variance
        vals, f = at(10, x)
        assert f & DQ.NO_GAIN_VALUE and f & DNU and np.isnan(vals["var_poisson"])
        # the IPC deconvolution used a usable gain for it: its neighbours are clean and finite
        nvals, nf = at(10, x + 1)
        assert not nf & DNU and all(np.isfinite(list(nvals.values())))
    for x in (10, 20):  # dark slope NaN or inf: UNRELIABLE_DARK, taken as 0
        vals, f = at(20, x)
        assert f & DQ.UNRELIABLE_DARK and f & DNU and np.isfinite(vals["data"])
    assert at(20, 30)[1] & DQ.UNRELIABLE_DARK  # a NaN in the dark cube (used by refpix)
    for x in (10, 20):  # read noise NaN or negative
        vals, f = at(30, x)
        assert f & DQ.UNRELIABLE_ERROR and f & DNU and np.isnan(vals["var_rnoise"])
    for x in (10, 20):  # NaN linearity model / Sref: S - Sref (the tiny model is exactly that), NO_LIN_CORR
        vals, f = at(40, x)
        assert f & DQ.NO_LIN_CORR and not f & DNU
        # the slope before the sky, IPC-deconvolved (the tiny exposure has no IPC: a few percent off)
        assert abs(vals["data_withsky"] - truth[40, x]) < 0.1 * truth[40, x] + 1.0
    assert at(50, 20)[1] & DQ.AD_FLOOR and at(50, 20)[1] & DNU
    dq_init = next(h for h in l2.attrs["history"] if " dq_init: " in h)
    assert "gain not finite and > 0: NO_GAIN_VALUE | DO_NOT_USE" in dq_init
    assert "dark slope not finite" in dq_init and "read noise not finite" in dq_init


def _job_file(root, l1, caldir):
    job = root / "job.yaml"
    job.write_text(yaml.safe_dump({"pipeline": "roman_wfi", "input": str(l1), "output": str(root / "o.zarr"),
                                   "caldir": caldir, "cluster": {"n_workers": 1}}))  # fmt: skip
    return job


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "detflow.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip


def test_l1_smaller_than_its_references_names_the_l1(tmp_path):
    small = write_tiny_wfi(tmp_path / "small", n=32)
    big = write_tiny_wfi(tmp_path / "big", n=64)
    r = _cli("run", _job_file(tmp_path, small["files"][0], big["caldir"]), "--no-progress")
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert f"{small['files'][0]}: data: expected frames of 64x64 pixels, the shape of its reference files" in err
    assert err.endswith("got 32x32") and "mask.asdf:" not in err


def test_one_reference_of_another_size_is_named(tmp_path):
    t = write_tiny_wfi(tmp_path / "t", n=32)
    other = write_tiny_wfi(tmp_path / "o", n=64)
    caldir = dict(t["caldir"], gain=other["caldir"]["gain"])
    r = _cli("run", _job_file(tmp_path, t["files"][0], caldir), "--no-progress")
    assert r.returncode == 2
    assert f"{other['caldir']['gain']}: roman.data: expected shape (32, 32)" in r.stderr
