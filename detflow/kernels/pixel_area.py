"""Solid angle of each pixel from a celestial WCS (plain NumPy + astropy; no dask, no I/O).

The corners of the pixel grid are mapped to the sky, projected to an equal-area azimuthal (Lambert)
plane about the pole of the image's hemisphere, and the area of each pixel is the Jacobian of that
map by central differences: ``u = rho cos(ra)``, ``v = rho sin(ra)``, ``rho = 2 sin(theta / 2)`` with
``theta`` the angle from the pole. Area in steradians.
"""

from __future__ import annotations

import numpy as np


def pixel_area(wcs, y0: int, y1: int, nx: int, north: bool) -> np.ndarray:
    """Area (sr) of pixels ``[y0:y1, 0:nx]`` (0-based pixel indices of ``wcs``).

    ``north``: project about the north pole (the image lies in the northern hemisphere), else south.
    Works on a row band, so tiles of an image can be done independently (one row of margin each side).
    """
    ys = np.arange(y0 - 1, y1 + 1, dtype=np.float64)
    xs = np.arange(-1, nx + 1, dtype=np.float64)
    xx, yy = np.meshgrid(xs, ys)
    world = wcs.all_pix2world(np.column_stack([xx.ravel(), yy.ravel()]), 0)
    ra = np.radians(world[:, 0])
    dec = np.radians(world[:, 1])
    theta = np.pi / 2 - dec if north else np.pi / 2 + dec
    rho = 2.0 * np.sin(theta / 2.0)
    u = (rho * np.cos(ra)).reshape(xx.shape)
    v = (rho * np.sin(ra)).reshape(xx.shape)
    j11 = (u[1:-1, 2:] - u[1:-1, :-2]) / 2.0
    j12 = (u[2:, 1:-1] - u[:-2, 1:-1]) / 2.0
    j21 = (v[1:-1, 2:] - v[1:-1, :-2]) / 2.0
    j22 = (v[2:, 1:-1] - v[:-2, 1:-1]) / 2.0
    return np.abs(j11 * j22 - j21 * j12)
