"""WFI noise realizations (the PIT gen_noise_image layers): parsing, generators, statistics, reproducibility."""

from __future__ import annotations

import asdf
import dask
import numpy as np
import pytest
import yaml
from astropy.io import fits
from scipy import stats

from detflow.errors import DetflowInputError
from detflow.kernels import noise as knoise
from detflow.kernels import ramp as kramp
from detflow.kernels import rng as krng
from detflow.runtime.job import load_job
from detflow.runtime.run import build, run
from detflow.schema import DQ
from detflow.sim.wfi import SimConfig, simulate
from detflow.steps.wfi_noise import LayerSpec, parse_layer


# ---- layer codes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("code, want", [
    ("R", LayerSpec("R", read=True)),
    ("Ra", LayerSpec("Ra", read=True, add=True)),
    ("Raz3", LayerSpec("Raz3", read=True, add=True, zclip=3.0)),
    ("Rz2.5a", LayerSpec("Rz2.5a", read=True, add=True, zclip=2.5)),
    ("Pb", LayerSpec("Pb", poisson=True, poisson_sky_order=0)),
    ("Pb2r", LayerSpec("Pb2r", poisson=True, poisson_sky_order=2, resample=True)),
    ("Pr", LayerSpec("Pr", poisson=True, resample=True)),
    ("O", LayerSpec("O", bias=True)),
    ("RS2", LayerSpec("RS2", read=True, sky_order=2)),
    ("S", LayerSpec("S", sky_order=0)),
    ("RaPbrS1Cread plus sky", LayerSpec("RaPbrS1Cread plus sky", read=True, add=True, poisson=True,
                                        poisson_sky_order=0, resample=True, sky_order=1)),
])  # fmt: skip
def test_layer_codes(code, want):
    assert parse_layer(code) == want


@pytest.mark.parametrize("code", ["", "r", "X", "Rq", "RR", "Sx", "Pbq", "Pbb", "Oa", "Rz", "RCA comment", "Raa"])
def test_bad_layer_codes(code):
    with pytest.raises(DetflowInputError) as err:
        parse_layer(code, "job.yaml", "NOISE.LAYER[3]")
    assert str(err.value).startswith("job.yaml: NOISE.LAYER[3]: expected layer codes")
    assert repr(code) in str(err.value)


def test_unknown_layer_code_in_a_pit_config_writes_nothing(tiny_wfi, tmp_path):
    cfg = yaml.safe_load(tiny_wfi["pit_yaml"].read_text())
    cfg["NOISE"] = {"LAYER": ["R", "Q"], "SEED": 1, "OUT": str(tmp_path / "noise.asdf")}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(DetflowInputError, match=r"job.yaml: NOISE.LAYER\[1\]: expected .*'Q'"):
        run(path, progress=False)
    assert not (tmp_path / "noise.asdf").exists() and not (tiny_wfi["root"] / "out.zarr").exists()
    cfg["NOISE"]["LAYER"] = ["R"]
    cfg["NOISE"]["BOGUS"] = 1
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(DetflowInputError, match=r"NOISE.BOGUS: expected LAYER, SEED, OUT or TEMP"):
        load_job(path)


def test_native_noise_block_validated(tiny_wfi):
    job = yaml.safe_load(tiny_wfi["job_yaml"].read_text())
    job["noise"] = {"layers": ["Ra", "Pz"], "seed": 3}
    with pytest.raises(DetflowInputError, match=r"noise.layers: expected .*'Pz'"):
        load_job(job)
    job["noise"] = {"layers": ["Ra"], "seed": 3, "precision": 64}
    with pytest.raises(DetflowInputError, match="noise.precision"):
        load_job(job)


# ---- generators against plain NumPy ---------------------------------------------------------------
def test_gaussian_field_is_addressed_by_pixel():
    key = krng.stream_key(5, 0, 1, 2)
    whole = krng.normals(key, 0, 0, 64, 96, 96)
    for y0, x0, ny, nx in [(0, 0, 64, 96), (7, 13, 20, 31), (63, 95, 1, 1), (10, 1, 5, 94)]:
        assert np.array_equal(krng.normals(key, y0, x0, ny, nx, 96), whole[y0 : y0 + ny, x0 : x0 + nx])
    assert np.array_equal(krng.normal_vector(key, 96 * 64), whole.ravel())
    big = krng.normal_vector(key, 400_000)
    assert stats.kstest(big, "norm").pvalue > 1e-3
    assert abs(np.corrcoef(big[:-1], big[1:])[0, 1]) < 0.01  # the two halves of a pair are independent
    assert not np.array_equal(krng.normals(krng.stream_key(5, 0, 1, 3), 0, 0, 64, 96, 96), whole)


@pytest.mark.parametrize("lam", [0.2, 3.0, 9.99, 10.0, 60.0, 5000.0])
def test_poisson_deviates(lam):
    import numba

    @numba.njit
    def draw(key, lam, n):
        out = np.empty(n)
        for i in range(n):
            out[i] = krng.poisson(key, i, 0, lam)[0]
        return out

    x = draw(np.uint64(krng.stream_key(1, 2)), lam, 200_000)
    assert abs(x.mean() - lam) < 5 * np.sqrt(lam / x.size)
    assert abs(x.var() / lam - 1) < 5 * np.sqrt(2 / x.size) * (1 + 1 / lam)
    if lam < 100:  # the distribution itself, not just its moments
        k = np.arange(int(lam + 8 * np.sqrt(lam) + 10))
        obs = np.bincount(x.astype(int), minlength=k.size)[: k.size]
        exp = stats.poisson.pmf(k, lam) * x.size
        keep = exp > 20
        chi2 = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
        assert stats.chi2.sf(chi2, keep.sum() - 1) > 1e-4


def test_pink_block_has_a_one_over_f_spectrum():
    blocks = np.stack([knoise.pink_block(krng.stream_key(3, i), 512, 16) for i in range(8)])
    series = blocks.reshape(8, -1)  # readout order: along x, then the next row
    assert np.allclose(series.mean(axis=1), 0, atol=1e-9)
    psd = (np.abs(np.fft.rfft(series, axis=1)) ** 2).mean(axis=0)
    f = np.arange(psd.size)
    band = (f > 4) & (f < psd.size // 4)
    slope = np.polyfit(np.log(f[band]), np.log(psd[band]), 1)[0]
    assert -1.15 < slope < -0.85


def _resampled_reference(sky, gain, frame_time, read_pattern, weights, L, key, y0, x0, stride):
    """The Pr layer written as the PIT loops: frame by frame, resultants by membership."""
    ny, nx = sky.shape
    last = read_pattern[-1][-1]
    e = np.clip(sky * gain * frame_time, 0, None)
    cum = np.zeros((ny, nx))
    delta = np.zeros((len(read_pattern), ny, nx))
    ks = np.zeros((ny, nx), dtype=np.int64)
    for f in range(last + 1):
        draw = np.empty((ny, nx))
        for i in range(ny):
            for j in range(nx):
                n, ks[i, j] = krng.poisson(np.uint64(key), (y0 + i) * stride + x0 + j, ks[i, j], e[i, j])
                draw[i, j] = n
        cum += (draw - e) / gain
        for r, frames in enumerate(read_pattern):
            if f in frames:
                delta[r] += cum / len(frames)
    out = np.zeros((ny, nx))
    for trunc in np.unique(L):
        out = np.where(L == trunc, np.tensordot(weights[trunc], delta, axes=1), out)
    return out


def test_resampled_poisson_kernel_matches_numpy():
    rp = [[0], [1], [2, 3], [4, 5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15], [16, 17]]
    tabs = kramp.ramp_tables(rp, 3.04, 0.01, 1)
    rs = np.random.default_rng(0)
    sky = rs.uniform(0.0, 40.0, (6, 7)).astype(np.float32)
    sky[0, 0] = -1.0  # negative levels draw nothing
    gain = rs.uniform(1.5, 2.0, (6, 7)).astype(np.float32)
    L = rs.choice([2, 3, 4, 5, 6], size=(6, 7)).astype(np.int64)  # L = 2: no weights, no noise
    key = krng.stream_key(9, 4)
    out = np.empty((6, 7))
    first = np.array([r[0] for r in rp])
    nfr = np.array([len(r) for r in rp])
    knoise.poisson_resampled_slopes(sky, gain, 3.04, first, nfr, tabs.weights[L], np.uint64(key), 10, 20, 128, out)
    want = _resampled_reference(sky.astype(np.float64), gain.astype(np.float64), 3.04, rp, tabs.weights, L, key,
                                10, 20, 128)  # fmt: skip
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    assert np.all(out[L == 2] == 0) and out[0, 0] == 0


def test_zclip_bounds():
    img = np.random.default_rng(2).standard_t(2, (50, 60)).astype(np.float32)
    img[3, 3] = np.nan
    out = knoise.zclip(img, 2.0)
    q1, med, q3 = np.nanpercentile(img, [25, 50, 75])
    half = 2.0 * (q3 - q1) / 1.34896
    assert np.nanmax(out) == pytest.approx(med + half) and np.nanmin(out) == pytest.approx(med - half)
    inside = np.abs(img - med) < half
    assert np.array_equal(out[inside], img[inside]) and np.isnan(out[3, 3])


# ---- layers on simulated exposures ----------------------------------------------------------------
@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    root = tmp_path_factory.mktemp("noise")
    white = simulate(root / "white", SimConfig(nside=128, seed=5, pink_noise_dn=0.0, n_sources=0, cr_rate=0.0))
    pink = simulate(root / "pink", SimConfig(nside=128, seed=6, pink_noise_dn=2.0, pink_uncorr_dn=1.0,
                                             amp33_pink_dn=0.5))  # fmt: skip
    return root, white, pink


def _pit(sim_dir, out, layers, seed=11, **extra) -> dict:
    cfg = yaml.safe_load((sim_dir / "gen_cal_image.yaml").read_text())
    cfg.update({"OUT": str(out), "SKYORDER": 1, "NOISE": {"LAYER": layers, "SEED": seed}}, **extra)
    return cfg


def _noise(cfg, chunks=None):
    job = load_job(cfg)
    if chunks:
        job = job.model_copy(update={"chunks": chunks})
    p = build(job)
    with dask.config.set(scheduler="threads", num_workers=2):
        return dask.compute(p["noise"]["noise"][0], p["l2"])


def test_read_and_poisson_layers_match_the_noise_model(sims):
    root, white, _ = sims
    cfg = _pit(root / "white", root / "w.zarr", ["R", "Ra", "Pb", "Pbr", "O"])
    nz, l2 = _noise(cfg)
    good = (l2["dq"][0].values & 1) == 0
    rn = np.sqrt(np.median(l2["var_rnoise"][0].values[good]))
    std = {c: float(np.nanstd(lay.values[good])) for c, lay in zip(nz["layer"].values, nz)}
    # R, Ra through the whole PIT chain: the ramp fit's read variance plus what the reference-pixel
    # correction adds (row medians of only 4 amp33 columns at this size)
    assert 1.0 < std["R"] / rn < 1.25 and 1.0 < std["Ra"] / rn < 1.25
    # P layers: a sky-only scene, so the Poisson variance of the ramp fit is the model
    rp = np.sqrt(np.median(l2["var_poisson"][0].values[good]))
    for code in ("Pb", "Pbr", "O"):
        assert abs(std[code] / rp - 1) < 0.06, (code, std[code], rp)
    for code in ("R", "Ra", "Pb", "Pbr", "O"):
        lay = nz.sel(layer=code).values[good]
        assert abs(np.nanmean(lay)) < 4 * std[code] / np.sqrt(good.sum()) + 0.1 * rn  # no bias
    # without the reference-pixel step the R layers are the ramp fit's read noise itself (the 0.5-DN
    # rounding of the noisy L1 adds ~1%)
    job = load_job(_pit(root / "white", root / "w.zarr", ["R", "Ra"])).model_copy(update={"recipe": None})
    nz2, l2b = _noise(job)
    for lay in nz2:
        z = lay.values[good] / np.sqrt(l2b["var_rnoise"][0].values[good])
        assert abs(np.nanstd(z) - 1) < 0.03
    # the layers are independent realizations
    assert abs(np.corrcoef(nz.sel(layer="Pb").values[good], nz.sel(layer="Pbr").values[good])[0, 1]) < 0.05


@pytest.fixture(scope="module")
def bright(tmp_path_factory):
    """A Poisson-dominated sky (150 e/s) and ~6 % of the pixels hit by a cosmic ray (1e-3 per pixel and
    second, 17x the default): the science fit's weights are far from the RAMP_OPT_PARS ones, and a ramp
    split at a jump uses fewer resultants. Flat 1, no IPC, no 1/f noise: var_poisson is the whole model."""
    cfg = SimConfig(nside=128, seed=9, sky_e_per_s=150.0, cr_rate=1e-3, n_sources=0, flat_rms=0.0,
                    ipc_alpha=0.0, ipc_alpha_diag=0.0, ipc_rms=0.0, pink_noise_dn=0.0)  # fmt: skip
    root = tmp_path_factory.mktemp("bright")
    simulate(root / "sim", cfg)
    return root


@pytest.mark.parametrize("pit_compat", [False, True])
def test_poisson_layers_follow_the_science_fit(bright, pit_compat):
    """P, Pr and O propagate the Poisson noise through the science run's own ramp fit: per pixel, the layer
    has the variance that fit reports (var_poisson), on pixels whose ramp was split at a jump as on the rest
    (default fit: each pixel's weights; ``pit_compat``: the PIT's fixed weights, which the PIT fit uses too)."""
    job = load_job(_pit(bright / "sim", bright / "b.zarr", ["P", "Pr", "O"])).model_dump()
    job["steps"]["ramp_fit"]["pit_compat"] = pit_compat
    nz, l2 = _noise(job)
    dq = l2["dq"][0].values
    vp = l2["var_poisson"][0].values
    good = ((dq & DQ.DO_NOT_USE) == 0) & np.isfinite(vp) & (vp > 0)
    jump = good & ((dq & DQ.JUMP_DET) != 0)
    assert jump.sum() > 400 and good.sum() > 12000
    for code in ("P", "Pr", "O"):
        z = nz.sel(layer=code).values / np.sqrt(vp)
        for sel in (good & ~jump, jump):
            n = sel.sum()
            sd = float(np.std(z[sel]))
            print(f"pit_compat={pit_compat} {code}: std(layer / sqrt(var_poisson)) {sd:.4f} over {n} pixels")
            assert abs(sd - 1) < 4 / np.sqrt(2 * n), (code, n, sd)


def test_layers_reproducible_and_chunking_independent(sims):
    root, _, pink = sims
    layers = ["Ra", "Raz2", "RS1", "Pbr", "Pr", "O", "Cjust a comment"]
    cfg = _pit(root / "pink", root / "p.zarr", layers)
    a, _ = _noise(cfg)
    b, _ = _noise(cfg, chunks={"y": 48, "x": 80})
    assert np.array_equal(a.values, b.values, equal_nan=True)
    # the same slot with the same seed draws the same noise: Raz2 is exactly Ra clipped
    cfg2 = _pit(root / "pink", root / "p.zarr", ["Ra", "Ra", "R", "Pbr", "Pr", "O", "C"])
    c, _ = _noise(cfg2)
    assert np.array_equal(a[0].values, c[0].values, equal_nan=True)
    np.testing.assert_array_equal(knoise.zclip(c[1].values, 2.0), a[1].values)
    assert not np.array_equal(a[0].values, a[1].values, equal_nan=True)  # a new slot, new noise
    # S1: the layer's own Legendre sky is removed, so refitting finds nothing
    from detflow.kernels import sky as ksky

    s1 = a.sel(layer="RS1").values
    coefs = ksky.sky_fit(ksky.sky_block_medians(s1), *s1.shape, 1)
    assert np.all(np.abs(coefs) < 0.02 * np.nanstd(s1))
    assert np.all(a.sel(layer="Cjust a comment").values == 0)
    cfg3 = _pit(root / "pink", root / "p.zarr", layers, seed=12)
    d, _ = _noise(cfg3)
    assert not np.array_equal(a[0].values, d[0].values, equal_nan=True)


def test_noise_run_on_worker_processes_writes_store_and_exports(sims, tmp_path):
    from distributed import Client, LocalCluster

    root, _, pink = sims
    out = tmp_path / "l2.asdf"
    cfg = _pit(root / "pink", out, ["Ra", "Pbr", "O"], FITSOUT=True, NOISE_PRECISION=16)
    cfg["NOISE"]["OUT"] = str(tmp_path / "noise.asdf")
    cfg["NOISE"]["TEMP"] = str(tmp_path / "scratch.asdf")  # the PIT's scratch file: accepted, unused
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc, \
            Client(lc) as client:  # fmt: skip
        tree = run(cfg, client=client, progress=False)
    stored = tree["noise"]["noise"]
    assert stored.dims == ("frame", "layer", "y", "x") and stored.dtype == np.float16
    assert list(stored["layer"].values) == ["Ra", "Pbr", "O"]
    ref, _ = _noise(_pit(root / "pink", out, ["Ra", "Pbr", "O"]))  # threads, one process, float32
    assert np.array_equal(stored[0].values, ref.values.astype(np.float16), equal_nan=True)
    with asdf.open(tmp_path / "noise.asdf") as af:
        assert af["noise"].shape == (3, 120, 120) and af["noise"].dtype == np.float16
        assert af["config"]["noise"]["layers"] == ["Ra", "Pbr", "O"] and af["seed"] == 11
    with fits.open(tmp_path / "noise_asdf_to.fits") as hdul:
        assert hdul[0].header["BITPIX"] == -32 and hdul[0].header["LAYER1"] == "Pbr"
    assert (tmp_path / "l2_asdf_to.fits").exists() and (tmp_path / "l2.asdf").exists()


def test_reference_noise_added_not_replaced(sims):
    """'add' (default): the noisy run is the base exposure plus noise everywhere, reference pixels and
    amp33 included; the PIT's 'replace' rebuilds them, so the base's own 1/f noise goes uncorrected in
    the noisy run and leaks into the layer as row-correlated noise."""
    root, _, pink = sims
    rows = {}
    for reference in ("add", "replace"):
        job = load_job(_pit(root / "pink", root / "r.zarr", ["R", "Ra"]))
        job = job.model_copy(update={"noise": job.noise.model_copy(update={"reference": reference})})
        nz, _ = _noise(job)
        rows[reference] = [np.std(np.nanmedian(lay.values, axis=1)) for lay in nz]
    assert all(a < 0.8 * r for a, r in zip(rows["add"], rows["replace"])), rows
