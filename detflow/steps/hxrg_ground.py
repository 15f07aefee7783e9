"""Read combination of ground-based HxRG exposures (family ``hxrg_ground``): CDS, Fowler-N, up-the-ramp.

Dataset in: ``data`` (frame, read, y, x) DN after :mod:`detflow.steps.hxrg_refpix`, with the ``(frame,
read)`` coordinates ``inttime`` (s since the reset), ``seqnum_m``/``seqnum_n`` (Fowler layout) and
``read_nframes``, and the ``frame`` coordinate ``gain`` (e/DN). Out: ``data`` (frame, y, x), ``err``,
``dq``, ``rate`` (the count rate from the first two reads, DN/s: IO:I's, for the nonlinearity's lost-flux
term) and the ``exptime`` coordinate.

* ``cds``: last read minus first, in DN; EXPTIME the INTTIME difference (IO:I ``_perform_CDS``).
* ``fowler``: pedestal reads (SEQNUM_M 1) and signal reads (SEQNUM_M 2) paired by SEQNUM_N, unequal counts
  refused; the mean of the pairs' differences in DN; EXPTIME the mean INTTIME difference plus
  ``read_time`` (1.265 s: the read the IO:I control software adds).
* ``ramp``: the slope in DN/s of every read, by the generalised least-squares ramp fit of
  :mod:`detflow.kernels.ramp_gls` (jumps split the ramp); EXPTIME the INTTIME span.

Nonlinearity (``refs["nonlin"]`` (order, y, x), the coefficients of ``P(x) = sum c_k x^k``, observed ->
ideal, IO:I's layout): each difference ``d`` (of a CDS or of each Fowler pair) is corrected as
``d P(x) / x`` with ``x = d + rate t_first`` (``t_first`` the INTTIME of the pair's first read: the flux
collected before it, which the difference lost), as IO:I's ``correct_nonlinearity`` does.

Errors (DN, or DN/s for ramps): ``sqrt(2 sigma^2 / N + max(d, 0) / gain)`` for N pairs (``read_noise``
sigma per read); the ramp fit's own variances for ramps.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import xarray as xr
from pydantic import Field

from ..instruments.hxrg_ground import FOWLER_READ_TIME, PEDESTAL_GROUP, SIGNAL_GROUP
from ..kernels import ramp_gls as kgls
from ..schema import DQ, FRAME, READ, UNITS, X, Y, dq_attrs, flag_where
from .registry import StepParams, record, register

FAMILY = "hxrg_ground"
_GLS_FLAGS = kgls.dq_flags(DQ.SATURATED, DQ.DO_NOT_USE, DQ.JUMP_DET, DQ.REFERENCE_PIXEL, DQ.NO_GAIN_VALUE,
                           DQ.UNRELIABLE_ERROR, DQ.UNRELIABLE_SLOPE)  # fmt: skip


class CombineParams(StepParams):
    mode: Literal["cds", "fowler", "ramp"] = Field("cds", description="cds: last - first; fowler: pedestal/signal "
                                                   "pairs; ramp: up-the-ramp slope (DN/s)")  # fmt: skip
    read_time: float = Field(FOWLER_READ_TIME, ge=0, description="s added to a Fowler EXPTIME (IO:I fowler_bodge)")
    fowler_pairs: int | None = Field(None, ge=1, description="Fowler pairs used (null: all), the first by SEQNUM_N")
    read_noise: float = Field(10.0, gt=0, description="read noise per read (DN), for the errors and ramp weights")
    jump_detection: bool = Field(True, description="ramp: split ramps at jumps")


def fowler_indices(m, n, pairs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read positions of the Fowler pedestal and signal reads, paired by SEQNUM_N (ValueError saying what
    is wrong: unequal counts, unmatched read numbers, too few pairs)."""
    m, n = np.asarray(m, np.float64), np.asarray(n, np.float64)
    ped, sig = np.flatnonzero(m == PEDESTAL_GROUP), np.flatnonzero(m == SIGNAL_GROUP)
    if ped.size != sig.size or ped.size == 0:
        raise ValueError(f"equal numbers of pedestal (SEQNUM_M {PEDESTAL_GROUP}) and signal (SEQNUM_M "
                         f"{SIGNAL_GROUP}) reads, got {ped.size} and {sig.size}")  # fmt: skip
    ped, sig = ped[np.argsort(n[ped], kind="stable")], sig[np.argsort(n[sig], kind="stable")]
    if not np.array_equal(n[ped], n[sig]):
        raise ValueError(f"pedestal and signal reads of the same SEQNUM_N, got {n[ped].tolist()} and {n[sig].tolist()}")
    if pairs is not None:
        if pairs > ped.size:
            raise ValueError(f"at most {ped.size} Fowler pairs, got fowler_pairs {pairs}")
        ped, sig = ped[:pairs], sig[:pairs]
    return ped, sig


def linearize(d: xr.DataArray, rate: xr.DataArray, t_first: xr.DataArray, coeffs: xr.DataArray) -> xr.DataArray:
    """``d P(x) / x`` with ``x = d + rate t_first`` (``coeffs`` (order, y, x): P's coefficients, constant first)."""
    x = d + rate * t_first
    p = sum(coeffs.isel(order=k, drop=True) * x**k for k in range(coeffs.sizes["order"]))
    with np.errstate(divide="ignore", invalid="ignore"):
        return xr.where(x != 0, d * p / x, d)


def _one(ds: xr.Dataset, name: str):
    values = np.asarray(ds[name].values)
    first = values[0]
    if values.ndim > 1 and not (np.isclose(values, first) | (np.isnan(values) & np.isnan(first))).all():
        raise ValueError(f"one {name} layout for every frame")
    return first


def first_two_rate(ds: xr.Dataset) -> xr.DataArray:
    """The count rate (DN/s) from the first two reads (IO:I's ``rates``)."""
    dt = ds["inttime"].isel({READ: 1}, drop=True) - ds["inttime"].isel({READ: 0}, drop=True)
    return (ds["data"].isel({READ: 1}, drop=True) - ds["data"].isel({READ: 0}, drop=True)) / dt


def _gain(ds: xr.Dataset) -> xr.DataArray:
    if "gain" not in ds.coords:
        raise ValueError("a gain (e/DN) per frame: the gain coordinate")
    return ds["gain"]


def _differences(ds: xr.Dataset, refs: xr.Dataset | None, p: CombineParams):
    """(difference (frame, pair, y, x), t_first (frame, pair), exptime (frame), pairs)."""
    t = ds["inttime"]
    if p.mode == "cds":
        ped, sig = np.array([0]), np.array([ds.sizes[READ] - 1])
        extra = 0.0
    else:
        ped, sig = fowler_indices(_one(ds, "seqnum_m"), _one(ds, "seqnum_n"), p.fowler_pairs)
        extra = p.read_time
    ip, isg = xr.DataArray(ped, dims="pair"), xr.DataArray(sig, dims="pair")
    d = ds["data"].isel({READ: isg}, drop=True) - ds["data"].isel({READ: ip}, drop=True)
    t_first = t.isel({READ: ip}, drop=True)
    exptime = (t.isel({READ: isg}, drop=True) - t_first).mean("pair") + extra
    return d, t_first, exptime, len(ped)


def _tau(tbar: np.ndarray, nframes: np.ndarray) -> np.ndarray:
    """The variance-weighted time of a resultant averaging ``nframes`` reads spaced evenly (Casertano 2022)."""
    n = np.asarray(nframes, np.float64)
    if (n <= 1).all():
        return np.asarray(tbar, np.float64)
    dt = np.diff(tbar).min() / n.max() if tbar.size > 1 else 0.0  # the frame time when groups are contiguous
    return tbar - (n - 1) * (n + 1) * dt / (6 * n)


def _ramp_block(data, tbar, nframes, gain, *, params, rn):
    nf, ny, nx, n = data.shape
    # apply_ufunc gives the per-frame inputs size-1 axes for (y, x)
    tbar, nframes, gain = tbar.reshape(nf, n), nframes.reshape(nf, n), gain.reshape(nf)
    outs = [np.empty((nf, ny, nx), dtype=t) for t in (np.float32, np.float32, np.float32, np.uint32)]
    zeros = np.zeros((ny, nx, n), np.uint32)
    pdq = np.zeros((ny, nx), np.uint32)
    rnm = np.full((ny, nx), rn, np.float32)
    for f in range(nf):
        g = np.full((ny, nx), gain[f], np.float32)
        kgls.fit_ramps(np.ascontiguousarray(data[f], np.float32), zeros, pdq, g, rnm, tbar[f], _tau(tbar[f], nframes[f]),
                       nframes[f], params, _GLS_FLAGS, *(o[f] for o in outs), np.zeros((0, 0, 0), np.uint32))  # fmt: skip
    return tuple(outs)


def _ramp(ds: xr.Dataset, p: CombineParams) -> xr.Dataset:
    gain = _gain(ds).astype(np.float64)
    g0 = float(np.nanmedian(np.asarray(gain.values, np.float64)))
    params = kgls.gls_params(start=0, detect=p.jump_detection, one=kgls.ONE_OFF, u=1.0 / g0 / p.read_noise**2,
                             gain=g0, sigma_read=p.read_noise)  # fmt: skip
    data = ds["data"]
    if data.chunks is not None:
        data = data.chunk({READ: -1})
    slope, vr, vp, dq = xr.apply_ufunc(
        _ramp_block, data, ds["inttime"].astype(np.float64).reset_coords(drop=True),
        ds["read_nframes"].astype(np.float64).reset_coords(drop=True), gain.reset_coords(drop=True),
        kwargs={"params": params, "rn": p.read_noise},
        input_core_dims=[[READ], [READ], [READ], []], output_core_dims=[[], [], [], []],
        dask="parallelized", output_dtypes=[np.float32, np.float32, np.float32, np.uint32],
    )  # fmt: skip
    out = xr.Dataset({"data": slope.astype(np.float64), "err": np.sqrt(vr + vp).astype(np.float64), "dq": dq})
    exptime = ds["inttime"].isel({READ: -1}, drop=True) - ds["inttime"].isel({READ: 0}, drop=True)
    return out, exptime, UNITS["DN/s"]


@register("hxrg_combine", CombineParams, FAMILY)
def hxrg_combine(ds: xr.Dataset, refs: xr.Dataset | None, p: CombineParams) -> xr.Dataset:
    """Reads -> one image per exposure: CDS or Fowler-N (DN, EXPTIME), or the up-the-ramp slope (DN/s)."""
    nread = ds.sizes[READ]
    if nread < 2:
        raise ValueError(f"at least two reads per exposure, got {nread}")
    rate = first_two_rate(ds)
    nonlin = refs is not None and "nonlin" in refs
    if p.mode == "ramp":
        out, exptime, units = _ramp(ds, p)
        note = f"up-the-ramp slopes of {nread} reads"
    else:
        d, t_first, exptime, npair = _differences(ds, refs, p)
        if nonlin:
            d = linearize(d, rate, t_first, refs["nonlin"])
        data = d.mean("pair")
        var = 2 * p.read_noise**2 / npair + np.maximum(data, 0) / _gain(ds)
        dq = flag_where(~np.isfinite(data), DQ.DO_NOT_USE)
        out = xr.Dataset({"data": data, "err": np.sqrt(var), "dq": dq})
        units = UNITS["DN"]
        note = "CDS" if p.mode == "cds" else f"Fowler-{npair} (EXPTIME + {p.read_time:g} s)"
    out["dq"] = out["dq"].astype(np.uint32) | flag_where(~np.isfinite(out["data"]), DQ.DO_NOT_USE)
    if nonlin:
        out["dq"] = out["dq"] | flag_where(~np.isfinite(refs["nonlin"].sum("order")), DQ.NO_LIN_CORR)
        note += "; nonlinearity corrected"
    out["rate"] = rate
    out = out.transpose(FRAME, Y, X).reset_coords(drop=True)
    keep = {k: v for k, v in ds.coords.items() if READ not in v.dims}
    out = out.assign_coords(keep).assign_coords(exptime=exptime.assign_attrs(units="s", long_name="exposure time"))
    kind = "count rate" if p.mode == "ramp" else "counts"
    out["data"].attrs = {"units": units, "long_name": f"{kind} ({note})"}
    out["err"].attrs = {"units": units, "long_name": "1-sigma uncertainty (read noise and photon noise)"}
    out["rate"].attrs = {"units": UNITS["DN/s"], "long_name": "count rate from the first two reads"}
    out["dq"].attrs = dq_attrs()
    out.attrs = dict(ds.attrs)
    return record(out, "hxrg_combine", "COMPLETE", p, note)


def frames_product(ds: xr.Dataset, dtype: str = "float32") -> xr.Dataset:
    """The ``frames`` group: ``data``, ``err``, ``rate`` in ``dtype``, ``dq`` uint32, the frame coordinates."""
    out = ds[["data", "err", "dq", "rate"]].copy()
    for v in ("data", "err", "rate"):
        out[v] = ds[v].astype(dtype).assign_attrs(ds[v].attrs)
    out["dq"] = ds["dq"].astype(np.uint32).assign_attrs(dq_attrs())
    out.attrs = dict(ds.attrs)
    return out
