"""Roman WFI (H4RG) exposure simulator with known truth.

``simulate(outdir, SimConfig(...))`` writes Roman-like L1 ASDF exposures, the matching calibration
directory (the ``CALDIR`` files of the PIT ``gen_cal_image`` job format) and a ``truth.npz``, all
derived from one seeded truth. Sizes are parameters: tests use ``nside=64``/``128``, the demo and the
benchmarks the flight ``4096``.

The package holds the entry point :func:`simulate` (and :func:`load_truth`); its parts are in
:mod:`.config` (``SimConfig``, ``SimProducts``), :mod:`.detector` (the per-pixel truth and the scene),
:mod:`.exposure` (one L1 exposure), :mod:`.caldir` (the reference files) and :mod:`.writer` (atomic
writes, removed again when a run fails).

Output layout (``outdir``)::

    l1/exposure_000.asdf ...      one per exposure (roman_datamodels ScienceRawModel)
    caldir/{mask,saturation,linearitylegendre,dark,gain,read,flat,ipc4d}.asdf
    wcs.txt                       the celestial WCS (FITS header cards, 0-based full-frame pixels)
    truth.npz
    gen_cal_image.yaml            (if ``write_job_yaml``) PIT job: IN, OUT, CALDIR, FITSWCS, RAMP_OPT_PARS...

The ASDF files are tagged Roman datamodels (roman_datamodels opens them; metadata the schemas require
and the simulator does not know holds roman_datamodels' placeholders): ``mask``, ``saturation``,
``dark``, ``gain``, ``read``, ``flat`` are ``MaskRefModel``... ``FlatRefModel``, with the extra
fields below beside the schema's. ``linearitylegendre`` and ``ipc4d`` are the PIT's own formats,
which no roman_datamodels model describes: plain ``roman`` trees.

Sky: a TAN projection centred on the detector centre at (``ra_deg``, ``dec_deg``), pixel scale
``pixel_scale_arcsec``, detector +y at ``pa_deg`` east of north, optional SIP distortion ``wcs_sip``.
With ``star_radec`` a star of ``star_e_per_s`` is placed at that sky position (the WCS gives its
pixel), besides the random sources.

Nothing is ever overwritten: if any of these files exists ``simulate`` raises
:class:`detflow.errors.OutputExistsError` before doing any work; if the simulation fails part-way the
files it already wrote are removed again (complete or absent).

Physics of one exposure
-----------------------
``N = nside``, ``A = N - 8`` active pixels per side, a 4-pixel reference border. Frames ``k = 0..K-1``
(``K`` = last frame number of the read pattern + 1) are read at ``t_k = k * frame_time``; frame 0 is
the reset (zero charge). Per active pixel the charge rate in e/s is
``flat * (sky + sources) + dark`` (dead pixels: nothing, they read bias only). Charge accumulates
frame by frame with Poisson increments (or the exact mean with ``poisson=False``); cosmic rays add a
lognormal jump of charge at a random frame. The IPC forward operator
(:func:`detflow.kernels.ipc.ipc_forward`, per-pixel kernel, in electrons) acts on the accumulated
charge, division by the gain gives the linear signal ``D`` (DN_lin), and the classical
nonlinearity gives the raw signal ``S = Sref + f(D)``, ``f(D) = D - beta * D**2``, capped at the
pixel's hard full well. Read noise (white, per pixel and frame) and a 1/f ("pink") stream are then
added; the pink stream is generated in readout-time order (32 channels of ``N/32`` columns read in
parallel, row by row, odd channels reversed) and is common to all channels (``pink_noise_dn``,
"C_PINK"), optionally plus an independent stream per channel (``pink_uncorr_dn``, "U_PINK"). It
appears in the reference pixels and, scaled by ``M_PINK = 1``, in amp33. The ADC clips at 0 and
65535. Frames of one resultant are averaged and rounded to uint16. Reference pixels get no charge:
bias + noise only (their ``Sref`` is their bias). amp33 is its median level + pink + white noise.

Calibration files (``roman`` tree of each ASDF file; ``N x N`` unless stated)
----------------------------------------------------------------------------
- ``mask``: ``dq`` uint32 = REFERENCE_PIXEL on the border, DEAD|DO_NOT_USE on dead pixels, HOT on hot
  pixels. (``MaskRefModel``)
- ``saturation``: ``data`` float32 raw-DN threshold = hard full well - ``saturation_margin_dn``;
  ``n_no_sat_check`` active pixels are NaN (stcal flags those NO_SAT_CHECK); ``dq`` uint32 zeros.
  (``SaturationRefModel``)
- ``linearitylegendre``: ``data`` (ncoef, N, N) float32 Legendre coefficients ``c_l``; ``Smin``,
  ``Smax``, ``Sref`` float32; ``dq`` uint32 (REFERENCE_PIXEL border, NO_LIN_CORR on
  ``n_no_lin_corr`` active pixels, which the simulator makes exactly linear). The linearised
  signal is ``phi(S) = sum_l c_l P_l(z)``, ``z = -1 + 2 (S - Smin) / (Smax - Smin)``, a per-pixel
  least-squares fit (Chebyshev nodes) of ``f^-1(S - Sref)`` over ``[Smin, Smax]``
  (``Smin = Sref - nonlin_smin_offset_dn``, ``Smax`` = hard full well) with ``c_0`` shifted so that
  ``phi(Sref) = 0`` (to float32 rounding). Reference pixels have ``beta = 0`` (``phi = S - Sref``).
- ``dark``: ``data`` (ngroups, N, N) float32: the expected raw dark+bias resultants for the sim read
  pattern (noise-free, nonlinearity included, no sky); ``dark_slope`` float32 DN_lin/s: the dark
  current as a dark calibration would measure it, ``ipc_forward(dark_e) / gain`` (the simulator's
  dark charge goes through IPC like every other charge, so this is what the pipeline must subtract
  to recover ``slope_dn``); ``dark_slope_error`` zeros (exact); ``dq`` uint32 (HOT on hot pixels).
  (``DarkRefModel``; ``data`` is an extra field there)
- ``gain``: ``data`` float32 e/DN. (``GainRefModel``)
- ``read``: ``data`` float32 single-frame read noise (DN); ``amp33`` = ``{"valid": True, "med":
  (N, N/32) float32 amp33 level, "std": (N, N/32) float32 amp33 white noise per frame, "M_PINK":
  multiplier of the common pink stream in amp33 (1.0), "RU_PINK": amplitude of amp33's own pink
  stream}``; ``anc`` = ``{"C_PINK": common pink amplitude, "U_PINK": per-channel pink amplitude}``.
  Pink amplitudes ``A`` mean: variance ``A**2`` per unit of ln(frequency) (``S(f) = A**2 / f``),
  one stream of ``N * N/32`` samples per frame, mean removed per frame (the PIT ``C_PINK``
  convention); the per-frame rms is about ``A * sqrt(ln(N * N/32))``, ~7.3 DN for A = 2 at N = 4096.
  (``ReadnoiseRefModel``; ``amp33`` and ``anc`` extra fields)
- ``flat``: ``data`` (A, A) float32 true relative QE (mean 1 over the active area; dead pixels keep
  their nominal value, they are handled by the mask); ``dq``, ``err`` zeros. (``FlatRefModel``) It
  holds no pixel-area factor: with the job's ``FITSWCS`` the flat step divides it by the TAN WCS's
  area factor, which differs from 1 by < 2e-6 at N = 4096 without ``wcs_sip``.
- ``ipc4d``: ``data`` (3, 3, A, A) float32 per-pixel kernel, ``kernel[1+dy, 1+dx, y, x]`` = fraction
  of pixel (y, x)'s charge landing in (y+dy, x+dx); centre = 1 - sum of the others.

L1 files (``ScienceRawModel``): ``data`` (ngroups, N, N) uint16, ``amp33`` (ngroups, N, N/32) uint16,
``meta`` with ``exposure`` (read_pattern, frame_time, ngroups, nresultants, start_time, end_time,
exposure_time, type...), ``guide_star`` (window_xstart/xstop/ystart/ystop, -1 without a window),
``instrument``, ``pointing``/``wcsinfo`` (the pointing), ``filename``.

``truth.npz`` (float32 (N, N) maps unless stated; active pixels at ``[4:-4, 4:-4]``)
-----------------------------------------------------------------------------------
- ``slope_dn``: the rate a correct L1->L2 pipeline *without* IPC and flat correction recovers for
  exposure 0, DN_lin/s: ``ipc_forward(flat * (sky + sources)) / gain``; dark current excluded
  (subtracted by the pipeline), 0 on reference and dead pixels.
- ``sky_slope_dn``: ``ipc_forward(flat) / gain``, the slope per 1 e/s of sky; exposure ``i`` has
  ``slope_dn + (sky_e_per_s_exposure[i] - sky_e_per_s_exposure[0]) * sky_slope_dn``.
- ``flux_e``: e/s reaching the pixel before flat and IPC (sky + sources), 0 on the border.
- ``flat``: true relative QE (0 on the border). ``gain`` (e/DN), ``read_noise`` (DN per frame),
  ``bias_dn`` (= ``Sref``, raw DN), ``nonlin_beta`` (1/DN; 0 on the border and NO_LIN_CORR pixels).
- ``dark_dn_per_s``: the dark slope as in ``dark.asdf`` (``ipc_forward(dark_e) / gain``).
- ``saturated`` (bool): the pixel reaches its saturation threshold in some resultant of exposure 0.
- ``dead``, ``hot`` (bool).
- cosmic rays, 1-D arrays over all hits of all exposures: ``cr_y``, ``cr_x`` (full-frame pixel),
  ``cr_frame`` (first frame that contains the charge, 1..K-1), ``cr_resultant`` (first resultant
  holding a frame >= cr_frame, -1 if none), ``cr_amp_e`` (deposited electrons, before IPC),
  ``cr_exposure``.
- 1-D: ``resultant_times`` (ngroups,) mean frame time of each resultant (s);
  ``sky_e_per_s_exposure`` (n_exposures,).
- 0-d scalars: ``nside``, ``nborder``, ``frame_time``, ``seed``, ``n_exposures``, ``sky_e_per_s``,
  ``gain_mean``, ``read_noise_dn``, ``dark_e_per_s``, ``pink_noise_dn``, ``nonlin_fit_maxerr_dn``
  (largest |phi - f^-1| of the stored float32 model on a check grid), ``config_json`` (str),
  ``wcs_header`` (str, the contents of ``wcs.txt``).
- sources, 1-D: ``src_x``, ``src_y`` (centres, 0-based full-frame pixels; the ``star_radec`` star
  last), ``src_ra``, ``src_dec`` (degrees, through the WCS); with ``star_radec`` the 0-d ``star_ra``,
  ``star_dec``, ``star_x``, ``star_y``, ``star_e_per_s``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from detflow.errors import OutputExistsError
from detflow.io.roman_dm import science_raw_model
from detflow.io.store.atomic import temp_leftovers
from detflow.kernels.ipc import ipc_forward
from detflow.sim.wfi_sky import sim_wcs, star_pixel

from .caldir import _write_caldir
from .config import CAL_NAMES, DEFAULT_READ_PATTERN, SimConfig, SimProducts
from .detector import _build_detector
from .exposure import _l1_meta, _simulate_exposure
from .writer import _Writer

__all__ = ["SimConfig", "SimProducts", "simulate", "sim_wcs", "CAL_NAMES", "DEFAULT_READ_PATTERN"]

log = logging.getLogger(__name__)


# =================================================================================================
# entry point
# =================================================================================================
def _planned_paths(outdir: Path, cfg: SimConfig):
    l1 = [outdir / "l1" / f"exposure_{i:03d}.asdf" for i in range(cfg.n_exposures)]
    cal = {name: outdir / "caldir" / f"{name}.asdf" for name in CAL_NAMES}
    truth = outdir / "truth.npz"
    job = outdir / "gen_cal_image.yaml" if cfg.write_job_yaml else None
    return l1, cal, truth, job, outdir / "wcs.txt"


def simulate(outdir: str | os.PathLike, config: SimConfig | None = None) -> SimProducts:
    """Simulate ``config.n_exposures`` WFI exposures plus calibration files and truth into ``outdir``.

    Raises :class:`detflow.errors.OutputExistsError` (before any work) if any output file exists.
    """
    cfg = config if config is not None else SimConfig()
    outdir = Path(outdir).resolve()
    l1_paths, cal_paths, truth_path, job_path, wcs_path = _planned_paths(outdir, cfg)
    planned = [*l1_paths, *cal_paths.values(), truth_path, wcs_path] + ([job_path] if job_path else [])
    existing = [p for p in planned if p.exists() or temp_leftovers(p)]
    if existing:
        raise OutputExistsError(
            existing[0],
            "outdir",
            "a directory without earlier simulator outputs (simulate never overwrites)",
            got=f"{len(existing)} existing output file(s)",
        )

    star_pixel(cfg)  # a star outside the active area is refused before any work
    w = _Writer()
    try:
        return _simulate_into(cfg, outdir, w, l1_paths, cal_paths, truth_path, job_path, wcs_path)
    except BaseException:
        w.cleanup()
        raise


def _simulate_into(cfg, outdir, w, l1_paths, cal_paths, truth_path, job_path, wcs_path) -> SimProducts:
    t_start = time.perf_counter()
    geom = cfg.geometry
    n, act = geom.nside, geom.active
    f32 = np.float32
    w.mkdir(outdir)
    w.mkdir(outdir / "l1")
    w.mkdir(outdir / "caldir")

    root = np.random.SeedSequence(cfg.seed)
    det_ss, exp_root = root.spawn(2)
    det = _build_detector(cfg, np.random.default_rng(det_ss))
    log.info("detector truth built in %.1f s", time.perf_counter() - t_start)

    # truth maps that need the IPC operator
    def embed(active_map: np.ndarray) -> np.ndarray:
        full = np.zeros((n, n), dtype=f32)
        full[act] = active_map
        return full

    inv_gain_act = det.inv_gain[act]
    # dead pixels collect no charge, so they send none to their neighbours either
    live_flat = np.where(det.dead, f32(0.0), det.flat)
    dark_slope = embed(ipc_forward(det.dark_e, det.kernel) * inv_gain_act)
    sky_slope = embed(ipc_forward(live_flat, det.kernel) * inv_gain_act)
    photo = live_flat * (f32(cfg.sky_e_per_s) + det.sources_e)
    slope_dn = embed(ipc_forward(photo, det.kernel) * inv_gain_act)
    del photo, live_flat

    wcs = sim_wcs(cfg)
    wcs_header = wcs.to_header(relax=True).tostring()
    w.text(wcs_path, wcs_header)
    src_radec = wcs.all_pix2world(np.column_stack([det.src_x, det.src_y]), 0).reshape(-1, 2)
    maxerr = _write_caldir(w, cfg, det, cal_paths, dark_slope)
    log.info("caldir written at %.1f s", time.perf_counter() - t_start)

    exp_seeds = exp_root.spawn(cfg.n_exposures)
    skies: list[float] = []
    cr: dict[str, list[np.ndarray]] = {k: [] for k in ("y", "x", "frame", "resultant", "amp", "exposure")}
    saturated = None
    nb = geom.nborder
    for i, path in enumerate(l1_paths):
        t0 = time.perf_counter()
        rng = np.random.default_rng(exp_seeds[i])
        sky = cfg.sky_e_per_s if i == 0 else cfg.sky_e_per_s * (1.0 + cfg.sky_exposure_rms * rng.standard_normal())
        skies.append(float(sky))
        data, amp33, hits = _simulate_exposure(cfg, det, rng, float(sky))
        if i == 0:
            thresh = det.sat_thresh
            with np.errstate(invalid="ignore"):
                saturated = np.zeros((n, n), dtype=bool)
                for r in range(cfg.ngroups):
                    saturated |= data[r] >= thresh  # NaN thresholds compare False
        cr["y"].append(hits.y + nb)
        cr["x"].append(hits.x + nb)
        cr["frame"].append(hits.frame)
        cr["resultant"].append(hits.resultant)
        cr["amp"].append(hits.amp)
        cr["exposure"].append(np.full(hits.y.shape, i, dtype=np.int64))
        w.model(path, science_raw_model(data, amp33, _l1_meta(cfg, i, path.name)))
        del data, amp33
        log.info("exposure %d simulated and written in %.1f s", i, time.perf_counter() - t0)

    dead_full = np.zeros((n, n), dtype=bool)
    dead_full[act] = det.dead
    hot_full = np.zeros((n, n), dtype=bool)
    hot_full[act] = det.hot
    truth = {
        "slope_dn": slope_dn,
        "sky_slope_dn": sky_slope,
        "flux_e": embed(f32(cfg.sky_e_per_s) + det.sources_e),
        "flat": embed(det.flat),
        "gain": det.gain,
        "read_noise": det.rn,
        "bias_dn": det.sref,
        "nonlin_beta": det.beta,
        "dark_dn_per_s": dark_slope,
        "saturated": saturated,
        "dead": dead_full,
        "hot": hot_full,
        "cr_y": np.concatenate(cr["y"]).astype(np.int32),
        "cr_x": np.concatenate(cr["x"]).astype(np.int32),
        "cr_frame": np.concatenate(cr["frame"]).astype(np.int32),
        "cr_resultant": np.concatenate(cr["resultant"]).astype(np.int32),
        "cr_amp_e": np.concatenate(cr["amp"]).astype(f32),
        "cr_exposure": np.concatenate(cr["exposure"]).astype(np.int32),
        "resultant_times": cfg.resultant_times.astype(f32),
        "sky_e_per_s_exposure": np.asarray(skies, dtype=f32),
        "nside": np.array(n),
        "nborder": np.array(nb),
        "frame_time": np.array(cfg.frame_time, dtype=f32),
        "seed": np.array(cfg.seed),
        "n_exposures": np.array(cfg.n_exposures),
        "sky_e_per_s": np.array(cfg.sky_e_per_s, dtype=f32),
        "gain_mean": np.array(cfg.gain_mean, dtype=f32),
        "read_noise_dn": np.array(cfg.read_noise_dn, dtype=f32),
        "dark_e_per_s": np.array(cfg.dark_e_per_s, dtype=f32),
        "pink_noise_dn": np.array(cfg.pink_noise_dn, dtype=f32),
        "nonlin_fit_maxerr_dn": np.array(maxerr, dtype=f32),
        "config_json": np.array(cfg.model_dump_json()),
        "wcs_header": np.array(wcs_header),
        "src_x": det.src_x,
        "src_y": det.src_y,
        "src_ra": src_radec[:, 0],
        "src_dec": src_radec[:, 1],
    }
    if cfg.star_radec is not None:
        truth.update(star_ra=np.array(cfg.star_radec[0]), star_dec=np.array(cfg.star_radec[1]),
                     star_x=np.array(det.src_x[-1]), star_y=np.array(det.src_y[-1]),
                     star_e_per_s=np.array(cfg.star_e_per_s))  # fmt: skip
    w.npz(truth_path, truth)

    if job_path is not None:
        import yaml

        job = {
            "IN": str(l1_paths[0]),
            "OUT": str(outdir / "l2.zarr"),
            "CALDIR": {name: str(p) for name, p in cal_paths.items()},
            "FITSWCS": str(wcs_path),
            "RAMP_OPT_PARS": {"slope": 0.4, "gain": 1.8, "sigma_read": 6.5},
            "JUMP_DETECT_PARS": {"SthreshA": 5.5, "SthreshB": 4.5, "IthreshA": 1.0, "IthreshB": 1000.0},
        }
        w.text(job_path, yaml.safe_dump(job, sort_keys=False))

    log.info("simulate: %d exposure(s) of %d^2 in %.1f s", cfg.n_exposures, n, time.perf_counter() - t_start)
    return SimProducts(l1_files=list(l1_paths), caldir=dict(cal_paths), truth_file=truth_path, job_yaml=job_path,
                       wcs_file=wcs_path)  # fmt: skip


def load_truth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read ``truth.npz`` into a dict (``config_json`` parsed into ``config``)."""
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    out["config"] = json.loads(str(out["config_json"]))
    return out
