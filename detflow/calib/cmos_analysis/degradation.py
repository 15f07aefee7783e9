"""The flat degradation analysis: outlier pixels per group against its earliest flat, classified over time
(:func:`degradation_analysis`, :func:`degradation_maps`; the method: :mod:`detflow.calib.cmos_analysis`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import dask
import numpy as np
import pandas as pd
import xarray as xr

from ...schema import FRAME, X, Y, sanitize_attrs
from .columns import (
    _CLASSIFY_ELEMENTS,
    _Q,
    _QI,
    CLASS_CODE,
    CLASSES,
    DEGRADATION_FRAME_COLUMNS,
    F4,
    F8,
    GROUP_COLUMNS,
    PIXEL_COLUMNS,
    SAMPLE_PIXELS,
)
from .flats import _dev_kw, _deviation_np, _Flats, _frame_vars, _prepare_flats
from .times import _origin


# ---- 2. degradation analysis ------------------------------------------------------------------------------------
def _classify_np(dev: np.ndarray, flags: np.ndarray, *, t: np.ndarray, sig: np.ndarray, gidx: np.ndarray,
                 test: np.ndarray, ng: int, growth_sigma: float, persist_frac: float, min_growth_frames: int,
                 ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per pixel and group, over the group's tested frames in time order: the quantities :data:`_Q` and,
    per frame, the pixel's class where it is flagged (0 elsewhere). ``dev``, ``flags``: (P, frame)."""
    P, nf = dev.shape
    maps = np.full((P, ng, len(_Q)), np.nan, F4)
    ocls = np.zeros((P, nf), np.int8)
    for g in range(ng):
        idx = np.flatnonzero((gidx == g) & test)
        out = maps[:, g]
        if idx.size == 0:
            out[:, [_QI["class"], _QI["n_flagged"], _QI["n_since_first"]]] = 0
            out[:, _QI["first_pos"]] = -1
            continue
        idx = idx[np.lexsort((idx, t[idx]))]
        k = idx.size
        Fg, Dg, tg = flags[:, idx], dev[:, idx].astype(F8), t[idx]
        sg = np.maximum(np.nan_to_num(sig[idx], nan=np.inf), 1e-30)
        nflag = Fg.sum(1)
        hit = nflag > 0
        first = np.where(hit, Fg.argmax(1), k)
        fin = np.isfinite(Dg)
        after = (np.arange(k)[None, :] >= first[:, None]) & fin
        n_after = after.sum(1)
        sgn = np.sign(np.where(Fg, np.nan_to_num(Dg), 0).sum(1))
        sgn[sgn == 0] = 1
        w = np.where(after, 1.0 / sg[None, :] ** 2, 0.0)
        Yv = np.where(after, sgn[:, None] * np.nan_to_num(Dg), 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            W = w.sum(1)
            tm = (w * tg).sum(1) / W
            dt = tg[None, :] - tm[:, None]
            sxx = (w * dt * dt).sum(1)
            ym = (w * Yv).sum(1) / W
            slope = (w * dt * (Yv - ym[:, None])).sum(1) / sxx
            chi2 = (w * (Yv - ym[:, None] - slope[:, None] * dt) ** 2).sum(1)
            dof = n_after - 2
            err = np.sqrt(1.0 / sxx) * np.sqrt(np.maximum(1.0, np.where(dof > 0, chi2 / np.maximum(dof, 1), 1.0)))
            z = slope / err
            frac = nflag / np.maximum(n_after, 1)
            mean_dev = np.where(hit, np.where(Fg, np.nan_to_num(Dg), 0).sum(1) / np.maximum(nflag, 1), np.nan)
        fit_ok = (n_after >= max(2, min_growth_frames)) & (sxx > 0) & np.isfinite(z)
        cls = np.zeros(P, np.int8)
        cls[nflag == 1] = CLASS_CODE["transient"]
        multi = nflag >= 2
        cls[multi] = CLASS_CODE["intermittent"]
        cls[multi & (frac >= persist_frac)] = CLASS_CODE["persistent"]
        cls[multi & fit_ok & (z >= growth_sigma)] = CLASS_CODE["growing"]
        j = np.where(Fg, np.abs(np.nan_to_num(Dg)), -1.0).argmax(1)
        peak = np.where(hit, Dg[np.arange(P), j], np.nan)
        good = n_after >= 2
        out[:, _QI["class"]] = cls
        out[:, _QI["n_flagged"]] = nflag
        out[:, _QI["n_since_first"]] = np.where(hit, n_after, 0)
        out[:, _QI["first_pos"]] = np.where(hit, idx[np.minimum(first, k - 1)], -1)
        out[:, _QI["mean_dev"]] = mean_dev
        out[:, _QI["peak_dev"]] = peak
        out[:, _QI["last_dev"]] = Dg[:, -1]
        out[:, _QI["trend"]] = np.where(good & (sxx > 0), sgn * slope, np.nan)
        out[:, _QI["trend_err"]] = np.where(good & (sxx > 0), err, np.nan)
        out[:, _QI["growth_z"]] = np.where(good & (sxx > 0), z, np.nan)
        ocls[:, idx] = np.where(Fg, cls[:, None], 0)
    return maps, ocls


def _degradation_tile(flat, *extra, has_dark, has_ref, centre, thr, test, dev_kw, cls_kw):
    dark = extra[0] if has_dark else None
    ref = extra[-1] if has_ref else None
    dev = _deviation_np(flat, dark, ref, **dev_kw) - centre
    with np.errstate(invalid="ignore"):
        flags = test & (np.abs(dev) > thr)
    nf = dev.shape[-1]
    d2, f2 = dev.reshape(-1, nf), flags.reshape(-1, nf)
    maps = np.empty((d2.shape[0], cls_kw["ng"], len(_Q)), F4)
    ocls = np.empty(d2.shape, np.int8)
    block = max(1, _CLASSIFY_ELEMENTS // max(nf, 1))  # pixels per pass: bounds the float64 temporaries
    for p0 in range(0, d2.shape[0], block):
        maps[p0 : p0 + block], ocls[p0 : p0 + block] = _classify_np(d2[p0 : p0 + block], f2[p0 : p0 + block], **cls_kw)
    return maps.reshape(*dev.shape[:-1], *maps.shape[1:]), dev, ocls.reshape(dev.shape)


def _degradation_lazy(fl: _Flats, growth_sigma: float, persist_frac: float, min_growth_frames: int) -> xr.Dataset:
    ng = len(fl.groups)
    args, dims = [fl.data], [[FRAME]]
    if fl.dark is not None:
        args.append(fl.dark)
        dims.append(["dgroup"])
    if fl.ref_map is not None:
        args.append(fl.ref_map)
        dims.append([])
    tab = fl.table
    cls_kw = {
        "t": tab["t_days"].to_numpy(F8),
        "sig": tab["sigma"].to_numpy(F8),
        "gidx": fl.gidx,
        "test": fl.test,
        "ng": ng,
        "growth_sigma": growth_sigma,
        "persist_frac": persist_frac,
        "min_growth_frames": min_growth_frames,
    }
    kw = {
        "has_dark": fl.dark is not None,
        "has_ref": fl.ref_map is not None,
        "centre": tab["centre"].to_numpy(F4),
        "thr": tab["threshold"].to_numpy(F4),
        "test": fl.test,
        "dev_kw": _dev_kw(fl),
        "cls_kw": cls_kw,
    }
    stack, dev, ocls = xr.apply_ufunc(
        _degradation_tile, *args, input_core_dims=dims, output_core_dims=[["group", "quantity"], [FRAME], [FRAME]],
        dask="parallelized", output_dtypes=[F4, F4, np.int8], kwargs=kw,
        dask_gufunc_kwargs={"output_sizes": {"group": ng, "quantity": len(_Q)}})  # fmt: skip
    units = "1" if fl.params["compare"] == "ratio" or fl.params["normalise"] else "DN"
    q = {name: stack.isel(quantity=i, drop=True).transpose("group", Y, X) for i, name in enumerate(_Q)}
    cls_attrs = {"flag_values": list(range(len(CLASSES))), "flag_meanings": " ".join(CLASSES), "units": "1"}
    maps = {
        "outlier_class": (q["class"].astype(np.int8), cls_attrs),
        "n_flagged": (q["n_flagged"].astype(np.int32), {"long_name": "tested frames flagged", "units": "1"}),
        "n_since_first": (q["n_since_first"].astype(np.int32),
                          {"long_name": "tested frames from the first flag on", "units": "1"}),
        "first_pos": (q["first_pos"].astype(np.int32),
                      {"long_name": "position (in the analysed flats) of the first flagged frame, -1: never"}),
        "mean_dev": (q["mean_dev"], {"long_name": "mean deviation when flagged", "units": units}),
        "peak_dev": (q["peak_dev"], {"long_name": "flagged deviation of largest |value|", "units": units}),
        "last_dev": (q["last_dev"], {"long_name": "deviation in the group's latest frame", "units": units}),
        "trend": (q["trend"], {"long_name": "slope of the deviation from the first flag on",
                               "units": f"{units} / {fl.time_unit}"}),
        "trend_err": (q["trend_err"], {"units": f"{units} / {fl.time_unit}"}),
        "growth_z": (q["growth_z"], {"long_name": "slope of |deviation| over its error", "units": "1"}),
    }  # fmt: skip
    out = xr.Dataset({k: (v.dims, v.data, a) for k, (v, a) in maps.items()})
    out["class_max"] = out["outlier_class"].max("group").assign_attrs(cls_attrs)
    out["deviation"] = dev.transpose(FRAME, Y, X).assign_attrs(
        long_name=f"centred {fl.params['compare']} deviation from the group reference", units=units
    )
    out["outlier_class_frame"] = ocls.transpose(FRAME, Y, X).assign_attrs(
        long_name="the pixel's class where flagged in the frame, 0 elsewhere", **cls_attrs
    )
    g = fl.groups
    out = out.assign_coords({c: v for c, v in ((Y, fl.data[Y]), (X, fl.data[X])) if c in fl.data.coords})
    out = out.assign_coords(group=np.arange(ng), group_filter=("group", g["filter"].to_numpy().astype(str)),
                            group_temp=("group", g["temp"].to_numpy(F8)),
                            group_exptime=("group", g["exptime"].to_numpy(F8)), **_frame_vars(fl))  # fmt: skip
    out.attrs = sanitize_attrs({**fl.params, "growth_sigma": growth_sigma, "persist_frac": persist_frac,
                                "min_growth_frames": min_growth_frames, "classes": list(CLASSES),
                                "time_unit": fl.time_unit, "origin": fl.origin,
                                "history": ["degradation_maps"]})  # fmt: skip
    return out


def _prepare_degradation(flat, dark, saturation, nsigma, normalise, compare, n_ref, reference, temp_key, temp_tol,
                         saturation_units, max_saturated_fraction, sigma_method, sample_pixels, dayfirst):  # fmt: skip
    origin = _origin(flat, dayfirst=dayfirst)
    return _prepare_flats(flat, dark, reference=reference, n_ref=n_ref, normalise=normalise, compare=compare,
                          temp_key=temp_key, temp_tol=temp_tol, saturation=saturation,
                          saturation_units=saturation_units, max_saturated_fraction=max_saturated_fraction,
                          sigma_method=sigma_method, nsigma=nsigma, sample_pixels=sample_pixels, origin=origin)  # fmt: skip


def degradation_maps(flat: xr.Dataset, dark: xr.Dataset | None = None, *, saturation: float | None = 60000,
                     nsigma: float = 5.0, normalise: Literal["mean", "median"] | None = "mean",
                     compare: Literal["ratio", "difference"] = "ratio", n_ref: int = 1, reference: Any = None,
                     temp_key: Literal["filetemp", "temp"] = "filetemp", temp_tol: float = 0.5,
                     saturation_units: Literal["stored", "dn"] = "stored", max_saturated_fraction: float = 0.0,
                     sigma_method: Literal["mad", "clipped"] = "mad", growth_sigma: float = 3.0,
                     persist_frac: float = 0.5, min_growth_frames: int = 3, sample_pixels: int | None = SAMPLE_PIXELS,
                     dayfirst: bool = False) -> xr.Dataset:  # fmt: skip
    """The lazy per-pixel graph of :func:`degradation_analysis` (same parameters): maps (group, y, x)
    ``outlier_class``, ``n_flagged``, ``n_since_first``, ``first_pos``, ``mean_dev``, ``peak_dev``,
    ``last_dev``, ``trend``, ``trend_err``, ``growth_z``; ``class_max`` (y, x); cubes (frame, y, x)
    ``deviation`` and ``outlier_class_frame``; per analysed frame ``t_days``, ``group``, ``is_reference``,
    ``norm``, ``centre``, ``sigma``. The per-frame scalars are computed first (one pass)."""
    fl = _prepare_degradation(flat, dark, saturation, nsigma, normalise, compare, n_ref, reference, temp_key,
                              temp_tol, saturation_units, max_saturated_fraction, sigma_method, sample_pixels,
                              dayfirst)  # fmt: skip
    return _degradation_lazy(fl, growth_sigma, persist_frac, min_growth_frames)


@dataclass
class DegradationResult:
    """What :func:`degradation_analysis` found: tables, computed 2-D maps and the lazy cubes."""

    frames: pd.DataFrame  # DEGRADATION_FRAME_COLUMNS
    pixels: pd.DataFrame  # PIXEL_COLUMNS
    saturated: pd.DataFrame  # SATURATED_COLUMNS
    groups: pd.DataFrame  # GROUP_COLUMNS
    maps: xr.Dataset  # (group, y, x) maps and class_max (y, x), computed
    cube: xr.Dataset  # deviation, outlier_class_frame (frame, y, x), lazy
    hist: tuple[np.ndarray, np.ndarray]  # counts, edges: centred deviations of the tested frames (pixel sample)
    origin: pd.Timestamp | None
    time_unit: str
    params: dict = field(default_factory=dict)

    @property
    def peak_map(self) -> np.ndarray:
        """(y, x): each pixel's ``peak_dev`` of largest |value| over the groups (NaN where never flagged)."""
        peak = self.maps["peak_dev"].values
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            j = np.nanargmax(np.where(np.isfinite(peak), np.abs(peak), -1), axis=0)
        return np.take_along_axis(peak, j[None], 0)[0] if peak.size else np.zeros(peak.shape[1:])

    @property
    def median_threshold(self) -> float:
        """The median outlier threshold (``nsigma`` sigma) of the tested frames; NaN if none."""
        thr = self.frames["threshold"]
        return float(np.nanmedian(thr)) if thr.notna().any() else np.nan


def degradation_analysis(flat: xr.Dataset, dark: xr.Dataset | None = None, *, saturation: float | None = 60000,
                         nsigma: float = 5.0, normalise: Literal["mean", "median"] | None = "mean",
                         compare: Literal["ratio", "difference"] = "ratio", n_ref: int = 1, reference: Any = None,
                         temp_key: Literal["filetemp", "temp"] = "filetemp", temp_tol: float = 0.5,
                         saturation_units: Literal["stored", "dn"] = "stored", max_saturated_fraction: float = 0.0,
                         sigma_method: Literal["mad", "clipped"] = "mad", growth_sigma: float = 3.0,
                         persist_frac: float = 0.5, min_growth_frames: int = 3,
                         sample_pixels: int | None = SAMPLE_PIXELS, dayfirst: bool = False) -> DegradationResult:  # fmt: skip
    """Flat degradation (outgassing): outlier pixels per (filter, temperature, exposure) group against the
    group's earliest flat, classified over time (:mod:`detflow.calib.cmos_analysis`).

    ``saturation``: a flat is discarded when more than ``max_saturated_fraction`` of its pixels (0: any)
    reach it; in stored counts (the raw integers, before division by data_scale; 60000 suits 16-bit
    stores, 12-bit data left-shifted included) unless ``saturation_units="dn"``; None: no check.
    ``dark``: a dark section; each flat is reduced by the mean of the dark group nearest in temperature,
    then exposure. ``normalise``: divide each frame by its mean (every pixel) or median (pixel sample), or
    not. ``compare``: ``ratio`` (x / ref - 1) or ``difference`` (x - ref). ``n_ref``: the earliest frames
    of each group whose median is the reference (they are not tested); ``reference``: a (y, x) map
    instead. ``temp_key``/``temp_tol``: temperatures (the set point ``filetemp``, else the logged
    ``temp``) clustered with gaps above ``temp_tol`` deg C."""
    fl = _prepare_degradation(flat, dark, saturation, nsigma, normalise, compare, n_ref, reference, temp_key,
                              temp_tol, saturation_units, max_saturated_fraction, sigma_method, sample_pixels,
                              dayfirst)  # fmt: skip
    lazy = _degradation_lazy(fl, growth_sigma, persist_frac, min_growth_frames)
    map_names = [k for k, v in lazy.data_vars.items() if FRAME not in v.dims]
    oc, dev = lazy["outlier_class_frame"], lazy["deviation"]
    flagged = oc > 0
    per_frame = {"n_outliers": flagged.sum((Y, X))}
    for c in CLASSES[1:]:
        per_frame[f"n_{c}"] = (oc == CLASS_CODE[c]).sum((Y, X))
    per_frame["mean_dev"] = dev.where(flagged).mean((Y, X))
    per_frame["mean_abs_dev"] = np.abs(dev).where(flagged).mean((Y, X))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mv, pf = dask.compute({k: lazy[k].data for k in map_names}, {k: v.data for k, v in per_frame.items()})
    maps = lazy[map_names].copy()
    for k in map_names:
        maps[k] = maps[k].copy(data=np.asarray(mv[k]))
    frames = fl.table.copy()
    for k, v in pf.items():
        frames[k] = np.asarray(v)
    for k in ("n_outliers", *(f"n_{c}" for c in CLASSES[1:])):
        frames[k] = frames[k].astype(np.int64)
    frames = frames[list(DEGRADATION_FRAME_COLUMNS)]
    groups = fl.groups.copy()
    cm = maps["outlier_class"].values
    for c in CLASSES[1:]:
        groups[f"n_{c}"] = [(cm[g] == CLASS_CODE[c]).sum() for g in range(len(groups))]
    groups["n_frames"] = [int((fl.gidx == g).sum()) for g in range(len(groups))]
    pixels = _pixel_table(maps, fl)
    cube = lazy[["deviation", "outlier_class_frame"]]
    params = dict(maps.attrs)
    return DegradationResult(frames, pixels, fl.saturated, groups[list(GROUP_COLUMNS)], maps, cube, fl.hist,
                             fl.origin, fl.time_unit, params)  # fmt: skip


def _pixel_table(maps: xr.Dataset, fl: _Flats) -> pd.DataFrame:
    cls = maps["outlier_class"].values
    g, yy, xx = np.nonzero(cls > 0)
    tab, groups = fl.table, fl.groups
    first = maps["first_pos"].values[g, yy, xx].astype(np.int64)
    n_tested = np.array([int(((fl.gidx == k) & fl.test).sum()) for k in range(len(groups))])
    nflag = maps["n_flagged"].values[g, yy, xx].astype(np.int64)
    nsince = maps["n_since_first"].values[g, yy, xx].astype(np.int64)

    def v(name):
        return maps[name].values[g, yy, xx].astype(F8)

    df = pd.DataFrame({
        "y": np.asarray(maps[Y].values)[yy] if Y in maps.coords else yy,
        "x": np.asarray(maps[X].values)[xx] if X in maps.coords else xx,
        "group": g, "filter": groups["filter"].to_numpy()[g], "temp": groups["temp"].to_numpy()[g],
        "exptime": groups["exptime"].to_numpy()[g], "class": np.asarray(CLASSES, object)[cls[g, yy, xx]],
        "n_flagged": nflag, "n_tested": n_tested[g], "n_since_first": nsince,
        "flag_fraction": nflag / np.maximum(nsince, 1), "first_frame": tab["frame"].to_numpy()[first],
        "first_path": tab["path"].to_numpy()[first], "first_time": tab["time"].to_numpy()[first],
        "first_t_days": tab["t_days"].to_numpy()[first], "mean_dev": v("mean_dev"), "peak_dev": v("peak_dev"),
        "last_dev": v("last_dev"), "trend_per_day": v("trend"), "trend_err": v("trend_err"), "growth_z": v("growth_z"),
    })  # fmt: skip
    return df[list(PIXEL_COLUMNS)]
