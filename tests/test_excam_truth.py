"""Known truth recovered from simulated EXCAM data sets (detflow.sim.excam) through full runs: L2b
electrons and their combine, cosmic-ray masks against the injected hits, photon counting at high gain,
and the noise maps fitted from a dark data set of four (EM gain, exposure time) groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

import detflow
from detflow.errors import DetflowInputError
from detflow.schema import DQ
from detflow.sim.excam import ExcamSimConfig, simulate_excam

DATA = Path(__file__).parent / "data"


def _iit_job(sim, out: Path, **kw) -> dict:
    cfg = yaml.safe_load(sim.config.read_text())
    base = sim.config.parent
    job = {k: (str(base / v) if isinstance(v, str) and k != "generate_png_files" else v) for k, v in cfg.items()}
    return {**job, "input": str(sim.outdir / "l1"), "output": str(out), **kw}


@pytest.fixture(scope="module")
def science(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("excam_truth")
    # cosmic rays off here: below the gain register's full well they are not flagged (as in corgidrp) and
    # add ~0.1 e-/pixel to the mean; they have their own test at high gain
    sim = simulate_excam(tmp / "sim", ExcamSimConfig(n_frames=6, em_gain=20.0, exptime=5.0, seed=11, cosmic_rate=0.0,
                                                     nonlin_table=DATA / "nonlin_table_TVAC.txt"))  # fmt: skip
    tree = detflow.run(_iit_job(sim, tmp / "out.zarr", steps={"excam_electrons": {"shot_noise": True}}), progress=False)
    return sim, tree, np.load(sim.truth)


def test_combined_l2b_recovers_the_scene_within_its_errors(science):
    _, tree, truth = science
    mean = tree["mean_comb"].to_dataset().compute()
    want = truth["expected_flat_corrected_e"]
    good = (mean["dq"].values == 0) & (mean["ngood"].values >= 4)
    z = ((mean["data"].values - want) / mean["err"].values)[good]
    assert good.mean() > 0.95
    assert abs(np.mean(z)) < 0.05  # unbiased: dark, smear, flat, gain and nonlinearity undone
    assert 0.85 < np.std(z) < 1.15  # the error (read + ENF-amplified shot noise) describes the scatter


def test_l2a_read_noise_is_measured_from_the_prescan(science):
    sim, tree, truth = science
    rn = tree["l2a"]["read_noise"].values
    assert np.allclose(rn, float(truth["read_noise_e"]) / float(truth["eperdn"]), rtol=0.05)


def test_cosmic_ray_masks_cover_the_injected_hits(tmp_path):
    sim = simulate_excam(tmp_path / "cr", ExcamSimConfig(n_frames=2, em_gain=500.0, exptime=5.0, seed=3))
    tree = detflow.run(_iit_job(sim, tmp_path / "cr.zarr", combine=[]), progress=False)
    truth = np.load(sim.truth)
    dq = tree["l2a"]["dq"].values
    flagged = (dq & int(DQ.JUMP_DET | DQ.SATURATED)) != 0
    heads = truth["cosmic_mask"]
    assert heads.sum() > 50
    covered = flagged[heads].mean()
    assert covered > 0.9, covered
    assert flagged.mean() < 0.05  # and the masks do not eat the frame


@pytest.fixture(scope="module")
def darks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("excam_darks")
    for i, (g, t) in enumerate(((10.0, 2.0), (10.0, 30.0), (200.0, 2.0), (200.0, 30.0))):
        sim = simulate_excam(tmp / f"d{i}", ExcamSimConfig(
            n_frames=4, em_gain=g, exptime=t, flux=np.zeros((1024, 1024)), cosmic_rate=0.0, seed=100,
            dark_current=0.02, cic=0.05, fpn_e=30.0, read_noise_e=60.0, name=f"dark{i}"))  # fmt: skip
    return tmp, sim


def test_noise_maps_recover_fpn_cic_and_dark_current(darks):
    tmp, sim = darks
    job = _iit_job(
        sim, tmp / "maps.zarr", input=[str(tmp / f"d{i}" / "l1") for i in range(4)], noise_maps=True, desmear=False
    )
    for key in ("dark_current_map", "fixed_pattern_noise", "EXCAM_clock_induced_charge", "flatfield_filepath",
                "badpix_filepath"):  # fmt: skip
        job.pop(key)  # raw darks: nothing subtracted
    tree = detflow.run(job, progress=False)
    maps = tree["noise_maps"].to_dataset().compute()
    truth = np.load(sim.truth)  # one seed: the same truth maps in every sub-stack
    n = maps["fpn"].size
    for name, key in (("fpn", "fpn"), ("cic", "cic"), ("dark_current", "dark_current")):
        fitted, err = maps[name].values.astype(np.float64), maps[f"{name}_err"].values.astype(np.float64)
        ok = np.isfinite(fitted) & np.isfinite(err)
        diff = fitted[ok].mean() - truth[key][ok].mean()
        assert abs(diff) < 5 * np.sqrt(np.mean(err[ok] ** 2) / n) + 1e-3 * abs(truth[key].mean()), (name, diff)
    # per pixel the fixed pattern is resolved: correlation with the truth map
    assert np.corrcoef(maps["fpn"].values.ravel(), truth["fpn"].ravel())[0, 1] > 0.5
    assert tree["noise_maps"].attrs["em_gains"] == [10.0, 10.0, 200.0, 200.0]
    # the bias offset, from the prescan: the same as the steps applied one by one in memory to each
    # sub-stack's full frames (bias region full), their masked mean, the per-pixel fit and corgidrp's median
    from detflow.calib import emccd_noise_maps as nm
    from detflow.instruments import roman_excam
    from detflow.instruments.roman_excam_job import ExcamJob
    from detflow.io.excam_cal import open_excam_references
    from detflow.io.excam_l1 import open_excam_l1
    from detflow.steps import excam as sx
    from detflow.steps.registry import apply_recipe

    cfg = ExcamJob(**job)
    params = cfg.step_params()
    params["excam_bias"] = dict(params.get("excam_bias", {}), region="full")
    geom = roman_excam.GEOMETRIES["SCI"]
    refs = open_excam_references(cfg.calibration_paths(), geom)
    rows, cols = geom.prescan.slices
    means, counts, gains, times = [], [], [], []
    for i in range(4):
        l1 = open_excam_l1(sorted((tmp / f"d{i}" / "l1").glob("*.fits"))).load()
        work = apply_recipe(l1, refs, sx.L2A_RECIPE, params).compute()
        data, dq = work["data"].values[:, rows, cols], work["dq"].values[:, rows, cols]
        good = (dq == 0) & (work["rejected"].values[:, None, None] == 0)
        n = good.sum(axis=0)
        means.append(np.where(n > 0, np.where(good, data, 0).sum(axis=0) / np.maximum(n, 1), 0) * cfg.eperdn)
        counts.append(n)
        gains.append(float(l1["em_gain"].values[0]))
        times.append(float(l1["exptime"].values[0]))
    fit = nm.fit_noise_maps(np.stack(means), gains, times, weights=nm.lsq_weights(np.stack(counts), 16),
                            unfittable=nm.unfittable_pixels(np.stack(counts)))  # fmt: skip
    want, want_err = nm.bias_offset(np.stack(means), fit, gains, times, cfg.eperdn, np.ones(means[0].shape, bool))
    attrs = tree["noise_maps"].attrs
    assert attrs["bias_offset"] == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert attrs["bias_offset_err"] == pytest.approx(want_err, rel=1e-9)
    assert abs(attrs["bias_offset"]) < 0.5 and attrs["bias_offset_err"] > 0  # DN: the prescan holds bias only


def test_noise_maps_need_four_groups(darks):
    tmp, sim = darks
    job = _iit_job(sim, tmp / "bad.zarr", input=[str(tmp / f"d{i}" / "l1") for i in range(2)], noise_maps=True)
    with pytest.raises(DetflowInputError, match="4"):
        detflow.run(job, progress=False)
    assert not list(tmp.glob("bad.zarr*"))


def test_photon_counting_recovers_a_faint_rate(tmp_path):
    rate = 0.05  # e- per pixel per frame
    sim = simulate_excam(tmp_path / "pc", ExcamSimConfig(
        n_frames=40, em_gain=5000.0, exptime=1.0, flux=np.full((1024, 1024), rate), cosmic_rate=0.0, seed=7,
        dark_current=1e-4, cic=0.001, fpn_e=0.0, read_noise_e=100.0, smear=False, flat_pixel_rms=0.0,
        flat_lowfreq_amp=0.0, bad_pixel_fraction=0.0, hot_pixel_fraction=0.0))  # fmt: skip
    job = _iit_job(sim, tmp_path / "pc.zarr", photon_count={"read_noise": 100.0, "t_factor": 5.0}, combine=[])
    tree = detflow.run(job, progress=False)
    pc = tree["photon_count"].to_dataset().compute()
    truth = np.load(sim.truth)
    want = truth["mean_charge_e"].mean()  # light + dark + CIC before the gain register
    got, err = pc["data"].values, pc["err"].values
    # the threshold-loss correction models the gain register to three electrons; our simulator draws the
    # exact gamma output: ~1.4% systematic at 0.05 e-/frame (the raw counted fraction is ~10% low)
    assert abs(got.mean() - want) < 5 * np.sqrt(np.mean(err**2) / got.size) + 0.03 * want
    assert pc.attrs["threshold_e"] == 500.0 and int(pc["ngood"].max()) == 40
