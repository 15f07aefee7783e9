"""Reader for Roman WFI L1 exposures in ASDF, as the Roman tools write them.

Tree: ``roman.data`` (ngroups, ny, nx) uint16 resultants, ``roman.amp33`` (ngroups, ny, nx/32),
optional ``roman.reference_read`` (ny, nx) that the L1 data had subtracted, ``roman.meta.exposure``
(``read_pattern`` list of lists of frame indices, ``frame_time``), ``roman.meta.guide_star``
(``window_xstart/xstop/ystart/ystop``) and ``roman.meta.instrument.data_encoding_offset``.
roman_datamodels-tagged trees (``ScienceRawModel``: Roman's files and our simulator's) and plain-dict
trees (hand-written files, older simulator output) read the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from .. import schema
from ..errors import DetflowInputError
from ..instruments.roman_wfi import NBORDER
from .asdf_lazy import lazy_array, node_get, open_asdf, to_plain, tree_get
from .chunking import pixel_tiles


def _validate_read_pattern(path, rp, ngroups: int) -> list[list[int]]:
    field = "roman.meta.exposure.read_pattern"
    try:
        rp = [[int(v) for v in group] for group in rp]
    except Exception:
        raise DetflowInputError(path, field, "a list of lists of frame indices", repr(rp)[:80])
    if len(rp) != ngroups:
        raise DetflowInputError(
            path, field, f"{ngroups} resultants (the first axis of roman.data)", f"{len(rp)} resultants"
        )
    prev = -1
    for i, group in enumerate(rp):
        if not group:
            raise DetflowInputError(path, f"{field}[{i}]", "at least one frame index", "[]")
        if group != list(range(group[0], group[0] + len(group))):
            raise DetflowInputError(path, f"{field}[{i}]", "consecutive frame indices", group)
        if group[0] <= prev:
            raise DetflowInputError(path, f"{field}[{i}]", f"frames after frame {prev}", group)
        prev = group[-1]
    return rp


def read_roman_l1_meta(path: str | Path) -> dict:
    """Read and validate the metadata of one L1 file (no pixel data read)."""
    path = Path(path)
    with open_asdf(path) as af:
        try:
            roman = node_get(af.tree, "roman")
        except KeyError:
            raise DetflowInputError(path, "roman", "a Roman ASDF tree with a 'roman' node", "missing")
        try:
            data = node_get(roman, "data")
        except KeyError:
            raise DetflowInputError(path, "roman.data", "the (ngroups, ny, nx) resultant cube", "missing")
        shape = tuple(np.shape(data))
        if len(shape) != 3 or shape[1] != shape[2]:
            raise DetflowInputError(path, "roman.data", "a (ngroups, n, n) cube", f"shape {shape}")
        if np.dtype(data.dtype).kind not in "uif":
            raise DetflowInputError(path, "roman.data", "integer or float counts", str(data.dtype))
        try:
            exposure = tree_get(roman, ("meta", "exposure"))
            rp = node_get(exposure, "read_pattern")
            frame_time = float(node_get(exposure, "frame_time"))
        except KeyError as exc:
            raise DetflowInputError(path, f"roman.meta.exposure.{exc.args[0]}", "present", "missing")
        if not np.isfinite(frame_time) or frame_time <= 0:
            raise DetflowInputError(path, "roman.meta.exposure.frame_time", "a positive time in s",
                                    frame_time)  # fmt: skip
        rp = _validate_read_pattern(path, rp, shape[0])
        gw = [-1, -1, -1, -1]
        try:
            g = tree_get(roman, ("meta", "guide_star"))
            gw = [int(node_get(g, k, -1)) for k in
                  ("window_xstart", "window_xstop", "window_ystart", "window_ystop")]  # fmt: skip
        except KeyError:
            pass
        try:
            offset = float(tree_get(roman, ("meta", "instrument", "data_encoding_offset")))
        except (KeyError, TypeError, ValueError):
            offset = 0.0
        amp33 = None
        a = node_get(roman, "amp33", None)
        if a is not None:
            ashape = tuple(np.shape(a))
            if len(ashape) != 3 or ashape[:2] != shape[:2]:
                raise DetflowInputError(path, "roman.amp33", f"shape ({shape[0]}, {shape[1]}, w)",
                                        f"shape {ashape}")  # fmt: skip
            amp33 = ashape
        has_ref_read = node_get(roman, "reference_read", None) is not None
        try:
            detector = str(tree_get(roman, ("meta", "instrument", "detector")))
        except (KeyError, TypeError):
            detector = "WFI"
        meta = to_plain(node_get(roman, "meta", {}))
        return {
            "shape": shape,
            "dtype": str(data.dtype),
            "read_pattern": rp,
            "frame_time": frame_time,
            "guide_window": gw,
            "data_encoding_offset": offset,
            "amp33_shape": amp33,
            "has_reference_read": has_ref_read,
            "detector": detector,
            "meta": meta,
        }


def open_roman_l1(path: str | Path, chunks: dict | None = None) -> xr.Dataset:
    """Open one L1 exposure lazily as a dataset with dims (frame=1, read, y, x)."""
    path = Path(path)
    info = read_roman_l1_meta(path)
    ngroups, ny, nx = info["shape"]
    ty, tx = pixel_tiles(ngroups, ny, nx, chunks, border=NBORDER)
    with open_asdf(path) as af:
        data = lazy_array(path, af, ("roman", "data"), ((ngroups,), ty, tx), name_hint="data")
        data_vars = {"data": ((schema.READ, schema.Y, schema.X), data, {"units": "DN"})}
        if info["amp33_shape"] is not None:
            w = info["amp33_shape"][2]
            amp = lazy_array(path, af, ("roman", "amp33"), ((ngroups,), ty, (w,)), name_hint="amp33")
            data_vars["amp33"] = ((schema.READ, schema.Y, "x_amp33"), amp, {"units": "DN"})
        if info["has_reference_read"]:
            rr = lazy_array(path, af, ("roman", "reference_read"), (ty, tx), name_hint="refread")
            data_vars["reference_read"] = ((schema.Y, schema.X), rr, {"units": "DN"})
    ds = xr.Dataset(data_vars)
    ds = ds.expand_dims(schema.FRAME)
    ds = ds.assign_coords(frame_coords([path], [info]))
    ds = ds.assign_coords({schema.Y: np.arange(ny), schema.X: np.arange(nx)})
    ds.attrs["instrument"] = "roman_wfi"
    ds.attrs["inputs"] = schema.sanitize_attrs([{"path": str(path), "meta": info["meta"]}])
    return ds


def frame_coords(paths, infos) -> dict:
    nf = len(infos)
    n = len(infos[0]["read_pattern"])
    first = np.zeros((nf, n), dtype=np.int32)
    count = np.zeros((nf, n), dtype=np.int32)
    for i, info in enumerate(infos):
        for j, grp in enumerate(info["read_pattern"]):
            first[i, j], count[i, j] = grp[0], len(grp)
    gw = np.array([info["guide_window"] for info in infos], dtype=np.int64).reshape(nf, 4)
    fdims = (schema.FRAME,)
    rdims = (schema.FRAME, schema.READ)
    return {
        schema.FRAME: np.arange(nf),
        "source_file": (fdims, np.array([Path(p).name for p in paths], dtype=str)),
        "frame_time": (fdims, np.array([i["frame_time"] for i in infos]), {"units": "s"}),
        "data_encoding_offset": (fdims, np.array([i["data_encoding_offset"] for i in infos])),
        "gw_xstart": (fdims, gw[:, 0]),
        "gw_xstop": (fdims, gw[:, 1]),
        "gw_ystart": (fdims, gw[:, 2]),
        "gw_ystop": (fdims, gw[:, 3]),
        "read_first": (rdims, first),
        "read_nframes": (rdims, count),
    }
