"""Chunk rules of the data model: the reduced axis whole, pixels tiled to bounded tasks.

A tile holds every read of a pixel block; tiles are full-width row strips when that fits the target
(contiguous reads from the files, regular zarr chunks), square tiles otherwise.
"""

from __future__ import annotations

TARGET_TASK_BYTES = 64 * 2**20  # float32 working copy of one tile (the step kernels hold ~3 of these)


def pixel_chunks(nreads: int, ny: int, nx: int, chunks: dict | None = None,
                 target_bytes: int = TARGET_TASK_BYTES) -> tuple[int, int]:  # fmt: skip
    """``(ty, tx)`` tile size for a (nreads, ny, nx) float32 stack, or the user's ``chunks``."""
    if chunks:
        ty = int(chunks.get("y", ny) or ny)
        tx = int(chunks.get("x", nx) or nx)
        return max(1, min(ty, ny)), max(1, min(tx, nx))
    per_row = 4 * max(1, nreads) * nx
    rows = max(1, target_bytes // per_row)
    if rows >= 16 or rows >= ny:
        rows = min(ny, rows)
        if rows < ny and rows >= 16:
            rows -= rows % 16
        return rows, nx
    side = max(16, int((target_bytes / (4 * max(1, nreads))) ** 0.5) // 16 * 16)
    return min(side, ny), min(side, nx)


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
