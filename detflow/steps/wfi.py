"""Roman WFI up-the-ramp steps, L1 resultants to L2 slopes (the PIT ``gen_cal_image`` slice).

Dataset in: the L1 dataset of :func:`detflow.io.open_l1` (``data`` (frame, read, y, x) raw DN).
Between steps: ``data`` float32, ``groupdq`` (frame, read, y, x) and ``pixeldq`` (frame, y, x) uint32,
and the resultant times ``tbar``/``tau`` as (frame, read) coordinates. ``refs`` is the dataset of
:func:`detflow.io.caldir.open_wfi_references`. The last step, :func:`ramp_fit`, returns the L2 dataset.
"""

from __future__ import annotations

import logging
from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field

from .. import schema
from ..errors import DetflowInputError
from ..instruments.roman_wfi import OMEGA_IDEAL, Geometry, border_of
from ..kernels import ipc as kipc
from ..kernels import linearity as klin
from ..kernels import mask as kmask
from ..kernels import pixel_area as kpix
from ..kernels import ramp as kramp
from ..kernels import ramp_gls as kgls
from ..kernels import saturation as ksat
from ..kernels import sky as ksky
from ..schema import DQ, FRAME, READ, X, Y
from .registry import StepParams, record, register, register_fusion

FAMILY = "roman_wfi"
log = logging.getLogger("detflow")

# the DQ values the kernels take as arguments (kernels import nothing from the package)
_SAT_FLAGS = ksat.dq_flags(DQ.SATURATED, DQ.DO_NOT_USE, DQ.AD_FLOOR)
_LIN_FLAGS = klin.dq_flags(DQ.NO_LIN_CORR, DQ.REFERENCE_PIXEL, DQ.SATURATED)
_PIT_FLAGS = kramp.dq_flags(DQ.SATURATED, DQ.DO_NOT_USE, DQ.JUMP_DET, DQ.REFERENCE_PIXEL, DQ.NO_GAIN_VALUE,
                            DQ.UNRELIABLE_ERROR)  # fmt: skip
_GLS_FLAGS = kgls.dq_flags(DQ.SATURATED, DQ.DO_NOT_USE, DQ.JUMP_DET, DQ.REFERENCE_PIXEL, DQ.NO_GAIN_VALUE,
                           DQ.UNRELIABLE_ERROR, DQ.UNRELIABLE_SLOPE)  # fmt: skip


def _pixel_index(ds: xr.Dataset) -> tuple[xr.DataArray, xr.DataArray]:
    """Row and column indices as lazy 1-D arrays chunked like ``data``: masks built from them stay
    lazy and tiled (a full-frame numpy mask would be shipped inside the graph)."""
    chunks = ds["data"].chunksizes if ds["data"].chunks else {}
    y = da.arange(ds.sizes[Y], chunks=chunks.get(Y, -1))
    x = da.arange(ds.sizes[X], chunks=chunks.get(X, -1))
    return xr.DataArray(y, dims=Y), xr.DataArray(x, dims=X)


def _geom(ds: xr.Dataset) -> Geometry:
    """The detector geometry of a dataset: its frame size and its reference border (``nborder``)."""
    return Geometry.for_shape(ds.sizes[Y], ds.sizes[X], border_of(ds.attrs))


def _active_mask(ds: xr.Dataset, geom: Geometry) -> xr.DataArray:
    """True on the active pixels, False on the reference border."""
    y, x = _pixel_index(ds)
    nb, n = geom.nborder, geom.nside
    return (y >= nb) & (y < n - nb) & (x >= nb) & (x < n - nb)


def _read_patterns(ds: xr.Dataset) -> list[list[list[int]]]:
    if ds.sizes[READ] < 2:
        src = ds["source_file"].values[0] if "source_file" in ds.coords else None
        raise DetflowInputError(src, "read_pattern", "at least 2 resultants (a slope needs two reads)",
                                f"{ds.sizes[READ]} resultant")  # fmt: skip
    first = ds["read_first"].values
    count = ds["read_nframes"].values
    return [[list(range(int(f), int(f) + int(c))) for f, c in zip(fr, cr)] for fr, cr in zip(first, count)]


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


# ---- reference pixels -----------------------------------------------------------------------------
class RefPixParams(StepParams):
    row_slope: Literal["auto", "fit", "pink_model"] = Field(
        "auto", description="row-step gain m: fitted, from the read reference's 1/f model, or the model when "
                            "the data have amp33 and the reference has the model (as gen_cal_image)")  # fmt: skip
    channel: bool = Field(True, description="subtract each channel's line through its bottom and top reference rows")
    fit_rows: Literal["active", "all"] = Field(
        "active", description="rows of the row-step fit: 'active' (the illuminated rows); 'all' includes the "
                              "dark border rows as gen_cal_image does, which biases m by the step between them")  # fmt: skip


def pink_model_slope(pink: dict) -> float:
    """Optimal row-step gain from the 1/f model of the read reference (the PIT's formula)."""
    cvar = pink["C_PINK"] ** 2
    m = pink["M_PINK"]
    return m * cvar / (m * m * cvar + pink["RU_PINK"] ** 2 + pink["std_median"] ** 2 / 128 / np.log(4096))


def _rechunk(a: xr.DataArray, chunks: dict) -> xr.DataArray:
    """Rechunk the data only: ``DataArray.chunk`` would also turn numpy coordinates into dask arrays,
    and merging those with the originals later compares them, which computes."""
    if not isinstance(a.data, da.Array):
        return a
    return a.copy(data=a.data.rechunk({a.get_axis_num(d): c for d, c in chunks.items()}))


def _median(a: xr.DataArray, dims: list[str]) -> xr.DataArray:
    """Lazy median over ``dims`` (each made one chunk), float32 like the PIT's image arrays."""
    a = _rechunk(a, {d: -1 for d in dims})
    return xr.apply_ufunc(
        lambda v: np.median(v, axis=tuple(range(-len(dims), 0))).astype(np.float32), a,
        input_core_dims=[dims], dask="parallelized", output_dtypes=[np.float32])  # fmt: skip


@register("refpix", RefPixParams, FAMILY)
def refpix(ds: xr.Dataset, refs: xr.Dataset, p: RefPixParams) -> xr.Dataset:
    """Reference-pixel correction per resultant on the dark-subtracted cube: row step, channel step."""
    n = ds.sizes[X]
    geom = _geom(ds)
    nb, cw = geom.nborder, geom.channel_width
    nread = ds.sizes[READ]
    if nb == 0:
        return record(ds, "refpix", "SKIPPED", p, "no reference pixels (reference border 0)")
    if "dark_data" not in refs or refs.sizes["dark_k"] < nread:
        return record(ds, "refpix", "SKIPPED", p, "the dark reference has no roman.data cube for every resultant")
    dark = refs["dark_data"].isel(dark_k=slice(0, nread)).rename(dark_k=READ).astype(np.float32, copy=False)
    img = ds["data"] - dark
    has33 = "amp33" in ds and "read_amp33_med" in refs
    # row step: per row, the science median against the reference median (amp33, else the 4+4 border
    # columns), m from a least-squares line over all rows (or the 1/f model); subtract m (ref - median ref)
    sci_med = _median(img.isel({X: slice(nb, n - nb)}), [X])
    if has33:
        a = ds["amp33"].astype(np.float32) - refs["read_amp33_med"].astype(np.float32, copy=False)
        a = a - _median(a, [Y, "x_amp33"])
        ref_med = _rechunk(_median(a, ["x_amp33"]), {Y: sci_med.chunks[sci_med.get_axis_num(Y)]})
    else:
        ref_med = _median(xr.concat([img.isel({X: slice(0, nb)}), img.isel({X: slice(n - nb, n)})], X), [X])
    rm, sm = _rechunk(ref_med, {Y: -1}), _rechunk(sci_med, {Y: -1})
    mode = p.row_slope
    if mode == "auto":
        mode = "pink_model" if has33 and "read_pink_model" in refs else "fit"
    if mode == "pink_model":
        if "read_pink_model" not in refs:
            raise KeyError("row_slope: pink_model needs M_PINK, RU_PINK, C_PINK in the read reference")
        m = pink_model_slope(refs["read_pink_model"].attrs)
    else:
        # least squares over the active rows only: the border rows see no light, and the step from
        # them to the illuminated rows is not reference-pixel noise (it biases the PIT's m)
        rows = {Y: slice(nb, n - nb) if p.fit_rows == "active" else slice(None)}
        ra, sa = rm.isel(rows), sm.isel(rows)
        dr = ra - ra.mean(Y)
        m = (dr * (sa - sa.mean(Y))).sum(Y) / (dr * dr).sum(Y)
    img = img - m * (ref_med - _median(rm, [Y]))
    # channel step: a line through the medians of the bottom and top reference rows of each channel
    if p.channel:

        def channel_medians(rows):
            block = img.isel({Y: rows}).coarsen({X: cw}).construct({X: ("channel", "col")})
            return _rechunk(_median(block, [Y, "col"]), {"channel": -1})

        bottom = channel_medians(slice(0, nb))
        top = channel_medians(slice(n - nb, n))
        y0, y1 = (nb - 1) / 2.0, n - nb + (nb - 1) / 2.0  # row centres of the two reference bands
        slope = (top - bottom) / (y1 - y0)
        chan = xr.DataArray(np.arange(n) // cw, dims=X)
        yy, _ = _pixel_index(ds)
        img = img - (bottom.isel(channel=chan) + slope.isel(channel=chan) * (yy.astype(np.float32) - y0))
    out = ds.copy()
    result = (img + dark).astype(np.float32).transpose(*ds["data"].dims).assign_attrs(ds["data"].attrs)
    if ds["data"].chunks:  # keep the tiles of the input (the per-channel terms would split x otherwise)
        result = _rechunk(result, dict(zip(ds["data"].dims, ds["data"].chunks)))
    out["data"] = result
    return record(out, "refpix", "COMPLETE", p, f"row step {mode}{', channel step' if p.channel else ''}")


# ---- bias correction ------------------------------------------------------------------------------
class BiasCorrParams(StepParams):
    pass


@register("bias_correction", BiasCorrParams, FAMILY)
def bias_correction(ds: xr.Dataset, refs: xr.Dataset, p: BiasCorrParams) -> xr.Dataset:
    """Subtract the ``biascorr`` reference (its last ``nread`` resultants) from the active region."""
    nread = ds.sizes[READ]
    if "biascorr_data" not in refs or refs.sizes["biascorr_k"] < nread:
        return record(ds, "bias_correction", "SKIPPED", p, "no biascorr reference for every resultant")
    k = refs.sizes["biascorr_k"]
    corr = refs["biascorr_data"].isel(biascorr_k=slice(k - nread, k)).rename(biascorr_k=READ)
    out = ds.copy()
    out["data"] = (ds["data"] - corr.astype(np.float32)).astype(np.float32).transpose(*ds["data"].dims)
    out["data"].attrs = ds["data"].attrs
    return record(out, "bias_correction", "COMPLETE", p)


# ---- linearity ------------------------------------------------------------------------------------
class LinearityParams(StepParams):
    exempt_reset: bool = Field(
        True, description="clip and never flag the first resultant when it is the reset read [0]"
    )
    pit_sticky_no_lin_corr: bool = Field(
        False, description="gen_cal_image 1.0 compatibility: resultants after the first extrapolated one get S - Sref"
    )


def _frame(a: np.ndarray, f: int, ncore: int = 0) -> np.ndarray:
    """Frame ``f`` of an ``apply_ufunc`` block, as (y, x, *core) with broadcastable y and x.

    ``apply_ufunc`` hands each argument with the loop dims (frame, y, x) it has, leading ones dropped
    and inner missing ones of length 1; ``ncore`` is the number of core dims at the end.
    """
    missing = 3 + ncore - a.ndim
    if missing:
        a = a.reshape((1,) * missing + a.shape)
    return a[f if a.shape[0] > 1 else 0]


def _tile(a: np.ndarray, f: int, shape: tuple[int, ...]) -> np.ndarray:
    """Frame ``f`` of a block, broadcast (without copying) to the tile ``shape`` (y, x, *core)."""
    return np.broadcast_to(_frame(a, f, len(shape) - 2), shape)


def _nframes(*arrays_ncore) -> int:
    return max(a.shape[0] if a.ndim - nc == 3 else 1 for a, nc in arrays_ncore)


def _linearity_block(raw, coefs, smin, smax, sref, lin_dq, gdq, exempt, sticky):
    nf = _nframes((raw, 1), (gdq, 1))
    ny, nx, n = np.broadcast_shapes(raw.shape[-3:], gdq.shape[-3:])
    out = np.empty((nf, ny, nx, n), dtype=np.float32)
    dq = np.empty((nf, ny, nx), dtype=np.uint32)
    tile = (ny, nx)
    for f in range(nf):
        klin.linearize_ramps(
            _tile(raw, f, (ny, nx, n)), _tile(coefs, f, (ny, nx, coefs.shape[-1])), _tile(smin, f, tile),
            _tile(smax, f, tile), _tile(sref, f, tile), _tile(lin_dq, f, tile), _tile(gdq, f, (ny, nx, n)),
            bool(_frame(exempt, f).flat[0]), bool(sticky), _LIN_FLAGS, out[f], dq[f])  # fmt: skip
    return out, dq


def _linearity_inputs(ds: xr.Dataset, refs: xr.Dataset, p: LinearityParams):
    exempt = xr.DataArray([p.exempt_reset and rp[0] == [0] for rp in _read_patterns(ds)], dims=FRAME)
    lin_dq = refs["linearitylegendre_dq"].astype(np.uint32) if "linearitylegendre_dq" in refs else \
        xr.zeros_like(refs["linearitylegendre_Sref"], dtype=np.uint32)  # fmt: skip
    f32 = [refs[f"linearitylegendre_{k}"].astype(np.float32, copy=False) for k in ("data", "Smin", "Smax", "Sref")]
    return (*f32, lin_dq, exempt)


@register("linearity", LinearityParams, FAMILY)
def linearity(ds: xr.Dataset, refs: xr.Dataset, p: LinearityParams) -> xr.Dataset:
    """Legendre nonlinearity correction to DN_lin above bias; NO_LIN_CORR where extrapolated."""
    coefs, smin, smax, sref, lin_dq, exempt = _linearity_inputs(ds, refs, p)
    data, dq = xr.apply_ufunc(
        _linearity_block,
        ds["data"].astype(np.float32, copy=False), coefs, smin, smax, sref, lin_dq, ds["groupdq"], exempt,
        kwargs={"sticky": p.pit_sticky_no_lin_corr},
        input_core_dims=[[READ], ["linearitylegendre_k"], [], [], [], [], [READ], []],
        output_core_dims=[[READ], []],
        dask="parallelized", output_dtypes=[np.float32, np.uint32],
    )  # fmt: skip
    out = ds.copy()
    out["data"] = data.assign_attrs(units="DN", long_name="linearised signal above bias")
    out["pixeldq"] = (ds["pixeldq"] | dq).astype(np.uint32).transpose(FRAME, Y, X)
    out["pixeldq"].attrs = schema.dq_attrs()
    return record(out, "linearity", "COMPLETE", p)


# ---- IPC ------------------------------------------------------------------------------------------
class IPCParams(StepParams):
    order: int = Field(2, ge=1, le=4, description="order of the IPC inversion (error ~ alpha^(order+1))")


def _ipc_block(data, kernel, gain, *, order):
    out = np.empty(data.shape, dtype=np.float32)
    for f in range(data.shape[0]):
        for r in range(data.shape[1]):
            kipc.ipc_reverse(data[f, r], kernel, gain[0, 0], order, out[f, r])
    return out


def ipc_gain(refs: xr.Dataset) -> xr.DataArray:
    """The gain (e/DN) the IPC deconvolution converts with: where it is not finite and > 0 (those pixels
    are flagged NO_GAIN_VALUE), the mean of the usable gains, so that no NaN spreads to the neighbours."""
    g = refs["gain_data"].astype(np.float32)
    ok = np.isfinite(g) & (g > 0)
    return xr.where(ok, g, g.where(ok).mean()).astype(np.float32)


def ipc_deconvolve(arr: da.Array, kernel: da.Array, gain: da.Array, nb: int, order: int) -> da.Array:
    """IPC-deconvolve the active region of every (frame, read) plane of ``arr`` (DN, in electrons via
    ``gain``); the reference border is passed through. Tiles exchange halos of ``order`` pixels."""
    n = arr.shape[-1]
    act = arr[..., nb : n - nb, nb : n - nb].astype(np.float32)
    kern = kernel.rechunk({2: act.chunks[2], 3: act.chunks[3]})
    g = gain[nb : n - nb, nb : n - nb].astype(np.float64).rechunk(act.chunks[2:])[None, None]
    halo = {0: 0, 1: 0, 2: order, 3: order}
    res = da.map_overlap(_ipc_block, act, kern, g, depth=[halo, halo, halo], boundary="none", trim=True,
                         align_arrays=False, dtype=np.float32, order=order, meta=np.empty((0,) * 4, np.float32))  # fmt: skip
    full = da.pad(res, ((0, 0), (0, 0), (nb, nb), (nb, nb))).rechunk(arr.chunks)
    yy = da.arange(n, chunks=arr.chunks[2])[:, None]
    xx = da.arange(n, chunks=arr.chunks[3])[None, :]
    inside = (yy >= nb) & (yy < n - nb) & (xx >= nb) & (xx < n - nb)
    return da.where(inside, full, arr).astype(np.float32)


@register("ipc", IPCParams, FAMILY)
def ipc(ds: xr.Dataset, refs: xr.Dataset, p: IPCParams) -> xr.Dataset:
    """IPC deconvolution of each linearised resultant with the per-pixel ``ipc4d`` kernel, in electrons."""
    if "ipc4d_data" not in refs:
        return record(ds, "ipc", "SKIPPED", p, "no ipc4d reference")
    geom = _geom(ds)
    data = ds["data"].transpose(FRAME, READ, Y, X)
    darr = da.asarray(data.data).rechunk({0: 1, 1: -1})
    out_arr = ipc_deconvolve(darr, refs["ipc4d_data"].data, ipc_gain(refs).data, geom.nborder, p.order)
    out = ds.copy()
    out["data"] = data.copy(data=out_arr).transpose(*ds["data"].dims)
    out.attrs["ipc_order"] = p.order  # dark_current deconvolves the dark slope the same way
    return record(out, "ipc", "COMPLETE", p)


# ---- dark current ---------------------------------------------------------------------------------
class DarkParams(StepParams):
    pass


def _dark_map(ds: xr.Dataset, refs: xr.Dataset) -> xr.DataArray:
    """The dark slope on the active pixels, 0 on the reference border (float32); IPC-deconvolved like
    the data when the ipc step ran (the dark reference is measured through IPC)."""
    geom = _geom(ds)
    dark = refs["dark_dark_slope"].astype(np.float32)
    if ds.attrs.get("ipc_order"):
        arr = ipc_deconvolve(dark.data[None, None], refs["ipc4d_data"].data, ipc_gain(refs).data,
                             geom.nborder, int(ds.attrs["ipc_order"]))[0, 0]  # fmt: skip
        dark = dark.copy(data=arr)
    return dark * _active_mask(ds, geom).astype(np.float32)


@register("dark_current", DarkParams, FAMILY)
def dark_current(ds: xr.Dataset, refs: xr.Dataset, p: DarkParams) -> xr.Dataset:
    """Subtract ``tbar_j * dark_slope`` from each resultant (active pixels; reference pixels untouched)."""
    out = ds.copy()
    out["data"] = (ds["data"] - ds["tbar"].astype(np.float32) * _dark_map(ds, refs)).astype(np.float32, copy=False)
    out["data"].attrs = ds["data"].attrs
    return record(out, "dark_current", "COMPLETE", p)


# ---- ramp fit + jump detection --------------------------------------------------------------------
class RampFitParams(StepParams):
    slope: float = Field(0.4, gt=0, description="RAMP_OPT_PARS slope (DN/s) the weights are optimised for")
    gain: float = Field(1.8, gt=0, description="RAMP_OPT_PARS gain (e/DN)")
    sigma_read: float = Field(6.5, gt=0, description="RAMP_OPT_PARS read noise (DN)")
    exclude_first: bool = Field(True, description="leave the first resultant out of the fit")
    jump_detection: bool = Field(True, description="flag jumps (Sharma & Casertano 2024)")
    SthreshA: float = Field(5.5, description="jump threshold (sigma) at slope IthreshA")
    SthreshB: float = Field(4.5, description="jump threshold (sigma) at slope IthreshB")
    IthreshA: float = Field(1.0, gt=0, description="slope (DN/s) of the first threshold point")
    IthreshB: float = Field(1000.0, gt=0, description="slope (DN/s) of the second threshold point")
    one_resultant: Literal["first_resultant", "zero", "off"] = Field(
        "first_resultant", description="a ramp with one usable resultant: slope from the first resultant "
        "(left out by exclude_first), from zero signal at t = 0 (bias-subtracted ramps), or none; flagged "
        "UNRELIABLE_SLOPE")  # fmt: skip
    pit_compat: bool = Field(False, description="the PIT's numerics bit for bit: fixed weights, a ramp ends at "
                             "its first do-not-use resultant, two-point slopes of truncated ramps, jumps "
                             "flagged but kept in the slope, no one-resultant slopes")  # fmt: skip


_ONE = {"first_resultant": kgls.ONE_FIRST, "zero": kgls.ONE_ZERO, "off": kgls.ONE_OFF}


def ramp_tables_for(ds: xr.Dataset, p: RampFitParams) -> dict[str, xr.DataArray]:
    """The :class:`~detflow.kernels.ramp.RampTables` of every frame, as DataArrays over ``frame``
    (the weights of a truncated ramp: the PIT's two-point slope with ``pit_compat``, else optimal)."""
    u = p.slope / p.gain / p.sigma_read**2
    start = 1 if p.exclude_first else 0
    tabs = [kramp.ramp_tables(rp, float(ft), u, start, two_point=p.pit_compat)
            for rp, ft in zip(_read_patterns(ds), ds["frame_time"].values)]  # fmt: skip

    npair = max(1, max(len(t.pair_i) for t in tabs))  # no pairs (two usable resultants): one unused entry

    def stack(field, dims):
        arrays = [getattr(t, field) for t in tabs]
        if dims == ("pair",):  # entries past a frame's pair_start are never read
            arrays = [np.pad(a, (0, npair - len(a))) for a in arrays]
        return xr.DataArray(np.stack(arrays), dims=(FRAME, *dims))

    return {
        "weights": stack("weights", ("trunc", READ)),
        "coef_poisson": stack("coef_poisson", ("trunc",)),
        "coef_read": stack("coef_read", ("trunc",)),
        "pair_start": stack("pair_start", ("trunc1",)),
        "pair_i": stack("pair_i", ("pair",)),
        "pair_j": stack("pair_j", ("pair",)),
        "pair_inv_dt": stack("pair_inv_dt", ("pair",)),
        "pair_poisson": stack("pair_poisson", ("pair",)),
        "pair_read": stack("pair_read", ("pair",)),
    }


def _ramp_block(data, gdq, pdq, gain, rn, *tables, ncore):
    nf = _nframes((data, 1), (gdq, 1), (pdq, 0))
    ny, nx, n = np.broadcast_shapes(data.shape[-3:], gdq.shape[-3:])
    outs = [np.empty((nf, ny, nx), dtype=t) for t in (np.float32, np.float32, np.float32, np.uint32)]
    tile = (ny, nx)
    pit = ncore[0] == 2  # the PIT tables start with the weights (trunc, read)
    extra = () if pit else (np.zeros((0, 0, 0), np.uint32),)
    for f in range(nf):
        (kramp.fit_ramps if pit else kgls.fit_ramps)(
            _tile(data, f, (ny, nx, n)), _tile(gdq, f, (ny, nx, n)), _tile(pdq, f, tile), _tile(gain, f, tile),
            _tile(rn, f, tile), *(_frame(t, f, nc)[0, 0] for t, nc in zip(tables, ncore)),
            *(o[f] for o in outs), *extra)  # fmt: skip
    return tuple(outs)


_TABLE_CORE_DIMS = [["trunc", READ], ["trunc"], ["trunc"], ["trunc1"], ["pair"], ["pair"], ["pair"], ["pair"],
                    ["pair"]]  # fmt: skip


def _ramp_inputs(ds: xr.Dataset, p: RampFitParams, t: dict) -> tuple[list, list[list[str]]]:
    """The kernel's per-frame inputs after the pixel arrays, and their core dims."""
    if p.pit_compat:
        flags = xr.DataArray(_PIT_FLAGS, dims="flag")
        return [*t.values(), _ramp_param_array(p), flags], [*_TABLE_CORE_DIMS, ["param"], ["flag"]]
    nfr = xr.DataArray(ds["read_nframes"].values.astype(np.float64), dims=(FRAME, READ))
    par = kgls.gls_params(1 if p.exclude_first else 0, p.jump_detection, p.SthreshA, p.SthreshB, p.IthreshA,
                          p.IthreshB, _ONE[p.one_resultant], p.slope / p.gain / p.sigma_read**2, p.gain,
                          p.sigma_read)  # fmt: skip
    times = [xr.DataArray(ds[k].values.astype(np.float64), dims=(FRAME, READ)) for k in ("tbar", "tau")]
    args = [*times, nfr, xr.DataArray(par, dims="param"), xr.DataArray(_GLS_FLAGS, dims="flag")]
    return args, [[READ], [READ], [READ], ["param"], ["flag"]]


def ramp_note(ds: xr.Dataset, p: RampFitParams) -> str:
    """What the ramp fit can do with these resultants, for its record (and a warning when it is nothing)."""
    usable = ds.sizes[READ] - (1 if p.exclude_first else 0)
    if usable >= 2:
        return "CDS (two-point) slopes: two usable resultants" if usable == 2 else ""
    if (
        usable == 1
        and not p.pit_compat
        and (p.one_resultant == "zero" or (p.exclude_first and p.one_resultant == "first_resultant"))
    ):
        msg = f"one-resultant slopes ({p.one_resultant} as zero point), every pixel UNRELIABLE_SLOPE"
        log.warning("ramp_fit: %s", msg)
        return msg
    msg = (f"no slope can be formed: {ds.sizes[READ]} resultants with exclude_first leave {usable} usable; every "
           "pixel is DO_NOT_USE with NaN slope (exclude_first: false gives the CDS slope)")  # fmt: skip
    log.warning("ramp_fit: %s", msg)
    return msg


def _ramp_param_array(p: RampFitParams) -> xr.DataArray:
    return xr.DataArray(kramp.ramp_params(1 if p.exclude_first else 0, p.SthreshA, p.SthreshB, p.IthreshA,
                                          p.IthreshB, p.jump_detection), dims="param")  # fmt: skip


def _l2_dataset(ds, t, slope, vr, vp, dq) -> xr.Dataset:
    dims = (FRAME, Y, X)
    out = xr.Dataset(
        {
            "data": slope.transpose(*dims).assign_attrs(units=schema.UNITS["DN/s"], long_name="slope"),
            "dq": dq.astype(np.uint32).transpose(*dims).assign_attrs(schema.dq_attrs()),
            "var_rnoise": vr.transpose(*dims).assign_attrs(
                units=schema.UNITS["DN2/s2"], long_name="slope variance from read noise"
            ),
            "var_poisson": vp.transpose(*dims).assign_attrs(
                units=schema.UNITS["DN2/s2"], long_name="slope variance from Poisson noise"
            ),
        },  # fmt: skip
        attrs=dict(ds.attrs),
    )
    out["err"] = np.sqrt(out["var_rnoise"] + out["var_poisson"]).astype(np.float32).assign_attrs(
        units=schema.UNITS["DN/s"], long_name="total slope uncertainty")  # fmt: skip
    keep = [c for c in ("source_file", "frame_time") if c in ds.coords]
    out = out.assign_coords({c: ds[c] for c in keep})
    return out.assign_coords(ramp_weights=t["weights"].isel(trunc=-1).assign_attrs(
        long_name="slope weights of a full ramp at the RAMP_OPT_PARS signal", units="1 / s"))  # fmt: skip


@register("ramp_fit", RampFitParams, FAMILY)
def ramp_fit(ds: xr.Dataset, refs: xr.Dataset, p: RampFitParams) -> xr.Dataset:
    """Slopes from every good resultant, split at jumps (see :mod:`detflow.kernels.ramp_gls`), or the
    PIT's fixed-weight fit with jump flags (``pit_compat``, :mod:`detflow.kernels.ramp`); returns L2."""
    t = ramp_tables_for(ds, p)
    extra, core = _ramp_inputs(ds, p, t)
    slope, vr, vp, dq = xr.apply_ufunc(
        _ramp_block,
        ds["data"].astype(np.float32, copy=False), ds["groupdq"], ds["pixeldq"],
        refs["gain_data"].astype(np.float32, copy=False), refs["read_data"].astype(np.float32, copy=False),
        *extra, kwargs={"ncore": [len(c) for c in core]},
        input_core_dims=[[READ], [READ], [], [], [], *core],
        output_core_dims=[[], [], [], []],
        dask="parallelized", output_dtypes=[np.float32, np.float32, np.float32, np.uint32],
    )  # fmt: skip
    out = _l2_dataset(ds, t, slope, vr, vp, ds["pixeldq"] | dq)
    return record(out, "ramp_fit", "COMPLETE", p, ramp_note(ds, p))


# ---- flat field -----------------------------------------------------------------------------------
class FlatParams(StepParams):
    min_flat: float = Field(0.1, gt=0, description="NO_FLAT_FIELD below this flat value (then clipped to it)")
    max_flat: float = Field(10.0, gt=0, description="NO_FLAT_FIELD above this flat value (then clipped to it)")
    min_gain: float = Field(0.1, gt=0, description="NO_GAIN_VALUE at or below this gain (e/DN)")


def flat_map(ds: xr.Dataset, refs: xr.Dataset, p: FlatParams) -> tuple[xr.DataArray, xr.DataArray]:
    """The flat to divide by (full frame, 1 on the reference border, clipped, IPC-deconvolved in
    electrons when the ipc step ran) and the flags it brings (NO_FLAT_FIELD, NO_GAIN_VALUE)."""
    geom = _geom(ds)
    active = _active_mask(ds, geom)
    flat = xr.where(active, refs["flat_data"].astype(np.float32), np.float32(1.0))
    bad = (flat < p.min_flat) | (flat > p.max_flat) | flat.isnull()
    gain = refs["gain_data"].astype(np.float32)
    flags = schema.flag_where(bad, DQ.NO_FLAT_FIELD) | schema.flag_where(active & ~(gain > p.min_gain),
                                                                        DQ.NO_GAIN_VALUE)  # fmt: skip
    flat = flat.fillna(1.0).clip(p.min_flat, p.max_flat)
    if "wcs_header" in refs.attrs:  # the flat holds pixel area x QE: keep the QE (as the PIT does)
        flat = flat / _area_factor(flat, refs.attrs["wcs_header"])
    if ds.attrs.get("ipc_order") and "ipc4d_data" in refs:
        g = ipc_gain(refs).clip(p.min_gain, None)
        arr = ipc_deconvolve(da.asarray(flat.transpose(Y, X).data)[None, None], refs["ipc4d_data"].data,
                             da.asarray(g.transpose(Y, X).data), geom.nborder, int(ds.attrs["ipc_order"]))[0, 0]  # fmt: skip
        flat = flat.transpose(Y, X).copy(data=arr)
    return flat.astype(np.float32), flags


def _area_block(block, *, header: str, north: bool, nx: int, block_info=None):
    from astropy.io import fits
    from astropy.wcs import WCS

    (y0, y1), (x0, x1) = block_info[0]["array-location"]
    area = kpix.pixel_area(WCS(fits.Header.fromstring(header)), y0, y1, nx, north)
    return (area[:, x0:x1] / OMEGA_IDEAL).astype(np.float32)


def _area_factor(like: xr.DataArray, header: str) -> xr.DataArray:
    """Pixel solid angle over (0.11 arcsec)^2, tiled like ``like`` (y, x); pixel indices 0-based full frame."""
    from astropy.io import fits
    from astropy.wcs import WCS

    w = WCS(fits.Header.fromstring(header))
    north = float(w.all_pix2world([[-1.0, -1.0]], 0)[0, 1]) > 0  # the PIT's choice of projection pole
    like = like.transpose(Y, X)
    arr = da.map_blocks(_area_block, da.asarray(like.data), header=header, north=north, nx=like.sizes[X],
                        dtype=np.float32)  # fmt: skip
    return like.copy(data=arr)


@register("flat", FlatParams, FAMILY)
def flat(ds: xr.Dataset, refs: xr.Dataset, p: FlatParams) -> xr.Dataset:
    """Divide the slope by the flat and both variances by its square; NO_FLAT_FIELD, NO_GAIN_VALUE."""
    if "flat_data" not in refs:
        return record(ds, "flat", "SKIPPED", p, "no flat reference")
    f, flags = flat_map(ds, refs, p)
    out = ds.copy()
    out["data"] = (ds["data"] / f).astype(np.float32).assign_attrs(ds["data"].attrs)
    for v in ("var_rnoise", "var_poisson"):
        out[v] = (ds[v] / (f * f)).astype(np.float32).assign_attrs(ds[v].attrs)
    out["err"] = np.sqrt(out["var_rnoise"] + out["var_poisson"]).astype(np.float32).assign_attrs(ds["err"].attrs)
    out["dq"] = (ds["dq"] | flags).astype(np.uint32).transpose(*ds["dq"].dims).assign_attrs(ds["dq"].attrs)
    note = "IPC-deconvolved flat" if ds.attrs.get("ipc_order") else ""
    area = "pixel-area factor from the WCS" if "wcs_header" in refs.attrs else "pixel-area factor 1 (no WCS)"
    return record(out, "flat", "COMPLETE", p, (note + "; " if note else "") + area)


# ---- good-pixel mask and sky ----------------------------------------------------------------------
def _grow_block(dq, *, sizes):
    out = np.empty(dq.shape, dtype=bool)
    for f in range(dq.shape[0]):
        kmask.grow_bits(dq[f], sizes, out[f])
    return out


def grown_mask(dq: xr.DataArray, table: dict[str, int] | None = None) -> xr.DataArray:
    """True where a pixel is masked by the grown flags (``schema.PIXEL_MASK_1`` by default); lazy,
    tiles exchanging 2-pixel halos. ``dq`` is (frame, y, x)."""
    sizes = schema.mask_sizes(table or schema.PIXEL_MASK_1)
    dq = dq.transpose(FRAME, Y, X)
    arr = da.map_overlap(_grow_block, da.asarray(dq.data), depth={0: 0, 1: 2, 2: 2}, boundary="none",
                         dtype=bool, sizes=sizes, meta=np.empty((0, 0, 0), dtype=bool))  # fmt: skip
    return dq.copy(data=arr)


def _sky_model(coefs: xr.DataArray, slope: xr.DataArray, order: int) -> xr.DataArray:
    """``sum_k c_k P_i(u) P_j(v)`` on the grid of ``slope`` (separable, so built from 1-D Legendre rows)."""
    from scipy.special import eval_legendre

    ny, nx = slope.sizes[Y], slope.sizes[X]
    u = 2 * np.arange(nx) / nx - 1
    v = 2 * np.arange(ny) / ny - 1
    ij = [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]
    lpx = xr.DataArray(np.stack([eval_legendre(i, u) for i, _ in ij]).astype(np.float32), dims=("sky_coef", X))
    lpy = xr.DataArray(np.stack([eval_legendre(j, v) for _, j in ij]).astype(np.float32), dims=("sky_coef", Y))
    chunks = dict(zip(slope.dims, slope.chunks)) if slope.chunks else {}
    lpx = lpx.chunk({"sky_coef": -1, X: chunks.get(X, -1)})
    lpy = lpy.chunk({"sky_coef": -1, Y: chunks.get(Y, -1)})
    return (coefs.astype(np.float32).chunk({"sky_coef": -1}) * lpy * lpx).sum("sky_coef").transpose(FRAME, Y, X)


class SkyParams(StepParams):
    order: int | None = Field(
        None, ge=0, le=10, description="SKYORDER: subtract a 2-D Legendre sky of this total degree"
    )


@register("sky", SkyParams, FAMILY)
def sky(ds: xr.Dataset, refs: xr.Dataset, p: SkyParams) -> xr.Dataset:
    """Histogram-mode sky of the 4x4-binned masked slopes (always); with ``order`` a 2-D Legendre sky
    fitted to the medians of an 8x8 grid of blocks is subtracted (``data_withsky`` keeps the slope)."""
    geom = _geom(ds)
    nb, n = geom.nborder, geom.nside
    act = {Y: slice(nb, n - nb), X: slice(nb, n - nb)}
    masked = grown_mask(ds["dq"]).isel(act)
    slope = ds["data"].transpose(FRAME, Y, X).isel(act)
    one = {Y: -1, X: -1}
    binned_src = _rechunk(xr.where(masked, np.float32(np.nan), slope).astype(np.float32), one)
    mode = xr.apply_ufunc(lambda a: ksky.smooth_mode(ksky.bin4(a)), binned_src, input_core_dims=[[Y, X]], vectorize=True,
                          dask="parallelized", output_dtypes=[np.float64])  # fmt: skip
    out = ds.copy()
    out["sky_mode"] = mode.astype(np.float32).assign_attrs(
        units=schema.UNITS["DN/s"], long_name="histogram-mode sky of the 4x4-binned masked slopes")  # fmt: skip
    if p.order is None:
        return record(out, "sky", "COMPLETE", p, "sky mode measured, no sky subtracted")
    a = geom.nactive
    meds = xr.apply_ufunc(ksky.sky_block_medians, _rechunk(slope, one), input_core_dims=[[Y, X]],
                          output_core_dims=[["sky_by", "sky_bx"]], vectorize=True, dask="parallelized",
                          output_dtypes=[np.float64], dask_gufunc_kwargs={"output_sizes": {"sky_by": 8, "sky_bx": 8}})  # fmt: skip
    ncoef = (p.order + 1) * (p.order + 2) // 2
    coefs = xr.apply_ufunc(lambda m: ksky.sky_fit(m, a, a, p.order), meds, input_core_dims=[["sky_by", "sky_bx"]],
                           output_core_dims=[["sky_coef"]], vectorize=True, dask="parallelized",
                           output_dtypes=[np.float64], dask_gufunc_kwargs={"output_sizes": {"sky_coef": ncoef}})  # fmt: skip
    model = _sky_model(coefs, slope, p.order).data
    model = da.pad(model, ((0, 0), (nb, nb), (nb, nb))).rechunk(ds["data"].transpose(FRAME, Y, X).data.chunks)
    out["data_withsky"] = ds["data"].copy().assign_attrs(long_name="slope before sky subtraction")
    full = ds["data"].transpose(FRAME, Y, X)
    out["data"] = full.copy(data=(full.data - model).astype(np.float32)).transpose(*ds["data"].dims)
    out["sky_coefs"] = coefs.astype(np.float32).assign_attrs(
        long_name=f"2-D Legendre sky coefficients, total degree <= {p.order}, order (i, j) i outer",
        units=schema.UNITS["DN/s"])  # fmt: skip
    return record(out, "sky", "COMPLETE", p, f"Legendre sky of order {p.order} subtracted")


# ---- linearity + dark + ramp fit fused ------------------------------------------------------------
def _chain_block(raw, coefs, smin, smax, sref, lin_dq, gdq, exempt, dark, tbar, pdq, gain, rn, *tables, sticky, ncore):
    nf = _nframes((raw, 1), (gdq, 1), (pdq, 0))
    ny, nx, n = np.broadcast_shapes(raw.shape[-3:], gdq.shape[-3:])
    outs = [np.empty((nf, ny, nx), dtype=t) for t in (np.float32, np.float32, np.float32, np.uint32)]
    tile = (ny, nx)
    pit = ncore[0] == 2
    for f in range(nf):
        tb = _frame(tbar, f, 1)[0, 0]
        (kramp.linearize_dark_fit if pit else kgls.linearize_dark_fit)(
            _tile(raw, f, (ny, nx, n)), _tile(coefs, f, (ny, nx, coefs.shape[-1])), _tile(smin, f, tile),
            _tile(smax, f, tile), _tile(sref, f, tile), _tile(lin_dq, f, tile), _tile(gdq, f, (ny, nx, n)),
            bool(_frame(exempt, f).flat[0]), bool(sticky), _LIN_FLAGS, _tile(dark, f, tile), *((tb,) if pit else ()),
            _tile(pdq, f, tile), _tile(gain, f, tile), _tile(rn, f, tile),
            *(_frame(t, f, nc)[0, 0] for t, nc in zip(tables, ncore)), *(o[f] for o in outs))  # fmt: skip
    return tuple(outs)


@register_fusion(("linearity", "dark_current", "ramp_fit"))
def linearity_dark_ramp(ds: xr.Dataset, refs: xr.Dataset, lin: LinearityParams, dark: DarkParams,
                        ramp: RampFitParams) -> xr.Dataset:  # fmt: skip
    """``ramp_fit(dark_current(linearity(ds)))`` in one pass per tile (same numerics, same records).

    The runtime uses it when a recipe runs these three steps in a row: the linearised cube is never
    materialised, which halves the memory traffic of the pipeline.
    """
    t = ramp_tables_for(ds, ramp)
    extra, core = _ramp_inputs(ds, ramp, t)
    coefs, smin, smax, sref, lin_dq, exempt = _linearity_inputs(ds, refs, lin)
    slope, vr, vp, dq = xr.apply_ufunc(
        _chain_block,
        ds["data"].astype(np.float32, copy=False), coefs, smin, smax, sref, lin_dq, ds["groupdq"], exempt,
        _dark_map(ds, refs), ds["tbar"], ds["pixeldq"], refs["gain_data"].astype(np.float32, copy=False),
        refs["read_data"].astype(np.float32, copy=False), *extra,
        kwargs={"sticky": lin.pit_sticky_no_lin_corr, "ncore": [len(c) for c in core]},
        input_core_dims=[[READ], ["linearitylegendre_k"], [], [], [], [], [READ], [], [], [READ], [], [], [],
                         *core],
        output_core_dims=[[], [], [], []],
        dask="parallelized", output_dtypes=[np.float32, np.float32, np.float32, np.uint32],
    )  # fmt: skip
    out = _l2_dataset(ds, t, slope, vr, vp, ds["pixeldq"] | dq)
    out = record(out, "linearity", "COMPLETE", lin)
    out = record(out, "dark_current", "COMPLETE", dark)
    return record(out, "ramp_fit", "COMPLETE", ramp, ramp_note(ds, ramp))


# ---- the L2 product -------------------------------------------------------------------------------
def l2_product(l1: xr.Dataset, fitted: xr.Dataset) -> xr.Dataset:
    """The WFI L2 group: slope products on the active region, border reference pixels alongside (none
    for a detector without a reference border)."""
    geom = _geom(l1)
    nb, n = geom.nborder, geom.nside
    act = fitted.isel({Y: slice(nb, n - nb), X: slice(nb, n - nb)})
    border = {}
    for name, arr in (("border_ref_pix", l1["data"]), ("dq_border_ref_pix", fitted["dq"])):
        if nb == 0:  # no reference pixels: nothing to keep
            break
        border.update({
            f"{name}_left": arr.isel({X: slice(0, nb)}).rename({Y: "y_full", X: "x_left"}),
            f"{name}_right": arr.isel({X: slice(n - nb, n)}).rename({Y: "y_full", X: "x_right"}),
            f"{name}_bottom": arr.isel({Y: slice(0, nb)}).rename({Y: "y_bottom", X: "x_full"}),
            f"{name}_top": arr.isel({Y: slice(n - nb, n)}).rename({Y: "y_top", X: "x_full"}),
        })  # fmt: skip
    out = act.assign({k: v.drop_vars([c for c in v.coords if c not in v.dims and c != "source_file"])
                      for k, v in border.items()})  # fmt: skip
    if "amp33" in l1:
        out["amp33"] = l1["amp33"].rename({Y: "y_full"})
    for k in border:
        out[k].attrs = {"units": "DN"} if not k.startswith("dq_") else schema.dq_attrs()
    out.attrs = dict(fitted.attrs)
    out.attrs["product"] = "roman_wfi_l2"
    out.attrs["geometry"] = {"nside": n, "nborder": nb, "nchannel": geom.nchannel}
    return out
