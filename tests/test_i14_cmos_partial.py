"""Issue 14: a killed CMOS ingest leaves ``<store>.partial-<key>``; a re-run of the same ingest finds it by
its key and removes it, saying so; another ingest's partial store is named, not touched; a failed ingest
removes its partial store or says where it is; a store swap cut short is completed."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import dask
import pytest
import xarray as xr

import detflow
from detflow.io import cmos_raw
from detflow.io.cmos_raw import ingest_section, open_cmos_section
from detflow.sim.cmos import CmosSimConfig, simulate_cmos_tree

KW = {"data_scale": 16, "frame_chunk": 4, "tile": (32, 32)}
KILL = """
import os, signal, sys
import dask
from detflow.io import cmos_raw
real, calls = cmos_raw.writer._read_rows, [0]
def read_then_die(*args):
    calls[0] += 1
    if calls[0] == 2:  # mid-way: the template and the first block are written
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args)
cmos_raw.writer._read_rows = read_then_die
with dask.config.set(scheduler="synchronous"):
    cmos_raw.ingest_section(sys.argv[1], sys.argv[2], data_scale=16, frame_chunk=4, tile=(32, 32))
"""
PARTIAL = re.compile(r"^bias\.zarr\.partial-[0-9a-f]{12}$")


@pytest.fixture(autouse=True)
def _threads():
    with dask.config.set(scheduler="threads", num_workers=2):
        yield


@pytest.fixture
def sim(tmp_path):
    return simulate_cmos_tree(tmp_path / "full", CmosSimConfig(temps=(-10.0, 10.0, 25.0), seed=6))


def _kill_ingest(root: Path, store: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(detflow.__file__).parents[1]))
    res = subprocess.run([sys.executable, "-c", KILL, str(root), str(store)], env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == -signal.SIGKILL, res.stderr


def _partials(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if ".partial-" in p.name)


def _load(store) -> xr.Dataset:
    ds = open_cmos_section(store, scaled=False).load()
    ds.attrs.pop("history")
    return ds


def _files(store: Path) -> dict:
    return {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()}


def test_killed_ingest_partial_removed_by_the_rerun(sim, tmp_path, caplog):
    store = tmp_path / "out" / "bias.zarr"
    _kill_ingest(sim.roots["BIAS"], store)
    left = _partials(store.parent)
    assert len(left) == 1 and PARTIAL.match(left[0].name) and not store.exists()
    assert any((left[0] / "l1" / "data" / "c").rglob("*"))  # killed mid-way: some chunks written
    with caplog.at_level(logging.WARNING, logger="detflow"):
        rep = ingest_section(sim.roots["BIAS"], store, **KW)  # the same ingest: the same key
    assert rep.leftovers["removed"] == [str(left[0])] and rep.leftovers["others"] == []
    assert any(str(left[0]) in r.getMessage() and "removed" in r.getMessage() for r in caplog.records)
    assert _partials(store.parent) == [] and rep.n_frames == len(sim.frames_of("BIAS"))
    fresh = ingest_section(sim.roots["BIAS"], tmp_path / "fresh" / "bias.zarr", **KW)
    xr.testing.assert_identical(_load(store), _load(fresh.store))
    assert rep.to_dict()["leftovers"]["removed"] == [str(left[0])]


def test_killed_append_keeps_the_store_and_the_rerun_removes_the_partial(sim, tmp_path, caplog):
    tree = tmp_path / "tree" / "TestSection1"
    shutil.copytree(sim.roots["BIAS"], tree)
    shutil.rmtree(tree / "T25")
    store = tmp_path / "out" / "bias.zarr"
    ingest_section(tree, store, **KW)
    before = _files(store)
    shutil.copytree(sim.roots["BIAS"] / "T25", tree / "T25")
    _kill_ingest(tree, store)
    assert _files(store) == before  # the killed append left the previous store as it was
    left = _partials(store.parent)
    assert len(left) == 1 and PARTIAL.match(left[0].name)
    with caplog.at_level(logging.WARNING, logger="detflow"):
        rep = ingest_section(tree, store)
    assert rep.leftovers["removed"] == [str(left[0])] and len(rep.ingested) == 6
    assert _partials(store.parent) == []
    fresh = ingest_section(tree, tmp_path / "fresh" / "bias.zarr", **KW)
    xr.testing.assert_identical(_load(store).sortby("path").drop_vars("frame"),
                                _load(fresh.store).sortby("path").drop_vars("frame"))  # fmt: skip


def test_another_ingests_partial_is_named_not_removed(sim, tmp_path, caplog):
    tree = tmp_path / "tree" / "TestSection1"
    shutil.copytree(sim.roots["BIAS"], tree)
    store = tmp_path / "out" / "bias.zarr"
    _kill_ingest(tree, store)
    (left,) = _partials(store.parent)
    shutil.rmtree(tree / "T25")  # the tree changed: another ingest, another key
    with caplog.at_level(logging.WARNING, logger="detflow"):
        rep = ingest_section(tree, store, **KW)
    assert rep.leftovers == {"removed": [], "others": [str(left)], "swap": []}
    assert left.is_dir() and _partials(store.parent) == [left]
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert str(left) in msg and "detflow clean" in msg
    rep = ingest_section(tree, store)  # nothing new: still named
    assert rep.leftovers["others"] == [str(left)] and not rep.ingested


def test_failed_ingest_removes_its_partial_or_says_where_it_is(sim, tmp_path, monkeypatch, caplog):
    store = tmp_path / "out" / "bias.zarr"
    real_read, real_rmtree = cmos_raw.writer._read_rows, shutil.rmtree

    def failing(*args):
        raise OSError("No space left on device")

    monkeypatch.setattr(cmos_raw.writer, "_read_rows", failing)
    with dask.config.set(scheduler="synchronous"), pytest.raises(OSError, match="No space"):
        ingest_section(sim.roots["BIAS"], store, **KW)
    assert list(store.parent.iterdir()) == []  # removed
    monkeypatch.setattr(cmos_raw.writer.shutil, "rmtree", lambda *a, **k: None)  # and when it cannot be removed:
    with dask.config.set(scheduler="synchronous"), pytest.raises(OSError) as e:
        ingest_section(sim.roots["BIAS"], store, **KW)
    (left,) = _partials(store.parent)
    assert any(str(left) in n and "detflow clean" in n for n in e.value.__notes__)
    assert any(str(left) in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    monkeypatch.setattr(cmos_raw.writer.shutil, "rmtree", real_rmtree)
    monkeypatch.setattr(cmos_raw.writer, "_read_rows", real_read)
    rep = ingest_section(sim.roots["BIAS"], store, **KW)
    assert rep.leftovers["removed"] == [str(left)] and _partials(store.parent) == []


def test_a_store_swap_cut_short_is_completed(sim, tmp_path):
    store = tmp_path / "out" / "bias.zarr"
    first = ingest_section(sim.roots["BIAS"], store, **KW)
    aside = store.with_name("bias.zarr.old-0123456789ab")
    store.rename(aside)  # killed between moving the previous store aside and renaming the new one in
    rep = ingest_section(sim.roots["BIAS"], store, **KW)
    assert rep.already == first.n_frames and not rep.ingested and store.is_dir() and not aside.exists()
    assert "restored" in rep.leftovers["swap"][0] and str(aside) in rep.leftovers["swap"][0]
    shutil.copytree(store, aside)  # killed after the new store was in place: the old one is removed
    rep = ingest_section(sim.roots["BIAS"], store, **KW)
    assert not aside.exists() and "removed" in rep.leftovers["swap"][0]


def test_an_ingest_into_a_store_another_writer_holds_is_refused_at_once(sim, tmp_path):
    """One writer per store: while another process holds ``bias.zarr.lock`` (a live ingest or run), an
    ingest into it is refused before anything is written, naming the holder; once it is gone, it ingests."""
    from detflow.io.lock import OutputLock, OutputLocked

    store = tmp_path / "stores" / "bias.zarr"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom detflow.io.lock import OutputLock\n"
                               "OutputLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)",
                               str(store)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(Path(detflow.__file__).parents[1])))  # fmt: skip
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLocked, match=f"pid {holder.pid} on "):
            ingest_section(sim.roots["BIAS"], store, **KW)
        assert not store.exists() and not list(store.parent.glob("bias.zarr.partial-*"))
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its stale lock is taken over and the ingest runs
    rep = ingest_section(sim.roots["BIAS"], store, **KW)
    assert rep.n_frames > 0 and not (tmp_path / "stores" / "bias.zarr.lock").exists()
    assert OutputLock(store).acquire()  # released at the end of the ingest
