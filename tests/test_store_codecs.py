"""Whole-shard writes (detflow.io.store.codecs): the bytes zarr itself writes, read back by zarr, and zarr's own
path for everything the encoder does not handle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ShardingCodec, TransposeCodec, ZstdCodec

from detflow.io.store.codecs import MISSING, ShardEncoder, write_region

COMPRESSORS = {
    "lz4-shuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
    "lz4-bitshuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")],
    "blosc-zstd": [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")],
    "zstd": [ZstdCodec(level=0)],
    "zstd-checksum": [ZstdCodec(level=3, checksum=True)],
    "none": None,
}


def _data(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 300, shape)
    if np.dtype(dtype).kind in "ui":
        a = np.abs(a)
    return a.astype(dtype)


def _create(root: Path, shape, dtype, chunks, shards, compressors, **kw) -> zarr.Array:
    return zarr.create_array(str(root), shape=shape, dtype=dtype, chunks=chunks, shards=shards,
                             compressors=compressors, fill_value=0, zarr_format=3, **kw)  # fmt: skip


def _shard_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "c").rglob("*")) if p.is_file()}


@pytest.mark.parametrize("comp", list(COMPRESSORS))
@pytest.mark.parametrize("dtype", ["float32", "float64", "uint32", "uint16", "int16", "uint8"])
def test_shards_are_the_bytes_zarr_writes(tmp_path, comp, dtype):
    """Whole shards and a ragged last shard along the frame axis: byte for byte zarr's own shards, and zarr
    reads them back exactly."""
    shape, chunks, shards = (10, 24, 40), (4, 8, 10), (4, 24, 40)  # 3 shards of 12 inner chunks, the last ragged
    a = _data(shape, dtype) + 1  # no inner chunk all fill value (0): zarr leaves those out, see below
    ours, theirs = tmp_path / "ours.zarr", tmp_path / "zarr.zarr"
    _create(ours, shape, dtype, chunks, shards, COMPRESSORS[comp])
    _create(theirs, shape, dtype, chunks, shards, COMPRESSORS[comp])
    zarr.open_array(str(theirs), mode="r+")[:] = a
    for lo in (0, 4, 8):
        write_region(ours, "", (slice(lo, min(lo + 4, 10)), slice(0, 24), slice(0, 40)), a[lo : lo + 4])
    assert ShardEncoder.for_array(zarr.open_array(str(ours))) is not None
    mine = _shard_files(ours)
    assert sorted(mine) == ["c/0/0/0", "c/1/0/0", "c/2/0/0"]
    assert mine == _shard_files(theirs)
    np.testing.assert_array_equal(zarr.open_array(str(ours))[:], a)
    assert not list(ours.rglob("*.partial"))  # written under a temporary name, then renamed


@pytest.mark.parametrize("comp", ["lz4-shuffle", "zstd", "none"])
def test_a_chunk_of_fill_values_is_stored_and_reads_back(tmp_path, comp):
    """zarr leaves an inner chunk equal to the fill value out of the shard; the encoder stores it (one
    pass less), which reads back the same."""
    a = _data((4, 24, 40), "float32", seed=1) + 1
    a[:, 0:8, 0:10] = 0
    root = tmp_path / "fill.zarr"
    _create(root, a.shape, "float32", (4, 8, 10), (4, 24, 40), COMPRESSORS[comp])
    write_region(root, "", (slice(0, 4), slice(0, 24), slice(0, 40)), a)
    np.testing.assert_array_equal(zarr.open_array(str(root))[:], a)
    index = np.frombuffer(_shard_files(root)["c/0/0/0"][-(12 * 16 + 4) : -4], dtype="<u8").reshape(3, 4, 2)
    assert (index != MISSING).all()


def test_index_at_the_start_and_chunks_wholly_outside_the_array(tmp_path):
    """``index_location: start``; an edge shard whose inner chunks past the array's end are not stored
    (their index entries say so) and read back as zarr's."""
    shape, chunks, shards = (10, 16), (2, 8), (8, 16)
    a = _data(shape, "float32", seed=3)
    codec = ShardingCodec(chunk_shape=chunks, codecs=[BytesCodec(), ZstdCodec(level=1)], index_location="start")
    ours, theirs = tmp_path / "ours.zarr", tmp_path / "zarr.zarr"
    for root in (ours, theirs):
        zarr.create_array(str(root), shape=shape, dtype="float32", chunks=shards, serializer=codec, compressors=None,
                          fill_value=0, zarr_format=3)  # fmt: skip
    zarr.open_array(str(theirs), mode="r+")[:] = a
    write_region(ours, "", (slice(0, 10), slice(0, 16)), a)  # two shards in one region
    arr = zarr.open_array(str(ours))
    np.testing.assert_array_equal(arr[:], a)
    assert _shard_files(ours)["c/0/0"] == _shard_files(theirs)["c/0/0"]
    raw = _shard_files(ours)["c/1/0"]  # rows 8..15: only the inner chunks of rows 8, 9 are in the array
    index = np.frombuffer(raw[: 8 * 16], dtype="<u8").reshape(4, 2, 2)
    assert index[0, 0, 0] == 8 * 16 + 4  # the first chunk right after the index and its checksum
    assert (index[0] != MISSING).all() and (index[1:] == MISSING).all()


def test_what_the_encoder_does_not_handle_goes_through_zarr(tmp_path):
    a = _data((8, 16, 16), "float32", seed=5)
    cases = {
        "unsharded": dict(chunks=(4, 16, 16), shards=None, compressors=[ZstdCodec(level=0)]),
        "gzip": dict(chunks=(4, 8, 8), shards=(4, 16, 16), compressors=[GzipCodec(level=1)]),
        "big-endian": dict(chunks=(4, 8, 8), shards=(4, 16, 16), compressors=None, serializer=BytesCodec(endian="big")),
        "transposed": dict(chunks=(4, 8, 8), shards=(4, 16, 16), compressors=None, filters=[TransposeCodec(order=(2, 1, 0))]),
    }  # fmt: skip
    for name, kw in cases.items():
        root = tmp_path / f"{name}.zarr"
        arr = zarr.create_array(str(root), shape=a.shape, dtype="float32", fill_value=0, zarr_format=3, **kw)
        assert ShardEncoder.for_array(arr) is None, name
        write_region(root, "", (slice(0, 8), slice(0, 16), slice(0, 16)), a)
        np.testing.assert_array_equal(zarr.open_array(str(root))[:], a, err_msg=name)
    # a region that is not whole shards (half a shard's rows), in a layout the encoder handles
    root = tmp_path / "part.zarr"
    _create(root, a.shape, "float32", (4, 8, 8), (4, 16, 16), [ZstdCodec(level=0)])
    write_region(root, "", (slice(0, 8), slice(0, 16), slice(0, 16)), a)
    half = a[:4, :8] + 1
    write_region(root, "", (slice(0, 4), slice(0, 8), slice(0, 16)), half)
    expect = a.copy()
    expect[:4, :8] = half
    np.testing.assert_array_equal(zarr.open_array(str(root))[:], expect)


def test_array_metadata_is_left_alone(tmp_path):
    root = tmp_path / "m.zarr"
    _create(root, (4, 8), "uint16", (4, 4), (4, 8), COMPRESSORS["lz4-bitshuffle"], attributes={"units": "DN"})
    before = (root / "zarr.json").read_text()
    write_region(root, "", (slice(0, 4), slice(0, 8)), np.arange(32, dtype=np.uint16).reshape(4, 8))
    assert (root / "zarr.json").read_text() == before
    assert json.loads(before)["attributes"] == {"units": "DN"}


def test_commit_leaves_no_half_written_shard_file(tmp_path):
    """A worker killed between writing a shard's temporary file and renaming it leaves the file behind; the
    committed store does not carry it."""
    import xarray as xr

    from detflow.io.store import StoreWriter

    out = tmp_path / "out.zarr"
    ds = xr.Dataset({"data": (("frame", "y"), np.arange(8.0).reshape(2, 4))}).chunk({"frame": 1})
    with StoreWriter(out) as writer:
        writer.add_all({"g": ds}).compute(scheduler="sync")
        stray = writer.tmp / "g" / "data" / "c" / ".0.deadbeef.partial"
        stray.parent.mkdir(parents=True, exist_ok=True)
        stray.write_bytes(b"half")
        writer.commit()
    assert not list(out.rglob("*.partial"))
    np.testing.assert_array_equal(xr.open_zarr(out, group="g")["data"].values, ds["data"].values)


def test_frame_shards_policy_writes_whole_shards_our_encoder_handles(tmp_path):
    """The shard policy (frames per shard of whole frames, tile-sized inner chunks, the fast codec) through the
    store writer: the arrays have that layout, our encoder takes them, and the values come back."""
    import xarray as xr

    from detflow.io.store import StoreWriter
    from detflow.io.store.codecs import FAST_CODEC, frame_shards

    data = _data((6, 16, 24), "float32")
    ds = xr.Dataset({"data": (("frame", "y", "x"), data), "dq": (("frame", "y", "x"), data.astype("uint32"))})
    enc = frame_shards(["data", "dq"], frames=4, tile=8, ny=16, nx=24, compressors=[FAST_CODEC])
    with StoreWriter(tmp_path / "s.zarr") as w:
        w.add_all({"l2": ds.chunk({"frame": 4})}, encoding={"l2": enc}).compute(scheduler="sync")
        w.commit()
    for v in ("data", "dq"):
        z = zarr.open_array(str(tmp_path / "s.zarr"), path=f"l2/{v}", mode="r")
        assert z.shards == (4, 16, 24) and z.chunks == (4, 8, 8)
        assert ShardEncoder.for_array(z) is not None and isinstance(z.compressors[0], BloscCodec)
        np.testing.assert_array_equal(z[...], ds[v].values)
