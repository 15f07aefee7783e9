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
* :func:`evaluate_model`: model vs held-out frames, per-pixel MAE and MAPE maps, per-frame and per
  (temperature, exposure) group summaries; :func:`summary_table`, :func:`plot_evaluation`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Literal

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from astropy.stats import sigma_clip, sigma_clipped_stats

from ..errors import DetflowInputError
from ..kernels import cmos as kc
from ..schema import FRAME, X, Y, sanitize_attrs

Method = Literal["median", "mean", "sigma_clip"]
REJECT = {"zero_pixels": 1, "no_dark_within_tolerance": 2}
FIT_FLAGS = {"flag_values": [kc.FEW_POINTS, kc.NONPOSITIVE, kc.SINGULAR, kc.NOT_CONVERGED],
             "flag_meanings": "too_few_points non_positive singular not_converged",
             "long_name": "fit status (0: fitted)", "units": "1"}  # fmt: skip
REJECT_ATTRS = {"flag_masks": list(REJECT.values()), "flag_meanings": " ".join(REJECT), "units": "1"}
F8 = np.float64


# ---- input ----------------------------------------------------------------------------------------------
def _source(ds: xr.Dataset) -> str | None:
    return ds.encoding.get("source") or ds.attrs.get("source")


def _path(ds: xr.Dataset, i: int) -> str | None:
    return str(ds["path"].values[i]) if "path" in ds.variables else _source(ds)


def _frames(ds: xr.Dataset, caltype: str | None, need: Sequence[str] = ("temp",)) -> xr.Dataset:
    """The frames of ``caltype`` (all with None), checked, with the frame axis in one chunk."""
    if "data" not in ds:
        raise DetflowInputError(_source(ds), "data", "a 'data' variable (frame, y, x) in DN", list(ds.data_vars))
    if set(ds["data"].dims) != {FRAME, Y, X}:
        raise DetflowInputError(_source(ds), "data", "dims (frame, y, x)", ds["data"].dims)
    for name in tuple(need) + (("caltype",) if caltype else ()):
        if name not in ds.coords:
            raise DetflowInputError(_source(ds), name, f"a frame coordinate {name!r}", list(ds.coords))
    if caltype:
        kinds = np.char.upper(np.char.strip(ds["caltype"].values.astype(str)))
        keep = np.nonzero(kinds == caltype)[0]
        if keep.size == 0:
            raise DetflowInputError(_source(ds), "caltype", f"frames with caltype {caltype}", sorted(set(kinds)))
        ds = ds.isel({FRAME: keep})
    for name in need:
        if name != "filter":
            v = np.asarray(ds[name].values, F8)
            bad = np.nonzero(~np.isfinite(v))[0]
            if bad.size:
                src = _source(ds)
                field = f"{name} as ingested into {src}" if src else name  # the store keeps what the log said then
                raise DetflowInputError(_path(ds, bad[0]), field, "a finite value (after fixing the log, ingest "
                                        "again with overwrite)" if src else "a finite value", v[bad[0]])  # fmt: skip
    if ds["data"].chunks is not None and len(ds["data"].chunksizes[FRAME]) > 1:
        ds = _chunk(ds, {FRAME: -1})
    return ds


def _round(v, step: float) -> np.ndarray:
    return np.round(np.round(np.asarray(v, F8) / step) * step, 6)


def _temp_keys(ds: xr.Dataset, temps: np.ndarray, step: float) -> np.ndarray:
    """Each frame's temperature grouping key: its set point (``filetemp``, the ``T<temp>`` of its folder or
    file name) rounded to ``step`` where every frame has one, else the logged temperature rounded: the
    logged temperature jitters about the set point, and rounding it would split a set point's frames
    into several groups. (The fits use each group's mean logged temperature either way.)"""
    if "filetemp" in ds.coords:
        ft = np.asarray(ds["filetemp"].values, F8)
        if ft.size and np.all(np.isfinite(ft)):
            return _round(ft, step)
    return _round(temps, step)


def _group(*keys: np.ndarray) -> tuple[list[tuple], np.ndarray]:
    """Unique key tuples (sorted) and each frame's group index."""
    rows = list(zip(*(k.tolist() for k in keys)))
    labels = sorted(set(rows))
    where = {k: i for i, k in enumerate(labels)}
    return labels, np.array([where[r] for r in rows], dtype=np.int64)


def _chunk(obj, chunks: dict):
    """``obj.chunk(chunks)`` with the non-index coordinates left in memory (xarray would chunk them too, and a
    later merge would compute them to compare)."""
    coords = {k: v for k, v in obj.coords.items() if k not in obj.indexes}
    return obj.drop_vars(list(coords)).chunk(chunks).assign_coords(coords)


def _whole(arr: xr.DataArray, dim: str) -> xr.DataArray:
    """``arr`` with ``dim`` in one chunk (a core dimension of a per-pixel function)."""
    return _chunk(arr, {dim: -1}) if arr.chunks is not None and len(arr.chunksizes[dim]) > 1 else arr


def _independent(arr: xr.DataArray) -> xr.DataArray:
    """``arr`` computed by its own copy of the graph: the same tasks under new keys.

    A whole-frame statistic (a frame's share of zero pixels, its normalisation) that a per-pixel step then
    needs is taken from this copy. The frames are read twice, but the per-pixel chain stays one fused task
    per tile that waits for the statistic before it reads anything; with a shared read, dask must hold
    every tile of the stack in memory until the statistic is known (16 GiB for 1000 2048x2048 darks)."""
    if arr.chunks is None:
        return arr
    # dask.graph_manipulation.clone would be the public way, but it keeps some of xarray's indexing keys
    # shared and dask 2026.x then fails to fuse the result ("Cannot fuse tasks with multiple outputs"), so
    # every key is renamed here. dask._task_spec is private: without it, fall back to clone
    from dask.base import tokenize

    try:
        from dask._task_spec import convert_legacy_graph
    except ImportError:  # pragma: no cover - other dask versions
        from dask.graph_manipulation import clone

        return arr.copy(data=clone(arr.data, assume_layers=False))

    x = arr.data
    tag = "-twin-" + tokenize(x.name, "twin")[:10]
    graph = convert_legacy_graph(dict(x.__dask_graph__()))
    subs = {k: (k[0] + tag, *k[1:]) if isinstance(k, tuple) else f"{k}{tag}" for k in graph}
    twin = {subs[k]: node.substitute(subs, key=subs[k]) for k, node in graph.items()}
    return arr.copy(data=da.Array(twin, x.name + tag, chunks=x.chunks, dtype=x.dtype, meta=x._meta))


def _tile_chunks(like: xr.DataArray) -> dict:
    return {d: c for d, c in like.chunksizes.items() if d in (Y, X)} if like.chunks is not None else {}


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


# ---- per-frame reference subtraction ----------------------------------------------------------------------
def _subtract(data: xr.DataArray, stack: xr.DataArray, coef: np.ndarray) -> xr.DataArray:
    """``data - coef @ stack`` per frame (float64): ``stack`` (ref, y, x), ``coef`` (frame, ref)."""
    stack = stack.transpose("ref", Y, X)
    if data.chunks is not None:
        stack = _chunk(stack, {"ref": -1, **_tile_chunks(data)})
    coef = np.asarray(coef, F8)

    def func(block, st):
        return block.astype(F8) - np.einsum("...k,fk->...f", st, coef)

    stack = stack.drop_vars([c for c in stack.coords if c not in (Y, X)])  # y, x must match the data's exactly
    out = xr.apply_ufunc(func, data, stack, input_core_dims=[[FRAME], ["ref"]], output_core_dims=[[FRAME]],
                         dask="parallelized", output_dtypes=[F8], join="exact")  # fmt: skip
    return out.transpose(FRAME, Y, X)


def _bias_refs(bias: xr.Dataset, temps: np.ndarray, mode: str) -> tuple[xr.DataArray, np.ndarray, np.ndarray]:
    """The bias as a reference stack and per-frame coefficients: ``master`` mode the nearest-temperature
    master (one-hot), ``model`` mode ``a + b T``. Also the temperature offset of the master used."""
    temps = np.asarray(temps, F8)
    if mode == "master":
        if "master" not in bias:
            raise DetflowInputError(_source(bias), "master", "bias masters (build_bias_model output)")
        gt = np.asarray(bias["group_temp"].values, F8)
        j = np.argmin(np.abs(temps[:, None] - gt[None, :]), axis=1)
        coef = np.zeros((temps.size, gt.size))
        coef[np.arange(temps.size), j] = 1.0
        return bias["master"].rename({"temp_group": "ref"}), coef, temps - gt[j]
    if mode == "model":
        if "a" not in bias or "b" not in bias:
            raise DetflowInputError(_source(bias), "a, b", "a bias model (build_bias_model output)")
        stack = xr.concat([bias["a"], bias["b"]], dim="ref", coords="minimal", compat="override")
        return stack, np.stack([np.ones_like(temps), temps], axis=1), np.zeros_like(temps)
    raise DetflowInputError(None, "bias_mode", "'master' or 'model'", mode)


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


# ---- bias ------------------------------------------------------------------------------------------------
def build_bias_model(ds: xr.Dataset, *, method: Method = "median", sigma: float = 3.0, maxiters: int | None = 5,
                     temp_step: float = 0.1, weights: Literal["none", "nframes"] = "none",
                     hot_k: float | None = None, clip_sigma: float = 3.0) -> xr.Dataset:  # fmt: skip
    """Bias masters per temperature group and the per-pixel model ``bias(T) = a + b T`` (see module notes).

    Output: ``master``, ``master_err`` (temp_group, y, x) DN with coords ``temp_group`` (rounded group
    temperature), ``group_temp`` (mean frame temperature, the fit's T), ``group_nframes``; ``a`` (DN),
    ``b`` (DN / deg_C), ``a_err``, ``b_err``, ``cov_ab``, ``rms`` (residual rms, DN), ``fit_failed``
    (y, x); with ``hot_k``: ``hot`` (y, x) uint8 (a master pixel > median + hot_k sigma of its map,
    sigma-clipped) and ``hot_threshold`` (temp_group).
    """
    if weights not in ("none", "nframes"):
        raise DetflowInputError(None, "weights", "'none' or 'nframes'", weights)
    b = _frames(ds, "BIAS", ("temp",))
    temps = np.asarray(b["temp"].values, F8)
    labels, index = _group(_temp_keys(b, temps, temp_step))
    if len(labels) < 3:
        raise DetflowInputError(_source(ds) or _path(b, 0), "temp", f"bias frames at 3 or more temperatures "
                                f"(rounded to {temp_step} deg C) to fit a + b*T with errors",
                                [k[0] for k in labels])  # fmt: skip
    groups = [np.nonzero(index == g)[0] for g in range(len(labels))]
    gtemp = np.array([temps[i].mean() for i in groups])
    nfr = np.array([len(i) for i in groups])
    m = _grouped_combine(b["data"], groups, "temp_group", None, method, sigma, maxiters)
    coords = {"temp_group": [k[0] for k in labels], "group_temp": ("temp_group", gtemp),
              "group_nframes": ("temp_group", nfr)}  # fmt: skip
    master = m["value"].assign_coords(coords)
    w = nfr / nfr.mean() if weights == "nframes" else np.ones(len(groups))
    tc = float((w * gtemp).sum() / w.sum())
    # the masters' own variance stands in for a residual variance that vanished by chance: with a few
    # masters (3-5 set points) medians of integer counts can lie exactly on a line (a zero error)
    floor = (m["err"] ** 2 * xr.DataArray(w, dims="temp_group")).sum("temp_group") / w.sum()
    params, cov, rms, status = _fit_linear(master, "temp_group", np.stack([np.ones_like(gtemp), gtemp - tc], 1), w,
                                           floor)  # fmt: skip
    slope = params.isel(_p=1)
    a = params.isel(_p=0) - slope * tc
    c00, c01, c11 = cov.isel(_p=0, _q=0), cov.isel(_p=0, _q=1), cov.isel(_p=1, _q=1)
    var_a = c00 - 2 * tc * c01 + tc**2 * c11
    out = xr.Dataset({
        "master": master, "master_err": m["err"].assign_coords(coords),
        "a": a, "b": slope, "a_err": np.sqrt(var_a), "b_err": np.sqrt(c11),
        "cov_ab": c01 - tc * c11, "rms": rms, "fit_failed": status,
    })  # fmt: skip
    out = out.transpose("temp_group", Y, X).assign_coords({k: v for k, v in b.coords.items() if k in (Y, X)})
    if hot_k is not None:
        st = _map_stats(out["master"], "temp_group", None, clip_sigma)
        thr = st.sel(stat="median", drop=True) + hot_k * st.sel(stat="std", drop=True)
        out["hot_threshold"] = thr.assign_attrs(units="DN", long_name=f"clipped median + {hot_k} sigma of each master")
        out["hot"] = (out["master"] > thr).any("temp_group").astype(np.uint8).assign_attrs(
            units="1", long_name="hot in at least one master")
    for k, u in {"master": "DN", "master_err": "DN", "a": "DN", "b": "DN / deg_C", "a_err": "DN",
                 "b_err": "DN / deg_C", "cov_ab": "DN2 / deg_C", "rms": "DN"}.items():  # fmt: skip
        out[k].attrs["units"] = u
    out["rms"].attrs["long_name"] = "residual rms sqrt(sum w r^2 / (n - 2)) (goodness of fit)"
    out["fit_failed"].attrs = dict(FIT_FLAGS)
    out["group_temp"].attrs["units"] = out["temp_group"].attrs["units"] = "deg_C"
    out.attrs = sanitize_attrs({
        "model": "cmos_bias", "formula": "bias(T) = a + b * T", "T": "detector temperature (deg C)",
        "units": {"a": "DN", "b": "DN / deg_C", "T": "deg_C"}, "method": method, "sigma": sigma,
        "maxiters": maxiters, "temp_step": temp_step, "weights": weights, "hot_k": hot_k,
        "fit": "linear least squares per pixel over the group masters (centred at Tc, transformed back)",
        "goodness_of_fit": "rms", "Tc": tc, "Tmin": float(gtemp.min()), "Tmax": float(gtemp.max()),
        "nframes": int(b.sizes[FRAME]),
    })  # fmt: skip
    return out


def synthesize_bias(model: xr.Dataset, T, with_err: bool = False) -> xr.DataArray | xr.Dataset:
    """``a + b T`` (DN) at temperature(s) ``T`` (scalar: (y, x); a sequence: (temp, y, x)); with
    ``with_err`` a Dataset with ``bias`` and ``err`` (from a_err, b_err and cov_ab)."""
    t = T if isinstance(T, xr.DataArray) else (xr.DataArray(np.asarray(T, F8), dims="temp") if np.ndim(T) else float(T))
    bias = (model["a"] + model["b"] * t).rename("bias").assign_attrs(units="DN", long_name="synthesized bias")
    if isinstance(t, xr.DataArray):
        bias = bias.transpose(*t.dims, ...)
    if not with_err:
        return bias
    var = model["a_err"] ** 2 + 2 * t * model["cov_ab"] + t**2 * model["b_err"] ** 2
    return xr.Dataset({"bias": bias, "err": np.sqrt(var).transpose(*bias.dims).assign_attrs(units="DN")})


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
    grate_err = (math.sqrt(math.pi / 2) * gst.sel(stat="std", drop=True) / np.sqrt(gst.sel(stat="n", drop=True)))
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
    out["hot"].attrs = {"units": "1",
                        "long_name": f"rate > clipped mean + {hot_k} sigma in >= {hot_min_groups} group(s)"}
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


# ---- flat ------------------------------------------------------------------------------------------------
def _bin_median(img: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block medians of ``size`` x ``size`` pixels (NaN-aware; partial edge blocks included) and the
    block centres (y, x) in pixel coordinates."""
    ny, nx = img.shape
    by, bx = -(-ny // size), -(-nx // size)
    pad = np.full((by * size, bx * size), np.nan)
    pad[:ny, :nx] = img
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(pad.reshape(by, size, bx, size).transpose(0, 2, 1, 3).reshape(by, bx, -1), axis=-1)
    yc = np.array([(i * size + min((i + 1) * size, ny) - 1) / 2 for i in range(by)])
    xc = np.array([(j * size + min((j + 1) * size, nx) - 1) / 2 for j in range(bx)])
    return med, yc, xc


def radial_vignetting(img: np.ndarray, order: int = 2, bin_size: int = 8, centre: tuple[float, float] | None = None):
    """Fit ``c0 (1 + sum_k c_k rho^k)``, ``rho = ((x - xc)^2 + (y - yc)^2) / R^2`` (R the half-diagonal of
    ``img``) to the block-median binned ``img`` by scipy ``least_squares``, the centre fitted unless given
    as ``(xc, yc)``. Returns ``(V, params, errs)``: V = ``1 + sum_k c_k rho^k`` (1 at the centre), params
    ``[xc, yc, c0, c1, ..., c_order]`` and their 1-sigma errors (covariance times the residual variance;
    0 for a given centre)."""
    from scipy.optimize import least_squares

    ny, nx = img.shape
    med, yb, xb = _bin_median(np.asarray(img, F8), bin_size)
    gy, gx = np.meshgrid(yb, xb, indexing="ij")
    ok = np.isfinite(med)
    gy, gx, v = gy[ok], gx[ok], med[ok]
    r2 = 0.25 * (ny**2 + nx**2)
    fit_centre = centre is None
    npar = order + 1 + (2 if fit_centre else 0)
    nan = np.full(order + 3, np.nan)
    if v.size < npar + 1:
        return np.full((ny, nx), np.nan), nan, nan

    def unpack(q):
        xc, yc = (q[0], q[1]) if fit_centre else centre
        return xc, yc, q[2:] if fit_centre else q

    def model(q, yy, xx):
        xc, yc, c = unpack(q)
        rho = ((xx - xc) ** 2 + (yy - yc) ** 2) / r2
        return c[0] * (1 + sum(c[k] * rho**k for k in range(1, order + 1)))

    start = [float(np.nanmax(v))] + [0.0] * order
    if fit_centre:  # start at the brightest bin
        k = int(np.argmax(v))
        start = [gx[k], gy[k]] + start
    sol = least_squares(lambda q: model(q, gy, gx) - v, np.array(start, F8), method="lm", x_scale="jac")
    dof = v.size - npar
    s2 = float((sol.fun**2).sum() / dof)
    try:
        cov = np.linalg.inv(sol.jac.T @ sol.jac) * s2
        err = np.sqrt(np.diag(cov))
    except np.linalg.LinAlgError:
        err = np.full(npar, np.nan)
    xc, yc, c = unpack(sol.x)
    params = np.concatenate([[xc, yc], c])
    errs = err if fit_centre else np.concatenate([[0.0, 0.0], err])
    yy, xx = np.mgrid[0:ny, 0:nx]
    vmap = model(sol.x, yy, xx) / c[0]
    return vmap, params, errs


def empirical_vignetting(img: np.ndarray, smooth_sigma: float = 8.0) -> np.ndarray:
    """A smoothed ``img`` normalised to its maximum: Gaussian smoothing (``smooth_sigma`` pixels) that
    ignores NaNs and renormalises at the edges (normalised convolution)."""
    from scipy.ndimage import gaussian_filter

    a = np.asarray(img, F8)
    ok = np.isfinite(a)
    num = gaussian_filter(np.where(ok, a, 0.0), smooth_sigma, mode="constant", cval=0.0)
    den = gaussian_filter(ok.astype(F8), smooth_sigma, mode="constant", cval=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = num / den
    return s / np.nanmax(s)


def _vignetting(mean_master: xr.DataArray, mode: str, order: int, bin_size: int, centre, smooth_sigma: float):
    npar = order + 3

    def func(m):
        vm = np.empty(m.shape)
        pars = np.full(m.shape[:-2] + (npar,), np.nan)
        errs = np.full_like(pars, np.nan)
        for i in np.ndindex(m.shape[:-2]):
            if mode == "radial":
                vm[i], pars[i], errs[i] = radial_vignetting(m[i], order, bin_size, centre)
            else:
                vm[i] = empirical_vignetting(m[i], smooth_sigma)
        return vm, pars, errs

    arr = _chunk(mean_master, {"band": 1, Y: -1, X: -1}).transpose("band", Y, X)
    return xr.apply_ufunc(func, arr, input_core_dims=[[Y, X]], output_core_dims=[[Y, X], ["vparam"], ["vparam"]],
                          dask="parallelized", output_dtypes=[F8, F8, F8],
                          dask_gufunc_kwargs={"output_sizes": {"vparam": npar}})  # fmt: skip


def build_flat_model(ds: xr.Dataset, dark: xr.Dataset, bias: xr.Dataset, *,
                     bias_mode: Literal["master", "model"] = "master", method: Method = "median",
                     sigma: float = 3.0, maxiters: int | None = 5, normalize: Literal["mean", "max"] = "mean",
                     vignetting: Literal["radial", "empirical"] | None = "radial", radial_order: int = 2,
                     bin_size: int = 8, centre: tuple[float, float] | None = None, smooth_sigma: float = 8.0,
                     max_dtemp: float = 5.0, max_dexptime: float = 10.0, temp_step: float = 0.1,
                     exptime_step: float = 1e-3) -> xr.Dataset:  # fmt: skip
    """Master flats per (filter, T, t), vignetting per filter and the per-pixel model ``A + B (T - Tref) +
    C (t - tref)`` (module notes). ``dark``: :func:`build_dark_model` output (its group rates);
    ``bias``: :func:`build_bias_model` output.

    Output: ``master``, ``master_err`` (flat_group, y, x) normalised and divided by the vignetting, coords
    ``group_filter``, ``group_temp``, ``group_exptime``, ``group_nframes``; ``vignetting`` (band, y, x),
    ``vignetting_params``, ``vignetting_params_err`` (band, vparam: xc, yc, c0, c1, ...); ``A``, ``B``,
    ``C`` and ``*_err``, ``rms``, ``fit_failed`` (band, y, x); frame-level ``rejected`` (bit 2: no dark
    within tolerance), ``dark_group`` (-1: none), ``dark_dtemp``, ``dark_dexptime``, ``norm``; attrs
    ``Tref``, ``tref``, ``rejected_pairs``. A filter whose masters share one temperature (exposure) gets
    B (C) = 0 with NaN error (``attrs['terms']``).
    """
    if normalize not in ("mean", "max"):
        raise DetflowInputError(None, "normalize", "'mean' or 'max'", normalize)
    if vignetting not in ("radial", "empirical", None):
        raise DetflowInputError(None, "vignetting", "'radial', 'empirical' or None", vignetting)
    f = _frames(ds, "FLAT", ("temp", "exptime", "filter"))
    temps = np.asarray(f["temp"].values, F8)
    texp = np.asarray(f["exptime"].values, F8)
    filt = np.asarray(f["filter"].values).astype(str)
    dtemp_g = np.asarray(dark["group_temp"].values, F8)
    dexp_g = np.asarray(dark["group_exptime"].values, F8)
    dist = np.hypot((temps[:, None] - dtemp_g) / max_dtemp, (texp[:, None] - dexp_g) / max_dexptime)
    j = np.argmin(dist, axis=1)
    ddt, ddx = temps - dtemp_g[j], texp - dexp_g[j]
    far = (np.abs(ddt) > max_dtemp) | (np.abs(ddx) > max_dexptime)
    paths = [_path(f, i) for i in range(f.sizes[FRAME])]
    rejected_pairs = [{"frame": int(i), "path": paths[i], "temp": temps[i], "exptime": texp[i],
                       "dark_temp": dtemp_g[j[i]], "dark_exptime": dexp_g[j[i]],
                       "reason": f"nearest dark beyond {max_dtemp} deg C or {max_dexptime} s"}
                      for i in np.nonzero(far)[0]]  # fmt: skip
    if far.all():
        raise DetflowInputError(paths[0], "temp/exptime", f"a dark group within {max_dtemp} deg C and "
                                f"{max_dexptime} s of at least one flat", rejected_pairs[0])  # fmt: skip
    bstack, bcoef, _ = _bias_refs(bias, temps, bias_mode)
    dcoef = np.zeros((temps.size, dtemp_g.size))
    dcoef[np.arange(temps.size), j] = texp
    rate = dark["rate"].drop_vars([c for c in dark["rate"].coords if c not in (Y, X)])
    stack = xr.concat([bstack.drop_vars([c for c in bstack.coords if c not in (Y, X)]),
                       rate.rename({"dark_group": "ref"})], dim="ref")  # fmt: skip
    sub = _subtract(f["data"], stack, np.concatenate([bcoef, dcoef], axis=1))
    twin = _independent(sub)
    norm = twin.mean((Y, X), skipna=True) if normalize == "mean" else twin.max((Y, X), skipna=True)
    nflat = sub / norm

    keep = np.nonzero(~far)[0]
    labels, gidx = _group(filt[keep], _temp_keys(f, temps, temp_step)[keep], _round(texp[keep], exptime_step))
    groups = [keep[gidx == g] for g in range(len(labels))]
    gfilt = np.array([k[0] for k in labels])
    gtemp = np.array([temps[i].mean() for i in groups])
    gexp = np.array([texp[i].mean() for i in groups])
    gcoords = {"group_filter": ("flat_group", gfilt), "group_temp": ("flat_group", gtemp),
               "group_exptime": ("flat_group", gexp),
               "group_nframes": ("flat_group", [len(i) for i in groups])}  # fmt: skip
    m = _grouped_combine(nflat, groups, "flat_group", None, method, sigma, maxiters)
    master, master_err = m["value"], m["err"]
    bands = sorted(set(gfilt.tolist()))
    band_of = xr.DataArray(gfilt, dims="flat_group")
    out = xr.Dataset()
    if vignetting is not None:
        mean_master = xr.concat([master.isel(flat_group=np.nonzero(gfilt == b)[0]).mean("flat_group") for b in bands],
                                dim="band")  # fmt: skip
        vmap, vpar, verr = _vignetting(mean_master.assign_coords(band=bands), vignetting, radial_order, bin_size,
                                       centre, smooth_sigma)  # fmt: skip
        vmap = vmap.transpose("band", Y, X).assign_coords(band=bands)
        if master.chunks is not None:
            vmap = _chunk(vmap, _tile_chunks(master))
        vsel = vmap.sel(band=band_of).drop_vars("band")
        master, master_err = master / vsel, master_err / vsel
        vnames = ["xc", "yc"] + [f"c{k}" for k in range(radial_order + 1)]
        label = "radial vignetting (1 at the centre)" if vignetting == "radial" else "empirical vignetting (max 1)"
        out["vignetting"] = vmap.assign_attrs(units="1", long_name=label)
        out["vignetting_params"] = vpar.assign_coords(band=bands, vparam=vnames)
        out["vignetting_params_err"] = verr.assign_coords(band=bands, vparam=vnames)
    tref, texpref = float(gtemp.mean()), float(gexp.mean())
    res, terms = [], {}
    for b in bands:
        sel = np.nonzero(gfilt == b)[0]
        cols = [np.ones(sel.size)]
        use = ["A"]
        if len(set(_round(gtemp[sel], temp_step).tolist())) > 1:
            cols.append(gtemp[sel] - tref)
            use.append("B")
        if len(set(_round(gexp[sel], exptime_step).tolist())) > 1:
            cols.append(gexp[sel] - texpref)
            use.append("C")
        terms[b] = use
        params, cov, rms, status = _fit_linear(master.isel(flat_group=sel), "flat_group", np.stack(cols, 1), None)
        band = {}
        for name in ("A", "B", "C"):
            if name in use:
                k = use.index(name)
                band[name], band[f"{name}_err"] = params.isel(_p=k), np.sqrt(cov.isel(_p=k, _q=k))
            else:
                band[name] = xr.zeros_like(params.isel(_p=0))
                band[f"{name}_err"] = xr.full_like(params.isel(_p=0), np.nan)
        band["rms"], band["fit_failed"] = rms, status
        res.append(xr.Dataset(band))
    fit = xr.concat(res, dim="band").assign_coords(band=bands)
    out = out.merge(fit)
    out["master"] = master.assign_coords(gcoords).assign_attrs(units="1", long_name="normalised master flat")
    out["master_err"] = master_err.assign_coords(gcoords).assign_attrs(units="1")
    out = out.transpose(*[dm for dm in ("flat_group", "band", "vparam", Y, X) if dm in out.dims])
    out = out.assign_coords({k: v for k, v in f.coords.items() if k in (Y, X) or v.dims == (FRAME,)})
    out["rejected"] = xr.DataArray(np.where(far, REJECT["no_dark_within_tolerance"], 0).astype(np.uint8), dims=FRAME,
                                   attrs=dict(REJECT_ATTRS, long_name="why a frame was left out"))  # fmt: skip
    out["dark_group"] = xr.DataArray(np.where(far, -1, j), dims=FRAME, attrs={"long_name": "dark group subtracted"})
    out["dark_dtemp"] = xr.DataArray(ddt, dims=FRAME, attrs={"units": "deg_C"})
    out["dark_dexptime"] = xr.DataArray(ddx, dims=FRAME, attrs={"units": "s"})
    out["norm"] = norm.drop_vars([c for c in norm.coords if c not in out.coords]).assign_attrs(
        units="DN", long_name=f"per-frame {normalize} used to normalise")
    for k in ("A", "B", "C", "A_err", "B_err", "C_err", "rms"):
        out[k].attrs["units"] = {"B": "1 / deg_C", "C": "1 / s"}.get(k[0], "1")
    out["rms"].attrs["long_name"] = "residual rms sqrt(sum r^2 / (n - p)) (goodness of fit)"
    out["fit_failed"].attrs = dict(FIT_FLAGS)
    out.attrs = sanitize_attrs({
        "model": "cmos_flat", "formula": "flat(T, t) = A + B * (T - Tref) + C * (t - tref)", "Tref": tref,
        "tref": texpref, "units": {"A": "1", "B": "1 / deg_C", "C": "1 / s", "T": "deg_C", "t": "s"},
        "fit": "linear least squares per pixel over the masters of each filter", "goodness_of_fit": "rms",
        "method": method, "normalize": normalize, "vignetting": vignetting, "bias_mode": bias_mode,
        "vignetting_formula": "V = 1 + sum_k c_k rho^k, rho = ((x - xc)^2 + (y - yc)^2) / R^2, R = half-diagonal"
        if vignetting == "radial" else ("Gaussian-smoothed mean master / its max" if vignetting else None),
        "radial_order": radial_order, "bin_size": bin_size, "centre": centre, "smooth_sigma": smooth_sigma,
        "max_dtemp": max_dtemp, "max_dexptime": max_dexptime, "temp_step": temp_step,
        "exptime_step": exptime_step, "terms": terms, "rejected_pairs": rejected_pairs,
    })  # fmt: skip
    return out


def synthesize_flat(model: xr.Dataset, band, T, t, vignetting: bool = True) -> xr.DataArray:
    """``A + B (T - Tref) + C (t - tref)`` of filter ``band`` (times the vignetting when present and asked
    for). ``band``, ``T``, ``t`` may be DataArrays (e.g. along ``frame``)."""
    m = model[["A", "B", "C"] + (["vignetting"] if vignetting and "vignetting" in model else [])].sel(band=band)
    flat = m["A"] + m["B"] * (T - float(model.attrs["Tref"])) + m["C"] * (t - float(model.attrs["tref"]))
    if vignetting and "vignetting" in model:
        flat = flat * m["vignetting"]
    return flat.drop_vars("band", errors="ignore").rename("flat").assign_attrs(units="1", long_name="model flat")


# ---- evaluation ------------------------------------------------------------------------------------------
def evaluate_model(model: xr.Dataset, ds: xr.Dataset, *, bias: xr.Dataset | None = None,
                   dark: xr.Dataset | None = None, bias_mode: Literal["master", "model"] = "master",
                   dark_kind: Literal["2d", "1d"] = "2d", temp_step: float = 0.1,
                   exptime_step: float = 1e-3) -> xr.Dataset:  # fmt: skip
    """Model prediction vs the frames of ``ds`` (all of them: held-out frames of the model's kind).

    bias model: observed ``data`` vs ``a + b T``; dark model: ``data`` minus the bias (``bias`` needed)
    vs ``rate(T, t) t`` (DN); flat model: the frame reduced as the flat builder does (``bias`` and ``dark``
    needed, normalised the same way) vs ``synthesize_flat``. Errors ``e = predicted - observed``.
    Output: ``mae`` (y, x) mean |e| over frames, ``mape`` (y, x) mean |e / observed| in percent (frames
    where observed is 0 left out); per frame ``frame_mae``, ``frame_mape``, ``frame_mean_error``,
    ``frame_rms_error``; per (temperature, exposure) group ``group_mae``, ``group_mape``,
    ``group_mean_error``, ``group_rms_error``, ``group_nframes`` (coords ``group_temp``,
    ``group_exptime``). Lazy; :func:`summary_table` computes the group table.
    """
    kind = model.attrs.get("model")
    need = ("temp", "exptime", "filter") if kind == "cmos_flat" else ("temp", "exptime")
    f = _frames(ds, None, need)
    T = f["temp"].astype(F8)
    t = f["exptime"].astype(F8)
    if kind == "cmos_bias":
        obs, pred, units = f["data"].astype(F8), synthesize_bias(model, T.drop_vars(list(T.coords))), "DN"
    elif kind in ("cmos_dark", "cmos_flat"):
        if bias is None:
            raise DetflowInputError(None, "bias", f"a bias model to evaluate a {kind} model")
        bstack, bcoef, _ = _bias_refs(bias, T.values, bias_mode)
        if kind == "cmos_dark":
            obs = _subtract(f["data"], bstack, bcoef)
            pred = synthesize_dark(model, T.drop_vars(list(T.coords)), t.drop_vars(list(t.coords)), dark_kind,
                                   frame=True)  # fmt: skip
            units = "DN"
        else:
            if dark is None:
                raise DetflowInputError(None, "dark", "a dark model to evaluate a flat model")
            gt, ge = np.asarray(dark["group_temp"].values, F8), np.asarray(dark["group_exptime"].values, F8)
            j = np.argmin(np.hypot((T.values[:, None] - gt) / float(model.attrs["max_dtemp"]),
                                   (t.values[:, None] - ge) / float(model.attrs["max_dexptime"])), axis=1)  # fmt: skip
            dcoef = np.zeros((T.size, gt.size))
            dcoef[np.arange(T.size), j] = t.values
            rate = dark["rate"].drop_vars([c for c in dark["rate"].coords if c not in (Y, X)])
            stack = xr.concat([bstack.drop_vars([c for c in bstack.coords if c not in (Y, X)]),
                               rate.rename({"dark_group": "ref"})], dim="ref")  # fmt: skip
            sub = _subtract(f["data"], stack, np.concatenate([bcoef, dcoef], axis=1))
            twin = _independent(sub)
            norm = twin.mean((Y, X), skipna=True) if model.attrs["normalize"] == "mean" else twin.max((Y, X))
            obs = sub / norm
            band = xr.DataArray(np.asarray(f["filter"].values).astype(str), dims=FRAME)
            pred = synthesize_flat(model, band, T.drop_vars(list(T.coords)), t.drop_vars(list(t.coords)))
            units = "1"
    else:
        raise DetflowInputError(_source(model), "attrs.model", "'cmos_bias', 'cmos_dark' or 'cmos_flat'", kind)
    obs = obs.drop_vars([c for c in obs.coords if c not in (Y, X)])
    pred = pred.drop_vars([c for c in pred.coords if c not in (Y, X)]).transpose(FRAME, Y, X)
    if obs.chunks is not None:
        pred = _chunk(pred, dict(zip(obs.dims, obs.chunks)))
    err = pred - obs
    ae = np.abs(err)
    ape = 100.0 * ae / np.abs(obs).where(obs != 0)
    labels, index = _group(_temp_keys(f, T.values, temp_step), _round(t.values, exptime_step))
    ng = len(labels)
    onehot = xr.DataArray((index[:, None] == np.arange(ng)).astype(F8), dims=(FRAME, "eval_group"))
    nfr = onehot.sum(FRAME)
    frame = {"frame_mae": ae.mean((Y, X)), "frame_mape": ape.mean((Y, X), skipna=True),
             "frame_mean_error": err.mean((Y, X)), "frame_rms_error": np.sqrt((err**2).mean((Y, X)))}  # fmt: skip
    out = xr.Dataset({"mae": ae.mean(FRAME), "mape": ape.mean(FRAME, skipna=True), **frame})
    for k in ("mae", "mape", "mean_error"):
        out[f"group_{k}"] = xr.dot(out[f"frame_{k}"], onehot, dim=FRAME) / nfr
    out["group_rms_error"] = np.sqrt(xr.dot(out["frame_rms_error"] ** 2, onehot, dim=FRAME) / nfr)
    out["group_nframes"] = nfr.astype(np.int64)
    gtemp = [float(T.values[index == g].mean()) for g in range(ng)]
    gexp = [float(t.values[index == g].mean()) for g in range(ng)]
    out = out.assign_coords(group_temp=("eval_group", gtemp), group_exptime=("eval_group", gexp))
    out = out.assign_coords({k: v for k, v in f.coords.items() if k in (Y, X) or v.dims == (FRAME,)})
    for k in out.data_vars:
        out[k].attrs["units"] = "percent" if "mape" in k else ("1" if k == "group_nframes" else units)
    out.attrs = sanitize_attrs({"model": kind, "error": "predicted - observed", "units": units,
                                "mape": "mean |e / observed| * 100 over frames where observed != 0"})  # fmt: skip
    return out


def summary_table(ev: xr.Dataset) -> pd.DataFrame:
    """The per (temperature, exposure) summary of :func:`evaluate_model` as a DataFrame (computes it)."""
    cols = ["group_nframes", "group_mae", "group_mape", "group_mean_error", "group_rms_error"]
    small = ev[cols].compute()
    df = pd.DataFrame({"temp": small["group_temp"].values, "exptime": small["group_exptime"].values})
    for c in cols:
        df[c.removeprefix("group_")] = small[c].values
    return df


def plot_evaluation(ev: xr.Dataset, title: str | None = None):
    """MAE and MAPE maps and the group MAE against temperature per exposure time (a matplotlib Figure)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    units = ev.attrs.get("units", "")
    for ax, name, label in ((axes[0], "mae", f"MAE ({units})"), (axes[1], "mape", "MAPE (%)")):
        img = np.asarray(ev[name].values, F8)
        lo, hi = np.nanpercentile(img, [1, 99]) if np.isfinite(img).any() else (0, 1)
        im = ax.imshow(img, origin="lower", vmin=lo, vmax=hi, cmap="viridis")
        fig.colorbar(im, ax=ax, label=label)
        ax.set_title(label)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    df = summary_table(ev)
    for e, part in df.groupby("exptime"):
        part = part.sort_values("temp")
        axes[2].plot(part["temp"], part["mae"], "o-", label=f"t = {e:g} s")
    axes[2].set_xlabel("temperature (deg C)")
    axes[2].set_ylabel(f"MAE ({units})")
    axes[2].legend(fontsize="small")
    axes[2].set_title("MAE per (temperature, exposure)")
    fig.suptitle(title or f"{ev.attrs.get('model', 'model')} on held-out frames")
    return fig
