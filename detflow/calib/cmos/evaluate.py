"""Evaluation of a CMOS model on frames it was not fitted to: the held-out frames (:func:`holdout_mask`), the
model against them (:func:`evaluate_model`) and its summary table."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

from ...errors import DetflowInputError
from ...schema import FRAME, X, Y, sanitize_attrs
from .bias import _bias_refs, _subtract, synthesize_bias
from .dark import synthesize_dark
from .flat import synthesize_flat
from .frames import F8, _chunk, _frames, _group, _independent, _round, _source, _temp_keys


# ---- evaluation ------------------------------------------------------------------------------------------
def holdout_mask(ds: xr.Dataset, every: int) -> np.ndarray:
    """True for the held-out frames: every ``every``-th frame (the last of each run of ``every``) of each
    (set-point temperature, exposure time, filter) group, in frame order. The set point is ``filetemp``
    (the ``T<temp>`` of the folder or file name) where known, else the logged temperature rounded to
    1 deg C: the logged temperature jitters about the set point. Groups with fewer than ``every``
    frames keep all their frames for the fit."""
    n = ds.sizes[FRAME]
    if every <= 0:
        return np.zeros(n, dtype=bool)
    temp = _temp_keys(ds, np.asarray(ds["temp"].values, np.float64), 1.0)  # the models' grouping, to 1 C
    texp = np.asarray(ds["exptime"].values, np.float64) if "exptime" in ds.coords else np.zeros(n)
    filt = [str(f) for f in ds["filter"].values] if "filter" in ds.coords else ["none"] * n
    keys = pd.DataFrame({"t": np.nan_to_num(temp, nan=-1e9), "e": np.nan_to_num(texp, nan=-1.0), "f": filt})
    rank = keys.groupby(["t", "e", "f"], sort=False).cumcount().to_numpy()
    return (rank % every) == (every - 1)


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
