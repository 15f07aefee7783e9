"""The plan of an MKID job (``pipeline: mkid``), run by the engine's executor.

1. per-frame stage: the ``beammap`` group (``resid`` and ``flag`` images over ``(y, x)``, the preset's
   constants), and, in the same graph, the scanning pass: one task per ``.bin`` file counts its kept photons
   per resonator (:func:`detflow.io.mkid_bin.scan_file`), a side result;
2. reduce stage ``photons``: with the counts known, the photon table (``photons``: ``pixel``, ``time``,
   ``phase``, ``baseline`` along ``photon``) is decoded, one task per file, and written in shards of
   ``rows_per_shard`` rows (zarr chunks of ``rows_per_chunk`` inside); beside it ``photon_index``, the
   partition index: per file its first row, rows, time span, drop counts, and per resonator its count.

Layout (why): a partition per file (a UTC second), photons grouped by resonator id within it, in time order
within a resonator. Each file is decoded by its own task with no exchange between tasks (a global sort by
pixel would shuffle every photon across the cluster); a time range reads only its files' rows (one
contiguous range); one resonator, or a block of resonators, reads one contiguous range per file (the
calibrations work on blocks of resonators, so a block's range spans many chunks of every file it reads,
read once). The index costs 4 bytes per resonator and second.
"""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import xarray as xr

from ..io.mkid_bin import Window, bin_files, photon_columns, read_beammap, scan_files
from ..io.provenance import versions
from ..io.store.codecs import FAST_CODEC
from ..io.store.tables import event_table
from ..kernels import mkid as km
from ..schema import X, Y
from . import mkid as mi
from .base import Instrument, Plan, Reduce
from .mkid_job import MkidJob

log = logging.getLogger("detflow")
COLUMNS = {
    "pixel": {"long_name": "resonator id (beammap resID)"},
    "time": {"long_name": "photon arrival time since the observation start", "units": "us"},
    "phase": {"long_name": "phase pulse height", "units": "deg"},
    "baseline": {"long_name": "phase baseline", "units": "deg"},
}


def _beammap_group(job: MkidJob, beam, origin: int, files) -> xr.Dataset:
    resid, flag = beam.images()
    p = mi.preset(job.instrument)
    ds = xr.Dataset(
        {"resid": ((Y, X), resid, {"long_name": "resonator id at the pixel", "no_resonator": int(mi.NO_RESID)}),
         "flag": ((Y, X), flag, mi.flag_attrs())},
        coords={Y: np.arange(beam.nrows), X: np.arange(beam.ncols)},
    )  # fmt: skip
    ds.attrs = {**p.attrs(), "beammap": beam.source, "resonators": int(beam.resid.size),
                "good_resonators": int(beam.good.size), "start_unix": origin,
                "start_utc": dt.datetime.fromtimestamp(origin, dt.UTC).isoformat(),
                "inputs": [{"path": str(f)} for f, _ in files],
                "reference_files": [] if job.beammap is None else [{"name": "beammap", "path": str(job.beammap)}],
                "job": job.model_dump(mode="json"), "versions": versions()}  # fmt: skip
    return ds


def _index(files, beam, counts: np.ndarray, stats: np.ndarray, origin: int) -> xr.Dataset:
    rows = counts.sum(axis=1).astype(np.uint64)
    first = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.uint64)
    empty = stats[:, km.PHOTONS] == 0
    tmin = np.where(empty, 0, stats[:, km.TMIN]).astype(np.uint64)
    tmax = np.where(empty, 0, stats[:, km.TMAX]).astype(np.uint64)
    ds = xr.Dataset(
        {"count": (("file", "resonator"), counts.astype(np.uint32), {"long_name": "photons of the resonator in the "
                                                                     "file"}),
         "first_row": ("file", first, {"long_name": "row of the file's first photon in photons"}),
         "rows": ("file", rows, {"long_name": "photons of the file"}),
         "time_min": ("file", tmin, {"units": "us", "long_name": "earliest photon time (0 when rows is 0)"}),
         "time_max": ("file", tmax, {"units": "us", "long_name": "latest photon time (0 when rows is 0)"})},
        coords={"resonator": ("resonator", beam.good.astype(np.uint32), {"long_name": "resonator id, ascending"}),
                "second": ("file", np.array([s for _, s in files], np.int64), {"units": "s",
                                                                                "long_name": "unix second"}),
                "source_file": ("file", np.array([p.name for p, _ in files], dtype=object))},
    )  # fmt: skip
    for k, name in enumerate(km.STAT_NAMES):
        if k != km.PHOTONS:
            ds[name] = ("file", stats[:, k].astype(np.int64))
    totals = {name: int(stats[:, k].sum()) for k, name in enumerate(km.STAT_NAMES)}
    ds.attrs = {"layout": "a partition per file (row range first_row..first_row+rows), photons grouped by resonator "
                "id (ascending, the resonator coordinate) within it, in time order within a resonator",
                "start_unix": origin, "totals": totals}  # fmt: skip
    return ds


def plan_mkid(job: MkidJob) -> Plan:
    """The job's plan: the beammap and the scanning pass, then the photon table and its index."""
    beam = read_beammap(job.beammap, job.instrument)
    files = bin_files(job.input, job.start, job.stop)
    origin = job.start if job.start is not None else files[0][1]
    stop = job.stop if job.stop is not None else files[-1][1] + 1
    window = Window(origin, 0, (stop - origin) * 1_000_000)
    log.info("inputs: %d .bin file(s), %d..%d; beammap %s: %d resonators, %d good", len(files), files[0][1],
             files[-1][1], beam.source, beam.resid.size, beam.good.size)  # fmt: skip
    group = _beammap_group(job, beam, origin, files)
    iso = dt.datetime.fromtimestamp(origin, dt.UTC).isoformat()

    def photons(read, side) -> dict[str, xr.Dataset]:
        counts, stats = side["scan"]
        cols = photon_columns(files, beam, window, counts)
        attrs = {"start_unix": origin, "start_utc": iso, "instrument": mi.preset(job.instrument).name,
                 "layout": "partitioned by file (see photon_index); grouped by resonator within a file"}  # fmt: skip
        table = event_table(cols, dim="photon", column_attrs=COLUMNS, attrs=attrs, chunk_rows=job.rows_per_shard)
        index = _index(files, beam, counts, stats, origin)
        log.info("photons: %d kept, %s", int(counts.sum()),
                 ", ".join(f"{k} {v}" for k, v in index.attrs["totals"].items() if k.startswith("dropped")))  # fmt: skip
        return {"photons": table, "photon_index": index}

    shard = {"chunks": (job.rows_per_chunk,), "shards": (job.rows_per_shard,), "compressors": [FAST_CODEC]}
    encodings = {"photons": {c: dict(shard) for c in COLUMNS}}
    return Plan({"beammap": group}, "detflow mkid: beammap, scan .bin files", side={"scan": scan_files(files, beam,
                window)}, reduces=[Reduce("detflow mkid: decode photons", photons, encodings)],
                attrs={"mkid": {**mi.preset(job.instrument).attrs(), "start_unix": origin, "stop_unix": stop}})  # fmt: skip


INSTRUMENT = Instrument(
    name="mkid",
    job=MkidJob,
    summary="MKID photon counting (MEC, DARKNESS, XKID): .bin packet streams -> the photon store",
    needs="input (a directory of .bin files), instrument, output",
    plan=plan_mkid,
)
