"""CMOS per-pixel calibration models: bias, dark current and flat field, their synthesis and evaluation.

Every builder is a pure function ``Dataset -> Dataset`` that never computes: per-pixel work runs through
``xr.apply_ufunc(..., dask="parallelized")`` over pixel tiles with the reduced axis (``frame``, or the
group axis of the masters) whole; whole-map statistics (sigma-clipped thresholds, the vignetting fit) run
as one task per map. Input: ``data`` (frame, y, x) in DN with the frame coordinates ``temp`` (deg C),
``exptime`` (s), ``caltype`` ("BIAS"/"DARK"/"FLAT"), ``filter`` and ``path`` (named in errors).

Models and fit choices
----------------------
* :func:`combine_frames` (and every master): ``median`` (default), ``mean`` or ``sigma_clip`` (astropy
  ``sigma_clip`` along the frame axis, then the mean of what is left); NaN = missing. ``err`` is the
  standard error: ``std(ddof=1) / sqrt(n)`` (mean, sigma_clip), times ``sqrt(pi / 2)`` for the median.
* Bias, :func:`build_bias_model`: frames grouped by temperature rounded to ``temp_step`` (0.1 deg C), one
  master per group, then per pixel ``bias(T) = a + b T`` (T in deg C, the group's mean frame
  temperature) by (weighted) linear least squares over the masters: closed-form normal equations,
  solved in the centred variable ``T - Tc`` and transformed back (``cov_ab`` kept, ``a`` being an
  extrapolation to 0 deg C). Weights: none or the number of frames per master (normalised to mean 1).
* Dark, :func:`build_dark_model`: bias subtracted per frame (the nearest-temperature bias master, or the
  bias model at the frame's temperature), frames whose share of exact-zero raw pixels exceeds
  ``zero_frac_max`` rejected (``rejected`` bit 1), rate = combine over the good frames of each
  (exposure, temperature) group / exposure time (DN/s, signed, never clipped). Hot pixels: rate >
  mean + ``hot_k`` sigma (sigma-clipped statistics of each group's rate map) in at least
  ``hot_min_groups`` groups (default: half of them; one group of 24 lets the tail of the normal pixels
  in, many tests at 5 sigma each). Models ``DC(T) = A exp(B (T - Tmin))`` per exposure time ("1d") and
  ``DC(T, t) = A t^gamma exp(B (T - Tmin))`` ("2d"; rates in DN/s, t in s) by weighted *nonlinear*
  least squares in linear space (:func:`detflow.kernels.cmos.fit_exp_model`, Gauss-Newton started from
  the weighted log-space fit): low-signal and negative rates stay in the fit unbiased, where a log-space
  fit would drop or bias them. Weights ``1 / sigma^2``: by default ``sigma`` from a per-pixel noise model
  fitted to the frame scatter of all the pixel's groups (:func:`noise_model_sigma`: frame variance = read
  + shot noise, linear in the dark signal), since ``1 / s^2`` from a few frames per group is biased and
  noisy (pull widths ~1.4 instead of ~1.05 in the tests); ``weights="scatter"`` uses ``rate_err``
  directly. Fitted per pixel for the hot pixels; the normal pixels carry one global fit of the
  per-group median rate of the normal pixels (error of the median ``sqrt(pi/2) std / sqrt(n)``,
  sigma-clipped statistics).
* Flat, :func:`build_flat_model`: each flat paired with the dark group nearest in the scaled distance
  ``hypot(dT / max_dtemp, dt / max_dexptime)``; pairs beyond ``max_dtemp`` (5 deg C) or ``max_dexptime``
  (10 s) rejected and listed; ``flat - bias - rate * t``, normalised per frame (mean or max), combined per
  (filter, T, t); per filter a vignetting model (``radial``: ``V = 1 + sum_k c_k rho^k``, ``rho = r^2 /
  R^2`` about a fitted or given centre, R the half-diagonal, fitted by scipy ``least_squares`` to the
  block-median binned mean master of the filter; ``empirical``: a NaN-aware Gaussian smoothing of it,
  normalised to its maximum) divides the masters; then per pixel ``flat = A + B (T - Tref) + C (t -
  tref)`` by linear least squares over the masters of each filter.
* Uncertainties: the parameter covariance scaled by the residual variance. Goodness of fit: ``rms`` for
  the linear fits (bias, flat) = ``sqrt(sum w r^2 / (n - p))``, the residual rms in the data's units
  (weights normalised to mean 1); ``chi2_red`` for the dark fits = ``sum r^2 / sigma^2 / (n - p)``.
* ``fit_failed`` (uint8): 0 fitted, else :data:`detflow.kernels.cmos.STATUS` (1 too few points, 2 too
  few positive rates for the log start, 3 singular design, 4 not converged / non-finite).
* :func:`holdout_mask`: the frames kept out of the fits; :func:`evaluate_model`: model vs held-out frames,
  per-pixel MAE and MAPE maps, per-frame and per (temperature, exposure) group summaries;
  :func:`summary_table` (the plot: :func:`detflow.reports.cmos.plot_evaluation`).

Modules: :mod:`.frames` (inputs, grouping, chunking, flag tables), :mod:`.combine` (combines, map statistics,
per-pixel linear least squares), :mod:`.bias`, :mod:`.dark`, :mod:`.flat`, :mod:`.evaluate`.
"""

from .bias import build_bias_model, synthesize_bias
from .combine import STATS, combine_frames, wls_pixels
from .dark import build_dark_model, noise_model_sigma, synthesize_dark
from .evaluate import evaluate_model, holdout_mask, summary_table
from .flat import build_flat_model, empirical_vignetting, radial_vignetting, synthesize_flat
from .frames import FIT_FLAGS, REJECT, REJECT_ATTRS, Method

__all__ = [
    "FIT_FLAGS", "REJECT", "REJECT_ATTRS", "STATS", "Method", "build_bias_model", "build_dark_model",
    "build_flat_model", "combine_frames", "empirical_vignetting", "evaluate_model", "holdout_mask",
    "noise_model_sigma", "radial_vignetting", "summary_table", "synthesize_bias", "synthesize_dark", "synthesize_flat",
    "wls_pixels",
]  # fmt: skip
