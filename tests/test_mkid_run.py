"""The MKID job end to end on the engine (issue 17): ``detflow run job.yaml`` and the Python API decode
simulated ``.bin`` streams into the photon store; the store read with plain zarr/xarray equals the
simulator's truth; queries read only their rows; a failed run leaves no store and its re-run resumes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr
from distributed import Client, LocalCluster
from typer.testing import CliRunner
from zarr.storage import LocalStore, WrapperStore

from detflow.cli import app
from detflow.instruments import mkid as mi
from detflow.io import mkid_bin as mb
from detflow.io import mkid_store as ms
from detflow.runtime.run import run
from detflow.sim.mkid import MkidSimConfig, kept_photons, simulate_mkid

CFG = MkidSimConfig(instrument="darkness", seconds=4, rate=5.0, seed=11)
SMALL = {"rows_per_shard": 8192, "rows_per_chunk": 1024}  # several shards and chunks per file


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate_mkid(tmp_path_factory.mktemp("mkid") / "bin", CFG)


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as lc,
        Client(lc) as c,
    ):
        yield c


def _job(sim, **kw) -> dict:
    return {"pipeline": "mkid", "input": str(sim.files[0].parent), "instrument": "darkness",
            "beammap": str(sim.beammap), **SMALL, **kw}  # fmt: skip


def test_cli_run_writes_the_photon_store_plain_xarray_reads(sim, tmp_path):
    job = dict(_job(sim), output="out.zarr", cluster={"n_workers": 1, "threads_per_worker": 2})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    res = CliRunner().invoke(app, ["run", str(tmp_path / "job.yaml"), "--no-progress"])
    assert res.exit_code == 0, res.output
    store = tmp_path / "out.zarr"
    tree = xr.open_datatree(store, engine="zarr")
    assert set(tree.children) == {"beammap", "photons", "photon_index"}
    ph = xr.open_zarr(store, group="photons")  # plain: no option needed to keep time as uint64 microseconds
    truth = kept_photons(sim.truth)
    for k, v in truth.items():
        assert ph[k].dims == ("photon",) and ph[k].dtype == v.dtype
        np.testing.assert_array_equal(ph[k].values, v, err_msg=k)
    assert ph["time"].attrs["units"] == "us" and ph["phase"].attrs["units"] == "deg"
    assert ph.attrs["start_unix"] == CFG.start and ph.attrs["detflow_table"]["dim"] == "photon"
    bm = xr.open_zarr(store, group="beammap")
    assert bm["resid"].dims == ("y", "x") and bm["resid"].shape == (125, 80)
    assert bm["flag"].attrs["flag_meanings"].split()[:2] == ["good", "noDacTone"]
    t = sim.truth
    np.testing.assert_array_equal(bm["resid"].values[t["y"][t["in_beammap"]], t["x"][t["in_beammap"]]],
                                  t["resid"][t["in_beammap"]])  # fmt: skip
    assert (bm["flag"].values == mi.NO_RESONATOR).sum() == (~t["in_beammap"]).sum()
    assert bm.attrs["deadtime_us"] == 10 and bm.attrs["energy_bin_width_ev"] == 0.1
    idx = xr.open_zarr(store, group="photon_index")
    assert idx.attrs["totals"]["dropped_flagged"] == (t["photon_kind"] == 1).sum()
    assert idx.attrs["totals"]["dropped_unmapped"] == (t["photon_kind"] == 2).sum()
    assert int(idx["rows"].sum()) == truth["pixel"].size
    root = tree.attrs
    assert root["pipeline"] == "mkid" and len(root["inputs"]) == CFG.seconds
    assert all(len(i["sha256"]) == 64 for i in root["inputs"]) and root["reference_files"][0]["name"] == "beammap"
    # sharded: chunks of 1024 rows inside shards of 8192
    arr = zarr.open_array(str(store), path="photons/time", mode="r")
    assert arr.shards == (8192,) and arr.chunks == (1024,)


def test_python_api_time_range_and_default_beammap(sim, tmp_path, client):
    start, stop = CFG.start + 1, CFG.start + 3
    out = tmp_path / "range.zarr"
    run(dict(_job(sim, start=start, stop=stop), output=str(out)), client, progress=False)
    ph = xr.open_zarr(out, group="photons", decode_timedelta=False)
    truth = sim.truth
    keep = {k: v for k, v in truth.items()}
    keep["photon_time"] = truth["photon_time"] - 1_000_000  # time 0 is the range's start
    want = kept_photons(keep, 0, 2)
    for k, v in want.items():
        np.testing.assert_array_equal(ph[k].values, v, err_msg=k)
    idx = xr.open_zarr(out, group="photon_index")
    np.testing.assert_array_equal(idx["second"].values, [start - 1, start, start + 1, stop])  # one early file
    assert idx["rows"].values[0] == 0 and idx["rows"].values[-1] == 0  # their photons are outside the range
    # the preset's default beammap: every resonator kept, flagged ones included
    out2 = tmp_path / "default.zarr"
    job = _job(sim, output=str(out2))
    del job["beammap"]
    run(job, client, progress=False)
    n = xr.open_zarr(out2, group="photons").sizes["photon"]
    assert n == (truth["photon_resid"] >= 0).sum() > (truth["photon_kind"] == 0).sum()  # strays only dropped


class CountingStore(WrapperStore):
    """Counts the bytes read per array (zarr's own get calls)."""

    def __init__(self, store):
        super().__init__(store)
        self.bytes = Counter()

    async def get(self, key, prototype, byte_range=None):
        buf = await super().get(key, prototype, byte_range)
        if buf is not None:
            self.bytes[key.rsplit("/c", 1)[0]] += len(buf)
        return buf

    def _with_store(self, store):  # zarr re-wraps stores opened with another mode
        return type(self)(store)


def test_queries_read_only_their_rows(sim, tmp_path, client):
    out = tmp_path / "q.zarr"
    run(dict(_job(sim), output=str(out)), client, progress=False)
    truth = kept_photons(sim.truth)
    index = ms.photon_index(out)
    pix = int(np.bincount(truth["pixel"]).argmax())  # the hottest resonator
    got = ms.read_photons(out, resids=[pix])
    sel = truth["pixel"] == pix
    for k in truth:
        np.testing.assert_array_equal(got[k], truth[k][sel])
    t0, t1 = 1_250_000, 2_100_000
    got = ms.read_photons(out, t0=t0, t1=t1)
    sel = (truth["time"] >= t0) & (truth["time"] < t1)
    for k in truth:
        np.testing.assert_array_equal(np.sort(got[k]), np.sort(truth[k][sel]))
    got = ms.read_photons(out, resids=[pix], t0=t0, t1=t1, columns=["time"])
    np.testing.assert_array_equal(got["time"], truth["time"][(truth["pixel"] == pix) & sel])
    # what is read: one resonator reads a few chunks of each file, one second reads its file's rows only
    total = sum(p.stat().st_size for p in (out / "photons" / "phase").rglob("c/*"))
    counting = CountingStore(LocalStore(str(out), read_only=True))
    ms.read_photons(counting, resids=[pix], columns=["phase"])
    one_pixel = counting.bytes["photons/phase"]
    counting.bytes.clear()
    ms.read_photons(counting, t0=2_000_000, t1=3_000_000, columns=["phase"])
    one_second = counting.bytes["photons/phase"]
    assert 0 < one_pixel < total / 8
    assert total / CFG.seconds / 2 < one_second < total / 2
    assert index["count"].shape == (CFG.seconds, mb.read_beammap(sim.beammap, "darkness").good.size)


def test_a_failed_run_leaves_no_store_and_the_rerun_resumes(sim, tmp_path, client, monkeypatch):
    out = tmp_path / "r.zarr"
    real = mb.decode_file
    last = str(sim.files[-1])

    def failing(path, *args):
        if path == last:
            raise OSError("disk went away")
        return real(path, *args)

    monkeypatch.setattr(mb, "decode_file", failing)
    with pytest.raises(OSError, match="disk went away"):
        run(dict(_job(sim), output=str(out)), client, progress=False)
    assert not out.exists()
    partial = list(tmp_path.glob("r.zarr.partial-*"))
    assert len(partial) == 1
    monkeypatch.setattr(mb, "decode_file", real)
    run(dict(_job(sim), output=str(out)), client, progress=False)
    assert not list(tmp_path.glob("r.zarr.partial-*"))
    root = xr.open_datatree(out, engine="zarr").attrs
    assert root["regions"]["resumed"] and root["regions"]["done_before"] > 0
    ph = xr.open_zarr(out, group="photons", decode_timedelta=False)
    for k, v in kept_photons(sim.truth).items():
        np.testing.assert_array_equal(ph[k].values, v, err_msg=k)


def test_bad_jobs_are_one_line_exit_status_2(sim, tmp_path):
    cases = [({"instrument": "subaru"}, "instrument"), ({"beammap": str(tmp_path / "nope.txt")}, "nope.txt: beammap"),
             ({"start": CFG.start + 50, "stop": CFG.start + 60}, "start/stop"),
             ({"start": CFG.start + 2, "stop": CFG.start + 1}, "stop after start")]  # fmt: skip
    for kw, text in cases:
        job = tmp_path / "job.yaml"
        job.write_text(yaml.safe_dump(dict(_job(sim, **kw), output="o.zarr")))
        res = CliRunner().invoke(app, ["run", str(job), "--no-progress"])
        errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
        assert res.exit_code == 2 and len(errors) == 1 and text in errors[0], res.output
        assert not (tmp_path / "o.zarr").exists()


def test_a_mistimed_file_found_while_scanning_is_one_line(sim, tmp_path):
    """The header check runs in the scanning tasks (on the workers): the CLI still prints one line, exit 2,
    and leaves no store; the inputs are not modified."""
    d = tmp_path / "bin"
    d.mkdir()
    for f in sim.files[:2]:
        (d / f.name).write_bytes(f.read_bytes())
    late = d / f"{CFG.start + 2}.bin"
    late.write_bytes(sim.files[0].read_bytes())  # stamped two seconds before its name: within 3 s, accepted
    later = d / f"{CFG.start + 10}.bin"
    later.write_bytes(sim.files[0].read_bytes())  # ten seconds off
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(dict(_job(sim), input=str(d), output="o.zarr",
                                       cluster={"n_workers": 1, "threads_per_worker": 2})))  # fmt: skip
    res = CliRunner().invoke(app, ["run", str(job), "--no-progress"])
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert res.exit_code == 2 and len(errors) == 1, res.output
    assert errors[0].startswith(f"error: {later}: header at byte 0: timestamp: expected within 3 s"), errors[0]
    assert not (tmp_path / "o.zarr").exists()  # the partial store (the beammap group) is named, not silent
    partial = list(tmp_path.glob("o.zarr.partial-*"))
    assert len(partial) == 1 and f"the partial store {partial[0]} is kept" in errors[0] and "detflow clean" in errors[0]
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
