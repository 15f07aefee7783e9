"""The data-set combines of a (frame, y, x) product over its whole frame axis, tile by pixel tile: the mean
and median combines (:func:`combine`) and the photon-counted mean (:func:`photon_count`); rejected frames
and flagged pixels are left out."""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr

from ...kernels import emccd
from ...kernels.photon_count import pc_threshold, photon_count_mean
from ...schema import DQ, FRAME, X, Y, dq_attrs


def _frame_flags(ds: xr.Dataset) -> xr.DataArray:
    """(frame,) uint32: DO_NOT_USE for the frames marked ``rejected``, else 0."""
    if "rejected" not in ds:
        return xr.zeros_like(ds[FRAME], dtype=np.uint32)
    return xr.where(ds["rejected"] != 0, np.uint32(DQ.DO_NOT_USE), np.uint32(0)).astype(np.uint32)


def _per_pixel(func, stacks: list[xr.DataArray], frame_flags: xr.DataArray, nq: int, **kwargs) -> xr.DataArray:
    """``func(*stack_blocks, frame_flags, **kwargs) -> (nq, ty, tx)`` over pixel tiles of (frame, y, x)
    stacks whose frame axis is one chunk, as ``(q, y, x)`` float64.

    ``map_blocks`` on the (frame, y, x) blocks as they are stored, so the kernels read each row of every
    frame contiguously; ``apply_ufunc`` with a core dim would move ``frame`` last, a transposing copy of
    every block."""
    arrs = [s.transpose(FRAME, Y, X).data for s in stacks]
    flags = frame_flags.data
    ref = stacks[0]
    coords = {k: ref.coords[k] for k in (Y, X) if k in ref.coords}
    if not all(isinstance(a, da.Array) for a in arrs):
        out = func(*(np.asarray(a) for a in arrs), np.asarray(flags, np.uint32), **kwargs)
        return xr.DataArray(out, dims=("q", Y, X), coords=coords)
    arrs = da.unify_chunks(*[x for a in arrs for x in (a.rechunk({0: -1}), "fyx")])[1]
    flags = da.asarray(flags).rechunk(-1).astype(np.uint32)[:, None, None]
    chunks = ((nq,),) + arrs[0].chunks[1:]
    out = da.map_blocks(func, *arrs, flags, dtype=np.float64, chunks=chunks, meta=np.empty((0, 0, 0)), **kwargs)
    return xr.DataArray(out, dims=("q", Y, X), coords=coords)


def _combine_block(data, err, dq, flags, bad_bits):
    """(frame, ty, tx) blocks in, (6, ty, tx) out: mean, median, their errors, ngood, dq."""
    ny, nx = data.shape[1:]
    out = np.empty((6, ny, nx))
    ngood = np.empty((ny, nx), dtype=np.int64)
    dq_out = np.empty((ny, nx), dtype=np.uint32)
    emccd.combine_stack_flagged(data, err, dq.astype(np.uint32, copy=False), flags.reshape(-1), np.uint32(bad_bits),
                                out[0], out[1], out[2], out[3], ngood, dq_out)  # fmt: skip
    out[4] = ngood
    out[5] = dq_out
    return out


def combine(ds: xr.Dataset, bad_bits: int = 0xFFFFFFFF) -> tuple[xr.Dataset, xr.Dataset]:
    """Mean and median combines of a (frame, y, x) product whose chunks hold the whole frame axis.

    Pixels whose DQ has any of ``bad_bits`` (default: any flag, as corgidrp) and frames marked
    ``rejected`` are left out. Each product: ``data``, ``err`` (mean: rms(err)/sqrt(n); median: times
    sqrt(pi/2)), ``dq`` (the OR of every frame's flags where no frame is good, else 0) and ``ngood``.
    """
    stack = _per_pixel(_combine_block, [ds["data"], ds["err"], ds["dq"]], _frame_flags(ds), 6, bad_bits=bad_bits)
    unit = ds["data"].attrs.get("units", "")
    out = []
    for k, name in ((0, "mean"), (1, "median")):
        c = xr.Dataset({
            "data": stack.isel(q=k).astype(np.float32),
            "err": stack.isel(q=k + 2).astype(np.float32),
            "dq": stack.isel(q=5).astype(np.uint32),
            "ngood": stack.isel(q=4).astype(np.int32),
        })  # fmt: skip
        c["data"].attrs = {"units": unit, "long_name": f"{name} combine over good frames"}
        c["err"].attrs = {"units": unit}
        c["dq"].attrs = dq_attrs()
        c["ngood"].attrs = {"long_name": "number of good frames per pixel"}
        c.attrs = {"combine": name, "frames": int(ds.sizes[FRAME]), "bad_bits": int(bad_bits)}
        out.append(c)
    return out[0], out[1]


# ---- photon counting ------------------------------------------------------------------------------
def _pc_block(data, err, dq, flags, thresh, em_gain, niter, bad_bits, eperdn):
    dq = dq.astype(np.uint32) | flags.astype(np.uint32)
    mean, e, ngood, q = photon_count_mean(data * eperdn, err * eperdn, dq, thresh, em_gain, bad_bits=bad_bits,
                                          niter=niter)  # fmt: skip
    return np.stack([mean, e, ngood.astype(np.float64), q.astype(np.float64)])


def photon_count(ds: xr.Dataset, eperdn: float, read_noise: float, t_factor: float = 5.0, niter: int = 2,
                 bad_bits: int = 0xFFFFFFFF) -> xr.Dataset:  # fmt: skip
    """Photon-counted mean of an L2a stack (DN; chunks holding the whole frame axis): electrons at the
    gain register's output (``DN * eperdn``) thresholded at ``t_factor * read_noise``, the counted
    fraction corrected for the threshold and coincidence losses (corgidrp ``get_pc_mean``), in
    electrons per frame per pixel before the gain register. Rejected frames and flagged pixels are
    left out; ``dq`` is the OR of the flags where no frame is good (256: a negative rate)."""
    gains = np.unique(ds["em_gain"].values)
    if gains.size != 1:
        raise ValueError(f"photon counting needs one EM gain per stack, got {gains.tolist()}")
    g = float(gains[0])
    thresh = pc_threshold(read_noise, t_factor, g)
    stack = _per_pixel(_pc_block, [ds["data"], ds["err"], ds["dq"]], _frame_flags(ds), 4, thresh=thresh, em_gain=g,
                       niter=niter, bad_bits=bad_bits, eperdn=float(eperdn))  # fmt: skip
    out = xr.Dataset({
        "data": stack.isel(q=0).astype(np.float32), "err": stack.isel(q=1).astype(np.float32),
        "ngood": stack.isel(q=2).astype(np.int32), "dq": stack.isel(q=3).astype(np.uint32)})  # fmt: skip
    out["data"].attrs = {"units": "electron", "long_name": "photon-counted mean electrons per frame"}
    out["err"].attrs = {"units": "electron"}
    out["dq"].attrs = dq_attrs()
    out.attrs = {"em_gain": g, "threshold_e": thresh, "t_factor": t_factor, "read_noise_e": read_noise,
                 "niter": niter, "frames": int(ds.sizes[FRAME])}  # fmt: skip
    return out
