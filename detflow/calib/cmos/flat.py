"""The CMOS flat-field model (:func:`build_flat_model`: dark pairing, vignetting, per-pixel ``A + B (T - Tref)
+ C (t - tref)``) and its synthesis."""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import xarray as xr

from ...errors import DetflowInputError
from ...schema import FRAME, X, Y, sanitize_attrs
from .bias import _bias_refs, _subtract
from .combine import _fit_linear, _grouped_combine
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
    _temp_keys,
    _tile_chunks,
)


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
        units="DN", long_name=f"per-frame {normalize} used to normalise"
    )
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
