"""L1 -> L2a: saturation and cosmic rays (``excam_cosmics``): corgidrp's plateau search with its serial
tails, its median-filter modes (:func:`histogram_threshold`, :func:`median_filter_cosmics`), the
coronagraph inner working angle left out of the search (:func:`iwa_circles`); frames mostly saturated are
marked rejected."""

from __future__ import annotations

from typing import Literal

import numpy as np
import xarray as xr
from pydantic import Field
from scipy import ndimage

from ...errors import DetflowInputError
from ...instruments import roman_excam
from ...kernels import emccd
from ...schema import DQ, FRAME
from ..registry import StepParams, record, register
from .common import FAMILY, REJECT, _geom, _map_frames
from .headers import header_values


class CosmicsParams(StepParams):
    fwc_em_e: float = Field(100000.0, gt=0, description="gain-register full well (e-)")
    fwc_pp_e: float = Field(66850.0, gt=0, description="pixel (image area) full well (e-)")
    eperdn: float = Field(9.55, gt=0, description="k gain (e-/DN)")
    sat_thresh: float = Field(0.7, gt=0, le=1, description="saturation at sat_thresh x the full well that fills first")
    plat_thresh: float = Field(0.7, gt=0, le=1, description="plateau edge at plat_thresh x that full well")
    cosm_filter: int = Field(1, ge=1, description="shortest plateau (median filter of cosm_filter + 1)")
    cosm_box: int = Field(3, ge=0, description="mask a (2 cosm_box + 1)^2 box around each head")
    cosm_tail: int | Literal["auto"] = Field(10, description="pixels masked after the plateau; 'auto': EM gain x "
                                             "cosm_tail_auto_factor")  # fmt: skip
    cosm_tail_auto_factor: float = Field(0.04, gt=0, description="tail length per unit EM gain with cosm_tail: auto")
    cosm_thresh: float | None = Field(None, gt=0, le=1, description="cosmic-ray head threshold x full well "
                                      "(corgidrp); null: sat_thresh (II&T)")  # fmt: skip
    median_filter_mode: Literal[0, 1, 2] = Field(0, description="0: the plateau search (II&T; corgidrp's default); "
                                                 "1: pixels above a threshold taken from the histogram of frame - "
                                                 "median-filtered frame, a tail after each flagged streak; 2: 1, "
                                                 "then the plateau search (no tails) on the pixels 1 left (corgidrp)")  # fmt: skip
    median_filter_size: tuple[int, int] = Field((10, 10), description="median filter box (rows, cols), modes 1 and 2")
    median_filter_histogram_nbins: int = Field(21, ge=3, description="histogram bins of the difference, modes 1 and 2")
    median_filter_compare: Literal["difference", "frame"] = Field(
        "difference", description="modes 1 and 2: flag where frame - median-filtered frame exceeds the threshold "
                                  "(the threshold is a value of that difference); 'frame': where the frame itself "
                                  "does, as corgidrp 5.1.1 does, which also flags any bright source")  # fmt: skip
    skip_coronagraph_iwa: bool = Field(True, description="leave the coronagraph inner working angle out of the "
                                       "cosmic-ray search when a Lyot stop is in (LSAMNAME not OPEN) and CFAMNAME "
                                       "is not DARK (corgidrp)")  # fmt: skip
    coronagraph_iwa_radius: float | None = Field(None, ge=0, description="IWA radius (lambda/D); null: 3 for NFOV, "
                                                 "5.9 for WFOV, 0 otherwise")  # fmt: skip
    platescale: float = Field(roman_excam.PLATESCALE_ARCSEC, gt=0, description="arcsec per pixel (IWA)")
    pol_beams_sep_diam: float = Field(7.5, ge=0, description="separation of the two polarimetry beams (arcsec)")
    pol_beams_alignment_angle_wp1: float = Field(0.0, description="POL0 beam axis angle to the x axis (deg)")
    pol_beams_alignment_angle_wp2: float = Field(45.0, description="POL45 beam axis angle to the x axis (deg)")
    pct_oversat_lim: float = Field(20.0, ge=0, le=100, description="frames with more than this percentage of "
                                   "pixels above saturation are marked rejected (oversaturated)")  # fmt: skip
    no_tail_at_unity_gain: bool = Field(True, description="no tails at EM gain 1 (none form without the gain "
                                        "register; corgidrp)")  # fmt: skip
    full_frame_tail: Literal["corgidrp", "full_length"] = Field(
        "corgidrp", description="region full: a tail that runs past the row's end goes on in the next row; "
                                "'corgidrp': as corgidrp 5.1.1 and II&T, restarted at the row's last pixel (one "
                                "pixel short), 'full_length': as long as a tail inside one row")  # fmt: skip


def histogram_threshold(diff: np.ndarray, nbins: int) -> float:
    """corgidrp's cosmic-ray threshold for the median-filter modes: the first local minimum of the histogram
    of ``diff`` (frame - median-filtered frame, ``nbins`` bins) above its highest local maximum (the
    background), skipping minima next to negative bins; inf when there is none (nothing flagged)."""
    counts, edges = np.histogram(diff[np.isfinite(diff)], bins=int(nbins))
    centers = 0.5 * (edges[:-1] + edges[1:])
    inner = counts[1:-1]
    is_min = (inner <= counts[:-2]) & (inner < counts[2:])
    is_max = (inner >= counts[:-2]) & (inner > counts[2:])
    neg = np.nonzero(centers < 0)[0]  # corgidrp indexes the interior bins with whole-histogram positions
    is_min[neg[neg < is_min.size]] = False
    if is_max.any():
        peak = np.nonzero(inner == inner[is_max].max())[0][0]
        is_min[: peak + 1] = False
    found = centers[1:-1][is_min]
    return float(found[0]) if found.size else float("inf")


def median_filter_cosmics(img: np.ndarray, area: tuple[slice, slice], size, nbins: int, tail: int, full: bool,
                          compare: str = "difference") -> tuple[np.ndarray, float]:  # fmt: skip
    """corgidrp's ``median_filter_mode`` detection on one frame: the threshold from the histogram of
    ``img[area]`` minus its median filter (``size``), pixels above it flagged (``compare``: the difference,
    or the frame itself as corgidrp does), then ``tail`` pixels after the last pixel (row-major) of each
    4-connected flagged group (``full``: running on into the next row). Returns (mask, threshold)."""
    sub = img[area]
    diff = sub - ndimage.median_filter(sub, size=tuple(size))
    thresh = histogram_threshold(diff, nbins)
    mask = np.zeros(img.shape, dtype=bool)
    if not np.isfinite(thresh):
        return mask, thresh
    if compare == "frame":
        mask[:] = img > thresh
    else:
        mask[area] = diff > thresh
    if tail > 0:
        labels, n = ndimage.label(mask)
        if n:
            flat = np.arange(img.size, dtype=np.int64).reshape(img.shape)
            last = np.asarray(ndimage.maximum(flat, labels, index=np.arange(1, n + 1)), dtype=np.int64)
            rows, cols = np.divmod(last, img.shape[1])
            cols = cols + 1
            flat_mask = mask.reshape(-1)
            for r, c in zip(rows, cols):
                if full:
                    start = r * img.shape[1] + c
                    flat_mask[start : min(start + tail, img.size)] = True
                else:
                    mask[r, c : min(c + tail, img.shape[1])] = True
    return mask, thresh


def iwa_circles(ds: xr.Dataset, p: CosmicsParams) -> list[tuple[tuple[float, float, int], ...]]:
    """Per frame, the (row, col, radius) circles of the coronagraph IWA in image-area pixels, left out of the
    cosmic-ray search: none when ``skip_coronagraph_iwa`` is off, without a Lyot stop (LSAMNAME missing or
    OPEN) or with CFAMNAME DARK. The centre is EACQ_ROW/EACQ_COL (512, 512 when unset); POL0/POL45
    (DPAMNAME) give two beams."""
    n = ds.sizes[FRAME]
    if not p.skip_coronagraph_iwa:
        return [()] * n
    keys = ("LSAMNAME", "CFAMNAME", "DPAMNAME", "EACQ_ROW", "EACQ_COL")
    values = {k: header_values(ds, k) for k in keys}
    inputs = ds.attrs.get("inputs", [])
    out = []
    for i in range(n):
        lsam, cfam, dpam, erow, ecol = (values[k][i] for k in keys)
        if lsam is None or str(lsam).strip().upper() == "OPEN" or cfam is None or str(cfam).strip().upper() == "DARK":
            out.append(())
            continue
        radius = p.coronagraph_iwa_radius
        if radius is None:
            radius = roman_excam.IWA_LAMBDA_OVER_D.get(str(lsam).strip().upper(), 0.0)
        try:
            rpix = roman_excam.iwa_radius_pix(cfam, radius, p.platescale)
        except KeyError:
            path = inputs[i].get("path") if i < len(inputs) else None
            raise DetflowInputError(path, "CFAMNAME", "a CFAM filter name (" + ", ".join(roman_excam.CFAM_CENTER_NM)
                                    + ") to size the coronagraph IWA, or skip_coronagraph_iwa: false", cfam) from None  # fmt: skip
        cy, cx = (float(erow), float(ecol)) if erow and ecol else (512.0, 512.0)
        prism = str(dpam or "").strip().upper()
        if prism in ("POL0", "POL45"):
            angle = np.deg2rad(p.pol_beams_alignment_angle_wp1 if prism == "POL0" else p.pol_beams_alignment_angle_wp2)
            dx = int(round(p.pol_beams_sep_diam * np.cos(angle) / (2 * p.platescale)))
            dy = int(round(p.pol_beams_sep_diam * np.sin(angle) / (2 * p.platescale)))
            out.append(((cy + dy, cx - dx, rpix), (cy - dy, cx + dx, rpix)))
        elif prism == "IMAGING":
            out.append(((cy, cx, rpix),))
        else:
            out.append(())
    return out


def _iwa_keep(shape, origin: tuple[int, int], circles) -> np.ndarray | None:
    """1 outside the IWA circles, 0 inside (image-area circle centres, shifted by ``origin``)."""
    if not circles:
        return None
    y, x = np.ogrid[: shape[0], : shape[1]]
    keep = np.ones(shape)
    for cy, cx, r in circles:
        keep[np.sqrt((y - origin[0] - cy) ** 2 + (x - origin[1] - cx) ** 2) < r] = 0.0
    return keep


def _cosmics_block(block: xr.Dataset, p: CosmicsParams, geom, full: bool, bias_offset: float,
                   iwa: dict | None = None) -> xr.Dataset:  # fmt: skip
    out = block.copy(deep=True)
    data, dq = out["data"].values, out["dq"].values
    rejected = out["rejected"].values
    frames = block["_frame_pos"].values  # positions in the whole data set (the keys of ``iwa``)
    area = geom.image.slices if full else (slice(None), slice(None))
    origin = (geom.image.row0, geom.image.col0) if full else (0, 0)
    for i, g in enumerate(np.asarray(block["em_gain"].values, dtype=np.float64)):
        sat = emccd.saturation_dn(g, p.fwc_em_e, p.fwc_pp_e, p.eperdn, p.sat_thresh)
        img = data[i]
        dq[i] |= np.where(img >= sat, np.uint32(DQ.SATURATED), np.uint32(0))
        if 100.0 * np.count_nonzero(img > sat) / img.size > p.pct_oversat_lim:
            rejected[i] |= REJECT["oversaturated"]
            continue  # no plateau search on a frame that is mostly saturated (corgidrp)
        tail = int(np.round(g * p.cosm_tail_auto_factor)) if p.cosm_tail == "auto" else int(p.cosm_tail)
        if g == 1 and p.no_tail_at_unity_gain:
            tail = 0
        keep = _iwa_keep(img.shape, origin, (iwa or {}).get(int(frames[i]), ()))
        search = img if keep is None else img * keep
        mask = np.zeros(img.shape, dtype=np.uint8)
        if p.median_filter_mode:
            med, _ = median_filter_cosmics(search, area, p.median_filter_size, p.median_filter_histogram_nbins, tail,
                                           full, p.median_filter_compare)  # fmt: skip
            mask |= med
        if p.median_filter_mode != 1:
            rest = search
            if p.median_filter_mode == 2:  # the plateau search on what the median filter left, no tails
                rest = np.where(mask != 0, np.nan, search)
            emccd.flag_cosmics_frame(rest, sat / p.sat_thresh, p.cosm_thresh or p.sat_thresh, p.plat_thresh,
                                     p.cosm_filter, p.cosm_box, 0 if p.median_filter_mode == 2 else tail, full,
                                     int(p.full_frame_tail == "corgidrp"), mask)  # fmt: skip
        hit = mask != 0
        dq[i] |= np.where(hit, np.uint32(DQ.JUMP_DET), np.uint32(0))
        if full:  # a tail that ran on into a row's reliable prescan must not set that row's bias
            a, b = geom.reliable_cols
            rows = np.nonzero(hit[:, a:b].any(axis=1))[0]
            if rows.size:
                bias = out["bias"].values[i]
                raw = img[rows] + bias[rows, None]
                new, err = emccd.row_bias(raw, (a, b), 0.0, None, mask=hit[rows])
                new = new - bias_offset
                keep = np.isfinite(new)
                r = rows[keep]
                img[r] += (bias[r] - new[keep])[:, None]
                bias[r] = new[keep]
                out["err"].values[i, r] = err[keep, None]
    return out


@register("excam_cosmics", CosmicsParams, FAMILY)
def excam_cosmics(ds: xr.Dataset, refs: xr.Dataset | None, p: CosmicsParams) -> xr.Dataset:
    """Saturation and cosmic-ray plateaus with their serial tails; oversaturated frames marked rejected."""
    iwa = {i: c for i, c in enumerate(iwa_circles(ds, p)) if c}
    # each block learns which frames it holds from this coordinate (the data set has no frame index)
    pos = ds.assign_coords(_frame_pos=(FRAME, np.arange(ds.sizes[FRAME])))
    out = _map_frames(pos, _cosmics_block, pos, p=p, geom=_geom(ds), full=ds.attrs.get("region") == "full",
                      bias_offset=ds.attrs.get("bias_offset", 0.0), iwa=iwa)  # fmt: skip
    return record(out.drop_vars("_frame_pos"), "excam_cosmics", "COMPLETE", p)
