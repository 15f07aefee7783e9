"""Issue 14: the CMOS ingest reads the camera software's own file names (``BiasT0_exp0.012sAt0f1.raw``: set
point, exposure, attempt and frame number in one name), any name with ``T<temp>``, ``exp[_]<t>s``, ``At<n>``
and ``f<N>``/``frame<N>`` anywhere; it refuses only names without a frame number."""

from __future__ import annotations

import math
import shutil

import dask
import numpy as np
import pytest

from detflow.errors import DetflowInputError
from detflow.instruments import cmos
from detflow.io import cmos_raw
from detflow.io.cmos_names import parse_name
from detflow.io.cmos_raw import ingest_tree, open_cmos_section
from detflow.sim.cmos import CmosSimConfig, simulate_cmos_tree

NAN = math.nan
NAMES = [  # name: (frame, exposure s, set point C, attempt)
    ("BiasT0_exp0.012sAt0f1.raw", (1, 0.012, 0.0, 0)),
    ("DarkT-10_exp0.5sAt2f13.raw", (13, 0.5, -10.0, 2)),
    ("DarkT-10.5_exp_2sAt0f7.raw", (7, 2.0, -10.5, 0)),
    ("FlatT25.5C_exp100msAt1f002.raw", (2, 0.1, 25.5, 1)),
    ("Flat_T+5degC_exp_250us_At3_frame9.raw", (9, 0.00025, 5.0, 3)),
    ("Dark_T_-20_exp1e-05s_attempt_4_f0.raw", (0, 1e-05, -20.0, 4)),
    ("BIAST0_EXP3SAT1F4.RAW", (4, 3.0, 0.0, 1)),
    ("f7_exp0.5s_T-10.0.raw", (7, 0.5, -10.0, -1)),  # the names read before
    ("frame0012.raw", (12, NAN, NAN, -1)),
    ("frame_3.raw", (3, NAN, NAN, -1)),
    ("f1_exp250ms.raw", (1, 0.25, NAN, -1)),
    ("Bias_frame5_T3.raw", (5, NAN, 3.0, -1)),
    ("20240301T120000_f1.raw", (1, NAN, NAN, -1)),  # an ISO time stamp's T is no set point
    ("buf12_f3.raw", (3, NAN, NAN, -1)),  # the last frame number counts (the camera's f<N> before .raw)
    ("T-3_f2_T-4.raw", (2, NAN, -4.0, -1)),
    ("image_3.raw", (None, NAN, NAN, -1)),
    ("FlatT20_exp0.1sAt0.raw", (None, 0.1, 20.0, 0)),
]


def _same(a, b) -> bool:
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("name, want", NAMES, ids=[n for n, _ in NAMES])
def test_parse_name(name, want):
    got = parse_name(name)
    assert all(_same(g, w) for g, w in zip((got.frame, got.exptime, got.temperature, got.attempt), want)), got
    if want[0] is None:
        with pytest.raises(DetflowInputError) as e:
            cmos_raw.frame_number(f"/data/{name}")
        assert e.value.field == "file name" and e.value.file == f"/data/{name}" and "f<N> or frame<N>" in str(e.value)
    else:
        assert cmos_raw.frame_number(name) == want[0]
        assert _same(cmos_raw.name_exptime(name), want[1]) and _same(cmos_raw.name_temperature(name), want[2])


@pytest.fixture(autouse=True)
def _threads():
    with dask.config.set(scheduler="threads", num_workers=2):
        yield


CFG = CmosSimConfig(temps=(-10.0, 2.5, 20.0), bias_exptime=0.012, dark_exptimes=(0.5, 2.0), n_bias=2, n_dark=2,
                    n_flat=2, file_names="camera", seed=5)  # fmt: skip


def test_simulator_writes_camera_names(tmp_path):
    sim = simulate_cmos_tree(tmp_path / "raw", CFG)
    names = {f.path.name for f in sim.frames}
    assert "BiasT-10_exp0.012sAt0f1.raw" in names and "BiasT2.5_exp0.012sAt1f1.raw" in names
    assert "Dark_T-10_exp_0.5s_At0_frame1.raw" in names and "FlatT2.5C_exp100msAt0f001.raw" in names
    for f in sim.frames:
        fields = parse_name(f.path)
        assert (fields.frame, fields.temperature, fields.attempt) == (f.meta["framenum"], f.meta["filetemp"],
                                                                       f.meta["attempt"])  # fmt: skip
        assert fields.exptime == f.meta["exptime"]
    with pytest.raises(DetflowInputError, match="file_names"):
        CmosSimConfig(file_names="odd")


@pytest.mark.parametrize("folders", ["tree", "flat"])
def test_ingest_camera_names(tmp_path, folders):
    """Every frame ingested with the log's values and the name's set point, exposure and attempt. ``flat``:
    the T<temp>, <t>s and attempt<n> folders renamed to say nothing, so only the names do."""
    sim = simulate_cmos_tree(tmp_path / "raw", CFG)
    expected = {str(f.path): f.meta for f in sim.frames}
    roots = dict(sim.roots)
    if folders == "flat":
        expected = {}
        for cal, root in sim.roots.items():
            new = tmp_path / "flat" / root.name
            attempts = cmos_raw.discover(root)
            for i, a in enumerate(attempts):
                shutil.copytree(a.path, new / f"run{i}")
            for f in sim.frames_of(cal):
                k = next(i for i, a in enumerate(attempts) if f.path.is_relative_to(a.path))
                path = new / f"run{k}" / cmos.FRAMES_DIR / f.path.name
                expected[str(path)] = dict(f.meta, path=str(path))
            roots[cal] = new
        assert all(math.isnan(a.temperature) and a.attempt == -1 for a in cmos_raw.discover(roots["DARK"]))
    rep = ingest_tree(roots["BIAS"], roots["DARK"], roots["FLAT"], tmp_path / "out", data_scale=16)
    assert not rep.skipped and sum(rep.ingested.values()) == len(sim.frames)
    n_from_name = 0
    for store in rep.stores.values():
        ds = open_cmos_section(store, scaled=False)
        for i, p in enumerate(map(str, ds["path"].values)):
            meta = expected[p]
            for c in ("framenum", "exptime", "temp", "filetemp", "attempt", "timestamp"):
                v = ds[c].values[i]
                assert _same(v.item() if hasattr(v, "item") else str(v), meta[c]), (p, c, v, meta[c])
            n_from_name += math.isnan(float(ds["rexptime"].values[i]))  # no ExpTime in the log: from the name
            assert np.array_equal(ds["data"].values[i, 0], np.fromfile(p, "<u2").reshape(64, 64))
    assert n_from_name > 0
