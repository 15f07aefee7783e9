"""A CMOS store records its inputs like the other families' (issue 15): the section stores (and the model
store) each group is computed from, with the SHA-256 of their content, in the group and at the root."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

import detflow
from detflow.io.caldir import sha256
from detflow.sim.cmos import CmosSimConfig, simulate_cmos_tree

CFG = CmosSimConfig(n_bias=2, n_dark=2, n_flat=2, temps=(0.0, 10.0, 20.0), seed=11)


def tree_digest(root: Path) -> str:
    """The content digest of a directory as the store records it, written out here from its definition: one
    line ``<relative path> <size> <sha256>`` per file, in path order."""
    lines = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            lines.append(
                f"{p.relative_to(root).as_posix()} {p.stat().st_size} {hashlib.sha256(p.read_bytes()).hexdigest()}\n"
            )
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as lc,
        Client(lc) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def runs(client, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmos_inputs")
    sim = simulate_cmos_tree(out / "raw", CFG)
    stores = out / "stores"
    fit = detflow.run({"pipeline": "cmos", "stores": str(stores), "output": str(out / "fit.zarr"), "mode": "fit",
                       "models": ["dark"], "ingest": {k.lower(): str(v) for k, v in sim.roots.items()}},
                      client, progress=False)  # fmt: skip
    ev = detflow.run({"pipeline": "cmos", "stores": str(stores), "output": str(out / "eval.zarr"), "mode": "evaluate",
                      "models": ["bias"], "model_store": str(out / "fit.zarr")}, client, progress=False)  # fmt: skip
    return out, fit, ev


def _inputs(attrs: dict) -> dict[str, str]:
    return {Path(i["path"]).name: i["sha256"] for i in attrs["inputs"]}


def test_a_cmos_store_records_its_section_stores_with_their_checksums(runs):
    out, fit, _ = runs
    want = {name: tree_digest(out / "stores" / name) for name in ("bias.zarr", "dark.zarr")}
    assert _inputs(fit.attrs) == want  # the flats were ingested but no group reads them
    assert _inputs(fit["bias_model"].attrs) == {"bias.zarr": want["bias.zarr"]}
    assert _inputs(fit["dark_model"].attrs) == want  # the dark model subtracts the bias
    assert fit.attrs["pipeline"] == "cmos" and fit.attrs["mode"] == "fit"


def test_an_evaluation_records_the_model_store_it_read(runs):
    out, _, ev = runs
    assert _inputs(ev["bias_eval"].attrs) == {"bias.zarr": tree_digest(out / "stores" / "bias.zarr"),
                                              "fit.zarr": tree_digest(out / "fit.zarr")}  # fmt: skip


def test_a_directory_checksum_is_its_content(tmp_path, monkeypatch):
    monkeypatch.setenv("DETFLOW_CHECKSUM_CACHE", str(tmp_path / "cache"))
    a = tmp_path / "a.zarr"
    (a / "l1" / "data" / "c").mkdir(parents=True)
    (a / "zarr.json").write_text("{}")
    chunk = a / "l1" / "data" / "c" / "0"
    chunk.write_bytes(b"\x00\x01" * 100)
    first = sha256(a)
    assert first == tree_digest(a)
    assert sha256(a) == first  # remembered
    shutil.copytree(a, tmp_path / "b.zarr")
    assert sha256(tmp_path / "b.zarr") == first  # the content, not the folder's name
    chunk.write_bytes(b"\x00\x02" * 100)  # same size, new content (and mtime)
    assert sha256(a) == tree_digest(a) != first
