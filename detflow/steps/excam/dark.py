"""The dark: its subtraction in L2a -> L2b (``excam_dark``: a master dark, or F/g + t D + C synthesized from
the noise maps), and those noise maps fitted from dark data sets (:func:`noise_maps`: FPN, CIC and dark
current per pixel), with the prescan of the darks that gives their bias offset (:func:`prescan_product`,
:func:`prescan_sums`)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import xarray as xr
from pydantic import Field

from ...calib import emccd_noise_maps as nm
from ...kernels import emccd
from ...schema import FRAME, X, Y, dq_attrs
from ..registry import StepParams, record, register
from .common import FAMILY, _geom, _image, _per_frame, _pixelwise


class DarkParams(StepParams):
    source: Literal["auto", "master", "synthesized"] = Field("auto", description="master dark file, or F/g + t D + C "
                                                             "from the noise maps; auto: the master dark if given")  # fmt: skip


def _synth_dark_np(data, fpn, dc, cic, g, t):
    out = np.empty(data.shape)
    nf = data.shape[0]
    emccd.subtract_synthesized_dark(data, _image(fpn), _image(dc), _image(cic), _per_frame(g, nf), _per_frame(t, nf),
                                    out)  # fmt: skip
    return out


def _master_dark_np(data, err, dark, dark_err, with_err):
    out_d, out_e = np.empty(data.shape), np.empty(data.shape)
    emccd.subtract_master_dark(data, np.broadcast_to(err, data.shape), _image(dark), _image(dark_err), with_err,
                               out_d, out_e)  # fmt: skip
    return out_d, out_e


@register("excam_dark", DarkParams, FAMILY)
def excam_dark(ds: xr.Dataset, refs: xr.Dataset | None, p: DarkParams) -> xr.Dataset:
    """Dark subtraction: a master dark, or the synthesized dark F/g + t D + C from the noise maps."""
    refs = refs if refs is not None else xr.Dataset()
    have_maps = all(k in refs for k in ("fpn", "dark_current", "cic"))
    use = p.source
    if use == "auto":
        use = "master" if "master_dark" in refs else "synthesized" if have_maps else None
    if use is None or (use == "master" and "master_dark" not in refs) or (use == "synthesized" and not have_maps):
        return record(ds, "excam_dark", "SKIPPED", p, "no master dark and no complete set of noise maps")
    data = ds["data"].astype(np.float64, copy=False)
    if use == "master":
        dark_err = refs.get("master_dark_err")
        with_err = dark_err is not None
        # err as it is: a float32 err is squared in float32, as the NumPy expression err**2 + dark_err**2 was
        new_data, new_err = _pixelwise(_master_dark_np, data, ds["err"], refs["master_dark"],
                                       dark_err if with_err else xr.zeros_like(refs["master_dark"]), nout=2,
                                       dtypes=(np.float64, np.float64), with_err=with_err)  # fmt: skip
        out = ds.assign(data=new_data, err=new_err) if with_err else ds.assign(data=new_data)
    else:
        g, t = ds["em_gain"].astype(np.float64), ds["exptime"].astype(np.float64)
        out = ds.assign(data=_pixelwise(_synth_dark_np, data, refs["fpn"], refs["dark_current"], refs["cic"], g, t,
                                        nout=1, dtypes=(np.float64,)))  # fmt: skip
    out = out.transpose(FRAME, Y, X, ...)
    out["data"].attrs["units"] = out["err"].attrs["units"] = "electron"
    return record(out, "excam_dark", "COMPLETE", p, f"{use} dark")


def prescan_product(ds: xr.Dataset) -> xr.Dataset:
    """The prescan region of a full-frame L2a working dataset (``region: full``: bias subtracted, cosmic
    rays flagged, nonlinearity corrected; DN): ``data``, ``dq``, ``rejected``, for the noise maps' bias
    offset (corgidrp fits its dark model over the full frame and reads the offset in the prescan)."""
    if ds.attrs.get("region") != "full":
        raise ValueError("the prescan needs the full-frame working dataset (excam_bias region: full)")
    rows, cols = _geom(ds).prescan.slices
    out = ds[["data", "dq", "rejected"]].isel({Y: rows, X: cols})
    out.attrs = {"geometry": ds.attrs["geometry"], "data_level": "L2a prescan"}
    return out


def prescan_sums(pre: xr.Dataset) -> xr.Dataset:
    """Per prescan pixel of :func:`prescan_product`, the sum of ``data`` over the good frames (dq 0, not
    rejected) and their count ``n``: a sub-stack's masked mean frame there (lazy)."""
    good = (pre["dq"] == 0) & (pre["rejected"] == 0)
    return xr.Dataset({"sum": pre["data"].astype(np.float64).where(good, 0.0).sum(FRAME), "n": good.sum(FRAME)})


# ---- noise maps from darks --------------------------------------------------------------------------
def _nm_tile(means, ngood, dq, gains, times, n_total, variance):
    means, ngood, dq = (np.ascontiguousarray(np.moveaxis(a, -1, 0)) for a in (means, ngood, dq))
    fit = nm.fit_substacks(means, ngood, gains, times, n_total, variance)
    q = nm.noise_map_dq(dq, nm.unfittable_pixels(ngood))
    return np.stack([fit.fpn, fit.cic, fit.dc, fit.fpn_var, fit.cic_var, fit.dc_var, q.astype(np.float64)], axis=-1)


def noise_maps(means: list[xr.Dataset], eperdn: float, variance: str = "corgidrp") -> xr.Dataset:
    """FPN, CIC and dark-current maps with their variances from the mean L2a dark frames of at least 4
    (EM gain, exposure time) sub-stacks (each a mean combine: ``data`` DN, ``ngood``, ``dq``): per pixel
    least squares of ``mean * k = F + g C + g t D`` weighted by the good frames (corgidrp
    ``calibrate_darks_lsq``), tile by tile."""
    gains = np.array([float(m.attrs["em_gain"]) for m in means])
    times = np.array([float(m.attrs["exptime"]) for m in means])
    nm.check_substacks(gains, times)
    one = {"substack": -1}
    stack = xr.concat([m["data"].astype(np.float64) * eperdn for m in means], dim="substack").chunk(one)
    ngood = xr.concat([m["ngood"] for m in means], dim="substack").chunk(one)
    dq = xr.concat([m["dq"] for m in means], dim="substack").chunk(one)
    n_total = int(sum(int(m.attrs.get("frames", 0)) for m in means))
    fit = xr.apply_ufunc(_nm_tile, stack, ngood, dq, input_core_dims=[["substack"]] * 3, output_core_dims=[["q"]],
                         kwargs={"gains": gains, "times": times, "n_total": n_total, "variance": variance},
                         dask="parallelized", output_dtypes=[np.float64], dask_gufunc_kwargs={"output_sizes": {"q": 7}})  # fmt: skip
    names = [("fpn", "electron"), ("cic", "electron"), ("dark_current", "electron / s")]
    out = xr.Dataset()
    for k, (name, unit) in enumerate(names):
        out[name] = fit.isel(q=k).astype(np.float32)
        out[name].attrs = {"units": unit}
        out[f"{name}_err"] = np.sqrt(fit.isel(q=k + 3)).astype(np.float32)
        out[f"{name}_err"].attrs = {"units": unit}
    out["dq"] = fit.isel(q=6).astype(np.uint32)
    out["dq"].attrs = dq_attrs()
    out.attrs = {"em_gains": gains.tolist(), "exptimes": times.tolist(), "eperdn": eperdn, "frames": n_total,
                 "model": "mean * eperdn = F + g C + g t D (per pixel, weighted by good frames)", "variance": variance}  # fmt: skip
    return out
