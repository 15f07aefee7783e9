"""The store writer: product groups written as a template, then region by region, resumable, committed whole.

The store is written under a temporary sibling name (``<out>.partial-<id>``) and renamed into place
only when every group is written (:mod:`~detflow.io.store.commit`), so a failed or interrupted run never
leaves a product at the output path that looks finished. Dask chunks are made regular (equal to the zarr
chunks) before writing, so each task writes whole zarr chunks and no two tasks touch the same chunk. One
writer per output (``<out>.lock``, :mod:`detflow.io.lock`); ``--overwrite`` replaces only a detflow store;
a failed run says where its partial store is and how to resume or remove it (:func:`clean_output`).
"""

from __future__ import annotations

import errno
import logging
import shutil
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from xarray.backends.zarr import encode_zarr_variable

from ...errors import DetflowInputError, OutputExistsError
from ...schema import sanitize_attrs
from ..lock import OutputLock, lock_context
from .codecs import write_region
from .commit import commit_store
from .output import WRITE_ERRNOS, check_output, replaceable, write_error
from .resume import REGIONS, ResumeMarks, block_name, file_identity, identity_change, mark_done
from .tables import check_table

log = logging.getLogger("detflow")


def _is_regular(chunks: tuple[int, ...]) -> bool:
    return len(chunks) <= 1 or (len(set(chunks[:-1])) == 1 and chunks[-1] <= chunks[0])


def regular_chunks(ds: xr.Dataset) -> xr.Dataset:
    """Rechunk every dask variable so that its chunks are zarr chunks (equal, the last no larger)."""
    out = ds.copy()
    for name in list(ds.data_vars) + [c for c in ds.coords if isinstance(ds[c].data, da.Array)]:
        var = ds[name].variable
        if not isinstance(var.data, da.Array):
            continue
        target = {dim: max(chunks) for dim, chunks in zip(var.dims, var.data.chunks) if not _is_regular(chunks)}
        if target:
            out[name] = ds[name].chunk(target)
    return out


def _encoding(ds: xr.Dataset) -> dict:
    return {name: {"chunks": tuple(c[0] for c in var.data.chunks)}
            for name, var in ds.variables.items() if isinstance(var.data, da.Array)}  # fmt: skip


def _clean(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.copy()
    ds.attrs = sanitize_attrs(ds.attrs)
    for name in ds.variables:
        ds[name].attrs = sanitize_attrs(ds[name].attrs)
        ds[name].encoding = {}
        if ds[name].dtype.kind == "U":  # variable-length strings (fixed UTF-32 has no zarr v3 spec)
            # a lazy string coordinate is computed here (it is small): xarray would otherwise compute the
            # object array eagerly anyway to choose a zarr dtype, with a warning
            var = ds[name].variable
            ds[name] = (
                var.copy(data=var.compute().data.astype(object))
                if isinstance(var.data, da.Array)
                else var.astype(object)
            )
    return ds


def _write_block(block, root: str, path: str, done_dir: str, block_info=None) -> np.ndarray:
    """Write one dask block into its region of a zarr array, then mark the region done."""
    info = block_info[0]
    region = tuple(slice(lo, hi) for lo, hi in info["array-location"])
    write_region(root, path, region, np.asarray(block))
    mark_done(done_dir, info["chunk-location"])
    return np.ones((1,) * np.ndim(block), dtype=np.int8)


class StoreWriter:
    """Write product groups into a fresh store; ``commit()`` renames it into place.

    Groups are written as a template first (metadata and the small in-memory variables), then every
    dask block of every variable by its own region-write task, which marks the region done in the
    store (:mod:`~detflow.io.store.resume`). With a ``resume_key`` (a hash of the job)
    the partial store is ``<out>.partial-<key>``: a run that died (client, worker or scheduler killed)
    and is started again with the same job finds it and computes only the regions not marked done. A
    resumable partial store is kept when the run fails (it says which regions are done; it is never
    at the output path), else removed.

    ``inputs``: the files (and stores) the products are computed from. The partial store records their
    identity (:func:`file_identity`) and, as soon as the run computes them, their SHA-256
    (:meth:`watch_checksums`); a run whose inputs differ starts afresh, saying so (``restarted``), and a
    resumed run whose inputs have other content under the same size and mtime is refused at commit
    (:meth:`check_checksums`), its partial store removed.

    The writer holds ``<out>.lock`` from ``__enter__`` to ``__exit__`` (a submitted job's lock is the
    job's: adopted, and released by its driver when the job ends)."""

    def __init__(self, path: str | Path, overwrite: bool = False, resume_key: str | None = None,
                 inputs: Iterable[str | Path] = ()):  # fmt: skip
        self.path = check_output(path, overwrite)
        self.overwrite = overwrite
        self.resume_key = resume_key
        self.tmp = self.path.with_name(f"{self.path.name}.partial-{resume_key or uuid.uuid4().hex[:8]}")
        self.groups: list[str] = []
        self.resumed = False
        self.restarted: str | None = None  # why a partial store of this job was not resumed
        self.regions = {"total": 0, "done_before": 0}
        self.identity = {str(p): file_identity(p) for p in sorted({str(p) for p in inputs})}
        self.lock: OutputLock | None = None
        self._sha_before: dict[str, str] = {}  # recorded by an earlier run of this partial store
        self._sha_lock = threading.Lock()
        self._discard_partial = False

    @property
    def _meta(self) -> Path:
        return self.tmp / REGIONS

    @property
    def marks(self) -> ResumeMarks:
        return ResumeMarks(self._meta)

    def __enter__(self) -> "StoreWriter":
        ctx = lock_context()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.lock = OutputLock(self.path, job=ctx.job, scheduler=ctx.scheduler, probe=ctx.probe).acquire()
            self._open()
        except BaseException as exc:
            if self.lock is not None and not self.lock.job:
                self.lock.release()
            if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
                raise write_error(self.path, exc, None) from exc
            raise
        return self

    def _open(self) -> None:
        meta = self.marks.read() if self.resume_key else None
        if meta is not None:
            self.restarted = identity_change(meta.get("inputs"), self.identity)
            if self.restarted is None:
                self.resumed = True
                self._sha_before = self.marks.checksums()
                return
            self.restarted = f"inputs changed since the partial store was written ({self.restarted}): started afresh"
            log.warning("%s: %s", self.tmp, self.restarted)
        if self.tmp.exists():  # a partial store of another job version or other inputs: start afresh
            shutil.rmtree(self.tmp)
        root = zarr.open_group(str(self.tmp), mode="w-", zarr_format=3)
        root.create_group(self._meta.name)
        self.marks.write({"resume_key": self.resume_key, "inputs": self.identity})

    def watch_checksums(self, futures: dict[str, object]) -> None:
        """Record each input's SHA-256 in the partial store as soon as its future (``{path: future}``, e.g.
        distributed futures of :func:`detflow.io.caldir.sha256`) is done, for a later resume to compare."""
        for path, fut in futures.items():
            fut.add_done_callback(lambda f, path=path: self._note_checksum(path, f))

    def _note_checksum(self, path: str, fut) -> None:
        if getattr(fut, "status", "finished") != "finished" or self._discard_partial:
            return
        digest = fut.result()
        with self._sha_lock:
            try:
                self.marks.append_checksum(path, digest)
            except OSError:
                pass  # committed or removed meanwhile: nothing to record

    def check_checksums(self, sums: dict[str, str]) -> None:
        """Refuse to commit a resumed store whose inputs' content differs from the content an earlier run
        of it recorded (same size and mtime, other bytes): its regions mix both. The partial store is
        removed on the way out, so the next run starts afresh."""
        for path, new in sorted(sums.items()):
            old = self._sha_before.get(path)
            if old is not None and old != new:
                self._discard_partial = True
                raise DetflowInputError(path, "sha256", f"the content the partial store {self.tmp.name} was "
                                        f"started from (sha256 {old[:16]}...)", f"other content under the same "
                                        f"size and mtime (sha256 {new[:16]}...): the partial store is removed; "
                                        "run the job again to compute it afresh")  # fmt: skip

    def add(self, name: str, ds: xr.Dataset) -> da.Array:
        """Write ``ds``'s metadata now and return the delayed write of its chunks."""
        return self.add_all({name: ds})

    def add_all(self, products: dict[str, xr.Dataset], encoding: dict[str, dict] | None = None) -> da.Array:
        """Write the template of every group now and return one lazy write of all their regions not yet
        done (a dask scalar: the number of regions written).

        One graph for all groups, optimised together: the tasks groups share (the calibrated exposure
        behind both ``l2`` and ``noise``) keep one key and run once (``bench/repro_store_shared_chain.py``).

        ``encoding`` (``{group: {variable: {...}}}``) overrides a variable's zarr chunks, e.g. smaller
        chunks inside shards that equal the dask chunks (each task still writes whole shards)."""
        cleaned = {name: _clean(regular_chunks(ds)) for name, ds in products.items()}
        self.groups.extend(cleaned)
        fresh = {n: ds for n, ds in cleaned.items() if not self.marks.has_template(n)}
        for name, ds in fresh.items():  # a template a killed writer left half written starts again
            self._discard(name, ds)
        if fresh:
            tree = xr.DataTree.from_dict({f"/{name}": ds for name, ds in fresh.items()})
            enc = {f"/{name}": _encoding(ds) for name, ds in fresh.items()}
            for name, variables in (encoding or {}).items():
                for var, e in variables.items():
                    if name in fresh and var in fresh[name].variables:
                        enc[f"/{name}"][var] = e
            tree.to_zarr(
                str(self.tmp), mode="a", compute=False, zarr_format=3, consolidated=False, encoding=enc
            )  # fmt: skip  (the template: the returned delayed write is not used)
            for name in fresh:
                self.marks.mark_template(name)
        names, arrays = [], []
        for name, ds in cleaned.items():
            for var, v in ds.variables.items():
                if isinstance(v.data, da.Array):
                    names.append((name, var))
                    arrays.append(encode_zarr_variable(v, name=var, zarr_format=3).data)
        parts = []
        for (name, var), arr in zip(names, arrays):
            done_dir = self.marks.region_dir(name, var)
            done = self.marks.done(name, var)
            # the write of each block is a blockwise task on the array itself (as dask's own store), so it
            # fuses with the task that makes the block and no block waits in memory for a separate writer
            marks = arr.map_blocks(_write_block, root=str(self.tmp), path=f"{name}/{var}", done_dir=str(done_dir),
                                   dtype=np.int8, chunks=tuple((1,) * len(c) for c in arr.chunks),
                                   meta=np.empty((0,) * arr.ndim, np.int8))  # fmt: skip
            todo = [idx for idx in np.ndindex(*arr.numblocks) if block_name(idx) not in done]
            self.regions["total"] += int(np.prod(arr.numblocks))
            self.regions["done_before"] += int(np.prod(arr.numblocks)) - len(todo)
            if len(todo) == int(np.prod(arr.numblocks)):
                parts.append(marks.ravel())
            else:  # only the blocks not done: culling drops the work behind the others
                parts += [marks.blocks[idx].ravel() for idx in todo]
        if not parts:
            return da.zeros((), dtype=np.int64)
        return da.concatenate(parts).sum()  # the number of regions written

    def add_table(self, name: str, table: xr.Dataset) -> da.Array:
        """Write the event table ``table`` (:func:`~detflow.io.store.tables.event_table`) as group ``name``:
        its template now, and the returned lazy write of its chunks of rows (as :meth:`add_all`)."""
        check_table(name, table)
        return self.add_all({name: table})

    def _discard(self, name: str, ds: xr.Dataset) -> None:
        """Remove the arrays of group ``name`` that a writer killed while writing its template left (the
        template is not marked done, so no region of it was written). Left there, ``to_zarr(mode="a")``
        would take them for arrays to append to, re-read their encoding (``coordinates`` included, from the
        CF attribute) and refuse it: "unexpected encoding parameters for zarr backend: ['coordinates']"."""
        for var in ds.variables:
            shutil.rmtree(self.tmp / name / str(var), ignore_errors=True)
        self.marks.forget(name)

    def set_group_attrs(self, name: str, attrs: dict) -> None:
        g = zarr.open_group(str(self.tmp), path=name, mode="r+", zarr_format=3)
        g.attrs.update(sanitize_attrs(attrs))

    def set_root_attrs(self, attrs: dict) -> None:
        g = zarr.open_group(str(self.tmp), mode="r+", zarr_format=3)
        g.attrs.update(sanitize_attrs(attrs))

    def commit(self) -> Path:
        """Every region is done: drop the markers, consolidate, rename the store into place
        (:func:`~detflow.io.store.commit.commit_store`)."""
        return commit_store(self.tmp, self.path, drop=(REGIONS,), check=self._check_replace)

    def _check_replace(self, path: Path) -> None:
        if not self.overwrite:  # (made meanwhile, by something else than a detflow run: they lock)
            raise OutputExistsError(path, "output", "a path that does not exist yet", "it exists now")
        replaceable(path, "store")  # still a detflow store (something else may be there now)

    def _hint(self, exc: BaseException | None = None) -> str | None:
        if not self.tmp.exists():
            return None
        full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
        return (f"the partial store {self.tmp} is kept: {'free space, then ' if full else ''}run the same job "
                f"again to resume it, or `detflow clean {self.path}` to remove it")  # fmt: skip

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                return
            if self.tmp.exists() and (not self.resume_key or self._discard_partial):
                shutil.rmtree(self.tmp, ignore_errors=True)
            hint = self._hint(exc)
            if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
                raise write_error(self.path, exc, hint) from exc
            if hint and isinstance(exc, DetflowInputError) and len(exc.args) == 1:
                exc.args = (f"{exc.args[0]}; {hint}",)  # the one line the CLI prints says it too
            elif hint and isinstance(exc, Exception):
                exc.add_note(hint)
        finally:
            if self.lock is not None and not self.lock.job:
                self.lock.release()
