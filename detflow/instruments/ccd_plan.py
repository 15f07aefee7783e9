"""The plan of a plain CCD/CMOS job (``pipeline: ccd``), run by the engine's executor.

1. per frame (every frame, whatever its IMAGETYP): overscan and trim, one fused task per
   ``frames_per_task`` frames (:func:`detflow.steps.fusion.fuse_frames`) -> group ``ccd`` (frame, y, x)
   ADU, zarr shards of those frames with pixel tiles inside, so that the combines read tiles of every frame;
2. reduce stages, each reading what the earlier ones wrote: ``master_bias`` (the bias frames' combine, or
   the file ``master_bias``), ``master_dark`` (the dark frames, bias subtracted, combined; they share one
   EXPTIME), ``master_flat`` (the flat frames, bias and scaled dark subtracted, combined), ``science``
   (the science frames calibrated with the masters there are), ``combined`` (their sigma-clipped combine).

A master with neither a file nor frames is left out, and the steps that use it record SKIPPED.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
import xarray as xr

from ..errors import DetflowInputError
from ..io.ccd_fits import open_ccd_frames, read_master
from ..io.provenance import log_skipped, versions
from ..schema import FRAME, X, Y, dq_attrs
from ..steps import ccd as sc
from ..steps.catalog import get_step  # noqa: F401  (registers every step a recipe may name)
from ..steps.fusion import fuse_frames
from ..steps.registry import apply_recipe
from .base import Instrument, Plan, Reduce
from .ccd_job import CcdJob

log = logging.getLogger("detflow")
BYTES_PER_PIXEL_FRAME = 24  # float64 copy, the NaN-masked copy, the clip mask and dq of a combine tile
MASTERS = ("bias", "dark", "flat")
CALIBRATION = {"bias": [], "dark": ["ccd_bias"], "flat": ["ccd_bias", "ccd_dark"]}  # applied before combining


def combine_tile(n_frames: int, ny: int, nx: int, task_mb: float) -> tuple[int, int]:
    """Pixel tile ``(ty, tx)`` of the combines: the largest power of two from 16 to 512 whose
    whole-frame-axis stack fits ``task_mb``, at most the frame."""
    budget = task_mb * 2**20 / (BYTES_PER_PIXEL_FRAME * max(1, n_frames))
    side = 512
    while side > 16 and side * side > budget:
        side //= 2
    return min(side, ny), min(side, nx)


def _chain(l1: xr.Dataset, refs, params: dict, recipe: list[str], dtype: str) -> dict[str, xr.Dataset]:
    """Overscan and trim with the step functions: lazy on a lazy ``l1``, eager on an in-memory one."""
    return {"ccd": sc.frames_product(apply_recipe(l1, refs, recipe, params), dtype, "ADU after overscan and trim")}


def _check(job: CcdJob, frames: xr.Dataset) -> None:
    """What a run would fail on, said before any work: the sections, the darks' one EXPTIME."""
    for key, coord in (("overscan", "biassec"), ("trim", "trimsec"), ("trim", "datasec")):
        try:
            sc.common_value(frames, coord)
        except ValueError as exc:
            raise DetflowInputError(job.source, key, f"frames that agree, or the section in the job: {exc}") from None
    kinds = frames["frame_type"].values
    darks = np.unique(frames["exptime"].values[kinds == "dark"])
    if "dark" not in job.masters() and darks.size > 1:
        raise DetflowInputError(job.source, "dark frames", "one EXPTIME (a master dark is built from them)",
                                ", ".join(f"{t:g} s" for t in darks))  # fmt: skip
    scale = job.step_params().get("ccd_dark", {}).get("scale", True)
    if scale and (darks.size or "dark" in job.masters()) and not np.isfinite(frames["exptime"].values).all():
        bad = frames["source_file"].values[~np.isfinite(frames["exptime"].values)]
        raise DetflowInputError(bad[0], "EXPTIME", "an exposure time to scale the dark by (or steps: {ccd_dark: "
                                "{scale: false}})", "none")  # fmt: skip


def _select(ds: xr.Dataset, kind: str) -> xr.Dataset:
    return ds.isel({FRAME: np.flatnonzero(ds["frame_type"].values == kind)})


def _refs(read, made: set[str], chunks: dict) -> xr.Dataset:
    """The masters written so far, as the calibration steps' ``refs``."""
    out = xr.Dataset()
    for kind in MASTERS:
        if kind in made:
            g = read(f"master_{kind}", chunks)
            out[kind] = g["data"].astype(np.float64).assign_attrs(exptime=g.attrs.get("exptime", float("nan")))
    return out


def _master_from_file(job: CcdJob, kind: str, shape: tuple[int, int]) -> xr.Dataset:
    path = job.masters()[kind]
    data, meta = read_master(path, job.hdu)
    if data.shape != shape:
        raise DetflowInputError(path, "NAXIS1/NAXIS2", f"the frames' {shape[1]}x{shape[0]} after trim",
                                f"{data.shape[1]}x{data.shape[0]}")  # fmt: skip
    ds = xr.Dataset({"data": ((Y, X), data.astype(job.dtype), {"units": "adu", "long_name": f"master {kind}"}),
                     "dq": ((Y, X), np.where(np.isfinite(data), 0, 1).astype(np.uint32), dq_attrs())})  # fmt: skip
    ds.attrs = {"source": "file", "exptime": meta["exptime"],
                "reference_files": [{"name": f"master_{kind}", "path": str(meta["path"])}]}  # fmt: skip
    return ds


def _stages(job: CcdJob, params: dict, kinds: set[str], tile: dict, shape: tuple[int, int],
            shard: dict) -> list[Reduce]:  # fmt: skip
    made: set[str] = set()
    combine = sc.CombineParams(**params.get("ccd_combine", {}))

    def master(kind):
        def build(read, side) -> dict[str, xr.Dataset]:
            if kind in job.masters():
                out = _master_from_file(job, kind, shape)
            elif kind in kinds:
                frames = _select(read("ccd", dict(tile, **{FRAME: -1})), kind)
                refs = _refs(read, made, tile)
                calibrated = apply_recipe(frames, refs, CALIBRATION[kind], params)
                out = sc.ccd_combine(calibrated, None, combine)
                out["data"] = out["data"].astype(job.dtype)
                out["err"] = out["err"].astype(job.dtype)
                out.attrs["source"] = f"{out.attrs['frames']} {kind} frames"
            else:
                return {}
            made.add(kind)
            out["data"].attrs["long_name"] = f"master {kind}"
            return {f"master_{kind}": out}

        return Reduce(f"detflow ccd: master {kind}", build)

    def science(read, side) -> dict[str, xr.Dataset]:
        if not made:
            return {}
        frames = _select(read("ccd", dict(tile, **{FRAME: job.frames_per_task})), "science")
        calibrated = apply_recipe(frames, _refs(read, made, tile), sc.CALIBRATE_RECIPE, params)
        unit = "after overscan, trim, " + ", ".join(f"{k}" for k in MASTERS if k in made)
        out = sc.frames_product(calibrated, job.dtype, f"science frames ({unit})")
        # computed tile by tile, written a whole shard (its frames, every tile) per task: two tasks never
        # write the same shard file
        return {"science": out.chunk({FRAME: job.frames_per_task, Y: -1, X: -1})}

    def combined(read, side) -> dict[str, xr.Dataset]:
        if made:
            frames = read("science", dict(tile, **{FRAME: -1}))
        else:
            frames = _select(read("ccd", dict(tile, **{FRAME: -1})), "science")
        out = sc.ccd_combine(frames, None, combine)
        out["data"] = out["data"].astype(job.dtype)
        out["err"] = out["err"].astype(job.dtype)
        out.attrs["source_group"] = "science" if made else "ccd"
        return {"combined": out}

    stages = [master(k) for k in MASTERS]
    if "science" in kinds:
        sharded = {v: dict(shard) for v in ("data", "dq")}
        stages += [Reduce("detflow ccd: science frames calibrated", science, {"science": sharded}),
                   Reduce("detflow ccd: combine", combined)]  # fmt: skip
    return stages


def plan_ccd(job: CcdJob) -> Plan:
    """The job's plan: overscan and trim of every frame (group ``ccd``), then the masters, the calibrated
    science frames and their combine (reduce stages). Nothing is computed."""
    frames = open_ccd_frames(job.input, job.hdu, skip_corrupt=job.on_error == "skip")
    _check(job, frames)
    params = job.step_params()
    recipe = (["ccd_overscan"] if job.overscan is not None else []) + ["ccd_trim"]
    frames = frames.chunk({FRAME: job.frames_per_task})
    chain = functools.partial(_chain, recipe=recipe, dtype=job.dtype)
    try:
        lazy = chain(frames, None, params)
    except ValueError as exc:  # a section outside the frame, an overscan not spanning the rows...
        raise DetflowInputError(job.source, "overscan/trim", str(exc)) from None
    small = dict(frames.attrs, inputs=[{"path": i["path"]} for i in frames.attrs["inputs"]])
    product = fuse_frames(frames, None, params, chain, lazy, attrs=small)["ccd"]
    product.attrs.update(job=job.model_dump(mode="json"), versions=versions(),
                         reference_files=[{"name": f"master_{k}", "path": str(p)} for k, p in job.masters().items()])  # fmt: skip
    ny, nx = product.sizes[Y], product.sizes[X]
    kinds = set(frames["frame_type"].values.tolist())
    ty, tx = combine_tile(frames.sizes[FRAME], ny, nx, job.combine_task_mb)
    f = min(job.frames_per_task, frames.sizes[FRAME])
    shard = {"chunks": (f, ty, tx), "shards": (f, math.ceil(ny / ty) * ty, math.ceil(nx / tx) * tx)}
    encodings = {"ccd": {"data": dict(shard), "dq": dict(shard)}}
    log.info("inputs: %d frame(s): %s", frames.sizes[FRAME],
             ", ".join(f"{k} {int((frames['frame_type'].values == k).sum())}" for k in sorted(kinds)))  # fmt: skip
    log_skipped({"ccd": product})
    stages = _stages(job, params, kinds, {Y: ty, X: tx}, (ny, nx), shard)
    return Plan({"ccd": product}, "detflow ccd: overscan and trim", encodings=encodings, reduces=stages)


INSTRUMENT = Instrument(
    name="ccd",
    job=CcdJob,
    summary="plain CCD/CMOS imager: FITS frames -> overscan, trim, masters, calibrated frames, combine",
    needs="input, output, and overscan, trim or master_bias/master_dark/master_flat",
    plan=plan_ccd,
)
