"""The steps that set the DQ arrays from the raw ramp: ``dq_init`` (raw DN to float with the reference read
added and the encoding offset removed; pixel DQ from the mask reference, guide window and reference border;
group DQ; resultant times) and ``saturation`` (saturated and A/D-floor resultants, stcal semantics,
romancal backup), with the saturation step's block functions and per-exposure kernel constants."""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field

from ... import schema
from ...kernels import ramp as kramp
from ...kernels import saturation as ksat
from ...schema import DQ, FRAME, READ, X, Y
from ..registry import StepParams, record, register
from .common import FAMILY, _active_mask, _geom, _pixel_index, _read_patterns, _rechunk

# the DQ values the kernels take as arguments (kernels import nothing from the package)
_SAT_FLAGS = ksat.dq_flags(DQ.SATURATED, DQ.DO_NOT_USE, DQ.AD_FLOOR)


# ---- dq_init --------------------------------------------------------------------------------------
class DQInitParams(StepParams):
    exclude_first: bool = Field(True, description="flag the first resultant DO_NOT_USE (PIT EXCLUDE_FIRST)")
    expand_gw: int = Field(1, ge=0, description="grow the guide window DO_NOT_USE region by this many pixels")


@register("dq_init", DQInitParams, FAMILY)
def dq_init(ds: xr.Dataset, refs: xr.Dataset | None, p: DQInitParams) -> xr.Dataset:
    """Initialise DQ: mask reference OR'ed into every pixel, guide window, reference border; times."""
    ny, nx = ds.sizes[Y], ds.sizes[X]
    geom = _geom(ds)
    data = ds["data"].astype(np.float32)
    if "reference_read" in ds:
        data = data + ds["reference_read"].astype(np.float32)
    data = data - ds["data_encoding_offset"].astype(np.float32)
    data.attrs = {"units": "DN"}

    # guide window (romancal dq_init): columns x_start:x_stop get GW_AFFECTED_DATA on every row, the
    # window grown by expand_gw gets DO_NOT_USE | GW_AFFECTED_DATA; only for windows on the array
    y, x = _pixel_index(ds)
    x0, x1, y0, y1 = (ds[k] for k in ("gw_xstart", "gw_xstop", "gw_ystart", "gw_ystop"))
    valid = (x0 >= 0) & (x0 < nx) & (y0 >= 0) & (y0 < ny)
    e = p.expand_gw
    cols = (x >= x0) & (x < x1) & valid
    win = ((x >= (x0 - e).clip(0, nx)) & (x < (x1 + e).clip(0, nx)) &
           (y >= (y0 - e).clip(0, ny)) & (y < (y1 + e).clip(0, ny)) & valid)  # fmt: skip
    gw = schema.flag_where(cols, DQ.GW_AFFECTED_DATA) | schema.flag_where(win, DQ.DO_NOT_USE | DQ.GW_AFFECTED_DATA)
    border = schema.flag_where(~_active_mask(ds, geom), DQ.REFERENCE_PIXEL)
    pixeldq = (gw.astype(np.uint32) | border).transpose(FRAME, Y, X)
    if refs is not None and "mask_dq" in refs:
        pixeldq = pixeldq | refs["mask_dq"].astype(np.uint32)
    if refs is not None and "reference_dq" in refs:  # unusable reference values (io.caldir)
        pixeldq = pixeldq | refs["reference_dq"].astype(np.uint32)
    chunks = data.chunks
    pixeldq = _rechunk(pixeldq, {FRAME: 1, Y: chunks[2], X: chunks[3]}) if chunks else pixeldq

    groupdq = xr.zeros_like(data, dtype=np.uint32)
    if p.exclude_first:
        first = xr.DataArray(np.arange(ds.sizes[READ]) == 0, dims=READ)
        groupdq = groupdq | schema.flag_where(first, DQ.DO_NOT_USE)
    if ds["data"].dtype.kind == "f":  # a float ramp: a NaN or infinite resultant is a missing one
        groupdq = groupdq | schema.flag_where(~np.isfinite(data), DQ.DO_NOT_USE)
    groupdq = groupdq.astype(np.uint32).transpose(*data.dims)

    rps = _read_patterns(ds)
    tbar = np.zeros((ds.sizes[FRAME], ds.sizes[READ]), dtype=np.float64)
    tau = np.zeros_like(tbar)
    for i, rp in enumerate(rps):
        tbar[i], tau[i], _ = kramp.resultant_times(rp, float(ds["frame_time"].values[i]))

    out = ds.drop_vars([v for v in ("reference_read",) if v in ds])
    out = out.assign(data=data, groupdq=groupdq, pixeldq=pixeldq)
    out["pixeldq"].attrs = schema.dq_attrs()
    out["groupdq"].attrs = schema.dq_attrs()
    out = out.assign_coords(tbar=((FRAME, READ), tbar, {"units": "s", "long_name": "mean time of resultant"}),
                            tau=((FRAME, READ), tau, {"units": "s", "long_name": "variance time of resultant"}))  # fmt: skip
    out.attrs["exclude_first"] = p.exclude_first
    status = "COMPLETE" if refs is not None and "mask_dq" in refs else "SKIPPED"
    note = "" if status == "COMPLETE" else "no mask reference: border and guide window only"
    checks = list(refs.attrs.get("reference_checks", [])) if refs is not None else []
    note = "; ".join([note] * bool(note) + checks + [f"reference border {geom.nborder} pixels"])
    return record(out, "dq_init", status, p, note)


# ---- saturation -----------------------------------------------------------------------------------
class SaturationParams(StepParams):
    n_pix_grow_sat: int = Field(1, ge=0, description="grow SATURATED by this many pixels (square box)")
    backup: int = Field(1, ge=0, description="resultants a multi-frame resultant takes SATURATED back from")
    skip_reset: bool = Field(True, description="do not check the first resultant when it is the reset read [0]")
    atod_limit: float = Field(65535.0, description="A/D limit; NaN or NO_SAT_CHECK thresholds become this + 1")


def _sat_first(data, thresh, fidx, *, frame_params):
    """Block: first resultant over threshold, (frame, 1, y, x) int16; ``fidx`` the frame numbers."""
    f0 = int(fidx.flat[0])
    out = np.empty((data.shape[0], 1) + data.shape[2:], dtype=np.int16)
    for f in range(data.shape[0]):
        k0 = frame_params[f0 + f][0]
        ksat.first_crossing(data[f, k0:], thresh[0, 0], out[f, 0])
    return out


def _sat_grow(first, *, k):
    out = np.empty_like(first)
    for f in range(first.shape[0]):
        ksat.min_filter(first[f, 0], k, out[f, 0])
    return out


def _sat_candidates(data, gdq, thresh, check, first_sat, fidx, *, frame_params):
    f0 = int(fidx.flat[0])
    out = np.empty(first_sat.shape, dtype=np.int16)
    for f in range(data.shape[0]):
        k0, dil = frame_params[f0 + f][:2]
        ksat.dilution_candidates(data[f, k0:], gdq[f, k0:], thresh[0, 0], check[0, 0], first_sat[f, 0], dil,
                                 _SAT_FLAGS, out[f, 0])  # fmt: skip
    return out


def _sat_apply(data, gdq, thresh, first_sat, fidx, cand, *, frame_params, k, backup):
    f0 = int(fidx.flat[0])
    out = np.empty(gdq.shape, dtype=np.uint32)
    for f in range(data.shape[0]):
        k0, _, m0, l2, n1, multi = frame_params[f0 + f]
        out[f, :k0] = gdq[f, :k0]
        ksat.apply_saturation(data[f, k0:], gdq[f, k0:], thresh[0, 0], first_sat[f, 0], cand[f, 0], k, m0, l2, n1,
                              multi, backup, _SAT_FLAGS, out[f, k0:])  # fmt: skip
    return out


def saturation_frame_params(rp: list[list[int]], skip_reset: bool):
    """Per-exposure constants of the saturation kernel for one read pattern."""
    k0 = 1 if (skip_reset and rp[0] == [0]) else 0
    r = rp[k0:]
    dil = np.array([np.mean(g) / g[-1] if g[-1] != 0 else 1.0 for g in r], dtype=np.float64)
    m0 = float(np.mean(r[0]))
    l2 = float(r[2][-1]) if len(r) > 2 else 0.0
    n1 = len(r[1]) if len(r) > 2 else 0
    multi = np.array([len(g) > 1 for g in r], dtype=np.bool_)
    return k0, dil, m0, l2, n1, multi


@register("saturation", SaturationParams, FAMILY)
def saturation(ds: xr.Dataset, refs: xr.Dataset, p: SaturationParams) -> xr.Dataset:
    """Flag saturated and A/D-floor resultants (stcal semantics, romancal backup, reset read skipped)."""
    thresh = refs["saturation_data"].astype(np.float32)
    sat_dq = refs["saturation_dq"].astype(np.uint32) if "saturation_dq" in refs else xr.zeros_like(
        thresh, dtype=np.uint32)  # fmt: skip
    nsc = ~np.isfinite(thresh) | ((sat_dq & np.uint32(DQ.NO_SAT_CHECK)) != 0)
    thresh_eff = xr.where(nsc, np.float32(p.atod_limit + 1), thresh).astype(np.float32)
    sat_dq = sat_dq | schema.flag_where(~np.isfinite(thresh), DQ.NO_SAT_CHECK)

    data = ds["data"].transpose(FRAME, READ, Y, X)
    gdq = ds["groupdq"].transpose(FRAME, READ, Y, X)
    fp = [saturation_frame_params(rp, p.skip_reset) for rp in _read_patterns(ds)]
    ddata = da.asarray(data.data).rechunk({0: 1, 1: -1})
    dgdq = da.asarray(gdq.data).rechunk(ddata.chunks)
    tchunks = ddata.chunks[2:]
    dthr = da.asarray(thresh_eff.transpose(Y, X).data).rechunk(tchunks)[None, None]
    dchk = da.asarray((~nsc).transpose(Y, X).data).rechunk(tchunks)[None, None]
    # per-pixel maps (frame, 1, y, x); only they cross tile borders, with halos of k pixels
    k = p.n_pix_grow_sat
    map_chunks = (ddata.chunks[0], (1,), *tchunks)
    fidx = da.arange(ddata.shape[0], chunks=ddata.chunks[0]).reshape(-1, 1, 1, 1)
    first = da.map_blocks(_sat_first, ddata, dthr, fidx, frame_params=fp, chunks=map_chunks, dtype=np.int16)
    if k:
        first = da.map_overlap(_sat_grow, first, depth={0: 0, 1: 0, 2: k, 3: k},
                               boundary={2: 32767, 3: 32767}, k=k, dtype=np.int16)  # fmt: skip
    cand = da.map_blocks(_sat_candidates, ddata, dgdq, dthr, dchk, first, fidx, frame_params=fp,
                         chunks=map_chunks, dtype=np.int16)  # fmt: skip
    if k:
        cand = da.overlap.overlap(cand, depth={0: 0, 1: 0, 2: k, 3: k}, boundary={2: -1, 3: -1})
    # the candidates' blocks carry their halo: zipped block by block with the others (no alignment);
    # the output takes the chunks of the first argument, the data
    ind = "fryx"
    flagged = da.blockwise(_sat_apply, ind, ddata, ind, dgdq, ind, dthr, ind, first, ind, fidx, ind, cand, ind,
                           frame_params=fp, k=k, backup=p.backup, dtype=np.uint32, align_arrays=False,
                           meta=np.empty((0, 0, 0, 0), dtype=np.uint32))  # fmt: skip
    out = ds.copy()
    out["groupdq"] = xr.DataArray(flagged, dims=(FRAME, READ, Y, X), coords=gdq.coords,
                                  attrs=schema.dq_attrs())  # fmt: skip
    out["pixeldq"] = (ds["pixeldq"] | sat_dq).astype(np.uint32)
    out["pixeldq"].attrs = schema.dq_attrs()
    return record(out, "saturation", "COMPLETE", p)
