"""The CMOS raw-tree simulator: layout and its variations, stored values, physics against the truth, faults."""

from __future__ import annotations

import re

import numpy as np
import pytest

from detflow.errors import DetflowInputError, OutputExistsError
from detflow.instruments import cmos
from detflow.sim.cmos import CmosSimConfig, expected_dn, simulate_cmos_tree, vignetting


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate_cmos_tree(tmp_path_factory.mktemp("cmos_sim") / "raw", CmosSimConfig(seed=3))


def _raw(frame, cfg) -> np.ndarray:
    return np.fromfile(frame.path, dtype=cfg.dtype).reshape(cfg.height, cfg.width)


def test_tree_layout_and_variations(sim):
    cfg = sim.config
    assert {k: v.name for k, v in sim.roots.items()} == {"BIAS": "TestSection1", "DARK": "TestSection2",
                                                         "FLAT": "TestSection3"}  # fmt: skip
    n = len(cfg.temps) * (cfg.bias_attempts * cfg.n_bias + len(cfg.dark_exptimes) * cfg.n_dark
                          + len(cfg.flat_exptimes) * cfg.n_flat)  # fmt: skip
    assert len(sim.frames) == n and all(f.path.is_file() for f in sim.frames)
    rel = {f.path.parent.parent.relative_to(sim.outdir).as_posix() for f in sim.frames}
    assert "TestSection1/T-10/attempt1" in rel
    assert "TestSection2/3Frames/T10/0.5s/attempt0" in rel
    assert "TestSection3/ContinuousFrames/T25/0.1s/attempt0" in rel
    attempts = sorted({f.path.parent.parent for f in sim.frames})
    names = {p.name for a in attempts for p in a.iterdir() if p.is_file()}
    assert {"configFile.txt", "config.txt", "temperatureLog.csv"} <= names
    headers = [(a / "temperatureLog.csv").read_text().splitlines()[0] for a in attempts]
    assert any("," in h for h in headers) and any(";" in h for h in headers) and any("\t" in h for h in headers)
    assert {c for c in ("Temperature", "CCDTemp", "CCD_Temp", "CCDTemperature", "ChipTemp") if any(c in h.split(h[8])
            for h in headers)} == {"Temperature", "CCDTemp", "CCD_Temp", "CCDTemperature", "ChipTemp"}  # fmt: skip
    assert any(f.path.name.startswith("f") and "_exp" in f.path.name for f in sim.frames)
    assert any(f.path.name.startswith("frame") for f in sim.frames)
    assert any(np.isnan(f.meta["rexptime"]) for f in sim.frames)  # logs without ExpTime/RealExpTime
    # a decimal-comma semicolon log
    assert any(re.search(r";-?\d+,\d+;", (a / "temperatureLog.csv").read_text()) for a in attempts)
    flats = sim.frames_of("FLAT")
    assert {f.meta["filter"] for f in flats} == {"g"} and {f.meta["filter"] for f in sim.frames_of("BIAS")} == {"none"}
    assert (sim.outdir / "truth.npz").is_file()
    assert not list(sim.outdir.glob(".cmos-sim-partial-*"))


def test_values_are_12_bit_left_shifted_and_clipped(sim):
    cfg = sim.config
    assert sim.data_scale == 16 and cfg.dtype == np.dtype("<u2")
    for f in sim.frames[::7]:
        a = _raw(f, cfg)
        assert a.nbytes == cfg.height * cfg.width * 2
        assert np.all(a % 16 == 0) and a.max() <= 4095 * 16


def test_mean_signal_matches_truth(sim):
    """The mean over many pixels of (frame - expected) is ~0 for every section; hot pixels are much brighter."""
    cfg, truth = sim.config, sim.truth
    for f in sim.frames:
        dn = _raw(f, cfg) / sim.data_scale
        exp = expected_dn(truth, f.caltype, f.meta["temp"], f.meta["exptime"])
        resid = dn - exp
        ok = exp < 4000
        noise = np.sqrt(cfg.read_noise**2 + np.clip(exp - truth["bias_a"] - truth["bias_b"] * f.meta["temp"], 0, None)
                        + 1 / 12)  # fmt: skip
        assert abs(resid[ok].mean()) < 4 * noise[ok].mean() / np.sqrt(ok.sum()) + 0.05, f.path
        assert 0.8 < resid[ok].std() / np.sqrt((noise[ok] ** 2).mean()) < 1.2, f.path
    hot = truth["hot"]
    assert 0 < hot.sum() < 0.06 * hot.size
    dark = next(f for f in sim.frames_of("DARK") if f.meta["exptime"] == 2.0 and f.meta["filetemp"] == 25.0)
    dn = _raw(dark, cfg) / sim.data_scale - truth["bias_a"] - truth["bias_b"] * dark.meta["temp"]
    assert np.median(dn[hot]) > 8 * np.median(dn[~hot])
    assert np.all(truth["dark_A"][~hot] == cfg.dark_A) and np.all(truth["dark_A"][hot] >= 10 * cfg.dark_A)


def test_vignetting_is_radial_and_normalised():
    v = vignetting(65, 65, 0.1, 0.05)
    assert v[32, 32] == 1.0 and v[0, 0] == pytest.approx(1 - 0.1 - 0.05) and v[0, 64] == v[64, 0] == v[0, 0]
    assert np.all(np.diff(v[32, 32:]) < 0)


def test_attempt_frames_do_not_depend_on_the_other_temperatures(tmp_path):
    a = simulate_cmos_tree(tmp_path / "a", CmosSimConfig(temps=(-10.0, 10.0), n_flat=1, seed=5))
    b = simulate_cmos_tree(tmp_path / "b", CmosSimConfig(temps=(-10.0, 10.0, 40.0), n_flat=1, seed=5))
    fb = {f.path.relative_to(b.outdir): f for f in b.frames}
    for f in a.frames:
        g = fb[f.path.relative_to(a.outdir)]
        assert f.path.read_bytes() == g.path.read_bytes()
    # a Tmin of -10 either way, so the dark truth is shared
    assert np.array_equal(a.truth["dark_A"], b.truth["dark_A"])


def test_eight_bit_frames(tmp_path):
    cfg = CmosSimConfig(height=16, width=24, bit_depth=8, temps=(0.0,), bias_attempts=1, dark_exptimes=(0.5,),
                        flat_exptimes=(0.001,), n_bias=1, n_dark=1, n_flat=1)  # fmt: skip
    res = simulate_cmos_tree(tmp_path / "raw", cfg)
    assert res.data_scale == 1 and cfg.dtype == np.uint8
    assert all(f.path.stat().st_size == 16 * 24 for f in res.frames)


def test_faults_and_refusals(tmp_path):
    res = simulate_cmos_tree(tmp_path / "raw", CmosSimConfig(temps=(0.0, 5.0), faults=("bad_size", "missing_config",
                             "no_frame_column", "missing_log_row")))  # fmt: skip
    f = res.faults
    assert f["bad_size"]["file"].stat().st_size == 64 * 63 * 2
    assert not any((f["missing_config"]["file"] / n).exists() for n in cmos.CONFIG_NAMES)
    assert "FrameNum" not in f["no_frame_column"]["file"].read_text().splitlines()[0]
    assert sum(f.faulty for f in res.frames) == 1 + 3 + 2 + 1
    with pytest.raises(OutputExistsError):
        simulate_cmos_tree(tmp_path / "raw", CmosSimConfig())
    with pytest.raises(DetflowInputError, match="faults"):
        CmosSimConfig(faults=("nonsense",))
