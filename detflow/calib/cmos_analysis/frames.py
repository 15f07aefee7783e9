"""Inputs of the CMOS analyses: a section dataset as float32 DN with its frame metadata, and the one pass over
every frame that gives the exact per-frame reductions and the fixed pixel sample."""

from __future__ import annotations

import math
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr

from ...errors import DetflowInputError
from ...schema import FRAME, X, Y
from .columns import F4, F8


# ---- input ----------------------------------------------------------------------------------------------------
def _src(ds: Any) -> str:
    if isinstance(ds, xr.Dataset):
        return str(ds.encoding.get("source") or ds.attrs.get("source") or ds.attrs.get("section_root") or "<dataset>")
    return "<input>"


def _dn(ds: Any, name: str) -> tuple[xr.DataArray, float]:
    """``data`` as float32 DN (frame, y, x), the frame axis one chunk; and data_scale (stored counts per DN)."""
    if not isinstance(ds, xr.Dataset) or "data" not in ds:
        raise DetflowInputError(_src(ds), name, "a CMOS section dataset with a 'data' variable (open_cmos_section)",
                                type(ds).__name__)  # fmt: skip
    data = ds["data"]
    if "read" in data.dims:
        if data.sizes["read"] != 1:
            raise DetflowInputError(_src(ds), f"{name} read axis", "length 1", data.sizes["read"])
        data = data.isel(read=0, drop=True)
    if set(data.dims) != {FRAME, Y, X}:
        raise DetflowInputError(_src(ds), f"{name} data dims", f"({FRAME}, {Y}, {X})", data.dims)
    if data.sizes[FRAME] == 0:
        raise DetflowInputError(_src(ds), name, "at least one frame", 0)
    data = data.transpose(FRAME, Y, X)
    scale = data.attrs.get("data_scale", ds.attrs.get("data_scale", 1))
    try:
        scale = float(scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError
    except (TypeError, ValueError):
        raise DetflowInputError(_src(ds), "data_scale", "a positive number", scale) from None
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(F4) / F4(scale)  # stored counts -> DN
        data.attrs = {k: v for k, v in data.attrs.items() if k not in ("scale_factor", "add_offset")}  # unpacked
    elif data.dtype != F4:
        data = data.astype(F4)
    if data.chunks is not None and len(data.chunks[0]) > 1:
        data = data.chunk({FRAME: -1})
    return data, scale


def _coord(ds: xr.Dataset, name: str, default: Any, dtype=None) -> np.ndarray:
    n = ds.sizes[FRAME]
    if name in ds.variables and ds[name].dims == (FRAME,):
        v = np.asarray(ds[name].values)
    else:
        v = np.full(n, default)
    return v.astype(dtype) if dtype is not None else v


def _text(values: np.ndarray) -> np.ndarray:
    """Strings (any numpy string dtype, StringDType included) as an object array of str."""
    return np.array([str(v) for v in np.asarray(values).ravel()], dtype=object)


def _meta(ds: xr.Dataset, times: pd.DataFrame) -> pd.DataFrame:
    temp = _coord(ds, "temp", np.nan, F8)
    filetemp = _coord(ds, "filetemp", np.nan, F8)
    filt = np.array([v if v not in ("", "nan") else "none" for v in _text(_coord(ds, "filter", "none"))], object)
    return pd.DataFrame({
        "frame": np.asarray(ds[FRAME].values), "path": _text(_coord(ds, "path", "")),
        "timestamp": _text(_coord(ds, "timestamp", "")), "time": times["time"].to_numpy(),
        "t_days": times["t_days"].to_numpy(), "time_source": times["time_source"].to_numpy(), "temp": temp,
        "filetemp": filetemp, "exptime": _coord(ds, "exptime", np.nan, F8), "filter": filt,
    })  # fmt: skip


def _section_name(ds: xr.Dataset, default: str) -> str:
    if "caltype" in ds.variables:
        vals = {str(v) for v in np.asarray(ds["caltype"].values).ravel()}
        if len(vals) == 1:
            return vals.pop().lower()
    return str(ds.attrs.get("caltype", default)).lower()


def _sample_index(h: int, w: int, n: int | None) -> tuple:
    """A fixed pseudo-random set of rows and columns (their outer product: ~n pixels); all when n >= h*w."""
    if n is None or h * w <= n:
        return slice(None), slice(None)
    ny = min(h, max(1, round(math.sqrt(n * h / w))))
    nx = min(w, max(1, n // ny))
    rng = np.random.default_rng(20240301)
    return np.sort(rng.choice(h, ny, replace=False)), np.sort(rng.choice(w, nx, replace=False))


def _frame_pass(data: xr.DataArray, sample_pixels: int | None, sat_dn: float | None = None) -> dict[str, np.ndarray]:
    """Exact per-frame reductions over every pixel, and the pixel sample (frame, ny, nx): one dask compute."""
    yi, xi = _sample_index(data.sizes[Y], data.sizes[X], sample_pixels)
    f8 = data.astype(F8)
    lazy = {"count": data.count((Y, X)), "mean": f8.mean((Y, X)), "std": f8.std((Y, X)), "min": data.min((Y, X)),
            "max": data.max((Y, X)), "sample": data.isel({Y: yi, X: xi})}  # fmt: skip
    if sat_dn is not None:
        lazy["n_sat"] = (data >= F4(sat_dn)).sum((Y, X))
    (vals,) = dask.compute({k: v.data for k, v in lazy.items()})
    out = {k: np.asarray(v) for k, v in vals.items()}
    out["yi"], out["xi"] = yi, xi
    return out
