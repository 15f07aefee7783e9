"""What a partial store records so that a killed run, started again, computes only what is missing.

Under ``<partial>/_detflow_regions`` (:data:`REGIONS`, a zarr group of its own: zarr warns about directories
in a hierarchy that are not), removed when the store is committed:

- ``resume.json``: the writer's resume key and the identity of every input (:func:`file_identity`); a run
  whose inputs differ starts afresh (:func:`identity_change` says why);
- ``sha256.jsonl``: each input's SHA-256, one line appended as soon as the run computes it;
- ``templates/<group>``: an empty file once a group's template (metadata, small variables) is written;
- ``regions/<group>/<variable>/<i.j.k>``: an empty file per region (dask block) written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import xarray as xr

from .atomic import atomic_write

REGIONS = "_detflow_regions"


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


def identity_change(old: dict | None, new: dict) -> str | None:
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


def safe_name(name: str) -> str:
    """A group path as one file name (``a/b`` -> ``a__b``; the root group: ``root``)."""
    return name.strip("/").replace("/", "__") or "root"


def block_name(index: tuple[int, ...]) -> str:
    """The marker name of a block (``i.j.k``; a 0-d array's one block: ``0``)."""
    return ".".join(map(str, index)) or "0"


class ResumeMarks:
    """The markers of one partial store (``meta``: its :data:`REGIONS` directory)."""

    def __init__(self, meta: Path):
        self.meta = Path(meta)

    def read(self) -> dict | None:
        """``resume.json`` (None: none; ``{}``: unreadable)."""
        try:
            text = (self.meta / "resume.json").read_text()
        except FileNotFoundError:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return {}

    def write(self, meta: dict) -> None:
        atomic_write(self.meta / "resume.json", json.dumps(meta))

    def append_checksum(self, path: str, digest: str) -> None:
        """One line per file (25,000 inputs: 25,000 short appends, not as many rewrites). Raises OSError
        when the store was committed or removed meanwhile."""
        with open(self.meta / "sha256.jsonl", "a") as f:
            f.write(json.dumps([path, digest]) + "\n")

    def checksums(self) -> dict[str, str]:
        """The SHA-256 recorded per input (the first one of a path; a line cut short by a kill is skipped)."""
        out: dict[str, str] = {}
        try:
            lines = (self.meta / "sha256.jsonl").read_text().splitlines()
        except OSError:
            return out
        for line in lines:
            try:
                path, digest = json.loads(line)
            except ValueError:
                continue
            out.setdefault(path, digest)
        return out

    def has_template(self, group: str) -> bool:
        return (self.meta / "templates" / safe_name(group)).exists()

    def mark_template(self, group: str) -> None:
        (self.meta / "templates").mkdir(parents=True, exist_ok=True)
        (self.meta / "templates" / safe_name(group)).touch()

    def region_dir(self, group: str, variable: str) -> Path:
        return self.meta / "regions" / safe_name(group) / variable

    def done(self, group: str, variable: str) -> set[str]:
        """The marker names (:func:`block_name`) of the blocks of ``group/variable`` written."""
        d = self.region_dir(group, variable)
        return set(os.listdir(d)) if d.exists() else set()

    def forget(self, group: str) -> None:
        """Drop every region marker of ``group`` (its template is written again)."""
        shutil.rmtree(self.meta / "regions" / safe_name(group), ignore_errors=True)


def mark_done(done_dir: str | Path, index: tuple[int, ...]) -> None:
    """Mark block ``index`` written (called in the task that wrote it, after the write)."""
    marker = Path(done_dir) / block_name(index)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
