"""Reduce steps of ground-based HxRG imaging (family ``hxrg_ground``): the flat from dithered sky frames and
its division.

* :func:`frame_levels`: each frame's sigma-clipped mean (astropy ``sigma_clipped_stats``, the frame's good
  pixels), one task per frame: the frames' normalisation, independent of any tiling.
* :func:`build_flat`: the flat from dithered sky frames (IO:I's ``make_flat``, done robustly): each frame
  divided by its level, the normalised frames combined pixel by pixel by the sigma-clipped median of
  :func:`detflow.steps.ccd.ccd_combine` (the stars move between dithers and are clipped), the result divided
  by its own sigma-clipped mean; pixels outside ``[low, high]`` (0.35, 2.0 as IO:I) or with no frame left
  are flagged ``DO_NOT_USE | NO_FLAT_FIELD`` and set to NaN. The combine reduces ``frame`` tile by tile.
* :func:`hxrg_flat` (registered step): the frames divided by ``refs["flat"]`` where the flat is usable
  (finite, inside the bounds, not flagged); elsewhere the data is left undivided and flagged
  ``NO_FLAT_FIELD | DO_NOT_USE``; ``err`` divided alike.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr
from astropy.stats import sigma_clipped_stats
from pydantic import Field

from ..schema import DQ, FRAME, X, Y, dq_attrs
from . import ccd as sc
from .registry import StepParams, record, register

FAMILY = "hxrg_ground"
FLAT_BAD = int(DQ.DO_NOT_USE | DQ.NO_FLAT_FIELD)


class FlatParams(StepParams):
    low: float = Field(0.35, gt=0, description="flat values below this are bad (IO:I's 0.35)")
    high: float = Field(2.0, gt=0, description="flat values above this are bad (IO:I's 2.0)")
    sigma: float = Field(3.0, gt=0, description="clipping threshold (std) of the levels and the combine")
    maxiters: int = Field(5, ge=1, description="clipping iterations of the levels and the combine")
    bad_bits: int = Field(int(DQ.DO_NOT_USE), ge=0, description="DQ bits that leave a pixel of a frame out")


def _clipped_mean(values: np.ndarray, sigma: float, maxiters: int) -> float:
    good = values[np.isfinite(values)]
    if good.size == 0:
        return np.nan
    return float(sigma_clipped_stats(good, sigma=sigma, maxiters=maxiters)[0])


def _levels_block(data: np.ndarray, dq: np.ndarray, bad_bits: int, sigma: float, maxiters: int) -> np.ndarray:
    values = np.where((dq.astype(np.uint32) & np.uint32(bad_bits)) != 0, np.nan, data.astype(np.float64))
    return np.array([_clipped_mean(v, sigma, maxiters) for v in values])


def frame_levels(ds: xr.Dataset, p: FlatParams) -> xr.DataArray:
    """Each frame's sigma-clipped mean of its good pixels (lazy on a lazy ``ds``: one task per frame chunk)."""
    data, dq = ds["data"].transpose(FRAME, Y, X).data, ds["dq"].transpose(FRAME, Y, X).data
    kw = dict(bad_bits=p.bad_bits, sigma=p.sigma, maxiters=p.maxiters)
    if isinstance(data, da.Array):
        data = data.rechunk({1: -1, 2: -1})
        dq = da.asarray(dq).rechunk(data.chunks)
        levels = da.map_blocks(_levels_block, data, dq, **kw, drop_axis=(1, 2), dtype=np.float64,
                               meta=np.empty((0,)))  # fmt: skip
    else:
        levels = _levels_block(np.asarray(data), np.asarray(dq), **kw)
    return xr.DataArray(levels, dims=(FRAME,), coords={FRAME: ds[FRAME]} if FRAME in ds.coords else None)


def _normalise_block(flat: np.ndarray, sigma: float, maxiters: int, low: float, high: float) -> np.ndarray:
    level = _clipped_mean(flat, sigma, maxiters)
    flat = flat / level
    bad = ~np.isfinite(flat) | (flat < low) | (flat > high)
    return np.stack([np.where(bad, np.nan, flat), np.where(bad, float(FLAT_BAD), 0.0), np.full(flat.shape, level)])


def build_flat(ds: xr.Dataset, p: FlatParams, levels: xr.DataArray | None = None) -> xr.Dataset:
    """The flat (y, x) of dithered sky frames ``ds`` (``data`` (frame, y, x), ``dq``), see the module's text.
    ``levels``: the frames' levels (default :func:`frame_levels`). Lazy on a lazy ``ds``: the combine
    keeps ``ds``'s pixel tiles, the final normalisation is one task over the combined image."""
    levels = frame_levels(ds, p) if levels is None else levels
    norm = ds[["data", "dq"]].copy()
    norm["data"] = ds["data"] / levels
    combine = sc.CombineParams(method="median", sigma_clip=True, low_thresh=p.sigma, high_thresh=p.sigma,
                               maxiters=p.maxiters, bad_bits=p.bad_bits)  # fmt: skip
    comb = sc.ccd_combine(norm, None, combine)
    raw = comb["data"].data
    kw = dict(sigma=p.sigma, maxiters=p.maxiters, low=p.low, high=p.high)
    if isinstance(raw, da.Array):
        tiles = raw.chunks
        stack = da.map_blocks(_normalise_block, raw.rechunk(-1), **kw, new_axis=0, dtype=np.float64,
                              chunks=((3,), (raw.shape[0],), (raw.shape[1],)), meta=np.empty((0, 0, 0)))  # fmt: skip
        stack = stack.rechunk((3, *tiles))
    else:
        stack = _normalise_block(np.asarray(raw), **kw)
    dq = stack[1].astype(np.uint32)  # a pixel no frame was left for is NaN: flagged with the bounds
    coords = {k: ds.coords[k] for k in (Y, X) if k in ds.coords}
    out = xr.Dataset({
        "data": ((Y, X), stack[0], {"units": "", "long_name": "flat from dithered sky frames (mean 1)"}),
        "err": ((Y, X), comb["err"].data / stack[2], {"units": "", "long_name": "uncertainty of the combine"}),
        "ngood": comb["ngood"],
        "dq": ((Y, X), dq, dq_attrs()),
        "frame_level": (("flat_frame",), levels.data, {"long_name": "sigma-clipped mean of each frame"}),
    }, coords=coords)  # fmt: skip
    out.attrs = {"frames": int(ds.sizes[FRAME]), "low": p.low, "high": p.high, "source": "dithered sky frames"}
    if "source_file" in ds.coords:
        out = out.assign_coords(flat_source=("flat_frame", [str(s) for s in ds["source_file"].values]))
    return record(out, "hxrg_flat_build", "COMPLETE", p)


@register("hxrg_flat_build", FlatParams, FAMILY)
def hxrg_flat_build(ds: xr.Dataset, refs: xr.Dataset | None, p: FlatParams) -> xr.Dataset:
    """:func:`build_flat` as a step (``refs["levels"]``: the frames' levels, when computed already)."""
    return build_flat(ds, p, None if refs is None or "levels" not in refs else refs["levels"])


class FlatDivideParams(StepParams):
    low: float = Field(0.35, gt=0, description="flat values below this are not divided by (flagged)")
    high: float = Field(2.0, gt=0, description="flat values above this are not divided by (flagged)")


@register("hxrg_flat", FlatDivideParams, FAMILY)
def hxrg_flat(ds: xr.Dataset, refs: xr.Dataset | None, p: FlatDivideParams) -> xr.Dataset:
    """The frames divided by ``refs["flat"]`` (and ``refs["flat_dq"]``) where it is usable; elsewhere left
    as they are and flagged ``DO_NOT_USE | NO_FLAT_FIELD``."""
    if refs is None or "flat" not in refs:
        return record(ds, "hxrg_flat", "SKIPPED", p, "no flat")
    flat = refs["flat"]
    usable = np.isfinite(flat) & (flat >= p.low) & (flat <= p.high)
    if "flat_dq" in refs:
        usable = usable & ((refs["flat_dq"].astype(np.uint32) & np.uint32(int(DQ.DO_NOT_USE))) == 0)
    safe = flat.where(usable, 1.0)
    out = ds.copy()
    for v in ("data", "err"):
        if v in ds:
            out[v] = (ds[v] / safe).assign_attrs(ds[v].attrs)
    dq = ds["dq"] if "dq" in ds else xr.zeros_like(ds["data"], dtype=np.uint32)
    out["dq"] = (dq.astype(np.uint32) | xr.where(usable, np.uint32(0), np.uint32(FLAT_BAD))).assign_attrs(dq_attrs())
    return record(out, "hxrg_flat", "COMPLETE", p)
