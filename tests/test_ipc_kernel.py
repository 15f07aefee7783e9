"""detflow.kernels.ipc.ipc_forward against a plain NumPy reference."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from detflow.kernels.ipc import ipc_forward


def reference_ipc(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Scatter each pixel's charge with its own kernel, using array slicing (no wrap-around)."""
    ny, nx = image.shape
    out = np.zeros((ny, nx), dtype=np.float64)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            sent = image.astype(np.float64) * kernel[1 + dy, 1 + dx]  # charge leaving (y, x) towards (y+dy, x+dx)
            # destination rows/cols that have a source inside the array
            ys_dst = slice(max(dy, 0), ny + min(dy, 0))
            xs_dst = slice(max(dx, 0), nx + min(dx, 0))
            ys_src = slice(max(-dy, 0), ny + min(-dy, 0))
            xs_src = slice(max(-dx, 0), nx + min(-dx, 0))
            out[ys_dst, xs_dst] += sent[ys_src, xs_src]
    return out


def reference_ipc_roll(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The same operator written with np.roll on a zero-padded array (a second, independent form)."""
    ny, nx = image.shape
    pad_img = np.zeros((ny + 2, nx + 2))
    pad_img[1:-1, 1:-1] = image
    out = np.zeros((ny + 2, nx + 2))
    for a in range(3):
        for b in range(3):
            pad_k = np.zeros((ny + 2, nx + 2))
            pad_k[1:-1, 1:-1] = kernel[a, b]
            out += np.roll(pad_img * pad_k, shift=(a - 1, b - 1), axis=(0, 1))
    return out[1:-1, 1:-1]


def random_kernel(rng, ny, nx, dtype=np.float64, normalise=False):
    k = rng.uniform(0.0, 0.05, size=(3, 3, ny, nx))
    k[1, 1] = rng.uniform(0.6, 1.0, size=(ny, nx))
    if normalise:
        k /= k.sum(axis=(0, 1), keepdims=True)
    return k.astype(dtype)


@pytest.mark.parametrize("shape", [(17, 23), (1, 5), (4, 1), (2, 2), (3, 3), (64, 40)])
def test_matches_numpy_reference(shape):
    rng = np.random.default_rng(sum(shape))
    image = rng.normal(100.0, 30.0, size=shape)
    kernel = random_kernel(rng, *shape)
    got = ipc_forward(image, kernel)
    want = reference_ipc(image, kernel)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(reference_ipc_roll(image, kernel), want, rtol=1e-12, atol=1e-10)


def test_float32_in_float32_out_and_out_argument():
    rng = np.random.default_rng(5)
    image = rng.uniform(0, 1000, size=(31, 29)).astype(np.float32)
    kernel = random_kernel(rng, 31, 29, dtype=np.float32)
    got = ipc_forward(image, kernel)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, reference_ipc(image, kernel), rtol=2e-6, atol=1e-3)
    out = np.full((31, 29), np.nan, dtype=np.float32)
    res = ipc_forward(image, kernel, out=out)
    assert res is out
    np.testing.assert_array_equal(out, got)


def test_charge_conserved_in_the_interior():
    rng = np.random.default_rng(11)
    ny, nx = 40, 33
    image = np.zeros((ny, nx))
    image[1:-1, 1:-1] = rng.uniform(0, 5000, size=(ny - 2, nx - 2))  # nothing on the edge rows/cols
    kernel = random_kernel(rng, ny, nx, normalise=True)
    out = ipc_forward(image, kernel)
    assert out.sum() == pytest.approx(image.sum(), rel=1e-12)


def test_single_pixel_spreads_with_its_own_kernel():
    ny, nx = 7, 9
    image = np.zeros((ny, nx))
    image[3, 4] = 1000.0
    rng = np.random.default_rng(2)
    kernel = random_kernel(rng, ny, nx)
    out = ipc_forward(image, kernel)
    np.testing.assert_allclose(out[2:5, 3:6], 1000.0 * kernel[:, :, 3, 4])
    out[2:5, 3:6] = 0.0
    assert not out.any()


def test_identity_kernel():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(12, 15))
    kernel = np.zeros((3, 3, 12, 15))
    kernel[1, 1] = 1.0
    np.testing.assert_array_equal(ipc_forward(image, kernel), image)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="kernel must have shape"):
        ipc_forward(np.zeros((4, 4)), np.zeros((3, 3, 4, 5)))
    with pytest.raises(ValueError, match="2-D"):
        ipc_forward(np.zeros((2, 4, 4)), np.zeros((3, 3, 4, 4)))
    img = np.zeros((4, 4))
    with pytest.raises(ValueError, match="overlap"):
        ipc_forward(img, np.zeros((3, 3, 4, 4)), out=img)


def test_thread_pool_matches_serial():
    """The kernel is nogil and used from dask threads: concurrent calls must agree with serial ones."""
    rng = np.random.default_rng(8)
    cases = [(rng.normal(size=(50, 60)), random_kernel(rng, 50, 60)) for _ in range(6)]
    serial = [ipc_forward(i, k) for i, k in cases]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda ik: ipc_forward(*ik), cases))
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)


def test_ipc_reverse_matches_pit_and_inverts_to_second_order():
    import pytest

    from detflow.kernels.ipc import ipc_forward, ipc_reverse

    il = pytest.importorskip("romanimpreprocess.utils.ipc_linearity")
    rng = np.random.default_rng(8)
    ny, nx = 37, 45
    k = np.zeros((3, 3, ny, nx))
    k[0, 1] = k[2, 1] = k[1, 0] = k[1, 2] = rng.uniform(0.01, 0.02, (ny, nx))
    k[0, 0] = k[0, 2] = k[2, 0] = k[2, 2] = rng.uniform(0.001, 0.003, (ny, nx))
    k[1, 1] = 1 - (k.sum(axis=(0, 1)) - k[1, 1])
    img = rng.uniform(100, 5000, (ny, nx))
    gain = rng.uniform(1.6, 2.0, (ny, nx))
    ours = ipc_reverse(img, k, gain)
    pit = il.ipc_rev(img * gain, k) / gain
    np.testing.assert_allclose(ours, pit, rtol=1e-12)
    # forward then reverse recovers the input to second order (residual ~ alpha^3 of the signal)
    true = rng.uniform(100, 5000, (ny, nx))
    back = ipc_reverse(ipc_forward(true, k), k)
    interior = (slice(2, -2), slice(2, -2))
    err2 = np.abs(back - true)[interior].max()
    err1 = np.abs(ipc_forward(true, k) - true)[interior].max()  # what IPC does uncorrected
    one = np.abs(ipc_reverse(ipc_forward(true, k), k, order=1) - true)[interior].max()
    # each order gains a factor ~ alpha (total ~0.07): first order ~ alpha^2, second ~ alpha^3
    assert err1 > 5 * one and one > 5 * err2
    assert err2 < 1e-3 * true.max()


def test_ipc_step_chunked_equals_eager_and_recovers_truth(tmp_path):
    """The ipc step in the pipeline: tiles with halos give the single-tile answer, and the slope of an
    IPC-corrected exposure matches the charge before IPC (flat * flux / gain)."""
    import dask

    import detflow
    from detflow.instruments.roman_wfi_job import WFIJob
    from detflow.runtime.job import load_job
    from detflow.schema import DQ
    from detflow.sim.wfi import SimConfig, simulate

    prod = simulate(tmp_path / "sim", SimConfig(nside=128, seed=4, pink_noise_dn=0.0, ipc_alpha=0.03))
    truth = np.load(prod.truth_file)
    recipe = ["dq_init", "saturation", "linearity", "ipc", "dark_current", "ramp_fit"]
    results = []
    for chunks in ({"y": 128, "x": 128}, {"y": 29, "x": 47}):
        job = load_job(prod.job_yaml).model_dump()
        job.update(output=tmp_path / "x.zarr", recipe=recipe, chunks=chunks)
        with dask.config.set(scheduler="sync"):
            l2 = detflow.build(WFIJob(**job))["l2"]
            assert {s["name"]: s["status"] for s in l2.attrs["steps"]}["ipc"] == "COMPLETE"
            results.append(l2.isel(frame=0)[["data", "dq", "var_rnoise", "var_poisson"]].compute())
    for v in ("data", "dq", "var_rnoise", "var_poisson"):
        np.testing.assert_array_equal(results[0][v].values, results[1][v].values, err_msg=v)
    l2 = results[0]
    act = (slice(4, -4), slice(4, -4))
    pre_ipc = (truth["flat"] * truth["flux_e"] / truth["gain"])[act]
    bad = np.uint32(DQ.DO_NOT_USE | DQ.SATURATED | DQ.JUMP_DET | DQ.HOT | DQ.DEAD | DQ.NO_LIN_CORR)
    good = ((l2["dq"].values & bad) == 0) & ~truth["dead"][act]
    good[:3], good[-3:], good[:, :3], good[:, -3:] = False, False, False, False  # edges: charge lost off the array
    err = np.sqrt(l2["var_rnoise"].values + l2["var_poisson"].values)
    chi_fixed = ((l2["data"].values - pre_ipc) / err)[good]
    chi_ipc = ((l2["data"].values - truth["slope_dn"][act]) / err)[good]
    # unbiased; chi^2 above 1 by the noise the deconvolution amplifies, which the variances (as in the
    # PIT) do not include: ~(1 + sum of the neighbour fractions)^2 for read-noise-dominated pixels
    assert abs(chi_fixed.mean()) < 0.05 and 1.0 < np.mean(chi_fixed**2) < 1.35
    # against the IPC-convolved truth the corrected slopes are off where neighbours differ (sources)
    assert np.mean(chi_ipc**2) > np.mean(chi_fixed**2)
    src = good & (truth["flux_e"][act] > 3 * np.median(truth["flux_e"][act]))
    assert src.sum() >= 10
    # on and around sources the correction brings the slope to the pre-IPC charge
    assert np.median(np.abs(l2["data"].values - pre_ipc)[src]) < 0.3 * np.median(
        np.abs(truth["slope_dn"][act] - pre_ipc)[src]
    )
