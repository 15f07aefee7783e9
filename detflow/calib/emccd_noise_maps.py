"""EMCCD detector noise maps from dark sub-stacks (Roman Coronagraph EXCAM), as corgidrp 5.1.1's
``calibrate_darks_lsq`` makes them, on plain arrays.

Model. The mean dark frame of a sub-stack taken at EM gain ``g`` and exposure time ``t`` (bias
subtracted, DN times k gain, not divided by the EM gain: "detected electrons") is, per pixel,

    mean(g, t) = F + g C + g t D

with ``F`` the fixed-pattern noise (electrons after the gain register, e-), ``C`` the clock-induced
charge (e- per frame before the gain register) and ``D`` the dark current (e-/s before the gain
register). ``M >= 4`` sub-stacks with at least two EM gains and two exposure times (all pairs distinct)
give a linear least-squares problem per pixel whose design matrix ``X = [1, g, g t]`` (M x 3) is the same
for every pixel.

* :func:`fit_noise_maps`: the per-pixel fit over a ``(M, y, x)`` stack of mean frames (a pure function
  of arrays: a dask step maps it over pixel tiles). Without weights, or with one weight per sub-stack,
  one pseudo-inverse serves all pixels; with per-pixel weights the pixels whose weights are equal across
  sub-stacks (the usual case) still share it and the rest are solved from their own 3 x 3 normal
  equations. Each sub-stack's equation is multiplied by its weight (so squared weights weight the
  squared residuals), as corgidrp multiplies by the number of good frames (:func:`lsq_weights`).
* Variances (``variance="corgidrp"``, the default): ``sigma2 = sum(r^2) / (M - 3)`` from the unweighted
  residuals of the (weighted) fit, times the diagonal of ``(X^T X)^-1``; corgidrp's estimate, which
  ignores the weights. ``variance="weighted"``: the weighted-least-squares estimate
  ``sum((w r)^2) / (M - 3) * (X^T W^2 X)^-1`` (the two agree when a pixel's weights are equal).
* :func:`noise_maps`: corgidrp's product from a fit: negative C and D set to 0, D (and its error) 0
  outside the imaging area; F kept signed. Errors are the square roots of the fit variances.
* :func:`noise_map_dq`, :func:`unfittable_pixels`: pixels with no good frame in ``M - 3`` or more
  sub-stacks cannot be fit: their maps are 0 and their DQ is the OR of their sub-stacks' DQ.
* :func:`fit_substacks`: the fit weighted and masked as corgidrp runs it (the pipeline's entry).
* :func:`bias_offset`: the median over the prescan of what the model leaves in each sub-stack, in DN,
  averaged over sub-stacks, with corgidrp's error (the offsets of the maps moved by one sigma);
  :func:`prescan_bias_offset` from the prescan's sums over good frames, as the pipeline has them.
* :func:`check_substacks`, :func:`cr_threshold_ok`: corgidrp's checks on the sub-stack set, and its test
  for a cosmic-ray threshold too low for a sub-stack's dark distribution.

Not here (the step's part): the telemetry rows (corgidrp sets their mean to 1 before the fit and D there
to NaN after it), corgidrp's rough read-noise estimate and its scalar summaries (image-area means,
``sigma2`` averaged over the imaging area times ``(X^T X)^-1``), all whole-frame quantities.
Non-finite means (no good frame) enter the fit as 0, the value corgidrp's mean combine leaves there
(with :func:`lsq_weights` they carry almost no weight); :func:`bias_offset` ignores them (``nanmedian``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..errors import DetflowInputError
from ..kernels.emccd import enf


class NoiseFit(NamedTuple):
    """The per-pixel fit (``(y, x)`` arrays): maps as fitted (0 at unfittable pixels, not clipped),
    their variances, the residual variance and the adjusted R^2."""

    fpn: np.ndarray  # F, e-
    cic: np.ndarray  # C, e- per frame
    dc: np.ndarray  # D, e- / s
    fpn_var: np.ndarray
    cic_var: np.ndarray
    dc_var: np.ndarray
    sigma2: np.ndarray  # residual variance per pixel (unweighted, or weighted with variance="weighted")
    r2_adj: np.ndarray  # adjusted coefficient of determination


def check_substacks(em_gain, exptime) -> tuple[np.ndarray, np.ndarray]:
    """``(g, t)`` as float arrays after corgidrp's checks: at least 4 sub-stacks, 2 distinct EM gains
    (all >= 1), 2 distinct exposure times (all >= 0), no (g, t) pair twice."""
    g = np.atleast_1d(np.asarray(em_gain, np.float64))
    t = np.atleast_1d(np.asarray(exptime, np.float64))
    pairs = f"(EM gain, exposure time) = {list(zip(g.tolist(), t.tolist()))}"
    if g.ndim != 1 or g.shape != t.shape:
        raise DetflowInputError(None, "sub-stacks", "one EM gain and one exposure time per sub-stack",
                                f"shapes {g.shape} and {t.shape}")  # fmt: skip
    if g.size < 4:
        raise DetflowInputError(None, "sub-stacks", "at least 4 sub-stacks for a 3-parameter fit", pairs)
    if len(np.unique(g)) < 2 or (g < 1).any():
        raise DetflowInputError(None, "EM gain", "at least 2 distinct EM gains, all >= 1", pairs)
    if len(np.unique(t)) < 2 or (t < 0).any():
        raise DetflowInputError(None, "exposure time", "at least 2 distinct exposure times, all >= 0", pairs)
    if len(set(zip(g.tolist(), t.tolist()))) != g.size:
        raise DetflowInputError(None, "sub-stacks", "each (EM gain, exposure time) pair once", pairs)
    return g, t


def design_matrix(em_gain, exptime) -> np.ndarray:
    """``X = [1, g, g t]`` (M x 3): the columns of F, C and D."""
    g, t = check_substacks(em_gain, exptime)
    return np.stack([np.ones_like(g), g, g * t], axis=1)


def lsq_weights(ngood, n_frames_total: int) -> np.ndarray:
    """corgidrp's weights: each sub-stack's number of good frames per pixel (``(M, y, x)``), with
    ``1 / (100 n_frames_total)`` where none is good (small, yet the normal equations stay regular)."""
    w = np.asarray(ngood, np.float64).copy()
    w[w == 0] = 1.0 / n_frames_total / 100.0
    return w


def unfittable_pixels(ngood) -> np.ndarray:
    """Pixels with no good frame in ``M - 3`` or more of the ``M`` sub-stacks (``ngood``: ``(M, y, x)``)."""
    ngood = np.asarray(ngood)
    return (ngood == 0).sum(axis=0) >= ngood.shape[0] - 3


def noise_map_dq(substack_dq, unfittable) -> np.ndarray:
    """The maps' DQ: at unfittable pixels the OR of the sub-stacks' combined DQ (``(M, y, x)``: each the
    OR of its frames' DQ where no frame is good, else 0), else 0."""
    dq = np.bitwise_or.reduce(np.asarray(substack_dq, np.uint32), axis=0)
    return np.where(unfittable, dq, np.uint32(0)).astype(np.uint32)


def fit_noise_maps(mean_stack, em_gain, exptime, weights=None, unfittable=None, variance: str = "corgidrp") -> NoiseFit:
    """Least-squares ``F``, ``C``, ``D`` per pixel from ``(M, y, x)`` mean dark frames (e-), see the module
    notes. ``weights``: None, one per sub-stack ``(M,)`` or per pixel ``(M, y, x)``; ``unfittable``:
    ``(y, x)`` pixels whose maps are set to 0 (before the residuals are taken, as corgidrp does)."""
    if variance not in ("corgidrp", "weighted"):
        raise ValueError(f"variance must be 'corgidrp' or 'weighted', got {variance!r}")
    x = design_matrix(em_gain, exptime)
    m = x.shape[0]
    stack = np.asarray(mean_stack, np.float64)
    if stack.ndim != 3 or stack.shape[0] != m:
        raise ValueError(f"expected a ({m}, y, x) stack of mean frames, got shape {stack.shape}")
    shape = stack.shape[1:]
    y = stack.reshape(m, -1)
    y = np.where(np.isfinite(y), y, 0.0)
    npix = y.shape[1]

    scale = np.sqrt((x**2).sum(axis=0))  # equilibrated columns: g t spans orders of magnitude beyond 1
    xs = x / scale
    if weights is None:
        w = np.ones((m, 1))
    else:
        w = np.asarray(weights, np.float64)
        w = w.reshape(m, 1) if w.ndim == 1 else w.reshape(m, -1)
        if w.shape[1] not in (1, npix):
            raise ValueError(f"weights must be ({m},) or {stack.shape}, got {np.shape(weights)}")
    shared = np.all(w == w[:1], axis=0)  # pixels whose weights are equal across sub-stacks
    if w.shape[1] == 1:
        params = np.linalg.pinv(w * xs) @ (w * y) if not shared[0] else np.linalg.pinv(xs) @ y
    else:
        params = np.empty((3, npix))
        params[:, shared] = np.linalg.pinv(xs) @ y[:, shared]
        own = ~shared
        if own.any():
            w2 = w[:, own] ** 2
            normal = np.einsum("mp,mi,mj->pij", w2, xs, xs)
            rhs = np.einsum("mp,mi,mp->pi", w2, xs, y[:, own])
            params[:, own] = np.linalg.solve(normal, rhs[..., None])[..., 0].T
    params /= scale[:, None]
    if unfittable is not None:
        params[:, np.asarray(unfittable, bool).reshape(-1)] = 0.0

    fitted = x @ params
    resid = y - fitted
    ss_e = (resid**2).sum(axis=0)
    ss_r = ((y.mean(axis=0) - fitted) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2_adj = 1.0 - (1.0 - ss_r / (ss_e + ss_r)) * (m - 1) / (m - 3)
    if variance == "corgidrp":
        sigma2 = ss_e / (m - 3)
        var = sigma2 * (np.diag(np.linalg.inv(xs.T @ xs)) / scale**2)[:, None]
    else:
        sigma2 = ((w * resid) ** 2).sum(axis=0) / (m - 3)
        if w.shape[1] == 1:
            cov_diag = (np.diag(np.linalg.inv((w * xs).T @ (w * xs))) / scale**2)[:, None]
        else:  # (X^T W^2 X)^-1 per pixel: the shared (X^T X)^-1 over w^2 where the weights are equal
            cov_diag = np.empty((3, npix))
            cov_diag[:, shared] = (np.diag(np.linalg.inv(xs.T @ xs)) / scale**2)[:, None] / w[0, shared] ** 2
            own = ~shared
            if own.any():
                normal = np.einsum("mp,mi,mj->pij", w[:, own] ** 2, xs, xs)
                cov_diag[:, own] = np.diagonal(np.linalg.inv(normal), axis1=1, axis2=2).T / scale[:, None] ** 2
        var = sigma2 * cov_diag
    out = [params[0], params[1], params[2], var[0], var[1], var[2], sigma2, r2_adj]
    return NoiseFit(*(np.ascontiguousarray(a).reshape(shape) for a in out))


def noise_maps(fit: NoiseFit, imaging_area) -> tuple[np.ndarray, np.ndarray]:
    """corgidrp's product from a fit: ``maps = [F, C, D]`` and ``errs = [F_err, C_err, D_err]``
    (``(3, y, x)``): C and D clipped at 0, D and its error 0 outside ``imaging_area`` (a ``(y, x)``
    boolean mask: the image area with its shielded rows and columns); F signed."""
    img = np.asarray(imaging_area, bool)
    cic = np.where(fit.cic < 0, 0.0, fit.cic)
    dc = np.where(img, np.where(fit.dc < 0, 0.0, fit.dc), 0.0)
    errs = np.stack([np.sqrt(fit.fpn_var), np.sqrt(fit.cic_var), np.where(img, np.sqrt(fit.dc_var), 0.0)])
    return np.stack([np.asarray(fit.fpn, np.float64), cic, dc]), errs


def fit_substacks(mean_stack, ngood, em_gain, exptime, n_frames_total: int, variance: str = "corgidrp") -> NoiseFit:
    """:func:`fit_noise_maps` as corgidrp runs it: weighted by each sub-stack's good frames
    (:func:`lsq_weights`), the pixels with too few good sub-stacks (:func:`unfittable_pixels`) set to 0."""
    return fit_noise_maps(mean_stack, em_gain, exptime, weights=lsq_weights(ngood, n_frames_total),
                          unfittable=unfittable_pixels(ngood), variance=variance)  # fmt: skip


def prescan_bias_offset(sums, ngood, em_gain, exptime, kgain: float, n_frames_total: int) -> tuple[float, float]:
    """:func:`bias_offset` from each sub-stack's prescan sums over its good frames and their counts
    (``(M, y, x)``, DN): the masked mean frames (0 where no frame is good, as corgidrp's mean combine
    leaves them) times the k gain, the model fitted there (:func:`fit_substacks`), every pixel counted."""
    sums, ngood = np.asarray(sums, np.float64), np.asarray(ngood)
    mean = np.divide(sums, ngood, out=np.zeros_like(sums), where=ngood > 0) * kgain
    fit = fit_substacks(mean, ngood, em_gain, exptime, n_frames_total)
    return bias_offset(mean, fit, em_gain, exptime, kgain, np.ones(mean.shape[1:], dtype=bool))


def bias_offset(mean_stack, fit: NoiseFit, em_gain, exptime, kgain, prescan) -> tuple[float, float]:
    """``(offset, err)`` in DN: per sub-stack the median over ``prescan`` (a ``(y, x)`` boolean mask or
    index) of ``mean - F - g C - g t D`` over its k gain, averaged over sub-stacks (the fitted maps, not
    clipped); ``err`` = the larger shift of that average when F, C and D all move by -1 or +1 sigma."""
    g, t = check_substacks(em_gain, exptime)
    k = np.broadcast_to(np.asarray(kgain, np.float64), g.shape)
    if (k <= 0).any():
        raise DetflowInputError(None, "k gain", "k gain > 0 for every sub-stack", k.tolist())
    stack = np.asarray(mean_stack, np.float64)
    sd = [np.sqrt(v) for v in (fit.fpn_var, fit.cic_var, fit.dc_var)]
    offsets = np.empty((3, g.size))
    for i in range(g.size):
        for j, s in enumerate((0.0, -1.0, 1.0)):  # nominal, maps - sigma (upper offset), maps + sigma (lower)
            model = (fit.fpn + s * sd[0]) + g[i] * (fit.cic + s * sd[1]) + g[i] * t[i] * (fit.dc + s * sd[2])
            offsets[j, i] = np.nanmedian((stack[i] - model)[prescan]) / k[i]
    nominal, up, low = offsets.mean(axis=1)
    return float(nominal), float(max(up - nominal, nominal - low))


def cr_threshold_ok(em_gain: float, exptime: float, cosmic_thresh_e: float, fpn_fid: float = 4.9,
                    cic_fid: float = 0.0088, dc_fid: float = 0.001, num_stds: float = 4.0,
                    n_stages: int = 604) -> bool:  # fmt: skip
    """Whether a sub-stack's cosmic-ray threshold (e-, the DN threshold times the k gain) lies above
    its expected dark distribution, ``F + C + t D + num_stds * ENF g sqrt(C + t D)`` with fiducial
    F, C, D; corgidrp leaves a sub-stack out of the fit when it does not."""
    poisson = cic_fid + dc_fid * exptime
    expected = fpn_fid + poisson + num_stds * float(enf(em_gain, n_stages)) * em_gain * np.sqrt(poisson)
    return bool(cosmic_thresh_e > expected)
