"""The CMOS dark-current model (:func:`build_dark_model`: per-pixel ``A t^gamma exp(B (T - Tmin))`` by weighted
nonlinear least squares, hot pixels, the noise model of the weights) and its synthesis."""

from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
import xarray as xr

from ...errors import DetflowInputError
from ...kernels import cmos as kc
from ...schema import FRAME, X, Y, sanitize_attrs
from .bias import _bias_refs, _subtract, synthesize_bias
from .combine import _grouped_combine, _map_stats
from .frames import (
    F8,
    FIT_FLAGS,
    REJECT,
    REJECT_ATTRS,
    Method,
    _chunk,
    _frames,
    _group,
    _independent,
    _path,
    _round,
    _source,
    _temp_keys,
    _whole,
)


# ---- dark ------------------------------------------------------------------------------------------------
def _exp_fit_np(y, err, fitmask, designs, maxiter, tol):
    """:func:`detflow.kernels.cmos.fit_exp_model` for each (group indices, design) of ``designs`` over the
    last axis of ``y`` and ``err`` (..., G): params, perr (..., E, p), chi2, status (..., E)."""
    shape = y.shape[:-1]
    p = designs[0][1].shape[1]
    y2 = np.asarray(y, F8).reshape(-1, y.shape[-1])
    e2 = np.asarray(err, F8).reshape(-1, y.shape[-1])
    fit = np.broadcast_to(np.asarray(fitmask, bool), shape).reshape(-1).copy()
    ne = len(designs)
    params = np.full((y2.shape[0], ne, p), np.nan)
    perr = np.full_like(params, np.nan)
    chi2 = np.full((y2.shape[0], ne), np.nan)
    status = np.full((y2.shape[0], ne), kc.SKIPPED, np.uint8)
    for e, (idx, xd) in enumerate(designs):
        yy = np.ascontiguousarray(y2[:, idx])
        ee = e2[:, idx]
        with np.errstate(divide="ignore", invalid="ignore"):
            w = 1.0 / ee**2
        have = np.isfinite(yy)
        nowt = (have & ~(np.isfinite(w) & (w > 0))).any(axis=1)  # a point without an error: unweighted fit
        w = np.where(nowt[:, None], have.astype(F8), w)
        w = np.ascontiguousarray(np.where(have, w, 0.0))
        par = np.empty((yy.shape[0], p))
        cov = np.empty((yy.shape[0], p, p))
        c2 = np.empty(yy.shape[0])
        nu = np.empty(yy.shape[0], np.int64)
        st = np.empty(yy.shape[0], np.uint8)
        kc.fit_exp_model(yy, w, np.ascontiguousarray(xd, F8), fit, maxiter, tol, par, cov, c2, nu, st)
        params[:, e] = par
        perr[:, e] = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
        chi2[:, e] = c2
        status[:, e] = st
    return (params.reshape(shape + (ne, p)), perr.reshape(shape + (ne, p)), chi2.reshape(shape + (ne,)),
            status.reshape(shape + (ne,)))  # fmt: skip


def noise_model_sigma(rate: np.ndarray, err: np.ndarray, nused: np.ndarray, texp: np.ndarray,
                      iterations: int = 3) -> np.ndarray:  # fmt: skip
    """Smooth errors of group rates (..., G) for the fit weights: per pixel the frame variance of each group,
    ``v = (err t)^2 n``, is fitted as ``r0 + r1 m`` (read plus shot noise; ``m = rate t`` the mean dark
    signal in DN) by least squares reweighted with ``1 / (r0 + r1 m)^2`` (a sample variance scatters in
    proportion to the variance; ``iterations`` rounds from an unweighted start), and
    ``sigma = sqrt(max(r0 + r1 m, v_med / 10) / n) / t``. A scatter estimated from a few frames makes noisy
    weights (``1 / s^2`` is biased high and scattered); the model pools every group of the pixel. Pixels
    with fewer than 3 usable groups keep ``err``."""
    t = np.asarray(texp, F8)
    m = rate * t
    v = (err * t) ** 2 * nused
    ok = np.isfinite(m) & np.isfinite(v) & (nused > 1)
    k = ok.sum(axis=-1)
    m0, v0 = np.where(ok, m, 0.0), np.where(ok, v, 0.0)
    w = ok.astype(F8)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        floor = 0.1 * np.nanmedian(np.where(ok, v, np.nan), axis=-1)
        for _ in range(iterations + 1):
            sw = w.sum(-1)
            mbar = (w * m0).sum(-1) / sw
            vbar = (w * v0).sum(-1) / sw
            dm = m0 - mbar[..., None]
            r1 = (w * dm * (v0 - vbar[..., None])).sum(-1) / (w * dm**2).sum(-1)
            r0 = vbar - r1 * mbar
            pred = np.maximum(r0[..., None] + r1[..., None] * m0, floor[..., None])
            w = np.where(ok, 1.0 / pred**2, 0.0)
        sigma = np.sqrt(np.maximum(r0[..., None] + r1[..., None] * m, floor[..., None]) / nused) / t
    usable = (k >= 3) & np.isfinite(r1) & np.isfinite(r0)
    return np.where(usable[..., None] & np.isfinite(sigma), sigma, err)


def _exp_fit(rate: xr.DataArray, err: xr.DataArray, fitmask, designs, maxiter: int, tol: float, dim: str):
    p = designs[0][1].shape[1]
    args = [_whole(a.drop_vars([c for c in a.coords if c not in (Y, X)]), dim) for a in (rate, err)]
    extra = [fitmask] if isinstance(fitmask, xr.DataArray) else []

    def func(r, e, *rest):
        return _exp_fit_np(r, e, rest[0] if rest else True, designs, maxiter, tol)

    return xr.apply_ufunc(func, *args, *extra, input_core_dims=[[dim], [dim]] + [[]] * len(extra),
                          output_core_dims=[["_e", "_p"], ["_e", "_p"], ["_e"], ["_e"]], dask="parallelized",
                          output_dtypes=[F8, F8, F8, np.uint8],
                          dask_gufunc_kwargs={"output_sizes": {"_e": len(designs), "_p": p}})  # fmt: skip


def build_dark_model(ds: xr.Dataset, bias: xr.Dataset, *, bias_mode: Literal["master", "model"] = "master",
                     method: Method = "mean", sigma: float = 3.0, maxiters: int | None = 5, temp_step: float = 0.1,
                     exptime_step: float = 1e-3, zero_frac_max: float = 0.1, hot_k: float = 5.0,
                     clip_sigma: float = 3.0, hot_min_groups: int | None = None,
                     weights: Literal["noise_model", "scatter", "none"] = "noise_model", maxiter: int = 100,
                     tol: float = 1e-9) -> xr.Dataset:  # fmt: skip
    """Dark-current rates per (exposure, temperature) group, hot pixels and the 1-D / 2-D models (module
    notes). ``bias``: :func:`build_bias_model` output (``bias_mode='master'``: nearest master;
    ``'model'``: ``a + b T`` at each frame's temperature).

    Output: ``rate``, ``rate_err`` (dark_group, y, x) DN/s, ``nframes`` (dark_group) good frames, coords
    ``group_temp``, ``group_exptime``; ``hot`` (y, x) uint8, ``hot_threshold`` (dark_group);
    ``global_rate``, ``global_rate_err`` (dark_group) the median rate of the normal pixels; 2-D: ``A``,
    ``B``, ``gamma`` and ``*_err``, ``chi2_red``, ``fit_failed`` (y, x), ``global_A`` ... (scalars); 1-D:
    ``A_1d``, ``B_1d`` and ``*_err``, ``chi2_red_1d``, ``fit_failed_1d`` (exposure, y, x),
    ``global_A_1d`` ... (exposure); frame-level: ``rejected`` (bit 1: zero pixels), ``zero_fraction``,
    ``group``, ``bias_dtemp``. Normal pixels carry the global values. The 2-D model needs two exposure
    times and two temperatures; otherwise its variables are absent (``attrs['dc2d']`` says why).
    """
    if weights not in ("noise_model", "scatter", "none"):
        raise DetflowInputError(None, "weights", "'noise_model', 'scatter' or 'none'", weights)
    d = _frames(ds, "DARK", ("temp", "exptime"))
    temps = np.asarray(d["temp"].values, F8)
    texp = np.asarray(d["exptime"].values, F8)
    if (texp <= 0).any():
        i = int(np.nonzero(texp <= 0)[0][0])
        raise DetflowInputError(_path(d, i), "exptime", "> 0 s for a dark frame", texp[i])
    stack, coef, dtemp = _bias_refs(bias, temps, bias_mode)
    sub = _subtract(d["data"], stack, coef)
    zero_fraction = (_independent(d["data"]) == 0).mean((Y, X))
    rejected = (zero_fraction > zero_frac_max).astype(np.uint8) * np.uint8(REJECT["zero_pixels"])
    good = rejected == 0
    labels, index = _group(_round(texp, exptime_step), _temp_keys(d, temps, temp_step))
    groups = [np.nonzero(index == g)[0] for g in range(len(labels))]
    ng = len(groups)
    gtemp = np.array([temps[i].mean() for i in groups])
    gexp = np.array([texp[i].mean() for i in groups])
    gcoords = {"group_temp": ("dark_group", gtemp), "group_exptime": ("dark_group", gexp)}
    m = _grouped_combine(sub, groups, "dark_group", good, method, sigma, maxiters)
    scale = xr.DataArray(gexp, dims="dark_group")
    rate = (m["value"] / scale).assign_coords(gcoords)
    rate_err = (m["err"] / scale).assign_coords(gcoords)
    onehot = xr.DataArray((index[:, None] == np.arange(ng)).astype(np.int64), dims=(FRAME, "dark_group"))
    nframes = xr.dot(good.astype(np.int64), onehot, dim=FRAME)

    st = _map_stats(rate, "dark_group", None, clip_sigma)
    thr = st.sel(stat="mean", drop=True) + hot_k * st.sel(stat="std", drop=True)
    if hot_min_groups is None:
        hot_min_groups = -(-ng // 2)
    hot = (rate > thr).sum("dark_group") >= hot_min_groups
    gst = _map_stats(rate, "dark_group", ~hot, clip_sigma)
    grate = _chunk(gst.sel(stat="median", drop=True), {"dark_group": -1})
    grate_err = math.sqrt(math.pi / 2) * gst.sel(stat="std", drop=True) / np.sqrt(gst.sel(stat="n", drop=True))
    grate_err = _chunk(grate_err, {"dark_group": -1})

    tmin = float(gtemp.min())
    exposures = sorted(set(_round(gexp, exptime_step).tolist()))
    gexp_r = _round(gexp, exptime_step)
    sel1 = [np.nonzero(gexp_r == e)[0] for e in exposures]
    d1 = [(idx, np.stack([np.ones(idx.size), gtemp[idx] - tmin], 1)) for idx in sel1]
    out = xr.Dataset({"rate": rate, "rate_err": rate_err, "nframes": nframes,
                      "hot": hot.astype(np.uint8), "hot_threshold": thr,
                      "global_rate": grate, "global_rate_err": grate_err})  # fmt: skip
    attrs = {}
    fits = [("_1d", d1, "exposure")]
    n_t = len(set(_round(gtemp, temp_step).tolist()))
    if len(exposures) >= 2 and n_t >= 2:
        fits.append(("", [(np.arange(ng), np.stack([np.ones(ng), gtemp - tmin, np.log(gexp)], 1))], None))
        attrs["dc2d"] = "fitted"
    else:
        attrs["dc2d"] = f"not fitted: needs 2 exposure times and 2 temperatures ({len(exposures)}, {n_t} given)"
    if weights == "noise_model":
        fit_err = xr.apply_ufunc(noise_model_sigma, rate.drop_vars(list(gcoords)), rate_err.drop_vars(list(gcoords)),
                                 m["nused"], kwargs={"texp": gexp},
                                 input_core_dims=[["dark_group"]] * 3, output_core_dims=[["dark_group"]],
                                 dask="parallelized", output_dtypes=[F8]).transpose("dark_group", Y, X)  # fmt: skip
    elif weights == "scatter":
        fit_err = rate_err
    else:
        fit_err = xr.ones_like(rate_err)
    for suffix, designs, edim in fits:
        names = ["A", "B", "gamma"][: designs[0][1].shape[1]]

        def shape(res, edim=edim):  # the 2-D fit: one design, no exposure dim; the 1-D fits: one per exposure
            return [r.isel(_e=0, drop=True) if edim is None else r.rename(_e=edim) for r in res]

        pix = shape(_exp_fit(rate, fit_err, hot, designs, maxiter, tol, "dark_group"))
        glob = shape(_exp_fit(grate, grate_err, True, designs, maxiter, tol, "dark_group"))
        for k, name in enumerate(names):
            gval, gerr = glob[0].isel(_p=k, drop=True), glob[1].isel(_p=k, drop=True)
            val, err = pix[0].isel(_p=k, drop=True), pix[1].isel(_p=k, drop=True)
            if name == "A":  # theta_0 = ln A
                gval, val = np.exp(gval), np.exp(val)
                gerr, err = gval * gerr, val * err
            out[f"global_{name}{suffix}"], out[f"global_{name}{suffix}_err"] = gval, gerr
            out[f"{name}{suffix}"], out[f"{name}{suffix}_err"] = val.where(hot, gval), err.where(hot, gerr)
        out[f"global_chi2_red{suffix}"] = glob[2]
        out[f"global_fit_failed{suffix}"] = glob[3]
        out[f"chi2_red{suffix}"] = pix[2].where(hot, glob[2])
        out[f"fit_failed{suffix}"] = xr.where(hot, pix[3], glob[3]).astype(np.uint8)
    out = out.assign_coords(exposure=("exposure", exposures))
    out = out.transpose(*[dm for dm in ("dark_group", "exposure", Y, X) if dm in out.dims])
    out = out.assign_coords({k: v for k, v in d.coords.items() if k in (Y, X) or v.dims == (FRAME,)})
    out = out.assign_coords(gcoords)
    out["rejected"] = rejected.assign_attrs(REJECT_ATTRS, long_name="why a frame was left out")
    out["zero_fraction"] = zero_fraction.assign_attrs(units="1", long_name="share of exact-zero raw pixels")
    out["group"] = xr.DataArray(index, dims=FRAME, attrs={"long_name": "dark_group of each frame"})
    out["bias_dtemp"] = xr.DataArray(dtemp, dims=FRAME, attrs={"units": "deg_C",
                                     "long_name": "frame temperature - temperature of the bias used"})  # fmt: skip
    units = {"rate": "DN / s", "rate_err": "DN / s", "global_rate": "DN / s", "global_rate_err": "DN / s",
             "hot_threshold": "DN / s", "A": "DN / s", "B": "1 / deg_C", "gamma": "1"}  # fmt: skip
    for k in out.data_vars:
        base = k.replace("global_", "").replace("_1d", "").replace("_err", "")
        if base in units:
            out[k].attrs["units"] = units[base]
        if k.startswith(("fit_failed", "global_fit_failed")):
            out[k].attrs = dict(FIT_FLAGS)
        if "chi2_red" in k:
            out[k].attrs = {"units": "1", "long_name": "reduced chi-square sum(r^2 / sigma^2) / (n - p)"}
    out["hot"].attrs = {
        "units": "1",
        "long_name": f"rate > clipped mean + {hot_k} sigma in >= {hot_min_groups} group(s)",
    }
    out.attrs = sanitize_attrs({
        "model": "cmos_dark", "formula_1d": "DC(T) = A * exp(B * (T - Tmin)) per exposure time",
        "formula_2d": "DC(T, t) = A * t**gamma * exp(B * (T - Tmin))", "Tmin": tmin,
        "units": {"DC": "DN / s", "A": "DN / s", "B": "1 / deg_C", "gamma": "1", "T": "deg_C", "t": "s"},
        "fit": "weighted nonlinear least squares in linear space (Gauss-Newton from the weighted log-space "
               "fit), weights 1 / sigma^2; errors scaled by chi2_red", "weights": weights,
        "fit_sigma": {"noise_model": "per-pixel read + shot noise model of the frame scatter (noise_model_sigma)",
                  "scatter": "rate_err", "none": "1"}[weights],
        "goodness_of_fit": "chi2_red", "method": method, "bias_mode": bias_mode, "hot_k": hot_k,
        "clip_sigma": clip_sigma, "hot_min_groups": hot_min_groups, "zero_frac_max": zero_frac_max,
        "temp_step": temp_step, "exptime_step": exptime_step, "per_pixel": "hot pixels; the others: global fit",
        **attrs,
    })  # fmt: skip
    return out


def synthesize_dark(model: xr.Dataset, T, t, kind: Literal["2d", "1d"] = "2d", frame: bool = False,
                    bias: xr.Dataset | None = None) -> xr.DataArray:  # fmt: skip
    """Dark-current rate (DN/s) at temperature ``T`` and exposure time ``t`` from the 2-D model, or the
    1-D model of exposure ``t`` (which must be one of the fitted exposures); with ``frame`` the dark frame
    in DN (``rate * t``), plus the synthesized bias at ``T`` when ``bias`` (a bias model) is given.
    ``T`` and ``t`` may be DataArrays (e.g. along ``frame``)."""
    tmin = float(model.attrs["Tmin"])
    if kind == "2d":
        if "gamma" not in model:
            raise DetflowInputError(_source(model), "gamma", "a fitted 2-D dark model", model.attrs.get("dc2d"))
        rate = model["A"] * t ** model["gamma"] * np.exp(model["B"] * (T - tmin))
    elif kind == "1d":
        e = np.asarray(model["exposure"].values, F8)
        tv = np.asarray(t.values if isinstance(t, xr.DataArray) else t, F8)
        j = np.argmin(np.abs(tv[..., None] - e), axis=-1)
        off = np.abs(e[j] - tv) > float(model.attrs.get("exptime_step", 1e-3))
        if np.any(off):
            raise DetflowInputError(_source(model), "exptime", f"one of the fitted exposures {e.tolist()}",
                                    np.asarray(tv)[off].tolist())  # fmt: skip
        jj = xr.DataArray(j, dims=t.dims) if isinstance(t, xr.DataArray) else int(j)
        m = model[["A_1d", "B_1d"]].isel(exposure=jj).drop_vars("exposure")
        rate = m["A_1d"] * np.exp(m["B_1d"] * (T - tmin))
    else:
        raise DetflowInputError(None, "kind", "'2d' or '1d'", kind)
    if not frame:
        return rate.rename("dark_rate").assign_attrs(units="DN / s", long_name="synthesized dark-current rate")
    out = rate * t
    if bias is not None:
        out = out + synthesize_bias(bias, T)
    return out.rename("dark").assign_attrs(units="DN", long_name="synthesized dark frame")
