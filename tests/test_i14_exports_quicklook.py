"""Issue 14: the quicklook PNG of ``detflow demo``: the DQ panel has a colour key, every axis a label."""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.colors import to_rgba

from detflow.io.quicklook import DQ_KEY, dq_categories, wfi_quicklook, wfi_quicklook_figure
from detflow.schema import DQ


def write_store(path) -> np.ndarray:
    """A small l2 store over detector pixels 4..35 with one pixel of each kind of flag."""
    n = 32
    dq = np.zeros((1, n, n), np.uint32)
    dq[0, 1, 1] = DQ.SATURATED
    dq[0, 2, 2] = DQ.JUMP_DET
    dq[0, 3, 3] = DQ.DO_NOT_USE | DQ.SATURATED  # first in the key: do not use
    dq[0, 4, 4] = DQ.NO_LIN_CORR
    dq[0, 5, 5] = DQ.HOT
    data = np.random.default_rng(1).normal(10, 1, (1, n, n)).astype(np.float32)
    var = np.full((1, n, n), 1.0, np.float32)
    ds = xr.Dataset({"data": (("frame", "y", "x"), data, {"units": "DN / s"}), "dq": (("frame", "y", "x"), dq),
                     "var_rnoise": (("frame", "y", "x"), var), "var_poisson": (("frame", "y", "x"), var)},
                    coords={"frame": [0], "y": np.arange(4, 4 + n), "x": np.arange(4, 4 + n)})  # fmt: skip
    xr.DataTree.from_dict({"/l2": ds}).to_zarr(str(path), consolidated=False)
    return dq[0]


def test_dq_panel_has_a_colour_key_and_axes_are_labelled(tmp_path):
    dq = write_store(tmp_path / "s.zarr")
    fig = wfi_quicklook_figure(tmp_path / "s.zarr", truth_slope=np.full((32, 32), 10.0))
    slope_ax, dq_ax, hist_ax = fig.axes[:3]
    for ax in (slope_ax, dq_ax, hist_ax):
        assert ax.get_xlabel() and ax.get_ylabel()
    assert "detector pixel" in slope_ax.get_xlabel() and "detector pixel" in dq_ax.get_ylabel()
    assert slope_ax.images[0].get_extent() == [3.5, 35.5, 3.5, 35.5]  # ticks in detector pixels
    colorbar_ax = fig.axes[3]
    assert "DN / s" in colorbar_ax.get_ylabel()
    # the key: one entry per colour of the DQ map, in the map's own colours, with the pixel counts
    legend = dq_ax.get_legend()
    assert legend is not None
    labels = [t.get_text() for t in legend.get_texts()]
    cmap = dq_ax.images[0].get_cmap()
    code = dq_categories(dq)
    for i, (handle, label) in enumerate(zip(legend.legend_handles, labels)):
        assert to_rgba(handle.get_facecolor()) == to_rgba(cmap(i)), label
        assert label.endswith(f": {int(np.count_nonzero(code == i))} px"), label
    names = [label.split(":")[0] for label in labels]
    assert names == ["no flag"] + [n for n, _, _ in DQ_KEY] + ["other"]
    assert "hot" in labels[-1]  # the other flags present are named
    assert code[3, 3] == 1 and code[1, 1] == 2 and code[5, 5] == len(DQ_KEY) + 1
    png = wfi_quicklook(tmp_path / "s.zarr", tmp_path / "q.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
