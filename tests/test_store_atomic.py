"""The one atomic-write helper (detflow.io.store.atomic): complete or absent, never a temporary file left
behind, and the call sites that use it."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from detflow.io import exporters
from detflow.io.store import StoreWriter
from detflow.io.store.atomic import TEMP_GLOB, atomic_path, atomic_write, temp_leftovers, temp_path


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


@pytest.mark.parametrize("data, expected", [
    ("text é\n", "text é\n".encode()),
    (b"\x00\x01bytes", b"\x00\x01bytes"),
    ([b"one", b"", b"two"], b"onetwo"),
    (lambda p: p.write_bytes(b"by a function"), b"by a function"),
])  # fmt: skip
def test_writes_the_content_and_nothing_else(tmp_path, data, expected):
    out = atomic_write(tmp_path / "f.bin", data)
    assert out == tmp_path / "f.bin" and out.read_bytes() == expected
    assert _listing(tmp_path) == ["f.bin"]


def test_replaces_an_existing_file(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    atomic_write(p, "new", fsync=True)
    assert p.read_text() == "new" and _listing(tmp_path) == ["f.txt"]


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failure_leaves_no_file_and_no_temporary(tmp_path, exc):
    def half(p: Path) -> None:
        p.write_bytes(b"half a file")
        raise exc

    with pytest.raises(type(exc)):
        atomic_write(tmp_path / "new.fits", half)
    assert _listing(tmp_path) == []


def test_a_failure_leaves_the_previous_file_as_it_was(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("previous")
    with pytest.raises(ValueError), atomic_path(p) as tmp:
        tmp.write_text("half")
        raise ValueError("no")
    assert p.read_text() == "previous" and _listing(tmp_path) == ["f.txt"]


def test_a_reader_sees_the_old_file_or_the_new_one_never_a_part(tmp_path):
    """A reader polling the file while it is rewritten many times reads only whole contents."""
    p = tmp_path / "f.bin"
    contents = [bytes([i]) * 200_000 for i in range(20)]
    atomic_write(p, contents[0])
    seen, stop = set(), threading.Event()

    def read():
        while not stop.is_set():
            seen.add(p.read_bytes())

    t = threading.Thread(target=read)
    t.start()
    try:
        for c in contents[1:]:
            atomic_write(p, [c[:1000], c[1000:]])
    finally:
        stop.set()
        t.join()
    assert seen and seen <= set(contents)


def test_the_temporary_name_is_hidden_and_recognised(tmp_path):
    p = tmp_path / "a[1].fits"
    tmp = temp_path(p)
    assert tmp.parent == tmp_path and tmp.name.startswith(".a[1].fits.") and tmp.match(TEMP_GLOB)
    assert temp_path(p) != tmp  # each write its own name: two writers never share one
    tmp.write_bytes(b"left by a killed writer")
    (tmp_path / "a[1].fits.partial").write_bytes(b"not ours")
    assert temp_leftovers(p) == [tmp] and temp_leftovers(tmp_path / "b.fits") == []


def test_commit_drops_a_temporary_file_a_killed_writer_left(tmp_path):
    """The store's commit removes the temporary files of the helper (a shard file a killed worker left)."""
    import xarray as xr

    ds = xr.Dataset({"v": ("row", np.arange(6.0))}).chunk({"row": 3})
    with StoreWriter(tmp_path / "s.zarr") as w:
        w.add_all({"g": ds}).compute(scheduler="sync")
        chunk_dir = w.tmp / "g" / "v" / "c"
        stray = temp_path(chunk_dir / "0")
        stray.write_bytes(b"half")
        w.commit()
    assert not list((tmp_path / "s.zarr").rglob(TEMP_GLOB))


def test_an_export_that_fails_leaves_nothing(tmp_path, monkeypatch):
    """An EXCAM FITS export whose write fails half way: no file at the path and no temporary beside it (a
    hand-written ``.partial`` was left before)."""

    def broken(self, fileobj, *args, **kwargs):
        Path(fileobj).write_bytes(b"SIMPLE  =                    T")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fits.HDUList, "writeto", broken)
    with pytest.raises(OSError, match="No space"):
        exporters._write_pair(tmp_path / "x.fits", np.zeros((2, 2), np.float32), fits.Header(), fits.Header(),
                              "L2a", "DN")  # fmt: skip
    assert _listing(tmp_path) == []
