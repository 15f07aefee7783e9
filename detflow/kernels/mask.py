"""Grow DQ bits into a boolean "bad pixel" mask, each bit with its own footprint (one pixel tile).

Footprints by pixel count: 1 = the pixel, 5 = the pixel and its four nearest neighbours, 9 = the 3x3
box, 25 = the 5x5 box (the PIT's ``CombinedMask`` convention). Outside the tile counts as unflagged;
call it on a tile with a halo of 2 pixels and trim.
"""

from __future__ import annotations

import numba
import numpy as np

from ._config import CACHE

FOOTPRINTS = (0, 1, 5, 9, 25)


@numba.njit(nogil=True, cache=CACHE)
def grow_bits(dq, sizes, out):
    """``out[y, x]`` True where any bit ``b`` set within footprint ``sizes[b]`` of the pixel."""
    ny, nx = dq.shape
    for y in range(ny):
        for x in range(nx):
            out[y, x] = False
    for y in range(ny):
        for x in range(nx):
            v = dq[y, x]
            if v == 0:
                continue
            reach = 0  # 0: self only, 1: plus, 2: 3x3, 3: 5x5
            hit = False
            for b in range(32):
                if (v >> np.uint32(b)) & np.uint32(1):
                    s = sizes[b]
                    if s == 0:
                        continue
                    hit = True
                    r = 0 if s == 1 else (1 if s == 5 else (2 if s == 9 else 3))
                    reach = max(reach, r)
            if not hit:
                continue
            if reach == 0:
                out[y, x] = True
            elif reach == 1:
                out[y, x] = True
                if y > 0:
                    out[y - 1, x] = True
                if y < ny - 1:
                    out[y + 1, x] = True
                if x > 0:
                    out[y, x - 1] = True
                if x < nx - 1:
                    out[y, x + 1] = True
            else:
                k = 1 if reach == 2 else 2
                for yy in range(max(0, y - k), min(ny, y + k + 1)):
                    for xx in range(max(0, x - k), min(nx, x + k + 1)):
                        out[yy, xx] = True
