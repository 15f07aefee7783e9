"""L2a -> L2b, first step: frame selection (``excam_frame_select``) by the fraction of flagged pixels and by
header criteria (OVEREXP, tip/tilt, keyword ranges); the frames are kept and marked ``rejected``."""

from __future__ import annotations

import numpy as np
import xarray as xr
from pydantic import Field

from ...instruments import roman_excam
from ...schema import FRAME, X, Y
from ..registry import StepParams, record, register
from .common import FAMILY, REJECT
from .headers import header_values


class FrameSelectParams(StepParams):
    bpix_frac: float = Field(1.0, ge=0, le=1, description="reject frames with more than this fraction of flagged "
                             "pixels (1: off)")  # fmt: skip
    allowed_bpix: int = Field(0, ge=0, description="corgidrp DQ bits not counted as bad (e.g. 6 = 2 and 4)")
    overexp: bool = Field(False, description="reject frames whose OVEREXP keyword is true")
    tt_rms_thres: float | None = Field(None, description="reject frames with Z2VAR or Z3VAR above this")
    tt_bias_thres: float | None = Field(None, description="reject frames with Z2RES or Z3RES above this")
    header_range: dict[str, tuple[float | None, float | None]] = Field(
        default_factory=dict, description="keyword: [min, max]; frames outside (or without it) are rejected"
    )


@register("excam_frame_select", FrameSelectParams, FAMILY)
def excam_frame_select(ds: xr.Dataset, refs: xr.Dataset | None, p: FrameSelectParams) -> xr.Dataset:
    """Frame selection by flagged-pixel fraction and header criteria (frames kept, marked rejected)."""
    n = ds.sizes[FRAME]
    flags = np.zeros(n, dtype=np.uint8)

    def over(key, limit):
        vals = header_values(ds, key)
        return np.array([v is not None and float(v) > limit for v in vals], dtype=bool)

    if p.overexp:
        flags |= np.where([bool(v) for v in header_values(ds, "OVEREXP")], REJECT["OVEREXP"], 0).astype(np.uint8)
    if p.tt_rms_thres is not None:
        bad = over("Z2VAR", p.tt_rms_thres) | over("Z3VAR", p.tt_rms_thres)
        flags |= np.where(bad, REJECT["tip_tilt_rms"], 0).astype(np.uint8)
    if p.tt_bias_thres is not None:
        bad = over("Z2RES", p.tt_bias_thres) | over("Z3RES", p.tt_bias_thres)
        flags |= np.where(bad, REJECT["tip_tilt_bias"], 0).astype(np.uint8)
    for key, (lo, hi) in p.header_range.items():
        vals = header_values(ds, key)
        bad = [v is None or (lo is not None and float(v) < lo) or (hi is not None and float(v) > hi) for v in vals]
        flags |= np.where(bad, REJECT["header_range"], 0).astype(np.uint8)
    rejected = ds["rejected"] | xr.DataArray(flags, dims=FRAME)
    if p.bpix_frac < 1:
        allowed = roman_excam.from_corgi_bits(p.allowed_bpix)
        frac = ((ds["dq"] & np.uint32(~allowed & 0xFFFFFFFF)) != 0).mean((Y, X))
        rejected = rejected | xr.where(frac > p.bpix_frac, np.uint8(REJECT["bad_pixel_fraction"]), np.uint8(0))
    out = ds.assign(rejected=rejected.astype(np.uint8))
    return record(out, "excam_frame_select", "COMPLETE", p)
