"""Chunk rules of the data model: the reduced axis whole, pixels tiled to bounded tasks.

A tile holds every read of a pixel block; tiles are full-width row strips when that fits the target
(contiguous reads from the files, regular zarr chunks), square tiles otherwise.
"""

from __future__ import annotations

import numbers

from ..errors import DetflowInputError

TARGET_TASK_BYTES = 64 * 2**20  # float32 working copy of one tile (the step kernels hold ~3 of these)


def pixel_chunks(nreads: int, ny: int, nx: int, chunks: dict | None = None,
                 target_bytes: int = TARGET_TASK_BYTES) -> tuple[int, int]:  # fmt: skip
    """``(ty, tx)`` tile size for a (nreads, ny, nx) float32 stack, or the user's ``chunks``
    (``{y: ty, x: tx}``, either optional; ``-1`` is the whole axis, as in dask and xarray)."""
    if chunks:
        problem = chunks_problem(chunks)
        if problem:
            raise DetflowInputError(None, "chunks", problem, chunks)
        ty, tx = chunks.get("y", -1), chunks.get("x", -1)
        return (ny if ty == -1 else min(ty, ny)), (nx if tx == -1 else min(tx, nx))
    per_row = 4 * max(1, nreads) * nx
    rows = max(1, target_bytes // per_row)
    if rows >= 16 or rows >= ny:
        rows = min(ny, rows)
        if rows < ny and rows >= 16:
            rows -= rows % 16
        return rows, nx
    side = max(16, int((target_bytes / (4 * max(1, nreads))) ** 0.5) // 16 * 16)
    return min(side, ny), min(side, nx)


PIXEL_AXES = ("y", "x")


def chunks_problem(chunks) -> str | None:
    """What is wrong with a user's pixel tile ``chunks`` (as the "expected" of an error), or None."""
    if chunks is None:
        return None
    if not isinstance(chunks, dict):
        return "a mapping {y: rows, x: columns}"
    for key, value in chunks.items():
        if key not in PIXEL_AXES:
            return f"the pixel axes y and x only (not {key!r}), each an int >= 1 or -1 (the whole axis)"
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not (value >= 1 or value == -1):
            return f"{key}: an int >= 1, or -1 for the whole axis"
    return None


def tile_chunks(n: int, tile: int, border: int = 0) -> tuple[int, ...]:
    """Chunk sizes along one axis: tiles of ``tile``, the first one ``border`` longer.

    With a reference border of ``border`` pixels, the active region ``[border:n-border]`` then starts
    on a tile boundary, so products trimmed to it have regular chunks and are written without any
    rechunking (4096 rows in 512-row tiles with a 4-pixel border: 516, 512 x 6, 508).
    """
    if tile >= n:
        return (n,)
    first = min(n, tile + border)
    rest = n - first
    full, rem = divmod(rest, tile)
    return (first,) + (tile,) * full + ((rem,) if rem else ())


def pixel_tiles(nreads: int, ny: int, nx: int, chunks: dict | None = None,
                border: int = 0) -> tuple[tuple[int, ...], tuple[int, ...]]:  # fmt: skip
    """Explicit (y, x) chunk tuples of :func:`pixel_chunks` tiles, aligned to a reference border."""
    ty, tx = pixel_chunks(nreads, ny, nx, chunks)
    return tile_chunks(ny, ty, border), tile_chunks(nx, tx, border)


def trim_chunks(chunks: tuple[int, ...], border: int) -> tuple[int, ...]:
    """The chunks of ``[border:-border]`` of an axis chunked as ``chunks``."""
    if len(chunks) == 1:
        return (chunks[0] - 2 * border,)
    return (chunks[0] - border, *chunks[1:-1], chunks[-1] - border)
