"""An EXCAM data set end to end: L1 -> L2a -> L2b on the cluster, then the data-set combines.

Two passes over one temporary store (renamed into place only when both are done):

1. ``l2a`` and ``l2b``: one task per ``frames_per_task`` whole frames running the whole chain in
   memory (:func:`fuse_chain`), merged into zarr shards of ``frames_per_shard`` frames (one write
   task each, encoded in the worker's thread: :mod:`detflow.io.store.codecs`). Inside a shard the chunks
   are pixel tiles over all its frames, so the combine can read a tile of every frame without
   reading whole frames.
2. ``mean_comb`` and ``median_comb`` (and ``l2a_mean_comb``/``l2a_median_comb``): read back from
   the store with the whole frame axis per task and a tile sized by ``combine_task_mb``; memory is
   bounded by the tile, not by the number of frames.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import warnings

import dask
import dask.array as da
import numpy as np
import xarray as xr
from distributed import Client
from zarr.codecs import BloscCodec

from .. import schema
from ..errors import DetflowInputError
from ..instruments import roman_excam
from ..instruments.roman_excam_job import ExcamJob
from ..io.excam_cal import open_excam_references, variables_of
from ..io.excam_l1 import open_excam_l1
from ..io.store import open_store
from ..steps import excam as sx
from ..steps.catalog import get_step  # noqa: F401  (registers the EXCAM steps)
from ..steps.registry import apply_recipe
from .cluster import get_client
from .execute import (
    check_outputs,
    checksum_futures,
    compute,
    finish_store,
    log_cluster,
    log_skipped,
    open_writer,  # fmt: skip
    versions,
)

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


def _open_tiles(path, group: str, t: int) -> xr.Dataset:
    """A stored per-frame group with the whole frame axis per ``t`` x ``t`` tile: reads of part of
    each shard, which is what the shards are for (xarray warns that the chunks split the shards)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified chunks separate the stored chunks")
        return xr.open_zarr(str(path), group=group, consolidated=False,
                            chunks={schema.FRAME: -1, schema.Y: t, schema.X: t})  # fmt: skip


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


def _chain_block(raw: np.ndarray, pos: np.ndarray, ctx: dict) -> dict:
    """One task's frames (at positions ``pos`` of the data set) through the whole chain, in memory: the
    steps see a small data set of these frames (their coordinates and headers)."""
    frame = slice(int(pos[0]), int(pos[-1]) + 1)
    coords = {k: (dims, v[frame] if dims[:1] == (schema.FRAME,) else v) for k, (dims, v) in ctx["coords"].items()}
    attrs = dict(ctx["attrs"], inputs=ctx["attrs"].get("inputs", [])[frame])
    l1 = xr.Dataset({"data": (ctx["dims"], raw)}, coords=coords, attrs=attrs)
    prods = _chain(l1, ctx["refs"], ctx["params"], ctx["prescan"])  # numpy throughout: nothing here is lazy
    return {(level, v): np.asarray(prod[v].values) for level, prod in prods.items() for v in prod.data_vars}


def _pick(block: dict, key: tuple[str, str]) -> np.ndarray:
    return block[key]


def _context(ctx: dict, reference_files: dict, geometry: str) -> dict:
    """The chain tasks' shared context with the calibration maps read from their files, on a worker: one
    task whose result the workers share, instead of ~40 MB of maps in the graph (which the client would
    send to the scheduler and warn about)."""
    return dict(ctx, refs=open_excam_references(reference_files, roman_excam.GEOMETRIES[geometry]))


def fuse_chain(l1: xr.Dataset, refs: xr.Dataset, params: dict, lazy: dict[str, xr.Dataset]) -> dict[str, xr.Dataset]:
    """The products of :func:`_chain` (``lazy``: the step graph's, whose structure and records they keep)
    with their data computed by one task per chunk of frames that runs every step in memory
    (:func:`_chain_block`).

    Why: step by step, each ``xr.map_blocks`` step and each coordinate it carries is a task per chunk
    (97 per chunk of 4 frames), most of them a few microseconds, and the scheduler's few milliseconds
    per task then leave the worker's threads idle a third of the time. Fused, a chunk is one task of
    ~1 s plus one small task per output variable. The numerics are the same functions on the same
    frames (``tests/test_excam_fused.py``)."""
    raw = l1["data"].data
    attrs = dict(l1.attrs, inputs=sx.header_cards(l1.attrs.get("inputs", []), sx.header_keys(params)))
    ctx = {
        "dims": l1["data"].dims,
        "coords": {k: (v.dims, np.asarray(v.values)) for k, v in l1.coords.items()},
        "attrs": attrs, "params": params, "prescan": "pre" in lazy,
    }  # fmt: skip  (once in the graph: the cards the steps read; the maps are read by a task of their own)
    files = {r["name"]: r["path"] for r in refs.attrs.get("reference_files", []) if r.get("used", True)}
    if set(refs.data_vars) <= {v for k in files for v in variables_of(k)}:
        ctx = dask.delayed(_context, pure=True)(ctx, files, l1.attrs["geometry"])
    else:  # maps that come from no file (built in memory): they go into the graph
        ctx = dask.delayed(dict(ctx, refs=refs.load()), pure=True)
    letters = "".join(chr(ord("a") + i) for i in range(raw.ndim))
    pos = da.arange(raw.shape[0], chunks=(raw.chunks[0],))
    blocks = da.blockwise(_chain_block, "a", raw, letters, pos, "a", ctx, None, dtype=object, concatenate=True,
                          meta=np.empty((0,), dtype=object))  # fmt: skip
    out = {}
    for level, tmpl in lazy.items():
        prod = tmpl.copy()
        for name, var in tmpl.data_vars.items():
            if var.dims[:1] != (schema.FRAME,) or not isinstance(var.data, da.Array):
                continue
            idx = "a" + letters[1 : var.ndim]
            new_axes = {c: n for c, n in zip(idx[1:], var.shape[1:])}
            arr = da.blockwise(_pick, idx, blocks, "a", new_axes=new_axes, key=(level, name), dtype=var.dtype,
                               meta=np.empty((0,) * var.ndim, dtype=var.dtype))  # fmt: skip
            prod[name] = var.copy(data=arr)
        out[level] = prod
    return out


def build_excam(job: ExcamJob, fused: bool = True) -> tuple[dict[str, xr.Dataset], dict[str, int], dict[str, xr.Dataset]]:
    """The lazy ``l2a``/``l2b`` groups of a job (per EXPTIME/gain group with ``group``), the combine
    tile of each suffix and, for ``noise_maps``, each suffix's prescan sums (:func:`steps.excam.prescan_sums`). No
    computation. ``fused``: one task per chunk of frames for the whole chain
    (:func:`fuse_chain`), else one per step."""
    params = job.step_params()
    products: dict[str, xr.Dataset] = {}
    prescans: dict[str, xr.Dataset] = {}
    tiles: dict[str, int] = {}
    datasets = _datasets(job)
    if job.noise_maps:  # checked before any work: at least 4 (gain, time) groups, 2 gains, 2 times
        from ..calib.emccd_noise_maps import check_substacks

        firsts = [ds for ds in datasets.values()]
        try:
            check_substacks([float(d["em_gain"].values[0]) for d in firsts], [float(d["exptime"].values[0]) for d in firsts])
        except (ValueError, DetflowInputError) as exc:
            raise DetflowInputError(job.source, "noise_maps", "dark frames in at least 4 (EM gain, EXPTIME) groups with "
                                    "2 or more gains and exposure times", str(exc)) from None  # fmt: skip
    for suffix, l1 in datasets.items():
        geom = roman_excam.GEOMETRIES[l1.attrs["geometry"]]
        refs = open_excam_references(job.calibration_paths(), geom)
        l1 = l1.chunk({schema.FRAME: job.frames_per_task})
        # one lazy chunk per map: broadcasting against frames stays lazy
        prods = _chain(l1, refs.chunk(), params, prescan=job.noise_maps)
        if fused:
            prods = fuse_chain(l1, refs, params, prods)
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
        suffix = name[name.index("/"):] if "/" in name else ""
        t = tiles[suffix]
        ny, nx = ds.sizes[schema.Y], ds.sizes[schema.X]
        f = min(fs, ds.sizes[schema.FRAME])
        out[name] = ds.chunk({schema.FRAME: f})
        enc[name] = {v: {"chunks": (f, t, t), "shards": (f, ny, nx)} for v in ("data", "err", "dq")}
        if name.startswith("l2b"):  # electrons with shot noise: zstd gains 8-20% for 2-3x the time
            for v in ("data", "err"):
                enc[name][v]["compressors"] = [FAST_FLOAT_CODEC]
    return out, enc


def run_excam(job: ExcamJob, client: Client | None = None, *, scheduler: str | None = None, progress: bool = True,
              console=None) -> xr.DataTree:  # fmt: skip
    """Run an EXCAM job and return the written store as a DataTree (complete or absent)."""
    check_outputs(job)
    products, tiles, prescans = build_excam(job)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    with get_client(job.cluster, client, scheduler) as c:
        if console is not None and getattr(c, "dashboard_link", None):
            console.print(f"dask dashboard: {c.dashboard_link}")
        log_cluster(c)
        with open_writer(job, products) as writer:
            sums = checksum_futures(c, products)
            writer.watch_checksums(sums)
            done = compute(c, [writer.add_all(*_sharded(products, tiles, shard_frames(job))), *prescans.values()],
                           progress, console, "detflow roman_excam: L1 -> L2a -> L2b")  # fmt: skip
            prescans = dict(zip(prescans, done[1:]))
            combined = {}
            for suffix, t in tiles.items():
                levels = list(dict.fromkeys(job.combine + (["l2a"] if job.noise_maps else [])))
                for level in levels:
                    stored = _open_tiles(writer.tmp, f"{level}{suffix}", t)
                    mean, median = sx.combine(stored)
                    head = "" if level == "l2b" else "l2a_"
                    for name, prod in ((f"{head}mean_comb{suffix}", mean), (f"{head}median_comb{suffix}", median)):
                        prod.attrs.update({k: v for k, v in stored.attrs.items() if k in (
                            "em_gain", "exptime", "eperdn", "fwc_em_e", "fwc_pp_e", "bias_offset", "geometry")})
                        prod.attrs["data_level"] = stored.attrs.get("data_level", level.upper())
                        prod.attrs["source_group"] = f"{level}{suffix}"
                        prod.attrs["frames_rejected"] = int((stored["rejected"].values != 0).sum())
                        combined[name] = prod
                if job.photon_count is not None:
                    stored = _open_tiles(writer.tmp, f"l2a{suffix}", t)
                    pc = sx.photon_count(stored, job.eperdn, job.photon_count.read_noise, job.photon_count.t_factor,
                                         job.photon_count.niter)  # fmt: skip
                    pc.attrs["exptime"] = float(stored.attrs.get("exptime", np.nan))
                    combined[f"photon_count{suffix}"] = pc
            if combined:
                compute(c, writer.add_all(combined), progress, console, "detflow roman_excam: combines")
            if job.noise_maps:
                means = []
                for suffix in tiles:
                    m = xr.open_zarr(str(writer.tmp), group=f"l2a_mean_comb{suffix}", consolidated=False,
                                     chunks={schema.Y: 256, schema.X: 256})  # fmt: skip
                    means.append(m)
                maps = sx.noise_maps(means, job.eperdn)
                from ..calib.emccd_noise_maps import prescan_bias_offset

                offset, offset_err = prescan_bias_offset(
                    [p["sum"].values for p in prescans.values()], [p["n"].values for p in prescans.values()],
                    maps.attrs["em_gains"], maps.attrs["exptimes"], job.eperdn, maps.attrs["frames"])  # fmt: skip
                maps.attrs.update(bias_offset=offset, bias_offset_err=offset_err, bias_offset_units="DN")
                combined["noise_maps"] = maps
                compute(c, writer.add_all({"noise_maps": maps}), progress, console, "detflow roman_excam: noise maps")
            last = next(p for n, p in products.items() if n.startswith("l2b"))  # its steps: L2a's and L2b's
            finish_store(writer, c, sums, job, products, list(products) + list(combined), last, started)
    if job.export_dir is not None:
        from ..io.exporters import excam_export_name, export_excam_fits

        written = export_excam_fits(job.store, job.export_dir, excam_export_name(job), png=job.generate_png_files,
                                    overwrite=job.overwrite)  # fmt: skip
        log.info("export: %d FITS/PNG files in %s", len(written), job.export_dir)
        if console is not None:
            console.print(f"export: {len(written)} FITS/PNG files in {job.export_dir}")
    return open_store(job.store)


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

