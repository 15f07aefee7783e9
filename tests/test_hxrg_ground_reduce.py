"""The reduce stages of the hxrg_ground pipeline: the flat from dithered sky frames (against astropy and
ccdproc on the same frames, chunked equal to eager, the simulator's flat recovered), the flat division's
guards, and a flat from a file."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from astropy.nddata import CCDData
from astropy.stats import mad_std, sigma_clipped_stats
from ccdproc import Combiner
from distributed import Client, LocalCluster

from detflow.errors import DetflowInputError
from detflow.runtime.run import build, run
from detflow.schema import DQ
from detflow.sim.ioi import IoiSimConfig, simulate_ioi
from detflow.steps import hxrg_reduce as sred


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as lc,
        Client(lc) as c,
    ):
        yield c


def _frames(n=7, ny=61, nx=53, seed=1):
    """Dithered sky frames: a flat times a sky level per frame, noise, a moving star, a bad frame pixel."""
    rng = np.random.default_rng(seed)
    flat = 1 + 0.05 * rng.standard_normal((ny, nx))
    flat[3, 4] = 0.1  # dead
    flat[10, 11] = 3.0  # hot response
    data = np.stack([flat * (100 + 20 * i) + rng.normal(0, 2, (ny, nx)) for i in range(n)])
    for i in range(n):
        data[i, 20 + 3 * i, 15 + 2 * i] += 5000.0  # a star that moves
    dq = np.zeros(data.shape, np.uint32)
    dq[2, 30, 30] = DQ.DO_NOT_USE
    data[2, 30, 30] = 1e6
    ds = xr.Dataset({"data": (("frame", "y", "x"), data), "dq": (("frame", "y", "x"), dq)},
                    coords={"y": np.arange(ny), "x": np.arange(nx)})  # fmt: skip
    return ds, flat


def test_the_flat_is_the_astropy_and_ccdproc_combine_of_the_normalised_frames():
    ds, _ = _frames()
    p = sred.FlatParams(maxiters=1)  # ccdproc's sigma_clipping is one pass
    out = sred.build_flat(ds, p)
    data, bad = ds["data"].values, ds["dq"].values != 0
    levels = [sigma_clipped_stats(f[~b], sigma=3, maxiters=1)[0] for f, b in zip(data, bad)]
    ccds = [CCDData(f / lv, mask=b, unit="adu") for f, lv, b in zip(data, levels, bad)]
    comb = Combiner(ccds)
    comb.sigma_clipping(low_thresh=3, high_thresh=3, func=np.ma.median, dev_func=np.ma.std)
    ref = np.asarray(comb.median_combine().data)
    ref = ref / sigma_clipped_stats(ref, sigma=3, maxiters=1)[0]
    ref_bad = (ref < 0.35) | (ref > 2.0)
    np.testing.assert_allclose(out["frame_level"].values, levels, rtol=1e-12)
    np.testing.assert_array_equal(np.isnan(out["data"].values), ref_bad)
    np.testing.assert_allclose(out["data"].values[~ref_bad], ref[~ref_bad], rtol=1e-10)
    assert ref_bad[3, 4] and ref_bad[10, 11] and ref_bad.sum() == 2
    assert (out["dq"].values[ref_bad] == sred.FLAT_BAD).all() and (out["dq"].values[~ref_bad] == 0).all()


@pytest.mark.parametrize("chunks", [{"frame": 2, "y": 17, "x": 50}, {"frame": 3, "y": 61, "x": 9}])
def test_the_flat_chunked_equals_eager_over_uneven_tiles(chunks):
    ds, _ = _frames()
    p = sred.FlatParams()
    eager = sred.build_flat(ds, p)
    lazy = sred.build_flat(ds.chunk(chunks), p)
    assert isinstance(lazy["data"].data, da.Array)
    lazy = lazy.compute()
    for v in ("data", "err", "dq", "frame_level"):
        np.testing.assert_array_equal(lazy[v].values, eager[v].values, err_msg=v)


def test_the_flat_division_guards_bad_flat_pixels():
    ds, _ = _frames(n=3)
    flat = np.ones((61, 53))
    flat[0, 0], flat[0, 1], flat[0, 2], flat[0, 3], flat[0, 4] = 0.0, np.nan, 2.5, 0.2, 0.5
    flat_dq = np.zeros(flat.shape, np.uint32)
    flat_dq[1, 1] = DQ.DO_NOT_USE
    flat[1, 1] = 0.9
    refs = xr.Dataset({"flat": (("y", "x"), flat), "flat_dq": (("y", "x"), flat_dq)})
    out = sred.hxrg_flat(ds, refs, sred.FlatDivideParams())
    guarded = [(0, 0), (0, 1), (0, 2), (0, 3), (1, 1)]
    for y, x in guarded:
        np.testing.assert_array_equal(out["data"].values[:, y, x], ds["data"].values[:, y, x])
        assert (out["dq"].values[:, y, x] & sred.FLAT_BAD == sred.FLAT_BAD).all()
    np.testing.assert_allclose(out["data"].values[:, 0, 4], ds["data"].values[:, 0, 4] / 0.5)
    assert np.isfinite(out["data"].values).all()
    skipped = sred.hxrg_flat(ds, None, sred.FlatDivideParams())
    assert skipped.attrs["steps"][-1]["status"] == "SKIPPED" and skipped["data"].identical(ds["data"])


def test_the_run_builds_the_simulators_flat_and_divides_by_it(tmp_path, client):
    cfg = IoiSimConfig(size=128, dithers=9, read_mode="cds", sky=300.0, extended=0.0, flat_sigma=0.04,
                       flat_gradient=0.3, n_stars=5, beta=0.0)  # fmt: skip
    sim = simulate_ioi(tmp_path / "raw", cfg)
    truth = sim["truth"]
    out = tmp_path / "o.zarr"
    run({"pipeline": "hxrg_ground", "input": str(tmp_path / "raw"), "output": str(out), "read_mode": "cds",
         "refpix": "full", "products": ["frames", "flat"], "dtype": "float64", "combine_task_mb": 1},
        client, progress=False)  # fmt: skip
    flat = xr.open_zarr(out, group="flat")
    good = ~truth["bad"] & (truth["hot"] == 0)
    want = truth["flat"] / truth["flat"][good].mean()
    resid = (flat["data"].values - want)[good]
    # the sky's photon noise per pixel is 1.25 % (3000 DN at 2.12 e/DN) per frame; the median of 9 frames
    # 1.25 / 3 * 1.25 = 0.52 % (the flat's own rms is 4 %, its gradient 30 %)
    assert mad_std(resid) < 0.0065 and abs(np.median(resid)) < 0.001
    assert np.percentile(np.abs(resid), 99.5) < 0.02  # the stars' wings are clipped
    assert np.isnan(flat["data"].values[truth["bad"]]).all()  # dead pixels: below 0.35
    assert (flat["dq"].values[truth["bad"]] & sred.FLAT_BAD == sred.FLAT_BAD).all()
    frames, reduced = xr.open_zarr(out, group="frames"), xr.open_zarr(out, group="reduced")
    sky = (truth["rate"][0] == cfg.sky) & good  # pixels of pure sky in the first frame
    before, after = frames["data"].values[0][sky], reduced["data"].values[0][sky]
    assert np.std(before) / np.mean(before) > 0.08 and np.std(after) / np.mean(after) < 0.02


def test_a_flat_from_a_file_is_divided_by_as_it_is(tmp_path, client):
    sim = simulate_ioi(tmp_path / "raw", IoiSimConfig(size=128, dithers=2, read_mode="cds", flat_sigma=0.05))
    fits.PrimaryHDU(sim["truth"]["flat"]).writeto(tmp_path / "flat.fits")
    job = {"pipeline": "hxrg_ground", "input": str(tmp_path / "raw"), "output": str(tmp_path / "o.zarr"),
           "read_mode": "cds", "flat": str(tmp_path / "flat.fits"), "dtype": "float64"}  # fmt: skip
    run(job, client, progress=False)
    frames = xr.open_zarr(tmp_path / "o.zarr", group="frames")
    reduced = xr.open_zarr(tmp_path / "o.zarr", group="reduced")
    f = sim["truth"]["flat"]
    np.testing.assert_allclose(reduced["data"].values, frames["data"].values / f, rtol=1e-12)
    g = xr.open_zarr(tmp_path / "o.zarr", group="flat")
    assert g.attrs["source"] == "file"
    fits.PrimaryHDU(np.ones((10, 10))).writeto(tmp_path / "small.fits")
    with pytest.raises(DetflowInputError, match=r"small.fits: NAXIS1/NAXIS2: expected the active region's 120x120"):
        build(dict(job, flat=str(tmp_path / "small.fits"), output=str(tmp_path / "p.zarr")))
