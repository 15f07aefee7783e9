"""Sky from dithers: against a NumPy reference of the same frames, chunked equal to eager, the
simulator's sky recovered under an extended source with the objects masked, and a run of one dither."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from astropy.stats import biweight_location, sigma_clipped_stats
from distributed import Client, LocalCluster

from detflow.runtime.run import run
from detflow.sim.ioi import IoiSimConfig, simulate_ioi
from detflow.steps import hxrg_sky as ss


def _frames(n=5, ny=96, nx=80, runs=None, seed=2, ext=0.0):
    """Dithered frames: one sky pattern, per-frame levels, a moving star, an optional extended source."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:ny, :nx]
    pattern = 50 + 0.3 * x + 5 * np.sin(y / 7)
    data = []
    for i in range(n):
        f = pattern + 10 * i + rng.normal(0, 1, (ny, nx))
        f[10 + 4 * i, 8 + 3 * i] += 500.0
        f += ext * np.exp(-((y - 30 - 12 * i) ** 2 + (x - 20 - 10 * i) ** 2) / (2 * 4.0**2))
        data.append(f)
    runs = np.zeros(n, int) if runs is None else np.asarray(runs)
    ds = xr.Dataset({"data": (("frame", "y", "x"), np.stack(data))},
                    coords={"run": ("frame", runs), "source_file": ("frame", [f"f{i}" for i in range(n)])})  # fmt: skip
    return ds, pattern


@pytest.mark.parametrize("method", ["median", "biweight"])
def test_the_first_pass_sky_is_the_numpy_combine_of_the_levelled_peers(method):
    ds, _ = _frames()
    out = ss.hxrg_sky(ds, None, ss.SkyParams(method=method, mask_objects=False))
    d = ds["data"].values
    levels = np.array([sigma_clipped_stats(f, sigma=3, maxiters=5)[1] for f in d])
    for j in range(len(d)):
        v = np.delete(d, j, 0) - np.delete(levels, j)[:, None, None]
        ref = np.median(v, 0) if method == "median" else biweight_location(v, axis=0)
        np.testing.assert_allclose(out["sky"].values[j], ref + levels[j], rtol=1e-12)
        np.testing.assert_allclose(out["data"].values[j], d[j] - out["sky"].values[j], rtol=1e-12)


@pytest.mark.parametrize("chunks", [{"frame": 2, "y": 13, "x": 80}, {"frame": 1, "y": 96, "x": 11}])
def test_the_sky_chunked_equals_eager(chunks):
    ds, _ = _frames(ext=40.0)
    p = ss.SkyParams()
    eager = ss.hxrg_sky(ds, None, p)
    lazy = ss.hxrg_sky(ds.chunk(chunks), None, p).compute()
    for v in ("data", "sky"):
        np.testing.assert_array_equal(lazy[v].values, eager[v].values, err_msg=v)


def test_masking_objects_removes_the_extended_sources_bias():
    ds, pattern = _frames(n=5, ext=40.0)
    first = ss.hxrg_sky(ds, None, ss.SkyParams(mask_objects=False))
    second = ss.hxrg_sky(ds, None, ss.SkyParams(mask_objects=True))
    truth = pattern[None] + 10 * np.arange(5)[:, None, None]
    err1 = np.abs(first["sky"].values - truth).max()
    err2 = np.abs(second["sky"].values - truth).max()
    assert err1 > 8 and err2 < err1 / 2, (err1, err2)


def test_one_dither_per_run_skips_the_sky_with_a_record():
    ds, _ = _frames(n=3, runs=[1, 2, 3])
    out = ss.hxrg_sky(ds, None, ss.SkyParams())
    assert out.attrs["steps"][-1]["status"] == "SKIPPED" and out.attrs["sky_skipped"] == ["f0", "f1", "f2"]
    np.testing.assert_array_equal(out["data"].values, ds["data"].values)
    mixed = ss.hxrg_sky(_frames(n=3, runs=[1, 1, 2])[0], None, ss.SkyParams(mask_objects=False))
    assert mixed.attrs["sky_skipped"] == ["f2"] and np.isnan(mixed["sky"].values[2]).all()


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as lc,
        Client(lc) as c,
    ):
        yield c


def test_the_run_subtracts_the_simulators_sky_and_records_a_lone_dither(tmp_path, client):
    cfg = IoiSimConfig(size=128, dithers=5, read_mode="cds", sky=200.0, extended=20.0, n_stars=8, beta=0.0)
    sim = simulate_ioi(tmp_path / "raw", cfg)
    out = tmp_path / "o.zarr"
    run({"pipeline": "hxrg_ground", "input": str(tmp_path / "raw"), "output": str(out), "read_mode": "cds",
         "refpix": "full", "products": ["frames", "sky"], "dtype": "float64", "combine_task_mb": 1},
        client, progress=False)  # fmt: skip
    sky, sub = xr.open_zarr(out, group="sky"), xr.open_zarr(out, group="skysub")
    assert sky["data"].dims == ("frame", "y", "x") and sky["sky_subtracted"].values.all()
    truth = sim["truth"]
    good = ~truth["bad"] & (truth["hot"] == 0)
    # the sky is 2000 DN per frame: what is left is the objects (stars, the extended source) and the noise; the
    # extended source's wings below the detection threshold (3 x 31 DN) raise the sky by a few DN (0.3 %)
    resid = sub["data"].values - truth["rate"] * cfg.exptime + cfg.sky * cfg.exptime
    assert abs(np.median(resid[:, good])) < 10 and sky["data"].values[:, good].std() < 0.05 * cfg.sky * cfg.exptime
    one = tmp_path / "one"
    one.mkdir()
    for f in sim["files"]:
        if "_1_1_" in f.name:  # dither 1 only
            (one / f.name).write_bytes(f.read_bytes())
    out1 = tmp_path / "one.zarr"
    run({"pipeline": "hxrg_ground", "input": str(one), "output": str(out1), "read_mode": "cds",
         "products": ["frames", "sky"]}, client, progress=False)  # fmt: skip
    rec = xr.open_zarr(out1, group="sky")
    assert not rec["sky_subtracted"].values.any() and rec.attrs["sky_skipped"] == ["i_e_20150227_1_1_1_0.fits"]
    assert rec.attrs["steps"][-1]["status"] == "SKIPPED" and "data" not in rec
