"""The run's output: one zarr v3 store, a group per product, complete or absent.

The store is written under a temporary sibling name (``<out>.partial-<id>``) and renamed into place
only when every group is written, so a failed or interrupted run never leaves a product at the output
path that looks finished. Dask chunks are made regular (equal to the zarr chunks) before writing, so
each task writes whole zarr chunks and no two tasks touch the same chunk. One writer per output
(``<out>.lock``, :mod:`detflow.io.lock`); ``--overwrite`` replaces only a detflow store; a failed run
says where its partial store is and how to resume or remove it (:func:`clean_output`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import threading
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from xarray.backends.zarr import encode_zarr_variable

from ..errors import DetflowInputError, OutputExistsError
from ..schema import sanitize_attrs
from .lock import JobProbe, OutputLock, check_unlocked, lock_context
from .shards import write_region

log = logging.getLogger("detflow")
STORE_MARKS = ("detflow_version", "pipeline")  # root attributes every detflow product store has
REGIONS = "_detflow_regions"
WRITE_ERRNOS = {errno.ENOSPC: "free space on the output's file system", errno.EDQUOT: "disk quota for the output",
                errno.EROFS: "a writable file system for the output", errno.EACCES: "write permission for the output",
                errno.EPERM: "write permission for the output", errno.EFBIG: "files as large as the output's"}  # fmt: skip


class OutputWriteError(DetflowInputError):
    """The output cannot be written (read-only, no permission, full): one line, with what to do."""


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
            ds[name] = var.copy(data=var.compute().data.astype(object)) if isinstance(var.data, da.Array) else var.astype(object)
    return ds


def _safe(name: str) -> str:
    return name.strip("/").replace("/", "__") or "root"


def _write_block(block, root: str, path: str, done_dir: str, block_info=None) -> np.ndarray:
    """Write one dask block into its region of a zarr array, then mark the region done."""
    info = block_info[0]
    region = tuple(slice(lo, hi) for lo, hi in info["array-location"])
    write_region(root, path, region, np.asarray(block))
    marker = Path(done_dir) / (".".join(map(str, info["chunk-location"])) or "0")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return np.ones((1,) * np.ndim(block), dtype=np.int8)


def is_detflow_store(path: str | Path) -> bool:
    """A detflow product store: a directory whose ``zarr.json`` is a group with detflow's root attributes
    (``detflow_version``, ``pipeline``), which every finished store has."""
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    return meta.get("node_type") == "group" and isinstance(attrs, dict) and all(k in attrs for k in STORE_MARKS)


def store_attrs(path: str | Path) -> dict | None:
    """The root attributes of a detflow store (None: not one)."""
    if not is_detflow_store(path):
        return None
    return json.loads((Path(path) / "zarr.json").read_text())["attributes"]


def _writable(path: Path) -> None:
    """Refuse at once an output whose directory cannot be written (read-only file system, no permission)."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        why = "a read-only file system" if _read_only(parent) else "no write permission"
        raise OutputWriteError(path, "output", "a directory this user can write to", f"{parent}: {why}")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_output(path: str | Path, overwrite: bool = False, kind: str = "store", probe: JobProbe | None = None) -> Path:
    """Refuse, before any work starts, an output that exists (unless ``overwrite``), that ``overwrite``
    must not replace (``kind="store"``: anything but a detflow store; ``kind="file"``, an exported file:
    anything but a file), that another writer holds (``<out>.lock``) or whose directory is read-only."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise OutputExistsError(path, "output", "a path that does not exist yet (or overwrite: true)",
                                    "it exists")  # fmt: skip
        _replaceable(path, kind)
    if kind == "store":
        check_unlocked(path, probe)
    _writable(path)
    return path


def _replaceable(path: Path, kind: str) -> None:
    if kind == "store" and not is_detflow_store(path):
        what = "a directory" if path.is_dir() else "a file" if path.is_file() else "something"
        raise OutputExistsError(path, "output", "a detflow store to replace (overwrite removes nothing else)",
                                f"{what} that is not one (no zarr.json with detflow_version and pipeline)")  # fmt: skip
    if kind == "file" and not path.is_file():
        raise OutputExistsError(path, "output", "a file to replace (overwrite replaces files only)",
                                "a directory" if path.is_dir() else "not a regular file")  # fmt: skip


def product_inputs(products: dict[str, xr.Dataset]) -> list[str]:
    """Every file a set of products was computed from: inputs, reference files, inputs left out as damaged."""
    paths: set[str] = set()
    for ds in products.values():
        for key, field in (("inputs", "path"), ("reference_files", "path"), ("skipped_inputs", "file")):
            paths |= {str(i[field]) for i in ds.attrs.get(key, []) if isinstance(i, dict) and i.get(field)}
    return sorted(paths)


def file_identity(path: str | Path) -> list | None:
    """What says a file is unchanged: ``[size, mtime_ns]`` (as the checksum cache keys it); for a directory
    (a zarr store), the number of files and a digest of every file's relative path, size and mtime."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return [st.st_size, st.st_mtime_ns]
    h, n = hashlib.sha256(), 0
    for root, dirs, files in os.walk(p):
        dirs.sort()
        for f in sorted(files):
            s = os.stat(os.path.join(root, f))
            h.update(f"{os.path.relpath(os.path.join(root, f), p)}|{s.st_size}|{s.st_mtime_ns}\n".encode())
            n += 1
    return ["dir", n, h.hexdigest()[:16]]


def _identity_change(old: dict | None, new: dict) -> str | None:
    """How the inputs differ from those a partial store was started with (None: they do not)."""
    if old is None:
        return "the partial store has no record of its inputs" if new else None
    for path in sorted(set(old) | set(new)):
        if path not in new:
            return f"{path} is no longer an input"
        if path not in old:
            return f"{path} is a new input"
        if old[path] != new[path]:
            return f"{path} changed ({old[path]} -> {new[path]}; size and mtime_ns, or a store's files)"
    return None


class StoreWriter:
    """Write product groups into a fresh store; ``commit()`` renames it into place.

    Groups are written as a template first (metadata and the small in-memory variables), then every
    dask block of every variable by its own region-write task, which marks the region done in the
    store (``_detflow_regions/regions/<group>/<variable>/<block>``). With a ``resume_key`` (a hash of the job)
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
        # a zarr group of its own (zarr warns about directories in a hierarchy that are not), holding
        # one empty file per region done; removed when the store is committed
        return self.tmp / REGIONS

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
                raise self._write_error(exc, None) from exc
            raise
        return self

    def _open(self) -> None:
        resume = self._meta / "resume.json"
        if self.resume_key and resume.exists():
            try:
                meta = json.loads(resume.read_text())
            except ValueError:
                meta = {}
            self.restarted = _identity_change(meta.get("inputs"), self.identity)
            if self.restarted is None:
                self.resumed = True
                self._sha_before = self._recorded_checksums()
                return
            self.restarted = f"inputs changed since the partial store was written ({self.restarted}): started afresh"
            log.warning("%s: %s", self.tmp, self.restarted)
        if self.tmp.exists():  # a partial store of another job version or other inputs: start afresh
            shutil.rmtree(self.tmp)
        root = zarr.open_group(str(self.tmp), mode="w-", zarr_format=3)
        root.create_group(self._meta.name)
        self._write_resume({"resume_key": self.resume_key, "inputs": self.identity})

    def _write_resume(self, meta: dict) -> None:
        resume = self._meta / "resume.json"
        tmp = resume.with_name(f".resume.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, resume)

    def watch_checksums(self, futures: dict[str, object]) -> None:
        """Record each input's SHA-256 in the partial store as soon as its future (``{path: future}``, e.g.
        distributed futures of :func:`detflow.io.caldir.sha256`) is done, for a later resume to compare."""
        for path, fut in futures.items():
            fut.add_done_callback(lambda f, path=path: self._note_checksum(path, f))

    def _note_checksum(self, path: str, fut) -> None:
        if getattr(fut, "status", "finished") != "finished" or self._discard_partial:
            return
        line = json.dumps([path, fut.result()]) + "\n"
        with self._sha_lock:
            try:  # one line appended per file (25,000 inputs: 25,000 short appends, not as many rewrites)
                with open(self._meta / "sha256.jsonl", "a") as f:
                    f.write(line)
            except OSError:
                pass  # committed or removed meanwhile: nothing to record

    def _recorded_checksums(self) -> dict[str, str]:
        out: dict[str, str] = {}
        try:
            lines = (self._meta / "sha256.jsonl").read_text().splitlines()
        except OSError:
            return out
        for line in lines:
            try:
                path, digest = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            out.setdefault(path, digest)
        return out

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
        fresh = {n: ds for n, ds in cleaned.items() if not (self._meta / "templates" / _safe(n)).exists()}
        for name, ds in fresh.items():  # a template a killed writer left half written starts again
            self._discard(name, ds)
        if fresh:
            tree = xr.DataTree.from_dict({f"/{name}": ds for name, ds in fresh.items()})
            enc = {f"/{name}": _encoding(ds) for name, ds in fresh.items()}
            for name, variables in (encoding or {}).items():
                for var, e in variables.items():
                    if name in fresh and var in fresh[name].variables:
                        enc[f"/{name}"][var] = e
            tree.to_zarr(str(self.tmp), mode="a", compute=False, zarr_format=3, consolidated=False,
                         encoding=enc)  # fmt: skip  (the template: the returned delayed write is not used)
            (self._meta / "templates").mkdir(parents=True, exist_ok=True)
            for name in fresh:
                (self._meta / "templates" / _safe(name)).touch()
        names, arrays = [], []
        for name, ds in cleaned.items():
            for var, v in ds.variables.items():
                if isinstance(v.data, da.Array):
                    names.append((name, var))
                    arrays.append(encode_zarr_variable(v, name=var, zarr_format=3).data)
        parts = []
        for (name, var), arr in zip(names, arrays):
            done_dir = self._meta / "regions" / _safe(name) / var
            done = set(os.listdir(done_dir)) if done_dir.exists() else set()
            # the write of each block is a blockwise task on the array itself (as dask's own store), so it
            # fuses with the task that makes the block and no block waits in memory for a separate writer
            marks = arr.map_blocks(_write_block, root=str(self.tmp), path=f"{name}/{var}", done_dir=str(done_dir),
                                   dtype=np.int8, chunks=tuple((1,) * len(c) for c in arr.chunks),
                                   meta=np.empty((0,) * arr.ndim, np.int8))  # fmt: skip
            todo = [idx for idx in np.ndindex(*arr.numblocks) if (".".join(map(str, idx)) or "0") not in done]
            self.regions["total"] += int(np.prod(arr.numblocks))
            self.regions["done_before"] += int(np.prod(arr.numblocks)) - len(todo)
            if len(todo) == int(np.prod(arr.numblocks)):
                parts.append(marks.ravel())
            else:  # only the blocks not done: culling drops the work behind the others
                parts += [marks.blocks[idx].ravel() for idx in todo]
        if not parts:
            return da.zeros((), dtype=np.int64)
        return da.concatenate(parts).sum()  # the number of regions written

    def _discard(self, name: str, ds: xr.Dataset) -> None:
        """Remove the arrays of group ``name`` that a writer killed while writing its template left (the
        template is not marked done, so no region of it was written). Left there, ``to_zarr(mode="a")``
        would take them for arrays to append to, re-read their encoding (``coordinates`` included, from the
        CF attribute) and refuse it: "unexpected encoding parameters for zarr backend: ['coordinates']"."""
        for var in ds.variables:
            shutil.rmtree(self.tmp / name / str(var), ignore_errors=True)
        shutil.rmtree(self._meta / "regions" / _safe(name), ignore_errors=True)

    def set_group_attrs(self, name: str, attrs: dict) -> None:
        g = zarr.open_group(str(self.tmp), path=name, mode="r+", zarr_format=3)
        g.attrs.update(sanitize_attrs(attrs))

    def set_root_attrs(self, attrs: dict) -> None:
        g = zarr.open_group(str(self.tmp), mode="r+", zarr_format=3)
        g.attrs.update(sanitize_attrs(attrs))

    def commit(self) -> Path:
        shutil.rmtree(self._meta, ignore_errors=True)  # every region is done: the markers have served
        for stray in self.tmp.rglob(".*.partial"):  # a shard file a killed worker left half written
            stray.unlink(missing_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # consolidated metadata is a zarr-python convention in v3
            zarr.consolidate_metadata(str(self.tmp))
        old = None
        if self.path.exists() or self.path.is_symlink():
            if not self.overwrite:  # (made meanwhile, by something else than a detflow run: they lock)
                raise OutputExistsError(self.path, "output", "a path that does not exist yet", "it exists now")
            _replaceable(self.path, "store")  # still a detflow store (something else may be there now)
            old = self.path.with_name(f"{self.path.name}.old-{uuid.uuid4().hex[:8]}")
            self.path.rename(old)  # out of the way first: the new store is in place before the old one goes
        self.tmp.rename(self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.path

    def _hint(self, exc: BaseException | None = None) -> str | None:
        if not self.tmp.exists():
            return None
        full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
        return (f"the partial store {self.tmp} is kept: {'free space, then ' if full else ''}run the same job "
                f"again to resume it, or `detflow clean {self.path}` to remove it")  # fmt: skip

    def _write_error(self, exc: OSError, hint: str | None) -> OutputWriteError:
        where = f" ({exc.filename})" if exc.filename else ""
        got = f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}{where}" + (f"; {hint}" if hint else "")
        return OutputWriteError(self.path, "write", WRITE_ERRNOS[exc.errno], got)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                return
            if self.tmp.exists() and (not self.resume_key or self._discard_partial):
                shutil.rmtree(self.tmp, ignore_errors=True)
            hint = self._hint(exc)
            if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
                raise self._write_error(exc, hint) from exc
            if hint and isinstance(exc, DetflowInputError) and len(exc.args) == 1:
                exc.args = (f"{exc.args[0]}; {hint}",)  # the one line the CLI prints says it too
            elif hint and isinstance(exc, Exception):
                exc.add_note(hint)
        finally:
            if self.lock is not None and not self.lock.job:
                self.lock.release()


def open_store(path: str | Path) -> xr.DataTree:
    """Open a detflow store as a DataTree (plain ``xarray.open_datatree`` works too)."""
    return xr.open_datatree(str(path), engine="zarr", chunks={})


def store_summary(path: str | Path) -> dict:
    """Groups, variables, shapes and provenance of a store, for ``detflow info``."""
    path = Path(path)
    root = zarr.open_group(str(path), mode="r")
    out = {"path": str(path), "attrs": dict(root.attrs), "groups": {}}
    tree = open_store(path)
    for node in tree.subtree:
        if node.path == "/" or not node.has_data:
            continue
        ds = node.to_dataset()
        out["groups"][node.path.strip("/")] = {
            "dims": dict(ds.sizes),
            "variables": {k: {"dims": list(v.dims), "dtype": str(v.dtype), "units": v.attrs.get("units")}
                          for k, v in ds.data_vars.items()},  # fmt: skip
            "steps": ds.attrs.get("steps", []),
        }
    return out
