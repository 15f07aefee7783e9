"""Issue 19: the simulator's truth recovered on a WFI exposure with a high cosmic-ray rate, end to end.

The pipeline runs on a dask LocalCluster into a zarr store; the store is read back and the slope compared
with the simulator's truth, normalised by the reported error, on the pixels the simulator hit with a cosmic
ray inside the fitted ramp (its own record of the hits, not our flags) and on the pixels it never hit.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.stats import median_abs_deviation

import detflow
from detflow.instruments import roman_wfi
from detflow.instruments.roman_wfi_job import WFIJob
from detflow.runtime.job import load_job
from detflow.schema import DQ
from detflow.sim.wfi import SimConfig, load_truth, simulate

NB = 4
# relative standard error of the MAD estimate of a Gaussian sigma from n values: 1 / sqrt(2 n 0.3675)
# (the MAD's asymptotic efficiency is 36.75 %)
MAD_SE = 1.0 / np.sqrt(2 * 0.3675)


def robust_std(v: np.ndarray) -> tuple[float, float]:
    """The MAD estimate of the standard deviation and its standard error."""
    s = float(median_abs_deviation(v, scale="normal"))
    return s, s * MAD_SE / np.sqrt(v.size)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """256 x 256, ~11 % of the pixels hit by a cosmic ray (1e-3 hits per pixel and second, 17x the default).
    No IPC and no 1/f noise: the reported error is then the whole noise model (IPC lowers a pixel's Poisson
    variance by ~13 % and spreads each hit's charge to its neighbours as steps below any threshold; 1/f
    noise needs the reference-pixel step), so the test is about the ramp fit alone."""
    out = tmp_path_factory.mktemp("cr") / "wfi"
    cfg = SimConfig(nside=256, seed=3, cr_rate=1e-3, pink_noise_dn=0.0, ipc_alpha=0.0, ipc_alpha_diag=0.0, ipc_rms=0.0)
    prod = simulate(out, cfg)
    return prod, load_truth(prod.truth_file)


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address="127.0.0.1:0") as lc, \
            Client(lc) as c:  # fmt: skip
        yield c


def _z_of_hit_and_clean(prod, truth, client, tmp_path, pit_compat: bool):
    """(slope - truth) / err on the hit and the clean pixels, and the L2 dq on them, from the written store."""
    job = load_job(prod.job_yaml).model_dump()
    store = tmp_path / f"l2_pit{int(pit_compat)}.zarr"
    job.update(output=store, recipe=list(roman_wfi.DEFAULT_RECIPE), steps={"ramp_fit": {"pit_compat": pit_compat}})
    detflow.run(WFIJob(**job), client=client, progress=False)
    l2 = xr.open_datatree(store, engine="zarr")["l2"].to_dataset().isel(frame=0)
    slope, err, dq = l2["data"].values, l2["err"].values, l2["dq"].values
    a = slope.shape[0]
    act = (slice(NB, NB + a), slice(NB, NB + a))
    # the simulator's hits: one inside the fitted ramp is one after the first frame of the first fitted
    # resultant (the first resultant is excluded: a hit before or at that frame is an offset, not a jump)
    rp = truth["config"]["read_pattern"]
    exp0 = truth["cr_exposure"] == 0
    cy, cx, cf = truth["cr_y"][exp0] - NB, truth["cr_x"][exp0] - NB, truth["cr_frame"][exp0]
    any_hit = np.zeros((a, a), bool)
    any_hit[cy, cx] = True
    in_ramp = np.zeros((a, a), bool)
    later = cf > rp[1][0]
    in_ramp[cy[later], cx[later]] = True
    usable = ~truth["saturated"][act] & ~truth["dead"][act] & np.isfinite(slope) & ((dq & DQ.DO_NOT_USE) == 0)
    z = (slope - truth["slope_dn"][act]) / err
    hit, clean = usable & in_ramp, usable & ~any_hit
    return z[hit], z[clean], dq[hit], dq[clean]


def test_jump_hit_pixels_as_narrow_as_clean_ones(sim, client, tmp_path):
    prod, truth = sim
    z_hit, z_clean, dq_hit, dq_clean = _z_of_hit_and_clean(prod, truth, client, tmp_path, pit_compat=False)
    (s_hit, se_hit), (s_clean, se_clean) = robust_std(z_hit), robust_std(z_clean)
    print(f"\nrobust std of (slope - truth) / err: hit {s_hit:.4f} +/- {se_hit:.4f} ({z_hit.size} pixels), "
          f"clean {s_clean:.4f} +/- {se_clean:.4f} ({z_clean.size} pixels)")  # fmt: skip
    assert z_hit.size > 4000 and z_clean.size > 40000
    assert abs(s_hit - 1) < 4 * se_hit and abs(s_clean - 1) < 4 * se_clean
    assert abs(s_hit - s_clean) < 4 * np.hypot(se_hit, se_clean)
    assert abs(np.median(z_hit)) < 4 * 1.2533 * s_hit / np.sqrt(z_hit.size)  # unbiased (median's SE)
    # the L2 dq says which pixels had a jump
    assert np.mean((dq_hit & DQ.JUMP_DET) != 0) > 0.95 and np.mean((dq_clean & DQ.JUMP_DET) != 0) < 2e-3

    # the PIT's fit flags the same jumps but keeps them in the slope: the property fails
    z_hit_pit, z_clean_pit, dq_hit_pit, _ = _z_of_hit_and_clean(prod, truth, client, tmp_path, pit_compat=True)
    (s_hit_pit, _), (s_clean_pit, se_clean_pit) = robust_std(z_hit_pit), robust_std(z_clean_pit)
    print(f"pit_compat: hit {s_hit_pit:.3f} (median {np.median(z_hit_pit):.1f}), clean {s_clean_pit:.4f}")
    assert abs(s_clean_pit - 1) < 4 * se_clean_pit
    assert np.mean((dq_hit_pit & DQ.JUMP_DET) != 0) > 0.95
    assert s_hit_pit > 3 and np.median(z_hit_pit) > 5
