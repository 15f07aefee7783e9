"""The output of a run, guarded (issue 14): resume keyed on the inputs' identity and content, ``--overwrite``
that replaces only detflow stores (and exported files, not directories), one writer per output (a lock),
``detflow clean``, and read-only or full file systems reported in one line in every family.

Real stores on disk, real ``detflow run`` processes (stopped and killed with signals), real read-only and
full file systems (a tmpfs mounted in a private mount namespace with ``unshare``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from distributed import Client, LocalCluster

import detflow
import detflow.io.store.writer as store_module
from detflow.errors import DetflowInputError, OutputExistsError
from detflow.io.store import open_store
from detflow.runtime.execute import resume_key

sys.path.insert(0, str(Path(__file__).parent))
from conftest import write_tiny_wfi  # noqa: E402
from test_excam_run import DATA, write_frames  # noqa: E402

ENV = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
L2 = ("data", "err", "dq", "var_poisson", "var_rnoise")


@pytest.fixture(scope="module")
def client():
    with LocalCluster(processes=False, n_workers=1, threads_per_worker=2, dashboard_address="127.0.0.1:0") as lc:
        with Client(lc) as c:
            yield c


def lock_path(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


def read_lock(out: Path) -> dict | None:
    return json.loads(lock_path(out).read_text()) if lock_path(out).exists() else None


def is_detflow_store(path: Path) -> bool:
    attrs = json.loads((path / "zarr.json").read_text())["attributes"]
    return attrs["pipeline"] == "roman_wfi" and "detflow_version" in attrs


def _same_l2(a: Path, b: Path) -> None:
    x, y = open_store(a)["l2"].to_dataset(), open_store(b)["l2"].to_dataset()
    for v in L2:
        np.testing.assert_array_equal(x[v].values, y[v].values, err_msg=v)


def _fail_after(monkeypatch, n: int, wait_for_checksums: Path | None = None, first_frame: Path | None = None) -> None:
    """The n-th region write fails (as a killed worker would leave the run); with ``wait_for_checksums``
    (a partial store), not before the run recorded its inputs' SHA-256 there; with ``first_frame`` (a partial
    store), the first exposure's writes never fail and the failure waits until its L2 data are marked done
    (whatever order the scheduler runs the writes in, one exposure is done and others are not)."""
    real = store_module.write_region
    count = {"n": 0}

    def write(root, path, region, block):
        count["n"] += 1
        if first_frame is not None and (region[0].start or 0) == 0:
            return real(root, path, region, block)
        if count["n"] > n:
            deadline = time.monotonic() + 30
            while first_frame is not None and not _done_frames(first_frame) and time.monotonic() < deadline:
                time.sleep(0.05)
            while wait_for_checksums is not None and time.monotonic() < deadline:
                meta = json.loads((wait_for_checksums / "_detflow_regions" / "resume.json").read_text())
                sums = wait_for_checksums / "_detflow_regions" / "sha256.jsonl"
                if sums.exists() and len(sums.read_text().splitlines()) == len(meta["inputs"]):
                    break
                time.sleep(0.05)
            raise RuntimeError("killed")
        return real(root, path, region, block)

    monkeypatch.setattr(store_module, "write_region", write)


def _done_frames(partial: Path) -> set[int]:
    marks = partial / "_detflow_regions" / "regions" / "l2" / "data"
    return {int(m.name.split(".")[0]) for m in marks.iterdir()} if marks.exists() else set()


# ---- resume keyed on the inputs ------------------------------------------------------------------------------
def test_resume_after_an_input_was_replaced_computes_from_the_new_file_only(tmp_path, client, monkeypatch):
    d = write_tiny_wfi(tmp_path / "a", nexp=3)
    job = detflow.load_job(d["job_yaml"])
    _fail_after(monkeypatch, 24, first_frame=job.store.with_name(f"{job.store.name}.partial-{resume_key(job)}"))
    with pytest.raises(RuntimeError, match="killed") as err:
        detflow.run(job, client=client, progress=False)
    (partial,) = tmp_path.glob("a/native.zarr.partial-*")
    notes = " ".join(getattr(err.value, "__notes__", []))
    done = _done_frames(partial)
    assert done, "no exposure was written before the failure"
    victim = d["files"][min(done)]
    shutil.copyfile(write_tiny_wfi(tmp_path / "b", nexp=3, seed=7)["files"][min(done)], victim)  # same name
    monkeypatch.undo()
    tree = detflow.run(job, client=client, progress=False)
    regions = tree.attrs["regions"]
    assert not regions["resumed"] and regions["done_before"] == 0 and str(victim) in regions["restarted"]
    clean = detflow.run(job.model_copy(update={"output": tmp_path / "clean.zarr"}), client=client, progress=False)
    _same_l2(job.store, tmp_path / "clean.zarr")
    sums = {i["path"]: i["sha256"] for i in tree.attrs["inputs"]}
    assert sums == {i["path"]: i["sha256"] for i in clean.attrs["inputs"]}
    assert f"the partial store {partial} is kept" in notes  # the failure said where it was


def test_resume_refuses_inputs_with_other_content_under_the_same_size_and_mtime(tmp_path, client, monkeypatch):
    d = write_tiny_wfi(tmp_path / "a", nexp=3)
    job = detflow.load_job(d["job_yaml"])
    partial = job.store.with_name(f"{job.store.name}.partial-{resume_key(job)}")
    _fail_after(monkeypatch, 24, wait_for_checksums=partial, first_frame=partial)
    with pytest.raises(RuntimeError, match="killed"):
        detflow.run(job, client=client, progress=False)
    victim = d["files"][min(_done_frames(partial))]
    st = victim.stat()
    shutil.copyfile(write_tiny_wfi(tmp_path / "b", nexp=3, seed=7)["files"][0], victim)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert victim.stat().st_size == st.st_size  # the same shape: only the content tells them apart
    monkeypatch.undo()
    with pytest.raises(DetflowInputError, match=rf"^{victim}: sha256: expected the content the partial store"):
        detflow.run(job, client=client, progress=False)
    assert not partial.exists() and not job.store.exists() and not lock_path(job.store).exists()
    tree = detflow.run(job, client=client, progress=False)  # afresh
    assert tree.attrs["regions"]["done_before"] == 0
    detflow.run(job.model_copy(update={"output": tmp_path / "clean.zarr"}), client=client, progress=False)
    _same_l2(job.store, tmp_path / "clean.zarr")


# ---- --overwrite -------------------------------------------------------------------------------------------------
def test_overwrite_replaces_only_a_detflow_store_and_exported_files(tmp_path, client):
    d = write_tiny_wfi(tmp_path / "a")
    job = detflow.load_job(d["job_yaml"]).model_copy(update={"overwrite": True})
    job.store.mkdir()
    (job.store / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputExistsError, match="expected a detflow store to replace .*got a directory that is not"):
        detflow.run(job, client=client, progress=False)
    assert (job.store / "thesis.tex").read_text() == "years of work"
    assert not list(tmp_path.glob("a/native.zarr.*"))  # refused before any work
    shutil.rmtree(job.store)
    first = detflow.run(job, client=client, progress=False).attrs["started"]
    assert is_detflow_store(job.store)
    second = detflow.run(job, client=client, progress=False)  # a detflow store: replaced
    assert is_detflow_store(job.store) and second.attrs["regions"]["done_before"] == 0 and first
    assert sorted(p.name for p in (tmp_path / "a").glob("native.zarr*")) == ["native.zarr"]  # no .old-* left
    # an export (the L2 ASDF) whose path is a directory: refused at once, the directory kept
    asdf = tmp_path / "a" / "l2.asdf"
    (asdf / "notes").mkdir(parents=True)
    with pytest.raises(OutputExistsError, match=r"l2\.asdf: output: expected a file to replace .*got a directory"):
        detflow.run(job.model_copy(update={"output": asdf}), client=client, progress=False)
    assert (asdf / "notes").is_dir() and not (tmp_path / "a" / "l2.zarr").exists()


# ---- one writer per output -----------------------------------------------------------------------------------
def _detflow(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "detflow.cli", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)  # fmt: skip


def _error_line(stderr: str) -> str:
    """The one error line (the CLI's ``error: ...``); no Python traceback."""
    assert "Traceback (most recent call last)" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def _excam_job(tmp: Path, frames: list[Path], out: Path) -> Path:
    job = tmp / f"{out.stem}.yaml"
    job.write_text(yaml.safe_dump({"input": str(frames[0].parent), "output": str(out), "eperdn": 8.7,
                                   "fwc_em_e": 90000, "fwc_pp_e": 50000, "frames_per_task": 1, "frames_per_shard": 1,
                                   "non_linearity_filepath": str(DATA / "nonlin_table_TVAC.txt"),
                                   "combine": ["l2b"], "cluster": {"n_workers": 1, "threads_per_worker": 1}}))  # fmt: skip
    return job


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return write_frames(tmp_path_factory.mktemp("excam") / "l1", n=6, seed=2)


def test_a_second_writer_is_refused_at_once_and_a_dead_writers_lock_is_taken_over(tmp_path, frames):
    out = tmp_path / "x.zarr"
    job = _excam_job(tmp_path, frames, out)
    first = _detflow("run", str(job), "--no-progress")
    try:
        deadline = time.monotonic() + 240
        while not list(tmp_path.glob("x.zarr.partial-*/l2a/data")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(tmp_path.glob("x.zarr.partial-*/l2a/data")), first.communicate(timeout=60)
        os.killpg(first.pid, signal.SIGSTOP)  # the first run (and its cluster) holds the output, frozen
        holder = read_lock(out)
        assert holder["pid"] == first.pid and holder["host"]
        t0 = time.monotonic()
        second = _detflow("run", str(job), "--no-progress")
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2 and time.monotonic() - t0 < 60
        assert f"x.zarr: lock: expected no other writer of this output, got x.zarr.lock held by a run, pid " \
               f"{first.pid}" in _error_line(err)  # fmt: skip
        os.killpg(first.pid, signal.SIGKILL)  # now it dies: its lock stays, stale
        first.wait()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert read_lock(out)["pid"] == first.pid and not out.exists()
    third = _detflow("run", str(job), "--no-progress")
    _, err = third.communicate(timeout=600)
    assert third.returncode == 0, err
    assert open_store(out).attrs["regions"]["resumed"]  # the dead run's partial store, resumed
    assert not lock_path(out).exists() and not list(tmp_path.glob("x.zarr.partial-*"))


# ---- detflow clean -------------------------------------------------------------------------------------------
def test_clean_removes_what_a_failed_run_left_and_nothing_else(tmp_path, client, monkeypatch):
    from typer.testing import CliRunner

    from detflow.cli import app

    d = write_tiny_wfi(tmp_path / "a", nexp=2)
    job = detflow.load_job(d["job_yaml"])
    _fail_after(monkeypatch, 3)
    with pytest.raises(RuntimeError, match="killed"):
        detflow.run(job, client=client, progress=False)
    monkeypatch.undo()
    (partial,) = tmp_path.glob("a/native.zarr.partial-*")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that is gone: the lock of a killed run
    lock_path(job.store).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "since": "then"}))
    record = job.store.with_name("native.zarr.job.json")
    record.write_text(json.dumps({"id": "roman_wfi-x", "state": "failed", "error": "boom"}))
    decoy = tmp_path / "a" / "native.zarr.partial-deadbeef"
    (decoy / "chapter1").mkdir(parents=True)  # named like a partial store, but not detflow's
    runner = CliRunner()
    res = runner.invoke(app, ["clean", str(job.store)])
    assert res.exit_code == 2 and f"{decoy}: clean: expected a detflow partial store" in res.output
    assert partial.exists() and lock_path(job.store).exists() and record.exists() and (decoy / "chapter1").is_dir()
    shutil.rmtree(decoy)
    res = runner.invoke(app, ["clean", str(job.store), "--dry-run"])
    assert res.exit_code == 0 and res.output.count("would remove") == 3, res.output
    assert partial.exists() and lock_path(job.store).exists() and record.exists()
    res = runner.invoke(app, ["clean", str(job.store)])
    assert res.exit_code == 0 and res.output.count("removed") == 3, res.output
    assert not partial.exists() and not lock_path(job.store).exists() and not record.exists()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["cal", "job.yaml", "job_pit.yaml", "l1_00.asdf",
                                                                    "l1_01.asdf"]  # fmt: skip
    # a live writer's lock (this process): clean refuses and removes nothing
    (partial / "zarr.json").parent.mkdir()
    (partial / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    (partial / "_detflow_regions").mkdir()
    lock_path(job.store).write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "since": "now"}))
    res = runner.invoke(app, ["clean", str(job.store)])
    assert res.exit_code == 2 and "lock: expected no other writer" in res.output and partial.exists()


def test_clean_removes_a_cmos_section_store_left_by_a_killed_ingest(tmp_path):
    """What ``cmos_raw`` writes before it renames (``<section>.zarr.partial-<hex>``, a zarr group with its ``l1``
    group), killed before the rename: ``detflow clean STORES/bias.zarr`` removes it."""
    import xarray as xr
    from typer.testing import CliRunner

    from detflow.cli import app

    partial = tmp_path / "bias.zarr.partial-0123abcd"
    xr.Dataset({"data": (("frame", "y", "x"), np.zeros((2, 4, 4), np.uint16))}).to_zarr(
        str(partial), group="l1", zarr_format=3, consolidated=False)  # fmt: skip
    res = CliRunner().invoke(app, ["clean", str(tmp_path / "bias.zarr")])
    assert res.exit_code == 0 and f"removed: {partial} (partial store)" in res.output and not partial.exists()


# ---- a read-only output directory, a full disk: one line, exit 2, in every family --------------------------------
def _mount_namespace() -> bool:
    return (
        shutil.which("unshare") is not None
        and subprocess.run(
            ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True
        ).returncode
        == 0
    )


def _run_on_tmpfs(job: Path, mount: Path, options: str) -> subprocess.CompletedProcess:
    """``detflow run job`` with a tmpfs (``options``: its size, ``ro``) mounted at ``mount``, seen only by
    that process and its children (a private mount namespace)."""
    script = (
        f"mount -t tmpfs -o {options} tmpfs {mount} && exec {sys.executable} -m detflow.cli run {job} --no-progress"
    )
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], env=ENV, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def cmos_stores(tmp_path_factory):
    from detflow.sim.cmos import CmosSimConfig, simulate_cmos_tree

    root = tmp_path_factory.mktemp("cmos")
    sim = simulate_cmos_tree(root / "raw", CmosSimConfig(n_bias=3, n_dark=3, n_flat=2, seed=4))
    detflow.run({"pipeline": "cmos", "stores": str(root / "stores"),
                 "ingest": {"bias": str(sim.roots["BIAS"]), "dark": str(sim.roots["DARK"]),
                            "flat": str(sim.roots["FLAT"]), "data_scale": 16},
                 "cluster": {"n_workers": 1, "threads_per_worker": 1}}, progress=False)  # fmt: skip
    return root / "stores"


def _family_job(family: str, tmp: Path, out_dir: Path, frames, cmos_stores) -> tuple[Path, Path]:
    job = tmp / f"{family}.yaml"
    if family == "roman_wfi":
        d = write_tiny_wfi(tmp / "wfi", nexp=2)
        spec = yaml.safe_load(d["job_yaml"].read_text())
        spec["output"] = str(out_dir / "out.zarr")
        job.write_text(yaml.safe_dump(spec))
    elif family == "roman_excam":
        job = _excam_job(tmp, frames, out_dir / "out.zarr")
    else:
        job.write_text(yaml.safe_dump({"pipeline": "cmos", "stores": str(cmos_stores),
                                       "output": str(out_dir / "out.zarr"),
                                       "report_dir": str(tmp / "report"), "models": ["bias", "dark"], "mode": "fit",
                                       "cluster": {"n_workers": 1, "threads_per_worker": 1}}))  # fmt: skip
    return job, out_dir / "out.zarr"


@pytest.mark.parametrize("family", ["roman_wfi", "roman_excam", "cmos"])
def test_read_only_and_full_file_systems_are_one_line_in_every_family(family, tmp_path, frames, cmos_stores):
    if not _mount_namespace():
        pytest.fail("no private mount namespace here (unshare -rm with a tmpfs): cannot make a real read-only "
                    "or full file system")  # fmt: skip
    mount = tmp_path / "mnt"
    mount.mkdir()
    job, out = _family_job(family, tmp_path, mount, frames, cmos_stores)
    res = _run_on_tmpfs(job, mount, "ro,size=1m")  # read-only: refused before any work
    assert res.returncode == 2, res.stderr
    line = _error_line(res.stderr)
    assert f"{out}: output: expected a directory this user can write to, got {mount}: a read-only file system" in line
    assert "dask dashboard" not in res.stderr  # at once: no cluster was started
    res = _run_on_tmpfs(job, mount, "size=96k")  # too small for the store
    assert res.returncode == 2, res.stderr
    line = _error_line(res.stderr)
    assert f"{out}: write: expected free space on the output's file system, got ENOSPC" in line
    assert f"the partial store {out}.partial-" in line and f"`detflow clean {out}`" in line
    assert "Compute Failed" not in res.stderr  # the embedded cluster's own log lines stay quiet (detflow -v shows them)
