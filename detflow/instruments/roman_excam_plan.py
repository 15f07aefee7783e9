"""The plan of an EXCAM data set: L1 -> L2a -> L2b, then the data-set combines (run by the executor).

Two stages over one temporary store (renamed into place only when both are done):

1. ``l2a`` and ``l2b``: one task per ``frames_per_task`` whole frames running the whole chain in
   memory (:func:`detflow.steps.fusion.fuse_frames`), merged into zarr shards of ``frames_per_shard`` frames (one write
   task each, encoded in the worker's thread: :mod:`detflow.io.store.codecs`). Inside a shard the chunks
   are pixel tiles over all its frames, so the combine can read a tile of every frame without
   reading whole frames.
2. ``mean_comb`` and ``median_comb`` (and ``l2a_mean_comb``/``l2a_median_comb``): read back from
   the store with the whole frame axis per task and a tile sized by ``combine_task_mb``; memory is
   bounded by the tile, not by the number of frames.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

import numpy as np
import xarray as xr
from zarr.codecs import BloscCodec

from .. import schema
from ..calib.emccd_noise_maps import check_substacks, prescan_bias_offset
from ..errors import DetflowInputError
from ..io.excam_cal import open_excam_references, variables_of
from ..io.excam_l1 import open_excam_l1
from ..io.exporters import excam_export_name, export_excam_fits
from ..io.provenance import log_skipped, versions
from ..io.store import open_store
from ..steps import excam as sx
from ..steps.catalog import get_step  # noqa: F401  (registers the EXCAM steps)
from ..steps.fusion import fuse_frames
from ..steps.registry import apply_recipe
from . import roman_excam
from .base import Instrument, Plan, Reduce
from .roman_excam_job import ExcamJob

log = logging.getLogger("detflow")

# L2b data and errors compress little (1.08x and 1.2x with zstd on simulated frames, against 3.4x for
# L2a DN and >100x for DQ): blosc's lz4 over bit planes keeps that (1.09x, 1.23x) at 2x zstd's speed
# (90 against 170 ms per 32-frame shard, bench/README.md)
FAST_FLOAT_CODEC = BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
COMBINE_BYTES_PER_PIXEL_FRAME = 20  # data f4 + err f4 + dq u4, the rejected-frame OR copy, slack


def group_key(exptime: float, gain: float, arrtype: str) -> str:
    """Store-group suffix of one (EXPTIME, EM gain, ARRTYPE) group: ``t5s_g100_SCI``."""
    return re.sub(r"[^A-Za-z0-9_]", "p", f"t{exptime:g}s_g{gain:g}_{arrtype}")


def combine_tile(n_frames: int, ny: int, nx: int, task_mb: int) -> int:
    """Largest tile side (a power of two from 16 to 256 dividing the image) whose whole-frame-axis
    stack fits ``task_mb``."""
    budget = task_mb * 2**20 / (COMBINE_BYTES_PER_PIXEL_FRAME * max(1, n_frames))
    side = 256
    while side > 16 and (side * side > budget or ny % side or nx % side):
        side //= 2
    return side


def _datasets(job: ExcamJob) -> dict[str, xr.Dataset]:
    skip = job.on_error == "skip"
    if job.group or job.noise_maps:
        return {f"/{group_key(*k)}": ds for k, ds in open_excam_l1(job.input, group=True, skip_corrupt=skip).items()}
    return {"": open_excam_l1(job.input, skip_corrupt=skip)}


def _chain(l1: xr.Dataset, refs: xr.Dataset, params: dict, prescan: bool = False) -> dict[str, xr.Dataset]:
    """L1 -> L2a -> L2b with the step functions: lazy on a lazy ``l1``, eager on an in-memory one.
    ``{"l2a", "l2b"}``, and with ``prescan`` the L2a prescan region ``"pre"`` (a second full-frame L2a
    pass when the job's bias region is the image area)."""
    work = apply_recipe(l1, refs, sx.L2A_RECIPE, params)
    ds = sx.to_image_area(work)
    out = {"l2a": sx.l2a_product(ds), "l2b": sx.l2b_product(apply_recipe(ds, refs, sx.L2B_RECIPE, params))}
    if prescan:
        if work.attrs.get("region") != "full":
            full = dict(params, excam_bias=dict(params.get("excam_bias", {}), region="full"))
            work = apply_recipe(l1, refs, sx.L2A_RECIPE, full)
        out["pre"] = sx.prescan_product(work)
    return out


def _fused(l1: xr.Dataset, refs: xr.Dataset, params: dict, lazy: dict[str, xr.Dataset]) -> dict[str, xr.Dataset]:
    """:func:`_chain`'s products computed by one task per chunk of frames (:func:`fuse_frames`). The tasks
    see only the header cards the steps read; the calibration maps are read from their files by one task
    on a worker (maps built in memory, which come from no file, go into the graph)."""
    attrs = dict(l1.attrs, inputs=sx.header_cards(l1.attrs.get("inputs", []), sx.header_keys(params)))
    files = {r["name"]: r["path"] for r in refs.attrs.get("reference_files", []) if r.get("used", True)}
    load = None
    if set(refs.data_vars) <= {v for k in files for v in variables_of(k)}:
        load = (open_excam_references, (files, roman_excam.GEOMETRIES[l1.attrs["geometry"]]))
    chain = functools.partial(_chain, prescan="pre" in lazy)
    return fuse_frames(l1, refs, params, chain, lazy, attrs=attrs, load_refs=load)


def build_excam(
    job: ExcamJob, fused: bool = True
) -> tuple[dict[str, xr.Dataset], dict[str, int], dict[str, xr.Dataset]]:
    """The lazy ``l2a``/``l2b`` groups of a job (per EXPTIME/gain group with ``group``), the combine
    tile of each suffix and, for ``noise_maps``, each suffix's prescan sums (:func:`steps.excam.prescan_sums`). No
    computation. ``fused``: one task per chunk of frames for the whole chain
    (:func:`_fused`), else one per step."""
    params = job.step_params()
    products: dict[str, xr.Dataset] = {}
    prescans: dict[str, xr.Dataset] = {}
    tiles: dict[str, int] = {}
    datasets = _datasets(job)
    if job.noise_maps:  # checked before any work: at least 4 (gain, time) groups, 2 gains, 2 times
        firsts = [ds for ds in datasets.values()]
        try:
            check_substacks(
                [float(d["em_gain"].values[0]) for d in firsts], [float(d["exptime"].values[0]) for d in firsts]
            )
        except (ValueError, DetflowInputError) as exc:
            raise DetflowInputError(job.source, "noise_maps", "dark frames in at least 4 (EM gain, EXPTIME) groups with "
                                    "2 or more gains and exposure times", str(exc)) from None  # fmt: skip
    for suffix, l1 in datasets.items():
        geom = roman_excam.GEOMETRIES[l1.attrs["geometry"]]
        refs = open_excam_references(job.calibration_paths(), geom)
        # the frames chunked, their coordinates kept in memory: steps read them while the graph is built
        l1 = l1.assign({v: l1[v].chunk({schema.FRAME: job.frames_per_task}) for v in l1.data_vars})
        # one lazy chunk per map (broadcasting against frames stays lazy); tables (the nonlinearity table) stay
        # in memory for the same reason
        lazy_refs = refs.copy()
        for name, var in refs.data_vars.items():
            if schema.Y in var.dims and schema.X in var.dims:
                lazy_refs[name] = var.chunk()
        prods = _chain(l1, lazy_refs, params, prescan=job.noise_maps)
        if fused:
            prods = _fused(l1, refs, params, prods)
        l2a, l2b = prods["l2a"], prods["l2b"]
        if job.noise_maps:  # the sub-stack's prescan sums, computed with the l2a/l2b writes
            prescans[suffix] = sx.prescan_sums(prods["pre"])
        for prod in (l2a, l2b):
            prod.attrs.update({
                "reference_files": refs.attrs["reference_files"],
                "inputs": list(l1.attrs.get("inputs", [])),
                "job": job.model_dump(mode="json"),
                "versions": versions(),
                "em_gain": float(l1["em_gain"].values[0]),
                "exptime": float(l1["exptime"].values[0]),
                "eperdn": job.eperdn, "fwc_em_e": job.fwc_em_e, "fwc_pp_e": job.fwc_pp_e,
                "bias_offset": job.bias_offset,
                "skipped_inputs": list(l1.attrs.get("skipped_inputs", [])),
            })  # fmt: skip
        products[f"l2a{suffix}"] = l2a
        products[f"l2b{suffix}"] = l2b
        tiles[suffix] = combine_tile(l1.sizes[schema.FRAME], geom.image.rows, geom.image.cols, job.combine_task_mb)
        log.info("inputs: %d L1 frame(s)%s", l1.sizes[schema.FRAME], f" in group {suffix[1:]}" if suffix else "")
    log_skipped(products)
    log.info("graph built: groups %s", ", ".join(products))
    return products, tiles, prescans


def shard_frames(job: ExcamJob) -> int:
    """Frames per zarr shard of the per-frame groups: ``frames_per_shard``, else the multiple of
    ``frames_per_task`` nearest 32 (a shard of 32 float32 frames is 128 MiB)."""
    if job.frames_per_shard is not None:
        return job.frames_per_shard
    return job.frames_per_task * max(1, round(32 / job.frames_per_task))


def _sharded(products: dict[str, xr.Dataset], tiles: dict[str, int], fs: int) -> tuple[dict, dict]:
    """The per-frame products merged along ``frame`` into blocks of ``fs`` frames (one write task and
    one zarr shard each), and their encodings: shards ``(fs, ny, nx)`` of inner chunks ``(fs, t, t)``,
    ``t`` the combine tile.

    Why: a combine task reads the tile of every shard, and zarr's per-chunk cost (about 0.1-0.5 ms to
    encode or to locate and decode an inner chunk) is paid ``n_frames / fs * (1024 / t)**2`` times per
    variable; the tile shrinks as the frame count grows, so frames per shard are what keep it small.
    The L1 -> L2b tasks keep ``frames_per_task`` frames; the merge only concatenates their outputs."""
    enc, out = {}, {}
    for name, ds in products.items():
        suffix = name[name.index("/") :] if "/" in name else ""
        t = tiles[suffix]
        ny, nx = ds.sizes[schema.Y], ds.sizes[schema.X]
        f = min(fs, ds.sizes[schema.FRAME])
        out[name] = ds.chunk({schema.FRAME: f})
        enc[name] = {v: {"chunks": (f, t, t), "shards": (f, ny, nx)} for v in ("data", "err", "dq")}
        if name.startswith("l2b"):  # electrons with shot noise: zstd gains 8-20% for 2-3x the time
            for v in ("data", "err"):
                enc[name][v]["compressors"] = [FAST_FLOAT_CODEC]
    return out, enc


def _combines(job: ExcamJob, tiles: dict[str, int]):
    """The reduce stage of the combines: mean and median of each level asked (and L2a for the noise maps),
    the photon-counted mean, per group; each reads its level tile by tile (the whole frame axis)."""

    def build(read, side) -> dict[str, xr.Dataset]:
        combined = {}
        for suffix, t in tiles.items():
            tile = {schema.FRAME: -1, schema.Y: t, schema.X: t}
            for level in dict.fromkeys(job.combine + (["l2a"] if job.noise_maps else [])):
                stored = read(f"{level}{suffix}", tile)
                mean, median = sx.combine(stored)
                head = "" if level == "l2b" else "l2a_"
                for name, prod in ((f"{head}mean_comb{suffix}", mean), (f"{head}median_comb{suffix}", median)):
                    prod.attrs.update(
                        {
                            k: v
                            for k, v in stored.attrs.items()
                            if k in ("em_gain", "exptime", "eperdn", "fwc_em_e", "fwc_pp_e", "bias_offset", "geometry")
                        }
                    )
                    prod.attrs["data_level"] = stored.attrs.get("data_level", level.upper())
                    prod.attrs["source_group"] = f"{level}{suffix}"
                    prod.attrs["frames_rejected"] = int((stored["rejected"].values != 0).sum())
                    combined[name] = prod
            if job.photon_count is not None:
                stored = read(f"l2a{suffix}", tile)
                pc = sx.photon_count(stored, job.eperdn, job.photon_count.read_noise, job.photon_count.t_factor,
                                     job.photon_count.niter)  # fmt: skip
                pc.attrs["exptime"] = float(stored.attrs.get("exptime", np.nan))
                combined[f"photon_count{suffix}"] = pc
        return combined

    return Reduce("detflow roman_excam: combines", build)


def _noise_maps(job: ExcamJob, tiles: dict[str, int]):
    """The reduce stage of the noise maps: FPN, CIC and dark current from the L2a mean combines of the
    (gain, time) groups, and the prescan bias offset from the groups' prescan sums (side results)."""

    def build(read, side) -> dict[str, xr.Dataset]:
        means = [read(f"l2a_mean_comb{suffix}", {schema.Y: 256, schema.X: 256}) for suffix in tiles]
        maps = sx.noise_maps(means, job.eperdn)
        sums = [side[f"prescan{suffix}"] for suffix in tiles]
        offset, offset_err = prescan_bias_offset(
            [p["sum"].values for p in sums], [p["n"].values for p in sums],
            maps.attrs["em_gains"], maps.attrs["exptimes"], job.eperdn, maps.attrs["frames"])  # fmt: skip
        maps.attrs.update(bias_offset=offset, bias_offset_err=offset_err, bias_offset_units="DN")
        return {"noise_maps": maps}

    return Reduce("detflow roman_excam: noise maps", build)


def plan_excam(job: ExcamJob) -> Plan:
    """The job's plan: L1 -> L2a -> L2b fused and sharded (with each group's prescan sums for the noise
    maps), the combines, the noise maps; the II&T FITS set exported from the committed store."""
    products, tiles, prescans = build_excam(job)
    sharded, encodings = _sharded(products, tiles, shard_frames(job))
    reduces = [_combines(job, tiles)] + ([_noise_maps(job, tiles)] if job.noise_maps else [])
    exports = []
    if job.export_dir is not None:

        def export(store: Path) -> list[str]:
            written = export_excam_fits(store, job.export_dir, excam_export_name(job), png=job.generate_png_files,
                                        overwrite=job.overwrite)  # fmt: skip
            return [f"{len(written)} FITS/PNG files in {job.export_dir}"]

        exports.append(export)
    last = [n for n in products if n.startswith("l2b")][-1]  # its steps: L2a's and L2b's
    return Plan(sharded, "detflow roman_excam: L1 -> L2a -> L2b", encodings=encodings, reduces=reduces,
                exports=exports, record_group=last,
                side={f"prescan{suffix}": p for suffix, p in prescans.items()})  # fmt: skip


def rejected_frames(store) -> list[dict]:
    """The frames a run left out of its combines, with the reasons (from the ``rejected`` flags)."""
    tree = open_store(store)
    out = []
    for node in tree.subtree:
        if (node.name or "").startswith("l2b") and "rejected" in node.data_vars:
            flags = node["rejected"].values
            names = node["source_file"].values if "source_file" in node.coords else np.arange(flags.size)
            for name, f in zip(names, flags):
                if f:
                    out.append({"group": node.path, "file": str(name),
                                "reasons": [k for k, bit in sx.REJECT.items() if int(f) & bit]})  # fmt: skip
    return out


INSTRUMENT = Instrument(
    name="roman_excam",
    job=ExcamJob,
    summary="Roman Coronagraph EXCAM (EMCCD): L1 -> L2a -> L2b and combines",
    needs="input, output and the II&T keys: eperdn, fwc_em_e, the calibration paths...",
    plan=plan_excam,
)
