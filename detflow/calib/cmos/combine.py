"""Combines of CMOS frames (median, mean, sigma-clipped mean; per group, along a whole axis), whole-map
statistics and per-pixel weighted linear least squares (:func:`wls_pixels`)."""

from __future__ import annotations

import math
import warnings

import dask.array as da
import numpy as np
import xarray as xr
from astropy.stats import sigma_clip, sigma_clipped_stats

from ...errors import DetflowInputError
from ...kernels import cmos as kc
from ...schema import FRAME, X, Y, sanitize_attrs
from .frames import F8, Method, _chunk, _whole


# ---- combines ------------------------------------------------------------------------------------------
def _combine_np(stack: np.ndarray, method: str, sigma: float, maxiters: int | None, cenfunc: str,
                stdfunc: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """``(value, err, n)`` over the last axis of ``stack`` (NaN = missing)."""
    stack = np.asarray(stack, F8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels give NaN
        if method == "sigma_clip":
            clipped = sigma_clip(stack, sigma=sigma, maxiters=maxiters, cenfunc=cenfunc, stdfunc=stdfunc, axis=-1,
                                 masked=True, copy=True)  # fmt: skip
            stack = clipped.filled(np.nan)
        n = np.isfinite(stack).sum(axis=-1)
        value = np.nanmedian(stack, axis=-1) if method == "median" else np.nanmean(stack, axis=-1)
        std = np.nanstd(stack, axis=-1, ddof=1) if stack.shape[-1] > 1 else np.full(n.shape, np.nan)
        err = np.where(n > 1, std / np.sqrt(np.maximum(n, 1)), np.nan)
    if method == "median":
        err = err * math.sqrt(math.pi / 2)
    return value, err, n


def _check_method(method: str) -> None:
    if method not in ("median", "mean", "sigma_clip"):
        raise DetflowInputError(None, "method", "'median', 'mean' or 'sigma_clip'", method)


def _grouped_combine(data: xr.DataArray, groups: list[np.ndarray], dim: str, good: xr.DataArray | None = None,
                     method: Method = "median", sigma: float = 3.0, maxiters: int | None = 5,
                     cenfunc: str = "median", stdfunc: str = "std") -> xr.Dataset:  # fmt: skip
    """Combine the frames of each group (frame indices) per pixel: ``value``, ``err``, ``nused`` (dim, y, x).
    Frames where ``good`` (frame,) is False count as missing."""
    _check_method(method)
    if method != "sigma_clip":
        return _grouped_stats(data, groups, dim, good, method == "median")

    def func(block, *rest):
        out = [np.empty(block.shape[:-1] + (len(groups),), dt) for dt in (F8, F8, np.int32)]
        for g, idx in enumerate(groups):
            s = block[..., idx].astype(F8)
            if rest:
                s = np.where(rest[0][..., idx], s, np.nan)
            for o, r in zip(out, _combine_np(s, method, sigma, maxiters, cenfunc, stdfunc)):
                o[..., g] = r
        return tuple(out)

    args = [data] + ([good] if good is not None else [])
    res = xr.apply_ufunc(func, *args, input_core_dims=[[FRAME]] * len(args), output_core_dims=[[dim]] * 3,
                         dask="parallelized", output_dtypes=[F8, F8, np.int32],
                         dask_gufunc_kwargs={"output_sizes": {dim: len(groups)}})  # fmt: skip
    names = ("value", "err", "nused")
    return xr.Dataset({k: v.transpose(dim, Y, X).drop_vars(list(v.coords)) for k, v in zip(names, res)})


def _stats_block(block, goodb, members, starts, use_median):
    ng = starts.size - 1
    out = np.empty((3 * ng,) + block.shape[1:], F8)
    count = np.empty((ng,) + block.shape[1:], np.int64)
    kc.group_stats(block, np.ascontiguousarray(goodb.reshape(-1), dtype=np.bool_), members, starts, use_median,
                   out[:ng], out[ng : 2 * ng], count)  # fmt: skip
    out[2 * ng :] = count
    return out


def _grouped_stats(data: xr.DataArray, groups: list[np.ndarray], dim: str, good: xr.DataArray | None,
                   use_median: bool) -> xr.Dataset:  # fmt: skip
    """The median / mean path of :func:`_grouped_combine`: the numba kernel over (frame, y, x) blocks as
    they are stored (no transposes), every frame of a tile in one block."""
    arr = _whole(data.transpose(FRAME, Y, X), FRAME)
    n, ng = arr.sizes[FRAME], len(groups)
    members = np.concatenate([np.asarray(i, np.int64) for i in groups]) if ng else np.zeros(0, np.int64)
    starts = np.concatenate([[0], np.cumsum([len(i) for i in groups])]).astype(np.int64)
    x = arr.data
    if good is None:
        g3 = np.ones((n, 1, 1), np.bool_)
    else:
        gd = good.data
        g3 = gd.rechunk(-1).reshape(n, 1, 1) if isinstance(gd, da.Array) else np.asarray(gd, np.bool_).reshape(n, 1, 1)
    if isinstance(x, da.Array):
        out = da.map_blocks(_stats_block, x, g3, members, starts, use_median, dtype=F8,
                            chunks=((3 * ng,), x.chunks[1], x.chunks[2]), meta=np.empty((0, 0, 0), F8))  # fmt: skip
    else:
        out = _stats_block(np.asarray(x), np.asarray(g3), members, starts, use_median)
    value, std, count = out[:ng], out[ng : 2 * ng], out[2 * ng :]
    err = std / np.sqrt(np.maximum(count, 1))
    err = (err * math.sqrt(math.pi / 2)) if use_median else err
    err = da.where(count > 1, err, np.nan) if isinstance(err, da.Array) else np.where(count > 1, err, np.nan)
    dims = (dim, Y, X)
    return xr.Dataset({"value": (dims, value), "err": (dims, err), "nused": (dims, count.astype(np.int32))})


def combine_frames(ds: xr.Dataset | xr.DataArray, method: Method = "median", sigma: float = 3.0,
                   maxiters: int | None = 5, cenfunc: str = "median", stdfunc: str = "std") -> xr.Dataset:  # fmt: skip
    """Combine a (frame, y, x) stack per pixel, lazily: ``data`` (y, x) the median, mean or sigma-clipped
    mean (astropy ``sigma_clip`` with ``sigma``, ``maxiters``, ``cenfunc``, ``stdfunc`` along ``frame``,
    then the mean of the rest), ``err`` its standard error, ``nused`` the frames used. NaN = missing."""
    arr = ds["data"] if isinstance(ds, xr.Dataset) else ds
    if arr.chunks is not None and len(arr.chunks[arr.dims.index(FRAME)]) > 1:
        arr = _chunk(arr, {FRAME: -1})
    c = _grouped_combine(arr, [np.arange(arr.sizes[FRAME])], "_g", None, method, sigma, maxiters, cenfunc, stdfunc)
    out = xr.Dataset({"data": c["value"][0], "err": c["err"][0], "nused": c["nused"][0]})
    out = out.assign_coords({k: v for k, v in arr.coords.items() if FRAME not in v.dims})
    units = arr.attrs.get("units", "DN")
    out["data"].attrs = {"units": units, "long_name": f"{method} combine over frames"}
    out["err"].attrs = {"units": units, "long_name": "standard error of the combine"}
    out["nused"].attrs = {"units": "1", "long_name": "frames used"}
    out.attrs = sanitize_attrs({"method": method, "sigma": sigma, "maxiters": maxiters, "cenfunc": cenfunc,
                                "stdfunc": stdfunc, "nframes": arr.sizes[FRAME]})  # fmt: skip
    return out


# ---- whole-map statistics ---------------------------------------------------------------------------------
STATS = ["mean", "median", "std", "n"]


def _map_stats(maps: xr.DataArray, dim: str, mask: xr.DataArray | None = None, sigma: float = 3.0) -> xr.DataArray:
    """Sigma-clipped mean, median, std and number of pixels of each map (dim, y, x) over its finite pixels
    (within ``mask`` (y, x), True = use), lazily, one task per map: (dim, stat)."""

    def func(m, *rest):
        out = np.full(m.shape[:-2] + (len(STATS),), np.nan)
        for i in np.ndindex(m.shape[:-2]):
            v = m[i]
            sel = np.isfinite(v) & (rest[0].astype(bool) if rest else True)
            if sel.sum() >= 3:
                mean, med, std = sigma_clipped_stats(v[sel], sigma=sigma, maxiters=10)
                out[i] = (mean, med, std, sel.sum())
        return out

    args = [_chunk(maps, {dim: 1, Y: -1, X: -1})]
    if mask is not None:
        args.append(_chunk(mask, {Y: -1, X: -1}))
    out = xr.apply_ufunc(func, *args, input_core_dims=[[Y, X]] * len(args), output_core_dims=[["stat"]],
                         dask="parallelized", output_dtypes=[F8],
                         dask_gufunc_kwargs={"output_sizes": {"stat": len(STATS)}})  # fmt: skip
    return out.assign_coords(stat=STATS)


# ---- linear least squares per pixel -----------------------------------------------------------------------
def wls_pixels(y: np.ndarray, design: np.ndarray, weights: np.ndarray | None = None, var_floor=None):
    """Weighted linear least squares per pixel over the last axis of ``y`` (..., n) with one design
    (n, p) for all pixels; non-finite points are left out. Returns ``(params (..., p), cov (..., p, p),
    rms (...), status (...))``: cov is ``(X^T W X)^-1`` times the residual variance ``sum w r^2 / (n_used -
    p)`` (``var_floor`` (...) instead where the residual variance is below a thousandth of it: the
    variance the points are known to have, so a fit of a few points that happen to lie on the line does
    not claim a zero error), rms the residual
    variance's square root; status 0, or too few points (< p + 1) / singular (NaN results)."""
    y = np.asarray(y, F8)
    xd = np.asarray(design, F8)
    n, p = xd.shape
    w = np.ones(n) if weights is None else np.asarray(weights, F8)
    ok = np.isfinite(y) & np.isfinite(w) & (w > 0)
    w = np.where(ok, w, 0.0)
    y0 = np.where(ok, y, 0.0)
    scale = np.sqrt((xd**2).sum(axis=0))
    scale[scale == 0] = 1.0
    xs = xd / scale  # equilibrated columns
    normal = np.einsum("...n,ni,nj->...ij", w, xs, xs)
    rhs = np.einsum("...n,ni,...n->...i", w, xs, y0)
    nused = ok.sum(axis=-1)
    evals, evecs = np.linalg.eigh(normal)
    good = (nused >= p + 1) & (evals[..., 0] > 1e-12 * np.maximum(evals[..., -1], 1e-300))
    inv_e = np.where(good[..., None], 1.0 / np.where(good[..., None], evals, 1.0), 0.0)
    ninv = np.einsum("...ik,...k,...jk->...ij", evecs, inv_e, evecs)
    beta = np.einsum("...ij,...j->...i", ninv, rhs)
    resid = np.where(ok, y0 - np.einsum("ni,...i->...n", xs, beta), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        s2 = (w * resid**2).sum(axis=-1) / (nused - p)
    params = beta / scale
    if var_floor is None:
        s2c = s2
    else:  # residuals that vanish by chance (points on the line): the points' known variance instead
        floor = np.asarray(var_floor, F8)
        s2c = np.where(s2 < 1e-3 * floor, floor, s2)
    cov = ninv / np.outer(scale, scale) * s2c[..., None, None]
    status = np.where(nused < p + 1, kc.FEW_POINTS, np.where(good, kc.OK, kc.SINGULAR)).astype(np.uint8)
    status = np.where((status == 0) & ~(np.isfinite(params).all(-1) & np.isfinite(s2)), kc.NOT_CONVERGED, status)
    bad = status != 0
    params[bad] = np.nan
    cov[bad] = np.nan
    return params, cov, np.where(bad, np.nan, np.sqrt(s2)), status.astype(np.uint8)


def _fit_linear(stack: xr.DataArray, dim: str, design: np.ndarray, weights: np.ndarray | None,
                var_floor: xr.DataArray | None = None):  # fmt: skip
    """:func:`wls_pixels` over ``dim`` of a (dim, y, x) stack, lazily: params (y, x, _p), cov (y, x, _p, _q),
    rms, status."""
    p = design.shape[1]

    def func(block, floor):
        return wls_pixels(block, design, weights, floor)

    stack = _whole(stack.drop_vars([c for c in stack.coords if c not in (Y, X)]), dim)
    floor = xr.zeros_like(stack.isel({dim: 0}, drop=True)) if var_floor is None else var_floor.drop_vars(
        [c for c in var_floor.coords if c not in (Y, X)])  # fmt: skip
    return xr.apply_ufunc(func, stack, floor, input_core_dims=[[dim], []], output_core_dims=[["_p"], ["_p", "_q"], [], []],
                          dask="parallelized", output_dtypes=[F8, F8, F8, np.uint8],
                          dask_gufunc_kwargs={"output_sizes": {"_p": p, "_q": p}})  # fmt: skip
