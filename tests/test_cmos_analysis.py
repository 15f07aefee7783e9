"""CMOS analyses on a simulated campaign ingested into stores: per-frame trends against the truth, new
structures (dust) found where and when they appear, a growing (outgassing-like) patch classified, saturated
flats discarded, clean data within the false-positive rate, the report files and their columns."""

from __future__ import annotations

import math
import re
import warnings

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.stats import norm

from detflow.calib import cmos_analysis as ca
from detflow.errors import DetflowInputError, OutputExistsError
from detflow.io.cmos_raw import ingest_tree, open_cmos_section
from detflow.reports import cmos as rc
from detflow.sim.cmos import CmosSimConfig, FlatDefect, expected_dn, flat_loss, simulate_cmos_tree

PATCH = FlatDefect(y=40, x=22, radius=4, depth=0.12, first_epoch=2, radius_growth=1.5, depth_growth=0.08)
DUST = FlatDefect(y=15, x=45, radius=1.6, depth=0.25, first_epoch=3)
# 0.3 s flats saturate (6000 DN of light > 4095); egain 4 e-/DN: 1 % shot noise in the 0.12 s flats
CFG = CmosSimConfig(temps=(-10.0, 10.0, 25.0), dark_exptimes=(0.5,), n_dark=2, flat_exptimes=(0.12, 0.3), n_flat=2,
                    flat_epochs=6, egain=4.0, flat_B_rms=5e-4, flat_defects=(PATCH, DUST), seed=7)  # fmt: skip
NSIGMA = 5.0


@pytest.fixture(autouse=True)
def _threads():
    with dask.config.set(scheduler="threads", num_workers=2):
        yield


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmos_analysis")
    sim = simulate_cmos_tree(root / "raw", CFG)
    with dask.config.set(scheduler="threads", num_workers=2):
        rep = ingest_tree(sim.roots["BIAS"], sim.roots["DARK"], sim.roots["FLAT"], root / "out", data_scale=16,
                          frame_chunk=8, tile=(32, 32))  # fmt: skip
    ds = {cal.lower(): open_cmos_section(p, chunks={"y": 32, "x": 32}) for cal, p in rep.stores.items()}
    return sim, ds, rep.stores


@pytest.fixture(scope="module")
def masks():
    one = {name: flat_loss(CmosSimConfig(flat_epochs=CFG.flat_epochs, flat_defects=(d,))) > 0
           for name, d in (("patch", PATCH), ("dust", DUST))}  # fmt: skip
    return {"patch": one["patch"][-1], "patch_core": one["patch"][PATCH.first_epoch], "dust": one["dust"][-1],
            "by_epoch": flat_loss(CFG) > 0}  # fmt: skip


@pytest.fixture(scope="module")
def structures(campaign):
    _, ds, _ = campaign
    with dask.config.set(scheduler="threads", num_workers=2):
        return ca.structure_analysis(ds["bias"], ds["dark"], ds["flat"], saturation=60000, nsigma=NSIGMA)


@pytest.fixture(scope="module")
def degradation(campaign):
    _, ds, _ = campaign
    with dask.config.set(scheduler="threads", num_workers=2):
        return ca.degradation_analysis(ds["flat"], ds["dark"], nsigma=NSIGMA)


def _epoch(path: str) -> int:
    return int(re.search(r"attempt(\d+)", path)[1])


def _clean(flat: xr.Dataset) -> xr.Dataset:
    return flat.isel(frame=np.flatnonzero(flat["attempt"].values < PATCH.first_epoch))


# ---- time stamps -------------------------------------------------------------------------------------------
def test_parse_timestamps_formats():
    t = ca.parse_timestamps(["2024-03-01T08:00:00.000", "2024-03-01 08:00:00.500", "2024-03-01 08:00:01,25",
                             "20240301_080002", "2024-03-01T09:00:03+01:00", 1709280004, "1709280005.5",
                             "08:00:06", "garbage", "", None, np.datetime64("2024-03-01T08:00:07")])  # fmt: skip
    s = pd.to_datetime(t)
    base = pd.Timestamp("2024-03-01 08:00:00")
    assert list((s[:8] - base).total_seconds()[[0, 1, 2, 3, 4, 5, 6]]) == [0, 0.5, 1.25, 2, 3, 4, 5.5]
    assert s[7] == pd.Timestamp("1970-01-01 08:00:06")  # a time of day alone
    assert s[8:11].isna().all() and s[11] == base + pd.Timedelta(seconds=7)


def test_frame_times_fall_back_to_frame_order(campaign):
    _, ds, _ = campaign
    f = ds["bias"].isel(frame=slice(0, 4))
    ok = ca.frame_times(f)
    assert ok.attrs["time_unit"] == "day" and (ok["time_source"] == "timestamp").all() and ok["t_days"].iloc[0] == 0
    part = f.assign_coords(timestamp=("frame", np.array([f.timestamp.values[0], "?", "?", f.timestamp.values[3]],
                                                        object)))  # fmt: skip
    with pytest.warns(UserWarning, match="2 of 4 time stamps do not parse"):
        t = ca.frame_times(part)
    assert list(t["time_source"]) == ["timestamp", "interpolated", "interpolated", "timestamp"]
    assert np.allclose(t["t_days"], np.linspace(0, ok["t_days"].iloc[3], 4))
    none = f.assign_coords(timestamp=("frame", np.array(["x"] * 4, object)))
    with pytest.warns(UserWarning, match="frame order"):
        t = ca.frame_times(none)
    assert t.attrs["time_unit"] == "frame" and list(t["t_days"]) == [0, 1, 2, 3]


# ---- 1. trends and structures --------------------------------------------------------------------------------
def test_frame_statistics_and_bias_trend_match_truth(campaign, structures):
    sim, ds, _ = campaign
    st = structures
    assert set(st.frame_stats) == {"bias", "dark", "flat"}
    bias = st.frame_stats["bias"]
    assert tuple(bias.columns) == ca.FRAME_STATS_COLUMNS and len(bias) == ds["bias"].sizes["frame"]
    # 64 x 64 frames are smaller than the pixel sample: every statistic is exact
    frame = ds["bias"]["data"].isel(frame=5).values.astype(np.float64)
    row = bias.iloc[5]
    assert row["mean"] == pytest.approx(frame.mean()) and row["median"] == np.median(frame)
    assert row["p95"] == pytest.approx(np.percentile(frame, 95)) and row["std"] == pytest.approx(frame.std())
    assert row["path"] == str(ds["bias"]["path"].values[5]) and row["temp"] == float(ds["bias"]["temp"].values[5])
    # bias(T) = a + b T per pixel: the frame mean rises by mean(b) per degree
    tr = st.trends.set_index(["section", "stat"]).loc[("bias", "mean")]
    assert tuple(st.trends.columns) == ca.TREND_COLUMNS
    truth = sim.truth["bias_b"].mean()
    assert 0 < tr["slope_per_degC_err"] < 2e-3
    assert abs(tr["slope_per_degC"] - truth) < 3.5 * tr["slope_per_degC_err"], (tr["slope_per_degC"], truth)
    assert tr["n"] == len(bias) and tr["time_unit"] == "day"
    # darks get brighter with temperature; the flats darken with time (the defects grow)
    dk = st.trends.set_index(["section", "stat"]).loc[("dark", "mean")]
    assert dk["slope_per_degC"] > 0
    fl = st.trends[(st.trends["section"] == "flat") & (st.trends["stat"] == "mean") & (st.trends["exptime"] == 0.12)]
    assert fl["slope_per_day"].iloc[0] < -3 * fl["slope_per_day_err"].iloc[0]


def test_new_structures_found_where_and_when_they_appear(structures, masks):
    st = structures
    s = st.structures
    assert tuple(s.columns) == ca.STRUCTURE_COLUMNS and len(s) == 2
    flats = st.flat_frames
    assert tuple(flats.columns) == ca.STRUCTURE_FRAME_COLUMNS
    assert set(flats["exptime"]) == {0.12}  # the saturated 0.3 s flats were dropped
    epoch = flats["path"].map(_epoch)
    for name, d in (("dust", DUST), ("patch", PATCH)):
        row = s.loc[np.hypot(s["centroid_y"] - d.y, s["centroid_x"] - d.x).idxmin()]
        assert math.hypot(row["centroid_y"] - d.y, row["centroid_x"] - d.x) < 0.5, name
        assert row["size"] == masks[name].sum(), name
        assert np.array_equal(st.maps["label"].values == row["label"], masks[name]), name
        assert _epoch(row["first_path"]) == d.first_epoch, name
        assert row["first_t_days"] == flats.loc[epoch == d.first_epoch, "t_days"].min(), name
        assert row["peak_dev"] < 0  # light lost
    # no flag outside the structures; the tested frames before the first defect are clean
    assert (st.maps["flag_count"].values[~(masks["patch"] | masks["dust"])] == 0).all()
    early = flats[(epoch < PATCH.first_epoch) & ~flats["is_reference"]]
    assert len(early) and (early["n_flagged"] == 0).all()
    assert isinstance(st.cube["deviation"].data, da.Array)


def test_no_structures_in_clean_flats(campaign):
    _, ds, _ = campaign
    st = ca.structure_analysis(flat=_clean(ds["flat"]), saturation=60000, nsigma=NSIGMA)
    tested = (~st.flat_frames["is_reference"]).sum()
    expected = tested * 64 * 64 * 2 * norm.sf(NSIGMA)
    assert st.flat_frames["n_flagged"].sum() <= max(3, 10 * expected)
    assert len(st.structures) == 0 and (st.maps["label"].values == 0).all()
    assert set(st.frame_stats) == {"flat"} and set(st.trends["section"]) == {"flat"}


def test_given_reference_map(campaign, masks):
    """A reference map (the median of one group's first-epoch flats) instead of the per-group default."""
    _, ds, _ = campaign
    f = ds["flat"]
    grp = (f["filetemp"].values == 25.0) & (f["exptime"].values == 0.12)
    first = f["data"].isel(frame=np.flatnonzero(grp & (f["attempt"].values == 0))).median("frame")
    st = ca.structure_analysis(flat=f.isel(frame=np.flatnonzero(grp)), reference=first, nsigma=NSIGMA)
    assert not st.flat_frames["is_reference"].any() and st.params["reference"] == "map"
    assert np.array_equal(st.maps["label"].values > 0, masks["patch"] | masks["dust"])


# ---- 2. degradation -------------------------------------------------------------------------------------------
def test_saturated_flats_discarded_and_listed(campaign, degradation):
    sim, ds, _ = campaign
    r = degradation
    sat_paths = {str(f.path) for f in sim.frames_of("FLAT") if f.meta["exptime"] == 0.3}
    assert tuple(r.saturated.columns) == ca.SATURATED_COLUMNS
    assert set(r.saturated["path"]) == sat_paths
    assert (r.saturated["max_stored"] >= 60000).all() and (r.saturated["n_saturated"] > 0).all()
    assert (r.saturated["max_dn"] * 16 == r.saturated["max_stored"]).all()  # stored = DN * data_scale
    assert not set(r.frames["path"]) & sat_paths and len(r.frames) == ds["flat"].sizes["frame"] - len(sat_paths)
    # the threshold is in stored counts (the clipped 4095 ADC are 65520 stored) unless saturation_units="dn"
    assert ca.degradation_analysis(ds["flat"], saturation=65521).saturated.empty
    assert (
        set(ca.degradation_analysis(ds["flat"], saturation=4095, saturation_units="dn").saturated["path"]) == sat_paths
    )
    with pytest.raises(DetflowInputError, match="unsaturated"):
        ca.degradation_analysis(ds["flat"], saturation=4095)


def test_growing_patch_and_dust_classified(campaign, degradation, masks):
    r = degradation
    code = ca.CLASS_CODE
    assert tuple(r.groups.columns) == ca.GROUP_COLUMNS and len(r.groups) == 3  # (g, T, 0.12 s)
    assert sorted(r.groups["temp"]) == [-10.0, 10.0, 25.0] and (r.groups["n_reference"] == 1).all()
    defect = masks["patch"] | masks["dust"]
    for g in range(3):
        cls = r.maps["outlier_class"].values[g]
        assert np.isin(cls[masks["patch"]], [code["growing"], code["persistent"]]).all()
        assert (cls[masks["patch_core"]] == code["growing"]).all()  # deepening since its first epoch
        assert (cls[masks["dust"]] == code["persistent"]).all()  # a step that stays
        assert (cls[~defect] <= code["transient"]).all() and (cls[~defect] == code["transient"]).sum() <= 2
    # per frame: the outliers are the defect pixels of the frame's epoch, none in the reference
    fr = r.frames
    assert tuple(fr.columns) == ca.DEGRADATION_FRAME_COLUMNS
    for _, row in fr.iterrows():
        want = 0 if row["is_reference"] else masks["by_epoch"][_epoch(row["path"])].sum()
        assert abs(row["n_outliers"] - want) <= 1, row["path"]
    assert (fr["dark_temp"] == fr["group"].map(r.groups.set_index("group")["temp"])).all()
    assert (fr["dark_exptime"] == 0.5).all()
    last = fr[fr["path"].map(_epoch) == CFG.flat_epochs - 1]
    assert (last["mean_dev"] < -0.2).all() and (last["n_growing"] + last["n_persistent"] == defect.sum()).all()
    # per-pixel table: the defect pixels, growing trend negative (light lost faster and faster) in the core
    px = r.pixels
    assert tuple(px.columns) == ca.PIXEL_COLUMNS
    g0 = px[px["group"] == 0]
    assert set(zip(g0["y"], g0["x"])) == set(zip(*np.nonzero(defect)))
    core = g0[[masks["patch_core"][y, x] for y, x in zip(g0["y"], g0["x"])]]
    assert (core["class"] == "growing").all() and (core["trend_per_day"] < 0).all() and (core["growth_z"] > 3).all()
    assert (core["first_frame"].map(dict(zip(fr["frame"], fr["path"]))).map(_epoch) == PATCH.first_epoch).all()
    assert (g0.loc[g0["class"] == "persistent", "n_flagged"] >= 2).all()


def test_clean_flats_have_no_degradation(campaign):
    _, ds, _ = campaign
    r = ca.degradation_analysis(_clean(ds["flat"]), nsigma=NSIGMA)
    tested = (~r.frames["is_reference"]).sum()
    assert r.frames["n_outliers"].sum() <= max(3, 10 * tested * 64 * 64 * 2 * norm.sf(NSIGMA))
    assert (r.maps["class_max"].values <= ca.CLASS_CODE["transient"]).all()


def test_options_and_time_fallback_give_the_same_classes(campaign, degradation, masks):
    """difference / median normalisation / no dark, and frame order for time: same defect pixels (in frame
    order the frames of an epoch are no longer simultaneous: the growth fits change, not the outliers)."""
    _, ds, _ = campaign
    a = ca.degradation_analysis(ds["flat"], compare="difference", normalise="median", sigma_method="clipped")
    assert a.params["compare"] == "difference" and (a.frames["dark_temp"].isna()).all()
    defect = masks["patch"] | masks["dust"]
    assert np.array_equal(a.maps["class_max"].values >= ca.CLASS_CODE["persistent"], defect)
    f = ds["flat"].assign_coords(timestamp=("frame", np.array(["n/a"] * ds["flat"].sizes["frame"], object)))
    with pytest.warns(UserWarning, match="frame order"):
        b = ca.degradation_analysis(f, ds["dark"])
    assert b.time_unit == "frame" and (b.frames["time_source"] == "frame_order").all()
    assert np.array_equal(b.maps["class_max"].values >= ca.CLASS_CODE["persistent"], defect)
    assert (b.maps["outlier_class"].values[:, masks["patch_core"]] == ca.CLASS_CODE["growing"]).all()
    np.testing.assert_array_equal(b.frames["n_outliers"], degradation.frames["n_outliers"])


def test_maps_lazy_and_independent_of_chunking(campaign, degradation):
    _, _, stores = campaign
    whole = open_cmos_section(stores["FLAT"])  # one 64 x 64 tile
    lazy = ca.degradation_maps(whole, open_cmos_section(stores["DARK"]))
    assert all(isinstance(v.data, da.Array) for v in lazy.data_vars.values())
    assert lazy["deviation"].chunks[0] == (lazy.sizes["frame"],)
    with dask.config.set(scheduler="sync"):
        for k in ("outlier_class", "n_flagged", "first_pos"):
            np.testing.assert_array_equal(lazy[k].values, degradation.maps[k].values)
        np.testing.assert_allclose(lazy["trend"].values, degradation.maps["trend"].values, rtol=1e-5, equal_nan=True)
        np.testing.assert_allclose(lazy["deviation"].values, degradation.cube["deviation"].values, atol=1e-6)


# ---- reports ----------------------------------------------------------------------------------------------------
def test_reports_write_documented_columns(tmp_path, structures, degradation):
    files = rc.write_degradation_report(degradation, tmp_path / "deg")
    cols = {"degradation_frames": ca.DEGRADATION_FRAME_COLUMNS, "degradation_pixels": ca.PIXEL_COLUMNS,
            "degradation_saturated": ca.SATURATED_COLUMNS, "degradation_groups": ca.GROUP_COLUMNS}  # fmt: skip
    for name, want in cols.items():
        df = pd.read_csv(files[name])
        assert tuple(df.columns) == want, name
    assert len(pd.read_csv(files["degradation_pixels"])) == len(degradation.pixels)
    for name in ("outliers_vs_time", "class_map", "deviation_hist"):
        p = files[f"degradation_{name}"]
        assert p.suffix == ".png" and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(OutputExistsError):
        rc.write_degradation_report(degradation, tmp_path / "deg")
    rc.write_degradation_report(degradation, tmp_path / "deg", overwrite=True)
    files = rc.write_structure_report(structures, tmp_path / "st")
    assert tuple(pd.read_csv(files["frame_stats_bias"]).columns) == ca.FRAME_STATS_COLUMNS
    assert tuple(pd.read_csv(files["trends"]).columns) == ca.TREND_COLUMNS
    assert tuple(pd.read_csv(files["structures"]).columns) == ca.STRUCTURE_COLUMNS
    assert tuple(pd.read_csv(files["structure_frames"]).columns) == ca.STRUCTURE_FRAME_COLUMNS
    assert {"trends_mean", "trends_std", "structures_map"} <= set(files)
    assert not list((tmp_path / "st").glob("*.partial-*"))


def test_bad_input(campaign):
    _, ds, _ = campaign
    with pytest.raises(DetflowInputError, match="caltype"):
        ca.degradation_analysis(ds["bias"])
    with pytest.raises(DetflowInputError, match="unsaturated"):
        ca.degradation_analysis(ds["flat"], saturation=0)
    with pytest.raises(DetflowInputError, match="compare"):
        ca.degradation_analysis(ds["flat"], compare="log")
    with pytest.raises(DetflowInputError, match="reference"):
        ca.structure_analysis(flat=ds["flat"], reference=np.ones((3, 3)))
    with pytest.raises(DetflowInputError):
        ca.structure_analysis()


# ---- the simulator's flat degradation ---------------------------------------------------------------------------
def test_simulated_defects_truth(tmp_path, campaign):
    sim, _, _ = campaign
    loss = sim.truth["flat_loss"]
    assert loss.shape == (CFG.flat_epochs, CFG.height, CFG.width) and not loss[: PATCH.first_epoch].any()
    assert sim.truth["flat_defects"].shape == (2, 7)
    assert loss[PATCH.first_epoch, 40, 22] == pytest.approx(PATCH.depth)
    assert loss[-1, 40, 22] == pytest.approx(
        PATCH.depth + PATCH.depth_growth * (CFG.flat_epochs - 1 - PATCH.first_epoch)
    )
    e = expected_dn(sim.truth, "FLAT", 20.0, 0.12, epoch=5)
    e0 = expected_dn(sim.truth, "FLAT", 20.0, 0.12)
    assert e[15, 45] < e0[15, 45] and e[0, 0] == e0[0, 0]
    # epochs are flat_epoch_days apart in the logs (plus the attempts' hour offsets); without defects the
    # epoch-0 flats are the default tree's
    f = [x for x in sim.frames_of("FLAT") if x.meta["filetemp"] == 10.0 and x.meta["exptime"] == 0.12]
    t = sorted({pd.Timestamp(x.meta["timestamp"]).floor("h") for x in f})
    step = np.diff(t) - pd.Timedelta(days=CFG.flat_epoch_days)
    assert len(t) == CFG.flat_epochs and all(pd.Timedelta(0) <= s <= pd.Timedelta(hours=1) for s in step)
    small = {"temps": (10.0,), "dark_exptimes": (0.5,), "flat_exptimes": (0.12,), "n_flat": 1, "seed": 2}
    a = simulate_cmos_tree(tmp_path / "a", CmosSimConfig(**small))
    b = simulate_cmos_tree(tmp_path / "b", CmosSimConfig(**small, flat_epochs=3, flat_defects=(DUST,)))
    fb = {x.path.relative_to(b.outdir): x for x in b.frames}
    for x in a.frames:
        assert x.path.read_bytes() == fb[x.path.relative_to(a.outdir)].path.read_bytes()
    assert len(b.frames_of("FLAT")) == 3
    with pytest.raises(DetflowInputError, match="flat_epochs"):
        CmosSimConfig(flat_epochs=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DetflowInputError, match="flat_defects"):
            FlatDefect(y=1, x=1, depth=1.5)
