"""Whole-shard writes of zarr v3 sharded arrays, encoded in the calling (dask worker) thread.

Why: zarr-python 3.1 encodes a shard on its one event-loop thread. Per inner chunk it compares the
chunk with the fill value, copies it into a shard buffer and hops to a thread for the compressor.
A (32, 1024, 1024) float32 shard of 256 inner chunks takes 0.4-0.65 s to write, of which the lz4
compression is 0.1 s, and two dask threads writing at once take turns on that loop. That made the
store write half of an EXCAM run's worker time (``bench/README.md``).

Here a dask block that is one or more whole shards is encoded with the numcodecs compressors that
zarr's own codecs wrap (they release the GIL), into the zarr v3 sharding layout: the encoded inner
chunks, then (or before them, with ``index_location: start``) the index of (offset, nbytes) uint64
pairs, little endian, followed by its crc32c. The shard file is written under a temporary name and
renamed (:func:`~detflow.io.store.atomic.atomic_write`), as zarr's LocalStore does. The result is byte for byte what zarr writes for a shard with no
chunk equal to the fill value (zarr leaves such chunks out; here they are written, which readers
cannot tell apart), and ``tests/test_store_codecs.py`` checks it.

Anything else goes through zarr: arrays that are not sharded, codecs other than bytes + blosc/zstd
inside the shard and bytes + crc32c on the index, chunk grids that are not regular, and blocks that
are not whole shards.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import google_crc32c
import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec

from .atomic import atomic_write

try:  # the order zarr lays inner chunks out in (any order is valid: the index says where each is)
    from zarr.core.indexing import morton_order_iter as _chunk_order
except ImportError:  # pragma: no cover - a zarr without it
    _chunk_order = np.ndindex

MISSING = np.uint64(2**64 - 1)  # the index entry of a chunk not stored

# The fast codec: blosc lz4 over bit planes. On raw 12-bit counts in 16 bits it encodes ~2.4x faster than
# zarr's default zstd and compresses better (3.5x against 3.3x: the low and high bit planes are constant);
# on electrons with shot noise zstd gains only 8-20 % for 2-3x the time. Elsewhere zarr's default (zstd).
FAST_CODEC = BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")


def frame_shards(variables, frames: int, tile: int, ny: int, nx: int, compressors: list | None = None) -> dict:
    """The shard policy of per-frame (frame, y, x) variables: a shard per ``frames`` frames holding whole
    frames, of inner chunks ``(frames, tile, tile)`` (``tile``: the tile a reducing stage reads), as an
    encoding ``{variable: {...}}``; ``compressors`` (e.g. ``[FAST_CODEC]``) inside the shard.

    Why: a task reading a tile of every frame pays zarr's per-chunk cost (0.1-0.5 ms to encode or to
    locate and decode an inner chunk) ``n_frames / frames * (ny / tile) * (nx / tile)`` times per variable;
    the tile shrinks as the frame count grows, so frames per shard keep it small. A write task writes whole
    shards (encoded in its own thread: :func:`write_region`)."""
    enc = {"chunks": (frames, tile, tile), "shards": (frames, ny, nx)}
    if compressors is not None:
        enc["compressors"] = list(compressors)
    return {v: dict(enc) for v in variables}


_BLOSC_TYPESIZE = "typesize" in inspect.signature(numcodecs.Blosc.__init__).parameters
_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


class ShardEncoder:
    """Encodes whole shards of one zarr array (``for_array`` says whether it can)."""

    def __init__(self, shard: tuple[int, ...], inner: tuple[int, ...], dtype: np.dtype, fill_value, compressors: list,
                 index_at_start: bool, array_shape: tuple[int, ...]):  # fmt: skip
        self.shard, self.inner, self.dtype = tuple(shard), tuple(inner), np.dtype(dtype)
        self.fill_value, self.compressors, self.index_at_start = fill_value, compressors, index_at_start
        self.array_shape = tuple(array_shape)
        self.per_shard = tuple(s // c for s, c in zip(self.shard, self.inner))
        self.order = [tuple(int(i) for i in c) for c in _chunk_order(self.per_shard)]

    @classmethod
    def for_array(cls, arr: zarr.Array) -> "ShardEncoder | None":
        """The encoder of ``arr``'s shards, or None when its codecs or grid are not ones handled here."""
        meta = arr.metadata
        if (
            getattr(meta, "zarr_format", None) != 3
            or len(meta.codecs) != 1
            or not isinstance(meta.codecs[0], ShardingCodec)
        ):
            return None
        grid = getattr(meta.chunk_grid, "chunk_shape", None)
        sharding = meta.codecs[0]
        if grid is None or any(s % c for s, c in zip(grid, sharding.chunk_shape)):
            return None
        if [type(c) for c in sharding.index_codecs] != [BytesCodec, Crc32cCodec] or \
                sharding.index_codecs[0].endian.value != "little":  # fmt: skip
            return None
        codecs = list(sharding.codecs)
        if not codecs or not isinstance(codecs[0], BytesCodec):
            return None
        dtype = np.dtype(arr.dtype.to_native_dtype() if hasattr(arr.dtype, "to_native_dtype") else arr.dtype)
        if dtype.kind not in "biuf" or (
            dtype.itemsize > 1 and (codecs[0].endian is None or codecs[0].endian.value != "little")
        ):
            return None
        compressors = []
        for c in codecs[1:]:
            if isinstance(c, BloscCodec) and not _BLOSC_TYPESIZE:
                return None  # numcodecs < 0.16 cannot be told zarr's typesize: its bytes would differ
            if isinstance(c, BloscCodec):
                compressors.append(numcodecs.Blosc(cname=c.cname.value, clevel=c.clevel, shuffle=_SHUFFLE[c.shuffle.value],
                                                   blocksize=c.blocksize, typesize=c.typesize))  # fmt: skip
            elif isinstance(c, ZstdCodec):
                compressors.append(numcodecs.Zstd(level=c.level, checksum=c.checksum))
            else:
                return None
        return cls(grid, sharding.chunk_shape, dtype.newbyteorder("<"), meta.fill_value, compressors,
                   sharding.index_location.value == "start", arr.shape)  # fmt: skip

    def _encode_chunk(self, chunk: np.ndarray) -> bytes:
        out = np.ascontiguousarray(chunk, dtype=self.dtype).view(np.uint8).reshape(-1)
        if not self.compressors:
            return out.tobytes()
        for comp in self.compressors:
            out = comp.encode(out)
        return bytes(out)

    def encode(self, block: np.ndarray, origin: tuple[int, ...]) -> list[bytes]:
        """The stored bytes of the shard at ``origin`` (array coordinates) holding ``block`` (the whole
        shard, or the part of it inside the array for a shard at the array's edge), in pieces to be
        written one after the other (joining them would copy the shard once more)."""
        if block.shape != self.shard:  # an edge shard: pad to the shard's shape, as zarr does
            full = np.full(self.shard, self.fill_value, dtype=self.dtype)
            full[tuple(slice(0, n) for n in block.shape)] = block
            block = full
        index = np.full(self.per_shard + (2,), MISSING, dtype="<u8")
        parts, offset = [], 0
        for c in self.order:
            lo = tuple(i * n for i, n in zip(c, self.inner))
            if any(o + lo_ >= s for o, lo_, s in zip(origin, lo, self.array_shape)):
                continue  # wholly outside the array (in the padding of an edge shard)
            data = self._encode_chunk(block[tuple(slice(a, a + n) for a, n in zip(lo, self.inner))])
            index[c] = (offset, len(data))
            parts.append(data)
            offset += len(data)
        if self.index_at_start:
            size = index.nbytes + 4
            index[index[..., 0] != MISSING, 0] += np.uint64(size)
        raw = index.tobytes()
        idx = raw + np.array([google_crc32c.value(raw)], dtype="<u4").tobytes()
        return [idx, *parts] if self.index_at_start else [*parts, idx]


def write_region(root: str | Path, path: str, region: tuple[slice, ...], block: np.ndarray) -> None:
    """``zarr.open_array(root, path)[region] = block``, with whole shards of a local store encoded and
    written here (see the module's docstring) and anything else by zarr."""
    arr = zarr.open_array(str(root), path=path, mode="r+", zarr_format=3)
    enc = ShardEncoder.for_array(arr)
    starts = [r.start or 0 for r in region]
    stops = [r.stop if r.stop is not None else n for r, n in zip(region, arr.shape)]
    whole = enc is not None and all(lo % s == 0 and (hi % s == 0 or hi == n)
                                    for lo, hi, s, n in zip(starts, stops, enc.shard, arr.shape))  # fmt: skip
    if not whole or not Path(root).is_dir():
        arr[region] = block
        return
    block = np.asarray(block)
    base = Path(root) / path
    for idx in np.ndindex(*[-(-(hi - lo) // s) for lo, hi, s in zip(starts, stops, enc.shard)]):
        lo = [a + i * s for a, i, s in zip(starts, idx, enc.shard)]
        piece = block[tuple(slice(a - a0, min(a + s, b) - a0) for a, a0, s, b in zip(lo, starts, enc.shard, stops))]
        key = arr.metadata.encode_chunk_key(tuple(a // s for a, s in zip(lo, enc.shard)))
        target = base / key
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, enc.encode(piece, tuple(lo)))
