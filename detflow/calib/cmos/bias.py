"""The CMOS bias model (:func:`build_bias_model`: per-pixel ``a + b T`` over temperature masters), its
synthesis, and the per-frame bias references the dark and flat builders subtract."""

from __future__ import annotations

from typing import Literal

import numpy as np
import xarray as xr

from ...errors import DetflowInputError
from ...schema import FRAME, X, Y, sanitize_attrs
from .combine import _fit_linear, _grouped_combine, _map_stats
from .frames import F8, FIT_FLAGS, Method, _chunk, _frames, _group, _path, _source, _temp_keys, _tile_chunks


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
        out["hot"] = (
            (out["master"] > thr)
            .any("temp_group")
            .astype(np.uint8)
            .assign_attrs(units="1", long_name="hot in at least one master")
        )
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
