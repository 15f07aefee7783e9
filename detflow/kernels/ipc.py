"""Inter-pixel capacitance (IPC) with a per-pixel 3x3 kernel.

Convention (the one the ``ipc4d`` reference file uses): ``kernel[1 + dy, 1 + dx, y, x]`` is the
fraction of the charge collected in pixel ``(y, x)`` that appears in pixel ``(y + dy, x + dx)``, for
``dy, dx`` in ``-1, 0, 1``. The forward operator (true charge -> observed charge) is therefore

    out[y, x] = sum_{dy, dx} image[y - dy, x - dx] * kernel[1 + dy, 1 + dx, y - dy, x - dx]

Pixels outside the array contribute nothing, and charge a border pixel would send outside the
array is lost. A kernel that sums to 1 conserves charge away from the edges.

Kernel layer rules apply: plain ndarrays in and out, single-threaded numba, no I/O.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._config import CACHE

__all__ = ["ipc_forward", "ipc_reverse"]


@njit(nogil=True, cache=CACHE)
def _gather_checked(image, kernel, y, x, ny, nx):
    """One output pixel of the forward operator, with bounds checks (used on the edges)."""
    acc = 0.0
    for a in range(3):
        ys = y - (a - 1)
        if ys < 0 or ys >= ny:
            continue
        for b in range(3):
            xs = x - (b - 1)
            if xs < 0 or xs >= nx:
                continue
            acc += image[ys, xs] * kernel[a, b, ys, xs]
    return acc


@njit(nogil=True, cache=CACHE)
def _ipc_forward_core(image, kernel, out):
    ny, nx = image.shape
    for y in range(ny):
        interior_row = 0 < y < ny - 1
        if not interior_row or nx < 3:
            for x in range(nx):
                out[y, x] = _gather_checked(image, kernel, y, x, ny, nx)
            continue
        out[y, 0] = _gather_checked(image, kernel, y, 0, ny, nx)
        for x in range(1, nx - 1):
            acc = 0.0
            for a in range(3):
                ys = y + 1 - a
                for b in range(3):
                    xs = x + 1 - b
                    acc += image[ys, xs] * kernel[a, b, ys, xs]
            out[y, x] = acc
        out[y, nx - 1] = _gather_checked(image, kernel, y, nx - 1, ny, nx)


def ipc_forward(image: np.ndarray, kernel: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Apply the per-pixel IPC kernel to ``image`` (true charge -> charge seen after IPC).

    Parameters
    ----------
    image : (ny, nx) float array
    kernel : (3, 3, ny, nx) float array, ``kernel[1 + dy, 1 + dx, y, x]`` = fraction of pixel
        ``(y, x)``'s charge that lands in ``(y + dy, x + dx)``.
    out : optional (ny, nx) float array to write into (must not overlap ``image``).

    Returns
    -------
    (ny, nx) array, float32 when both inputs are float32, else float64. Sums are done in float64.
    """
    image = np.asarray(image)
    kernel = np.asarray(kernel)
    if image.ndim != 2:
        raise ValueError(f"ipc_forward: image must be 2-D (ny, nx), got shape {image.shape}")
    if kernel.shape != (3, 3) + image.shape:
        raise ValueError(
            f"ipc_forward: kernel must have shape (3, 3, {image.shape[0]}, {image.shape[1]}), got {kernel.shape}"
        )
    dtype = np.float32 if (image.dtype == np.float32 and kernel.dtype == np.float32) else np.float64
    if image.dtype not in (np.float32, np.float64):
        image = image.astype(np.float64)
    if kernel.dtype not in (np.float32, np.float64):
        kernel = kernel.astype(np.float64)
    if out is None:
        out = np.empty(image.shape, dtype=dtype)
    elif out.shape != image.shape or out.dtype not in (np.float32, np.float64):
        raise ValueError(f"ipc_forward: out must be a float array of shape {image.shape}")
    elif np.may_share_memory(out, image):
        raise ValueError("ipc_forward: out must not overlap image")
    _ipc_forward_core(image, kernel, out)
    return out


@njit(nogil=True, cache=CACHE)
def _ipc_reverse_core(image, kernel, gain, order, out):
    ny, nx = image.shape
    x = np.empty((ny, nx))
    for y in range(ny):
        for xx in range(nx):
            x[y, xx] = image[y, xx] * gain[y, xx]
    est = x.copy()
    fwd = np.empty((ny, nx))
    for _ in range(order):
        _ipc_forward_core(est, kernel, fwd)
        for y in range(ny):
            for xx in range(nx):
                est[y, xx] += x[y, xx] - fwd[y, xx]
    for y in range(ny):
        for xx in range(nx):
            out[y, xx] = est[y, xx] / gain[y, xx]


def ipc_reverse(image: np.ndarray, kernel: np.ndarray, gain: np.ndarray | None = None, order: int = 2,
                out: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Undo IPC to ``order``: ``est = x; repeat order times: est = est + x - K est`` (error ~ alpha^(order+1)).

    With ``gain`` (e/DN) the image is in DN and the operator acts in electrons: ``g^-1 K^-1 (g image)``.
    Each pass widens a pixel's footprint by one, so a tile needs a halo of ``order`` pixels.
    """
    image = np.asarray(image)
    if kernel.shape != (3, 3) + image.shape:
        raise ValueError(f"ipc_reverse: kernel must have shape (3, 3, {image.shape[0]}, {image.shape[1]})")
    g = np.ones(image.shape) if gain is None else np.broadcast_to(np.asarray(gain, dtype=np.float64), image.shape)
    if out is None:
        out = np.empty(image.shape, dtype=np.float32 if image.dtype == np.float32 else np.float64)
    _ipc_reverse_core(image, kernel, g, int(order), out)
    return out
