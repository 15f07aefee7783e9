"""The plan of a ground-based HxRG job (``pipeline: hxrg_ground``), run by the engine's executor.

Per exposure (one fused task per ``frames_per_task`` exposures, :func:`detflow.steps.fusion.fuse_frames`):
the reference pixels of each read (``hxrg_refpix``), then the reads combined (``hxrg_combine``: CDS,
Fowler-N or the up-the-ramp slope, with the nonlinearity when the job gives its coefficients) -> group
``frames``: ``data`` (frame, y, x) on the active region (counts in DN with ``exptime``, or DN/s for ramps:
``units`` says which), ``err``, ``dq``, ``rate`` and the per-frame metadata as coordinates.

Before any work the plan checks what a run would fail on: the gain of every exposure (ASICGAIN for the
IO:I preset), one NOUTPUTS, the Fowler layout, at least two reads, the nonlinearity cube's shape.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
import xarray as xr
from astropy.io import fits

from ..errors import DetflowInputError
from ..io.fits_input import check_data_complete, hdu_shape, image_hdus, open_fits
from ..io.hxrg_export import export_frames
from ..io.hxrg_fits import open_hxrg
from ..io.provenance import versions
from ..schema import FRAME, READ, X, Y, dq_attrs
from ..steps import hxrg_ground as sg
from ..steps import hxrg_reduce as sred
from ..steps import hxrg_refpix as sr
from ..steps import hxrg_sky as ssky
from ..steps.catalog import get_step  # noqa: F401  (registers every step a recipe may name)
from ..steps.fusion import fuse_frames
from ..steps.registry import apply_recipe
from .base import Instrument, Plan, Reduce
from .ccd_plan import combine_tile
from .hxrg_ground import gain_of
from .hxrg_ground_job import HxrgGroundJob

log = logging.getLogger("detflow")
RECIPE = ["hxrg_refpix", "hxrg_combine"]


def _chain(l1: xr.Dataset, refs, params: dict, dtype: str) -> dict[str, xr.Dataset]:
    return {"frames": sg.frames_product(apply_recipe(l1, refs, RECIPE, params), dtype)}


def read_nonlinearity(path, order: int | None) -> xr.Dataset:
    """The coefficients cube (order, y, x) of a FITS file with one HDU per order (IO:I's layout)."""
    try:
        with fits.open(path, memmap=False) as hdul:
            planes = [np.asarray(h.data, np.float64) for h in hdul if h.data is not None]
    except OSError as exc:
        raise DetflowInputError(path, "nonlinearity", "a FITS file of coefficient planes", str(exc)) from None
    if not planes or any(p.ndim != 2 or p.shape != planes[0].shape for p in planes):
        raise DetflowInputError(path, "nonlinearity", "one 2-D plane per order, all of one shape",
                                [p.shape for p in planes])  # fmt: skip
    planes = planes[: order + 1] if order is not None else planes
    return xr.Dataset({"nonlin": (("order", Y, X), np.stack(planes))})


def _gains(job: HxrgGroundJob, frames: xr.Dataset) -> np.ndarray:
    if job.gain is not None:
        return np.full(frames.sizes[FRAME], job.gain)
    if job.preset.gain is not None:
        return np.full(frames.sizes[FRAME], job.preset.gain)
    gains = [gain_of(a) for a in frames["asicgain"].values]
    for g, a, f in zip(gains, frames["asicgain"].values, frames["source_file"].values):
        if g is None:
            raise DetflowInputError(f, "ASICGAIN", "8, 10, 12 or 13 dB (IO:I's gains), or gain in the job", a)
    return np.array(gains, np.float64)


def _check(job: HxrgGroundJob, frames: xr.Dataset, params: dict) -> None:
    first = frames["read_file"].values[0, 0]
    if frames.sizes[READ] < 2:
        raise DetflowInputError(first, "reads", "at least two reads per exposure (CDS)", frames.sizes[READ])
    rp = sr.RefPixParams(**params["hxrg_refpix"])
    if rp.mode not in ("none", "trim") and any(rp.ref):
        try:
            nout = sr.noutputs_of(frames, rp)
            w = frames.sizes[X] // nout
            if frames.sizes[X] % nout or w % 2:
                raise ValueError(f"outputs of an even number of columns across {frames.sizes[X]}, got {nout}")
        except ValueError as exc:
            raise DetflowInputError(first, "NOUTPUTS", str(exc)) from None
    cp = sg.CombineParams(**params["hxrg_combine"])
    if cp.mode == "fowler":
        try:
            sg.fowler_indices(frames["seqnum_m"].values[0], frames["seqnum_n"].values[0], cp.fowler_pairs)
        except ValueError as exc:
            raise DetflowInputError(first, "SEQNUM_M/SEQNUM_N", f"a Fowler sequence: {exc}") from None


def plan_hxrg_ground(job: HxrgGroundJob) -> Plan:
    """The job's plan: reference pixels and read combination of every exposure (group ``frames``)."""
    params = job.step_params()
    mode = params["hxrg_refpix"]["mode"]
    need_nout = params["hxrg_refpix"]["noutputs"] is None and mode not in ("none", "trim", "constant", "column")
    frames = open_hxrg(job.input, job.selection(), need_noutputs=need_nout, skip_corrupt=job.on_error == "skip")
    frames = frames.assign_coords(gain=(FRAME, _gains(job, frames), {"units": "electron / DN"}))
    _check(job, frames, params)
    refs, load = None, None
    if job.nonlinearity is not None:
        refs = read_nonlinearity(job.nonlinearity, job.nonlinearity_order)
        ny, nx = (frames.sizes[Y], frames.sizes[X])
        if mode not in ("none",):
            b, t, lft, r = params["hxrg_refpix"]["ref"]
            ny, nx = ny - b - t, nx - lft - r
        if refs.sizes[Y] != ny or refs.sizes[X] != nx:
            raise DetflowInputError(job.nonlinearity, "NAXIS1/NAXIS2", f"the active region's {nx}x{ny}",
                                    f"{refs.sizes[X]}x{refs.sizes[Y]}")  # fmt: skip
        load = (read_nonlinearity, (str(job.nonlinearity), job.nonlinearity_order))
    frames = frames.chunk({FRAME: job.frames_per_task, READ: -1, Y: -1, X: -1})
    chain = functools.partial(_chain, dtype=job.dtype)
    try:
        lazy = chain(frames, refs, params)
    except ValueError as exc:
        raise DetflowInputError(job.source, "refpix/read_mode", str(exc)) from None
    small = {k: v for k, v in frames.attrs.items() if k != "inputs"}
    product = fuse_frames(frames, refs, params, chain, lazy, attrs=small, load_refs=load)["frames"]
    product.attrs.update(inputs=[{"path": i["path"]} for i in frames.attrs["inputs"]], versions=versions(),
                         job=job.model_dump(mode="json"), instrument_preset=job.instrument,
                         reference_files=[{"name": "nonlinearity", "path": str(job.nonlinearity)}]
                         if job.nonlinearity else [])  # fmt: skip
    log.info("inputs: %d exposure(s) of %d read(s), %d file(s)", frames.sizes[FRAME], frames.sizes[READ],
             len(frames.attrs["inputs"]))  # fmt: skip
    exports = [functools.partial(_export, job=job)] if job.export_fits is not None else []
    ny, nx = product.sizes[Y], product.sizes[X]
    if job.flat is not None:
        _check_flat(job, (ny, nx))
    return Plan({"frames": product}, f"detflow hxrg_ground: refpix {mode}, {job.read_mode}", exports=exports,
                reduces=_stages(job, params, frames.sizes[FRAME], (ny, nx)))  # fmt: skip


def read_flat(path) -> np.ndarray:
    """A flat from a FITS file: its one 2-D image (the same one-line errors as every FITS input)."""
    with open_fits(path, "flat FITS file") as hdul:
        images = image_hdus(hdul)
        if len(images) != 1:
            raise DetflowInputError(path, "HDU", "one 2-D image (the flat)", len(images))
        check_data_complete(path, hdul, images[0])
        return np.asarray(hdul[images[0]].data, np.float64)


def _check_flat(job: HxrgGroundJob, shape: tuple[int, int]) -> None:
    with open_fits(job.flat, "flat FITS file") as hdul:
        images = image_hdus(hdul)
        if len(images) != 1:
            raise DetflowInputError(job.flat, "HDU", "one 2-D image (the flat)", len(images))
        got = hdu_shape(hdul, images[0])
    if got != shape:
        raise DetflowInputError(job.flat, "NAXIS1/NAXIS2", f"the active region's {shape[1]}x{shape[0]}",
                                f"{got[1]}x{got[0]}")  # fmt: skip


def _stages(job: HxrgGroundJob, params: dict, nframes: int, shape: tuple[int, int]) -> list[Reduce]:
    """The reduce stages: the flat (built from the frames or read from the job's file), the frames divided."""
    with_flat = job.flat is not None or "flat" in job.products
    if not with_flat and "sky" not in job.products:
        return []
    ny, nx = shape
    ty, tx = combine_tile(nframes, ny, nx, job.combine_task_mb)
    tile = {Y: ty, X: tx}
    fpt = min(job.frames_per_task, nframes)
    shard = {"chunks": (fpt, ty, tx), "shards": (fpt, math.ceil(ny / ty) * ty, math.ceil(nx / tx) * tx)}

    def flat(read, side) -> dict[str, xr.Dataset]:
        if job.flat is not None:
            data = read_flat(job.flat)
            out = xr.Dataset({"data": ((Y, X), data, {"units": "", "long_name": "flat (file)"}),
                              "dq": ((Y, X), np.where(np.isfinite(data), 0, sred.FLAT_BAD).astype(np.uint32),
                                     dq_attrs())})  # fmt: skip
            out.attrs = {"source": "file", "reference_files": [{"name": "flat", "path": str(job.flat)}]}
        else:
            p = sred.FlatParams(**params.get("hxrg_flat_build", {}))
            frames = read("frames", dict(tile, **{FRAME: -1}))
            levels = sred.frame_levels(read("frames", {FRAME: 1, Y: -1, X: -1}), p)
            out = sred.build_flat(frames, p, levels)
        out["data"] = out["data"].astype(job.dtype).assign_attrs(out["data"].attrs)
        return {"flat": out.chunk(tile)}

    def reduced(read, side) -> dict[str, xr.Dataset]:
        frames = read("frames", dict(tile, **{FRAME: fpt}))
        f = read("flat", tile)
        p = sred.FlatDivideParams(**params.get("hxrg_flat", {}))
        out = sred.hxrg_flat(frames, xr.Dataset({"flat": f["data"].astype(np.float64), "flat_dq": f["dq"]}), p)
        out = sg.frames_product(out, job.dtype)
        out["data"].attrs["long_name"] = "frames divided by the flat"
        return {"reduced": out.chunk({FRAME: fpt, Y: -1, X: -1})}

    def sky(read, side) -> dict[str, xr.Dataset]:
        frames = read("reduced" if with_flat else "frames", dict(tile, **{FRAME: fpt}))
        out = ssky.hxrg_sky(frames, None, ssky.SkyParams(**params.get("hxrg_sky", {})))
        skipped = list(out.attrs.get("sky_skipped", []))
        for name in skipped:
            log.warning("sky: %s has no other dither in its run: no sky subtracted", name)
        names = [str(n) for n in frames["source_file"].values]
        done = xr.DataArray([n not in skipped for n in names], dims=(FRAME,),
                            attrs={"long_name": "the sky was subtracted (false: no other dither in the run)"})  # fmt: skip
        coords = {k: v for k, v in frames.coords.items() if v.dims == (FRAME,)}
        if "sky" not in out:  # one dither per run: the record only (a small group), not an error
            model = xr.Dataset({"sky_subtracted": done}, coords=coords)
            model.attrs = {"steps": out.attrs["steps"], "sky_skipped": skipped}
            return {"sky": model}
        model = xr.Dataset({"data": out["sky"].astype(job.dtype).assign_attrs(out["sky"].attrs),
                            "sky_subtracted": done}, coords=coords)  # fmt: skip
        model.attrs = {"steps": out.attrs["steps"], "sky_skipped": skipped}
        sub = sg.frames_product(out.drop_vars("sky"), job.dtype)
        sub["data"].attrs["long_name"] = "frames minus the sky from the dithers"
        chunks = {FRAME: fpt, Y: -1, X: -1}
        return {"sky": model.chunk(chunks), "skysub": sub.chunk(chunks)}  # the frames without a sky: as they were

    sharded = {v: dict(shard) for v in ("data", "err", "dq", "rate")}
    stages = []
    if with_flat:
        stages += [Reduce("detflow hxrg_ground: flat", flat),
                   Reduce("detflow hxrg_ground: frames / flat", reduced, {"reduced": sharded})]  # fmt: skip
    if "sky" in job.products:
        stages.append(Reduce("detflow hxrg_ground: sky from dithers", sky,
                             {"sky": {"data": dict(shard)}, "skysub": sharded}))  # fmt: skip
    return stages


def _export(store, job: HxrgGroundJob) -> list:
    return export_frames(store, job.export_fits, job.input)


INSTRUMENT = Instrument(
    name="hxrg_ground",
    job=HxrgGroundJob,
    summary="ground-based HxRG imager (IO:I...): FITS reads -> reference pixels, CDS/Fowler/ramp, per-frame products",
    needs="input, output, read_mode, refpix (instrument: ioi or generic)",
    plan=plan_hxrg_ground,
)
