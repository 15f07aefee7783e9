"""Flats for the structure and degradation analyses: saturated frames left out, darks matched, frames
normalised and grouped by (filter, temperature, exposure), references chosen, the robust centre and sigma of
each frame's deviation; and the lazy deviation cube."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from astropy.stats import sigma_clipped_stats

from ...errors import DetflowInputError
from ...schema import FRAME, X, Y
from .columns import F4, F8, MAD_SIGMA, SATURATED_COLUMNS
from .frames import _dn, _frame_pass, _meta, _src
from .times import frame_times


# ---- flats: groups, references, deviations ---------------------------------------------------------------------
def temperature_clusters(values: np.ndarray, tol: float) -> np.ndarray:
    """Cluster labels (0, 1, ... in increasing temperature; -1 for NaN): sorted values split where the gap
    to the previous exceeds ``tol``."""
    v = np.asarray(values, F8)
    out = np.full(v.shape, -1, np.int64)
    ok = np.flatnonzero(np.isfinite(v))
    if ok.size:
        order = ok[np.argsort(v[ok], kind="stable")]
        out[order] = np.concatenate([[0], np.cumsum(np.diff(v[order]) > tol)])
    return out


def _groups(meta: pd.DataFrame, temp_key: str, temp_tol: float) -> tuple[np.ndarray, pd.DataFrame]:
    """Group index per frame over (filter, temperature cluster, exposure) and a table of the groups."""
    tk = meta["filetemp"] if temp_key == "filetemp" else meta["temp"]
    other = meta["temp"] if temp_key == "filetemp" else meta["filetemp"]
    tval = tk.where(np.isfinite(tk), other).to_numpy(F8)
    tcl = temperature_clusters(tval, temp_tol)
    keys = pd.DataFrame({"filter": meta["filter"].to_numpy(), "tcl": tcl, "exptime": meta["exptime"].round(9)})
    rows = []
    gidx = np.empty(len(meta), np.int64)
    for g, (key, part) in enumerate(keys.groupby(["filter", "tcl", "exptime"], dropna=False, sort=True)):
        gidx[part.index.to_numpy()] = g
        ti = tval[part.index.to_numpy()]
        rows.append({"group": g, "filter": key[0], "temp": round(float(np.nanmean(ti)), 3) if np.isfinite(ti).any()
                     else np.nan, "exptime": float(key[2]), "n_frames": len(part)})  # fmt: skip
    return gidx, pd.DataFrame(rows)


def _robust(dev: np.ndarray, method: str, sigma_clip: float = 3.0) -> tuple[float, float]:
    d = dev[np.isfinite(dev)]
    if d.size == 0:
        return np.nan, np.nan
    if method == "mad":
        c = float(np.median(d))
        return c, float(MAD_SIGMA * np.median(np.abs(d - c)))
    _, med, std = sigma_clipped_stats(d, sigma=sigma_clip, maxiters=10)
    return float(med), float(std)


def _deviation_np(flat: np.ndarray, dark: np.ndarray | None, ref: np.ndarray | None, *, scale: np.ndarray,
                  dsel: np.ndarray | None, gidx: np.ndarray, ref_idx: list[np.ndarray] | None, compare: str,
                  ) -> np.ndarray:  # fmt: skip
    """(..., frame) flats -> deviations from their reference: ``x / ref - 1`` or ``x - ref`` with ``x = (flat
    - dark[dsel]) / scale``; ref: the given map (..., normalised) or, per group, the median of its reference
    frames (the frame itself when one)."""
    x = np.asarray(flat, dtype=F4)
    if dark is not None:
        x = x - np.asarray(dark, F4)[..., dsel]
    x = x / scale.astype(F4)

    def compare_to(xs: np.ndarray, r: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(r > 0, xs / r - 1, np.nan) if compare == "ratio" else xs - r

    if ref is not None:
        return compare_to(x, np.asarray(ref, F4)[..., None]).astype(F4, copy=False)
    dev = np.full_like(x, np.nan)
    for g, idx in enumerate(ref_idx):
        members = np.flatnonzero(gidx == g)
        if members.size == 0 or len(idx) == 0:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            rg = x[..., idx[0]] if len(idx) == 1 else np.nanmedian(x[..., idx], axis=-1)
        dev[..., members] = compare_to(x[..., members], rg[..., None])
    return dev


@dataclass
class _Flats:
    """Per-frame decisions made before the per-pixel graph."""

    data: xr.DataArray  # analysed (unsaturated) flats, DN
    table: pd.DataFrame  # per analysed flat: meta + group, is_reference, norm, centre, sigma, threshold (+ dark_*)
    groups: pd.DataFrame
    saturated: pd.DataFrame
    gidx: np.ndarray
    ref_idx: list[np.ndarray] | None
    ref_map: xr.DataArray | None
    dark: xr.DataArray | None  # (dgroup, y, x) masters
    dsel: np.ndarray | None
    test: np.ndarray  # tested frames (not reference frames)
    hist: tuple[np.ndarray, np.ndarray]  # counts, edges of the centred sample deviations of the tested frames
    fp: dict  # the frame pass of all input flats
    time_unit: str
    origin: pd.Timestamp | None
    scale: float  # data_scale
    params: dict


def _reference_map(reference: Any, data: xr.DataArray) -> xr.DataArray:
    ref = reference if isinstance(reference, xr.DataArray) else xr.DataArray(np.asarray(reference), dims=(Y, X))
    if set(ref.dims) != {Y, X} or ref.sizes[Y] != data.sizes[Y] or ref.sizes[X] != data.sizes[X]:
        raise DetflowInputError(None, "reference", f"a (y, x) map of shape {(data.sizes[Y], data.sizes[X])}",
                                dict(ref.sizes))  # fmt: skip
    ref = ref.transpose(Y, X).astype(F4).drop_vars([c for c in ref.coords], errors="ignore")
    mean = float(ref.mean())
    if not (math.isfinite(mean) and mean > 0):
        raise DetflowInputError(None, "reference", "a map with a positive finite mean", mean)
    ref = ref / F4(mean)
    if data.chunks is not None:
        ref = ref.chunk({Y: data.chunks[1], X: data.chunks[2]})
    return ref


def _prepare_flats(flat: xr.Dataset, dark: xr.Dataset | None, *, reference: Any, n_ref: int, normalise: str | None,
                   compare: str, temp_key: str, temp_tol: float, saturation: float | None, saturation_units: str,
                   max_saturated_fraction: float, sigma_method: str, nsigma: float, sample_pixels: int | None,
                   origin: Any, fp: dict | None = None) -> _Flats:  # fmt: skip
    if compare not in ("ratio", "difference"):
        raise DetflowInputError(None, "compare", "'ratio' or 'difference'", compare)
    if normalise not in ("mean", "median", None):
        raise DetflowInputError(None, "normalise", "'mean', 'median' or None", normalise)
    if sigma_method not in ("mad", "clipped"):
        raise DetflowInputError(None, "sigma_method", "'mad' or 'clipped'", sigma_method)
    if temp_key not in ("filetemp", "temp"):
        raise DetflowInputError(None, "temp_key", "'filetemp' or 'temp'", temp_key)
    if saturation_units not in ("stored", "dn"):
        raise DetflowInputError(None, "saturation_units", "'stored' or 'dn'", saturation_units)
    if int(n_ref) != n_ref or n_ref < 1:
        raise DetflowInputError(None, "n_ref", "a positive integer", n_ref)
    if "caltype" in flat.variables:
        bad = sorted({str(v) for v in np.asarray(flat["caltype"].values).ravel()} - {"FLAT"})
        if bad:
            raise DetflowInputError(_src(flat), "caltype", "FLAT frames only", bad)
    data, scale = _dn(flat, "flat")
    sat_dn = None if saturation is None else (float(saturation) / scale if saturation_units == "stored"
                                               else float(saturation))  # fmt: skip
    if fp is None or (sat_dn is not None and "n_sat" not in fp):
        fp = _frame_pass(data, sample_pixels, sat_dn)
    times = frame_times(flat, origin)
    meta = _meta(flat, times)
    # -- saturation
    if sat_dn is not None:
        sat = fp["n_sat"] > max_saturated_fraction * fp["count"]
        s = meta.loc[sat, ["frame", "path", "timestamp", "filter", "temp", "exptime"]].copy()
        s["max_stored"], s["max_dn"] = fp["max"][sat] * scale, fp["max"][sat].astype(F8)
        s["n_saturated"], s["saturation"] = fp["n_sat"][sat].astype(np.int64), float(saturation)
        saturated = s.reset_index(drop=True)[list(SATURATED_COLUMNS)]
    else:
        sat = np.zeros(len(meta), bool)
        saturated = pd.DataFrame(columns=list(SATURATED_COLUMNS))
    keep = np.flatnonzero(~sat)
    if keep.size == 0:
        raise DetflowInputError(_src(flat), "flat", "at least one unsaturated flat", f"{len(meta)} saturated")
    data = data.isel({FRAME: keep})
    meta = meta.iloc[keep].reset_index(drop=True)
    sample = fp["sample"][keep]
    means = fp["mean"][keep].astype(F8)
    nf = len(meta)
    gidx, groups = _groups(meta, temp_key, temp_tol)
    # -- darks: masters per (temperature, exposure) group, the nearest for each flat
    dstack = dsel = None
    dsample = None
    dmean = np.zeros(1)
    meta["dark_temp"] = meta["dark_exptime"] = np.nan
    if dark is not None:
        ddata, _ = _dn(dark, "dark")
        if (ddata.sizes[Y], ddata.sizes[X]) != (data.sizes[Y], data.sizes[X]):
            raise DetflowInputError(_src(dark), "dark frame shape", f"{(data.sizes[Y], data.sizes[X])} as the flats",
                                    (ddata.sizes[Y], ddata.sizes[X]))  # fmt: skip
        dfp = _frame_pass(ddata, sample_pixels)
        dmeta = _meta(dark, frame_times(dark, origin, warn=False))
        dg, dgroups = _groups(dmeta.assign(filter="none"), temp_key, temp_tol)
        masters, dsample_l, dmean_l = [], [], []
        for g in range(len(dgroups)):
            idx = np.flatnonzero(dg == g)
            masters.append(ddata.isel({FRAME: idx}).mean(FRAME))
            dsample_l.append(np.nanmean(dfp["sample"][idx], axis=0))
            dmean_l.append(float(np.mean(dfp["mean"][idx])))
        dstack = xr.concat(masters, dim="dgroup").transpose(Y, X, "dgroup")
        if data.chunks is not None:
            dstack = dstack.chunk({Y: data.chunks[1], X: data.chunks[2], "dgroup": -1})
        dsample, dmean = np.stack(dsample_l, axis=-1), np.asarray(dmean_l)
        dT, dt = dgroups["temp"].to_numpy(F8), dgroups["exptime"].to_numpy(F8)
        tk, other = ("filetemp", "temp") if temp_key == "filetemp" else ("temp", "filetemp")
        fT = meta[tk].where(np.isfinite(meta[tk]), meta[other]).to_numpy(F8)
        dsel = np.empty(nf, np.int64)
        for i in range(nf):  # nearest in temperature (to within temp_tol), then in exposure
            kT = np.round(np.abs(np.nan_to_num(dT - fT[i], nan=1e9)) / max(temp_tol, 1e-9))
            ke = np.abs(np.nan_to_num(dt - meta["exptime"].iloc[i], nan=1e9))
            dsel[i] = np.lexsort((ke, kT))[0]
        meta["dark_temp"], meta["dark_exptime"] = dT[dsel], dt[dsel]
    # -- normalisation
    s_xy = np.moveaxis(sample, 0, -1).astype(F4)  # (ny, nx, frame)
    if normalise == "mean":
        norm = means - (dmean[dsel] if dsel is not None else 0.0)
    elif normalise == "median":
        sub = s_xy - (dsample[..., dsel] if dsel is not None else 0)
        norm = np.nanmedian(sub.reshape(-1, nf), axis=0).astype(F8)
    else:
        norm = np.ones(nf)
    badn = np.flatnonzero(~(np.isfinite(norm) & (norm > 0)))
    if badn.size:
        raise DetflowInputError(meta["path"].iloc[badn[0]] or _src(flat), f"normalise={normalise!r}",
                                "a positive frame level (after the dark subtraction)", norm[badn[0]])  # fmt: skip
    # -- references
    ref_map = ref_idx = None
    is_ref = np.zeros(nf, bool)
    if reference is not None:
        ref_map = _reference_map(reference, data)
        ref_sample = np.asarray(ref_map.values)[np.ix_(*_ix(fp, data))]
    else:
        ref_idx = []
        for g in range(len(groups)):
            members = np.flatnonzero(gidx == g)
            order = members[np.lexsort((members, meta["t_days"].to_numpy()[members]))]
            ref_idx.append(order[: min(int(n_ref), len(order))])
            is_ref[ref_idx[-1]] = True
        ref_sample = None
    test = ~is_ref
    # -- the robust centre and sigma of each tested frame's deviation, on the pixel sample
    sdev = _deviation_np(s_xy, dsample, ref_sample, scale=norm, dsel=dsel, gidx=gidx, ref_idx=ref_idx,
                         compare=compare).reshape(-1, nf)  # fmt: skip
    centre, sigma = np.full(nf, np.nan), np.full(nf, np.nan)
    for i in np.flatnonzero(test):
        centre[i], sigma[i] = _robust(sdev[:, i], sigma_method)
    meta["group"], meta["is_reference"], meta["norm"] = gidx, is_ref, norm
    meta["centre"], meta["sigma"], meta["threshold"] = centre, sigma, nsigma * sigma
    # histogram of the centred deviations of the tested frames (for the plots)
    d = (sdev[:, test] - centre[test]).ravel()
    d = d[np.isfinite(d)]
    med_sig = float(np.nanmedian(sigma[test])) if test.any() else np.nan
    half = max(float(np.max(np.abs(d))) if d.size else 1.0, 8 * med_sig if math.isfinite(med_sig) else 0.0, 1e-9)
    edges = np.linspace(-half, half, 202)
    hist = (np.histogram(d, edges)[0], edges)
    # groups table (reference frames)
    groups["n_reference"] = [len(r) for r in ref_idx] if ref_idx is not None else 0
    groups["reference_frames"] = [";".join(str(v) for v in meta["frame"].to_numpy()[r]) for r in ref_idx] \
        if ref_idx is not None else "reference map"  # fmt: skip
    groups["reference_path"] = [str(meta["path"].iloc[r[0]]) if len(r) else "" for r in ref_idx] \
        if ref_idx is not None else ""  # fmt: skip
    t = meta["t_days"].to_numpy()
    groups["t_first_days"] = [float(t[gidx == g].min()) for g in range(len(groups))]
    groups["t_last_days"] = [float(t[gidx == g].max()) for g in range(len(groups))]
    params = {
        "n_ref": int(n_ref),
        "normalise": normalise,
        "compare": compare,
        "temp_key": temp_key,
        "temp_tol": temp_tol,
        "saturation": saturation,
        "saturation_units": saturation_units,
        "data_scale": scale,
        "max_saturated_fraction": max_saturated_fraction,
        "sigma_method": sigma_method,
        "nsigma": nsigma,
        "sample_pixels": sample_pixels,
        "dark": dark is not None,
        "reference": "map" if reference is not None else f"median of the earliest {n_ref} per group",
    }
    return _Flats(data, meta, groups, saturated, gidx, ref_idx, ref_map, dstack, dsel, test, hist, fp,
                  times.attrs["time_unit"], times.attrs["origin"] if origin is None else pd.Timestamp(origin), scale,
                  params)  # fmt: skip


def _ix(fp: dict, data: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    yi, xi = fp["yi"], fp["xi"]
    return (np.arange(data.sizes[Y]) if isinstance(yi, slice) else yi,
            np.arange(data.sizes[X]) if isinstance(xi, slice) else xi)  # fmt: skip


def _deviation_cube(fl: _Flats) -> xr.DataArray:
    """The centred deviations (frame, y, x) float32, lazily (one task per pixel tile, every frame)."""
    args = [fl.data]
    dims = [[FRAME]]
    if fl.dark is not None:
        args.append(fl.dark)
        dims.append(["dgroup"])
    if fl.ref_map is not None:
        args.append(fl.ref_map)
        dims.append([])
    kw = {
        "has_dark": fl.dark is not None,
        "has_ref": fl.ref_map is not None,
        "centre": fl.table["centre"].to_numpy(F4),
        "dev_kw": _dev_kw(fl),
    }
    dev = xr.apply_ufunc(_dev_tile, *args, input_core_dims=dims, output_core_dims=[[FRAME]], dask="parallelized",
                         output_dtypes=[F4], kwargs=kw)  # fmt: skip
    return dev.transpose(FRAME, Y, X)


def _dev_kw(fl: _Flats) -> dict:
    return {"scale": fl.table["norm"].to_numpy(F8), "dsel": fl.dsel, "gidx": fl.gidx, "ref_idx": fl.ref_idx,
            "compare": fl.params["compare"]}  # fmt: skip


def _dev_tile(flat, *extra, has_dark, has_ref, centre, dev_kw):
    dark = extra[0] if has_dark else None
    ref = extra[-1] if has_ref else None
    return _deviation_np(flat, dark, ref, **dev_kw) - centre


def _frame_vars(fl: _Flats) -> dict:
    t = fl.table
    return {"t_days": (FRAME, t["t_days"].to_numpy(F8), {"units": fl.time_unit}), "frame_group": (FRAME, fl.gidx),
            "is_reference": (FRAME, t["is_reference"].to_numpy(bool)), "norm": (FRAME, t["norm"].to_numpy(F8)),
            "centre": (FRAME, t["centre"].to_numpy(F8)), "sigma": (FRAME, t["sigma"].to_numpy(F8))}  # fmt: skip
