"""CMOS raw-tree ingest: discovery, parsing, the stores (pixels equal to the raw bytes, coordinates equal
to the logs), bad input, skip mode, incremental appends, data_scale, the FITS index and FITS export."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
import zarr
from astropy.io import fits

from detflow.errors import DetflowInputError, OutputExistsError
from detflow.instruments import cmos
from detflow.io import cmos_raw
from detflow.io.cmos_raw import (
    discover,
    export_fits,
    ingest_section,
    ingest_tree,
    open_cmos_section,
    read_config,
    read_fits_index,
    read_temperature_log,
)
from detflow.sim.cmos import CmosSimConfig, simulate_cmos_tree

FC, TILE = 8, (32, 32)  # small zarr chunks: several frame-chunks (the last partial) and pixel tiles
COORDS = ("framenum", "timestamp", "eqtemp", "exptime", "rexptime", "gain", "temp", "temp_0", "deltmp", "powcons",
          "filetemp", "caltype", "filter", "attempt", "path")  # fmt: skip


@pytest.fixture(autouse=True)
def _threads():
    with dask.config.set(scheduler="threads", num_workers=2):
        yield


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate_cmos_tree(tmp_path_factory.mktemp("cmos") / "raw", CmosSimConfig(seed=11))


@pytest.fixture(scope="module")
def ingested(sim, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmos_out")
    with dask.config.set(scheduler="threads", num_workers=2):
        rep = ingest_tree(sim.roots["BIAS"], sim.roots["DARK"], sim.roots["FLAT"], out, data_scale=16,
                          frame_chunk=FC, tile=TILE)  # fmt: skip
    return rep, out


def _raw(path, shape=(64, 64), dtype="<u2") -> np.ndarray:
    return np.fromfile(path, dtype=dtype).reshape(shape)


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return a == b


# ---- the stores ----------------------------------------------------------------------------------------------
def test_every_frame_equals_its_raw_file(sim, ingested):
    rep, out = ingested
    assert set(rep.stores) == {"BIAS", "DARK", "FLAT"} and not rep.skipped
    for cal, store in rep.stores.items():
        assert store == out / f"{cal.lower()}.zarr"
        ds = open_cmos_section(store, scaled=False)
        assert ds["data"].dims == ("frame", "read", "y", "x") and ds["data"].dtype == np.uint16
        assert ds.sizes["read"] == 1 and ds.sizes["frame"] == len(sim.frames_of(cal))
        data = ds["data"].values
        for i, p in enumerate(ds["path"].values):
            assert np.array_equal(data[i, 0], _raw(p)), p  # raw values never altered
        assert rep.ingested[cal] == ds.sizes["frame"]


def test_coordinates_equal_the_logs(sim, ingested):
    rep, _ = ingested
    truth = {str(f.path): f.meta for f in sim.frames}
    n_nan = 0
    for store in rep.stores.values():
        ds = open_cmos_section(store)
        assert set(COORDS) <= set(ds.coords)
        for i, p in enumerate(ds["path"].values):
            meta = truth[str(p)]
            for c in COORDS:
                v = ds[c].values[i]
                v = float(v) if isinstance(v, (np.floating,)) else (int(v) if isinstance(v, np.integer) else str(v))
                assert _same(v, meta[c]), (p, c, v, meta[c])
            n_nan += math.isnan(float(ds["rexptime"].values[i]))
        assert ds["exptime"].attrs["units"] == "s" and ds["temp"].attrs["units"] == "deg_C"
    assert n_nan > 0  # logs without ExpTime/RealExpTime: EXPTIME from the file name, REXPTIME NaN


def test_microseconds_become_seconds(sim, ingested):
    """Read one log by hand: ExpTime/RealExpTime in us in the file, s in the store."""
    rep, _ = ingested
    ds = open_cmos_section(rep.stores["DARK"])
    i = next(i for i in range(ds.sizes["frame"]) if not math.isnan(ds["rexptime"].values[i]))
    path = Path(str(ds["path"].values[i]))
    text = (path.parent.parent / "temperatureLog.csv").read_text().splitlines()
    delim = next(d for d in (",", ";", "\t") if d in text[0])
    header = text[0].split(delim)
    row = next(r.split(delim) for r in text[1:] if r.split(delim)[0] == str(ds["framenum"].values[i]))
    us, real_us = int(row[header.index("ExpTime")]), int(row[header.index("RealExpTime")])
    assert us in (500000, 2000000)
    assert ds["exptime"].values[i] == us / 1e6 and ds["rexptime"].values[i] == real_us / 1e6
    bias = open_cmos_section(rep.stores["BIAS"])
    assert set(bias["exptime"].values) == {1e-05}  # 10 us (not 9.999999999999999e-06)


def test_store_layout_and_attrs(sim, ingested):
    rep, _ = ingested
    g = zarr.open_group(str(rep.stores["BIAS"]), path="l1", mode="r")
    assert g["data"].chunks == (FC, 1, *TILE) and g["data"].shape == (18, 1, 64, 64)
    assert g["data"].dtype == np.uint16
    a = dict(g.attrs)
    assert (a["instrument"], a["caltype"], a["data_scale"], a["bit_depth"], a["height"], a["width"]) == \
        ("cmos", "BIAS", 16, 16, 64, 64)  # fmt: skip
    assert a["frame_chunk"] == FC and a["tile"] == list(TILE) and len(a["history"]) == 1
    assert len(a["attempts"]) == 6 and {r["config_file"] for r in a["attempts"]} == {"configFile.txt", "config.txt"}
    assert {r["log_delimiter"] for r in a["attempts"]} == {",", ";", "\t"}
    assert a["attempts"][0]["config"]["HEIGHT"] == "64"
    assert zarr.open_group(str(rep.stores["BIAS"]), mode="r").attrs["detflow_product"] == "cmos_l1"
    assert not list(rep.stores["BIAS"].parent.glob("*.partial-*"))


def test_data_scale_applied_by_open_cmos_section(ingested):
    rep, _ = ingested
    ds = open_cmos_section(rep.stores["FLAT"])
    assert ds["data"].dims == ("frame", "y", "x") and ds["data"].dtype == np.float32
    assert ds["data"].chunks[0] == (ds.sizes["frame"],)  # every frame of a pixel tile in one chunk
    assert all(c % TILE[0] == 0 for c in ds["data"].chunks[1][:-1])
    raw = open_cmos_section(rep.stores["FLAT"], scaled=False)["data"].values[:, 0]
    np.testing.assert_array_equal(ds["data"].values, (raw / 16).astype(np.float32))
    assert ds.attrs["data_scale"] == 16 and ds["data"].attrs["data_scale"] == 16
    small = open_cmos_section(rep.stores["FLAT"], target_bytes=12 * 4 * 32 * 32)  # one zarr tile per dask tile
    assert small["data"].chunks[1:] == ((32, 32), (32, 32))


def test_dask_tasks_cover_whole_zarr_chunks():
    assert cmos_raw.writer._frame_blocks(0, 20, 8) == [(0, 8), (8, 16), (16, 20)]
    assert cmos_raw.writer._frame_blocks(13, 12, 8) == [(0, 3), (3, 11), (11, 12)]  # fills the partial chunk first
    geom = cmos_raw.plan._Geometry(64, 64, 16, "x")
    frames = [{c: 0 for c in COORDS} | {"path": f"/p{i}"} for i in range(11)]
    ds = cmos_raw.writer._dataset(frames, geom, 5, 8, (32, 32))
    assert ds["data"].chunks[0] == (3, 8) and ds["data"].chunks[2] == (64,)
    assert ds["frame"].values.tolist() == list(range(5, 16))


# ---- the FITS index and FITS export ----------------------------------------------------------------------------
def test_fits_index(sim, ingested):
    rep, out = ingested
    rows = read_fits_index(out / "fits_index.csv")
    with open(out / "fits_index.csv", newline="") as fh:
        assert next(csv.reader(fh)) == list(cmos.INDEX_COLUMNS)
    assert len(rows) == len(sim.frames)
    assert [r["CALTYPE"] for r in rows] == ["BIAS"] * 18 + ["DARK"] * 18 + ["FLAT"] * 12
    truth = {str(f.path): f.meta for f in sim.frames}
    for r in rows:
        m = truth[r["PATH"]]
        assert int(r["FRAMENUM"]) == m["framenum"] and r["TIMESTAMP"] == m["timestamp"]
        for k in ("EXPTIME", "REXPTIME", "TEMP", "TEMP_0", "DELTMP", "EQTEMP", "GAIN", "POWCONS", "FILETEMP"):
            assert _same(float(r[k]) if r[k] else math.nan, m[k.lower()]), (r["PATH"], k)
        assert r["FILTER"] == m["filter"] and int(r["ATTEMPT"]) == m["attempt"]
    assert rep.index == out / "fits_index.csv"


def test_export_fits(ingested, tmp_path):
    rep, _ = ingested
    files = export_fits(rep.stores["DARK"], tmp_path / "fits")
    ds = open_cmos_section(rep.stores["DARK"], scaled=False)
    assert len(files) == ds.sizes["frame"] and files[0].name == "dark_000000.fits"
    for i in (0, 7, len(files) - 1):
        with fits.open(files[i]) as hdul:
            h, d = hdul[0].header, hdul[0].data
            assert d.dtype == np.uint16 and np.array_equal(d, _raw(str(ds["path"].values[i])))
            assert h["CALTYPE"] == "DARK" and h["FRAMENUM"] == int(ds["framenum"].values[i])
            assert h["EXPTIME"] == float(ds["exptime"].values[i]) and h["TEMP"] == float(ds["temp"].values[i])
            assert h["TIMESTAMP"] == str(ds["timestamp"].values[i]) and h["PATH"] == str(ds["path"].values[i])
            assert h["FILETEMP"] == float(ds["filetemp"].values[i]) and h["DATASCL"] == 16
            assert h["FILTER"] == "none" and h["ATTEMPT"] == 0
            if math.isnan(ds["rexptime"].values[i]):
                assert "REXPTIME" not in h
    with pytest.raises(OutputExistsError):
        export_fits(rep.stores["DARK"], tmp_path / "fits")


# ---- discovery and parsing -------------------------------------------------------------------------------------
def _attempt(d: Path, frames=(0,), shape=(4, 6), delim=",", config="configFile.txt") -> Path:
    (d / "frames").mkdir(parents=True)
    (d / config).write_text(f"HEIGHT={shape[0]}\nWIDTH={shape[1]}\n")
    rows = ["FrameNum,Temperature,ExpTime".replace(",", delim)] + [f"{n}{delim}1.5{delim}1000" for n in frames]
    (d / "temperatureLog.csv").write_text("\n".join(rows) + "\n")
    for n in frames:
        np.full(shape, n, "<u2").tofile(d / "frames" / f"frame{n}.raw")
    return d


def test_discovery_depths_and_path_fields(sim, tmp_path):
    darks = discover(sim.roots["DARK"])
    assert len(darks) == 6 and {a.relpath.count("/") for a in darks} == {3}  # depth 4 below the section root
    assert not discover(sim.roots["DARK"], search_depth=3) and len(discover(sim.roots["DARK"], search_depth=4)) == 6
    a = darks[0]
    assert (a.temperature, a.exposure, a.attempt) == (-10.0, 0.5, 0) and a.relpath == "3Frames/T-10/0.5s/attempt0"
    assert [x.temperature for x in darks] == [-10, -10, 10, 10, 25, 25]  # natural order: T-10 < T10 < T25
    root = tmp_path / "TestSection1"
    _attempt(root / "a" / "b" / "c" / "d" / "e" / "T-5.5" / "attempt12")  # depth 7
    _attempt(root / "x" / "T3" / "250ms" / "attempt_2")  # depth 4
    _attempt(root / ".hidden" / "T1" / "attempt0")
    _attempt(root / "old.zarr" / "T1" / "attempt0")
    (root / "notes").mkdir()
    (root / "notes" / "config.txt").write_text("HEIGHT=4\n")  # a config alone: no attempt
    assert [a.relpath for a in discover(root, 6)] == ["x/T3/250ms/attempt_2"]
    deep = discover(root, 7)
    assert len(deep) == 2 and (deep[0].temperature, deep[0].attempt) == (-5.5, 12)
    assert (deep[1].temperature, deep[1].exposure, deep[1].attempt) == (3.0, 0.25, 2)
    top = _attempt(tmp_path / "TestSection3")  # the section root itself is the attempt
    assert [a.path for a in discover(top, 0)] == [top] and math.isnan(discover(top, 0)[0].temperature)
    with pytest.raises(DetflowInputError, match="attempts"):
        ingest_section(root, tmp_path / "out" / "bias.zarr", search_depth=2)
    with pytest.raises(DetflowInputError, match="section root"):
        discover(tmp_path / "nope")


def test_config_parser(tmp_path):
    p = tmp_path / "config.txt"
    p.write_text("# camera\nheight = 10  # rows\nWidth: 12\n\nBit_Depth=8\nfilter: r'\nNAME=a:b\n")
    cfg = read_config(p)
    assert cfg == {"HEIGHT": "10", "WIDTH": "12", "BIT_DEPTH": "8", "FILTER": "r'", "NAME": "a:b"}
    assert cmos_raw.config_geometry(cfg, p) == (10, 12, 8)
    assert cmos_raw.config_geometry({}, p) == (cmos.HEIGHT, cmos.WIDTH, cmos.BIT_DEPTH)
    p.write_text("HEIGHT=10\nthis is not a setting\n")
    with pytest.raises(DetflowInputError) as e:
        read_config(p)
    assert e.value.file == str(p) and e.value.field == "line 2"
    with pytest.raises(DetflowInputError, match="BIT_DEPTH"):
        cmos_raw.config_geometry({"BIT_DEPTH": "24"}, p)
    with pytest.raises(DetflowInputError, match="WIDTH"):
        cmos_raw.config_geometry({"WIDTH": "12.5"}, p)


@pytest.mark.parametrize("delim", [",", ";", "\t", "|"])
def test_temperature_log_dialects(tmp_path, delim):
    p = tmp_path / "temperatureLog.csv"
    rows = [["FrameNum", "TimeStamp", "CCD_Temp", "ExpTime", "RealExpTime", "ExpGain", "Comment"],
            ["0", "2024-01-01 10:00:00.000", "-9.5", "250000", "250010", "2", "ok"],
            ["1", "2024-01-01 10:00:00.300", "", "250000", "250012", "2", "late"]]  # fmt: skip
    p.write_text("\ufeff" + "\n".join(delim.join(r) for r in rows) + "\n")  # with a byte-order mark
    log = read_temperature_log(p)
    assert log.delimiter == delim and log.mapping["TEMP"] == "CCD_Temp"
    assert log.rows[0] == {"FRAMENUM": 0, "TIMESTAMP": "2024-01-01 10:00:00.000", "TEMP": -9.5, "EXPTIME": 0.25,
                           "REXPTIME": 0.25001, "GAIN": 2.0}  # fmt: skip
    assert math.isnan(log.rows[1]["TEMP"])


def test_temperature_log_decimal_commas_and_errors(tmp_path):
    p = tmp_path / "temperatureLog.csv"
    p.write_text("FrameNum;Temperature;ChipTemp;ExpTime\n3;-10,25;1,5;1000\n4;-10,5;2,5;1000\n")
    log = read_temperature_log(p)
    assert log.delimiter == ";" and log.rows[4]["TEMP"] == -10.5 and log.rows[3]["EXPTIME"] == 0.001
    p.write_text("FrameNum,Temperature\n0,1\n1,warm\n")
    assert "Temperature (line 3)" in str(read_temperature_log(p).bad_rows[1])
    p.write_text("FrameNum,Temperature\n0,1\n0,2\n")
    with pytest.raises(DetflowInputError, match="one row per frame"):
        read_temperature_log(p)
    p.write_text("Frame,Temperature\n0,1\n")
    with pytest.raises(DetflowInputError) as e:
        read_temperature_log(p)
    assert e.value.file == str(p) and e.value.field == "FrameNum" and "Frame" in str(e.value)


def test_file_name_fields():
    assert cmos_raw.frame_number("frame0012.raw") == 12 and cmos_raw.frame_number("f7_exp0.5s_T-10.0.raw") == 7
    assert cmos_raw.name_exptime("f7_exp0.5s_T-10.0.raw") == 0.5 and cmos_raw.name_exptime("f1_exp1e-05s.raw") == 1e-5
    assert cmos_raw.name_exptime("f1_exp250ms.raw") == 0.25 and math.isnan(cmos_raw.name_exptime("frame1.raw"))
    assert cmos_raw.name_temperature("f7_exp0.5s_T-10.0.raw") == -10.0
    assert math.isnan(cmos_raw.name_temperature("frame1.raw"))
    with pytest.raises(DetflowInputError, match="file name"):
        cmos_raw.frame_number("image_3.raw")


# ---- bad input -------------------------------------------------------------------------------------------------
FAULTS = {  # fault: (section, field (start), the file named is the frame (True) or ...)
    "bad_size": ("DARK", "file size"),
    "no_frame_column": ("FLAT", "FrameNum"),
    "missing_config": ("BIAS", "config file"),
    "missing_log_row": ("DARK", "FrameNum "),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_bad_input_raises_before_writing_and_skip_lists_it(tmp_path, fault):
    res = simulate_cmos_tree(tmp_path / "raw", CmosSimConfig(temps=(0.0, 20.0), faults=(fault,)))
    section, field = FAULTS[fault]
    out = tmp_path / "out"
    with pytest.raises(DetflowInputError) as e:
        ingest_tree(res.roots["BIAS"], res.roots["DARK"], res.roots["FLAT"], out)
    err, where = e.value, res.faults[fault]
    assert err.field.startswith(field) and str(where["file"]) in err.file, (err.file, err.field)
    assert str(where["file"]) in str(err) and field.strip() in str(err) and "expected" in str(err)
    if fault == "missing_log_row":
        assert str(where["frames"][0]) in str(err)  # which frame has no row
    assert not out.exists() or not any(out.iterdir())  # nothing written, not even the other sections
    rep = ingest_tree(res.roots["BIAS"], res.roots["DARK"], res.roots["FLAT"], out, on_error="skip")
    assert {s["path"] for s in rep.skipped} == {str(p) for p in where["frames"]}
    assert all(s["caltype"] == section and s["field"].startswith(field) for s in rep.skipped)
    for cal, store in rep.stores.items():
        paths = set(map(str, open_cmos_section(store)["path"].values))
        assert paths == {str(f.path) for f in res.frames_of(cal)}  # every good frame, no bad one
    assert rep.to_dict()["sections"][section]["skipped"][0]["reason"] == rep.skipped[0]["reason"]


def test_other_bad_inputs(tmp_path):
    root = tmp_path / "TestSection2"
    a = _attempt(root / "T1" / "1s" / "attempt0", frames=(0, 1))
    np.zeros((4, 6), "<u2").tofile(a / "frames" / "f1_exp1s.raw")  # frame 1 twice
    with pytest.raises(DetflowInputError, match="one file per frame number"):
        ingest_section(root, tmp_path / "o" / "dark.zarr")
    (a / "frames" / "f1_exp1s.raw").unlink()
    _attempt(root / "T2" / "1s" / "attempt0", shape=(5, 6))  # another frame size
    with pytest.raises(DetflowInputError) as e:
        ingest_section(root, tmp_path / "o" / "dark.zarr")
    assert e.value.field == "HEIGHT/WIDTH/BIT_DEPTH" and "T2" in e.value.file
    rep = ingest_section(root, tmp_path / "o" / "dark.zarr", on_error="skip")
    assert rep.n_frames == 2 and len(rep.skipped) == 1 and rep.caltype == "DARK"
    assert not (tmp_path / "o" / "elsewhere").exists()
    with pytest.raises(DetflowInputError, match="section"):
        ingest_section(a, tmp_path / "o" / "x.zarr")  # no TestSection folder and no caltype
    with pytest.raises(DetflowInputError, match="data_scale"):
        ingest_section(root, tmp_path / "o" / "dark.zarr", data_scale=16)  # the store says 1
    with pytest.raises(DetflowInputError, match="store"):
        ingest_section(root, tmp_path / "o" / "dark.zarr", caltype="flat")  # a DARK store


def test_skip_sections_and_overwrite(sim, tmp_path):
    out = tmp_path / "out"
    rep = ingest_tree(sim.roots["BIAS"], sim.roots["DARK"], None, out, skip=("Dark",), frame_chunk=4)
    assert set(rep.stores) == {"BIAS"} and sorted(p.name for p in out.iterdir()) == ["bias.zarr", "fits_index.csv"]
    assert len(read_fits_index(out / "fits_index.csv")) == 18
    rep = ingest_tree(sim.roots["BIAS"], None, None, out, overwrite=True, data_scale=16, frame_chunk=6)
    g = zarr.open_group(str(rep.stores["BIAS"]), path="l1", mode="r")
    assert rep.ingested["BIAS"] == 18 and g.attrs["data_scale"] == 16 and g["data"].chunks[0] == 6
    assert len(g.attrs["history"]) == 1
    with pytest.raises(DetflowInputError, match="skip"):
        ingest_tree(sim.roots["BIAS"], None, None, out, skip=("darks",))
    with pytest.raises(DetflowInputError, match="frame_chunk"):
        ingest_tree(sim.roots["BIAS"], None, None, out, frame_chunk=0)


def test_eight_bit_section(tmp_path):
    cfg = CmosSimConfig(height=16, width=24, bit_depth=8, temps=(0.0,), bias_attempts=2, n_bias=2)
    res = simulate_cmos_tree(tmp_path / "raw", cfg)
    rep = ingest_section(res.roots["BIAS"], tmp_path / "out" / "bias.zarr")
    ds = open_cmos_section(rep.store, scaled=False)
    assert ds["data"].dtype == np.uint8 and ds.attrs["data_scale"] == 1 and ds.attrs["bit_depth"] == 8
    for i, p in enumerate(ds["path"].values):
        assert np.array_equal(ds["data"].values[i, 0], _raw(p, (16, 24), "u1"))
    assert (tmp_path / "out" / "fits_index.csv").is_file()


# ---- incremental ingest ----------------------------------------------------------------------------------------
def _copy_without(src: Path, dst: Path, drop: list[str]) -> None:
    shutil.copytree(src, dst)
    for rel in drop:
        shutil.rmtree(dst / rel)


def _restore(src: Path, dst: Path, drop: list[str]) -> None:
    for rel in drop:
        shutil.copytree(src / rel, dst / rel)


def _load(store) -> xr.Dataset:
    ds = open_cmos_section(store, scaled=False).load()
    ds.attrs.pop("history")
    return ds


DROP = {  # attempts missing at the first ingest: the newest temperature (sorts last) / one that sorts in between
    "last": ["TestSection1/T40", "TestSection2/3Frames/T40", "TestSection3/ContinuousFrames/T40"],
    "middle": ["TestSection1/T10/attempt1", "TestSection2/3Frames/T10/2s", "TestSection3/ContinuousFrames/T40"],
}


@pytest.mark.parametrize("case", list(DROP))
def test_incremental_equals_fresh(tmp_path, case):
    full = simulate_cmos_tree(tmp_path / "full", CmosSimConfig(temps=(-10.0, 10.0, 40.0), seed=2))
    tree = tmp_path / "tree"
    _copy_without(full.outdir, tree, DROP[case])
    roots = [tree / s for s in cmos.SECTIONS]
    out = tmp_path / "inc"
    first = ingest_tree(*roots, out, data_scale=16, frame_chunk=7, tile=TILE)
    n0 = {k: s.n_frames for k, s in first.sections.items()}
    assert all(n % 7 for n in n0.values())  # every store ends in a partial frame-chunk
    again = ingest_tree(*roots, out)  # nothing new: nothing written
    assert again.ingested == {"BIAS": 0, "DARK": 0, "FLAT": 0} and again.sections["BIAS"].already == n0["BIAS"]
    _restore(full.outdir, tree, DROP[case])
    second = ingest_tree(*roots, out)  # data_scale: the store's
    fresh = ingest_tree(*roots, tmp_path / "fresh", data_scale=16, frame_chunk=7, tile=TILE)
    for cal in cmos.CALTYPES:
        s = second.sections[cal]
        assert s.already == n0[cal] and len(s.ingested) == s.n_frames - n0[cal] > 0
        assert not set(s.ingested) & set(map(str, first.sections[cal].ingested))
        inc, new = _load(s.store), _load(fresh.stores[cal])
        assert zarr.open_group(str(s.store), path="l1", mode="r").attrs["history"][-1].count("appended") == 1
        if case == "last":
            xr.testing.assert_identical(inc, new)
        else:  # frames in ingest order: the same frames, data and coordinates once sorted by path
            if cal != "FLAT":  # (the flats miss T40, which sorts last)
                assert list(inc["path"].values) != list(new["path"].values)  # ingest order, not a fresh one's
            xr.testing.assert_identical(inc.sortby("path").drop_vars("frame"), new.sortby("path").drop_vars("frame"))
    rows = read_fits_index(out / "fits_index.csv")
    assert len(rows) == sum(s.n_frames for s in second.sections.values()) == len(full.frames)


def test_failed_append_leaves_the_previous_store(tmp_path, monkeypatch):
    full = simulate_cmos_tree(tmp_path / "full", CmosSimConfig(temps=(-10.0, 10.0), seed=4))
    tree = tmp_path / "tree" / "TestSection1"
    _copy_without(full.roots["BIAS"], tree, ["T10"])
    store = tmp_path / "out" / "bias.zarr"
    ingest_section(tree, store, frame_chunk=4, tile=TILE)
    before = _load(store)
    files = {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()}
    _restore(full.roots["BIAS"], tree, ["T10"])
    calls = {"n": 0}
    real = cmos_raw.writer._read_rows

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk gone")
        return real(*args)

    monkeypatch.setattr(cmos_raw.writer, "_read_rows", flaky)
    with dask.config.set(scheduler="synchronous"), pytest.raises(OSError, match="disk gone"):
        ingest_section(tree, store)
    assert calls["n"] >= 2
    xr.testing.assert_identical(_load(store), before)
    assert {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()} == files
    assert [p.name for p in store.parent.iterdir()] == ["bias.zarr", "fits_index.csv"]  # no partial left
    monkeypatch.setattr(cmos_raw.writer, "_read_rows", real)
    rep = ingest_section(tree, store)
    assert rep.n_frames == len(full.frames_of("BIAS")) and len(rep.ingested) == 6
