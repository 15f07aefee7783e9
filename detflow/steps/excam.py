"""Roman Coronagraph EXCAM (EMCCD) steps: L1 counts -> L2a (DN) -> L2b (detected electrons).

Dataset in: :func:`detflow.io.excam_l1.open_excam_l1` (``data`` (frame, read, y, x) uint16, full frame,
``em_gain``/``exptime`` frame coordinates). Between steps, one chunk holds a few whole frames: ``data``
and ``err`` (frame, y, x) float64, ``dq`` (frame, y, x) uint32 (our DQ schema), ``bias`` (frame, y)
and ``rejected`` (frame,) uint8 (why a frame is left out of the data-set products, :data:`REJECT`).
``refs`` is :func:`detflow.io.excam_cal.open_excam_references`; a step whose calibration is not given
records SKIPPED.

The numerics are corgidrp's (5.1.1) step by step, with the corrections named where they occur; the
L2a/L2b products (:func:`l2a_product`, :func:`l2b_product`) are float32 on the image area.
"""

from __future__ import annotations

from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr
from astropy.io import fits
from pydantic import Field

from ..errors import DetflowInputError
from ..instruments import roman_excam
from ..kernels import emccd
from ..schema import DQ, FRAME, X, Y, dq_attrs
from .registry import StepParams, record, register

FAMILY = "roman_excam"
L2A_RECIPE = ["excam_bias", "excam_cosmics", "excam_nonlin"]
L2B_RECIPE = ["excam_frame_select", "excam_electrons", "excam_dark", "excam_desmear", "excam_flat", "excam_badpix"]

# reasons a frame is left out of the combines (bits of ``rejected``)
REJECT = {"oversaturated": 1, "bad_pixel_fraction": 2, "OVEREXP": 4, "tip_tilt_rms": 8, "tip_tilt_bias": 16,
          "header_range": 32}  # fmt: skip


def _geom(ds: xr.Dataset) -> roman_excam.ExcamGeometry:
    return roman_excam.GEOMETRIES[ds.attrs["geometry"]]


def _map_frames(ds: xr.Dataset, func, template: xr.Dataset, **kwargs) -> xr.Dataset:
    """``func(block, **kwargs) -> Dataset`` on each chunk of whole frames (numpy inside). The attrs
    (every input's headers) stay out of the tasks and are put back on the result."""
    bare, tmpl = ds.copy(), template.copy()
    bare.attrs, tmpl.attrs = {}, {}
    out = xr.map_blocks(func, bare, kwargs=kwargs, template=tmpl)
    frame_coords = {k: v for k, v in ds.coords.items() if v.dims == (FRAME,)}
    out = out.assign_coords(frame_coords)  # numpy metadata, not lazy copies
    out.attrs = dict(ds.attrs)
    return out


# ---- L1 -> L2a ------------------------------------------------------------------------------------
class BiasParams(StepParams):
    bias_offset: float = Field(0.0, description="subtracted from the prescan median (II&T bias_offset, DN)")
    bias_offset_err: float = Field(0.0, ge=0, description="its error, added in quadrature to the row error (DN)")
    outlier_nsigma: float | None = Field(5.0, gt=0, description="rows whose prescan median is this many std "
                                         "from the median of all rows take that median (corgidrp num_stds); "
                                         "null: off (II&T)")  # fmt: skip
    region: Literal["image", "full"] = Field("image", description="'image': crop to the image area now (corgidrp "
                                             "default); 'full': keep the full frame through the cosmic-ray step "
                                             "so tails run on into the next row")  # fmt: skip


def _bias_block(block: xr.Dataset, cols, rows, xs, offset, offset_err, nsigma) -> xr.Dataset:
    raw = block["data"].values[:, 0]  # (f, rows, cols) uint16
    bias, err = emccd.row_bias(raw[:, rows], cols, offset, nsigma)
    read_noise = np.median(err, axis=1) * np.sqrt(cols[1] - cols[0])  # the prescan's rms: read noise (DN)
    data = raw[:, rows, xs].astype(np.float64) - bias[:, :, None]
    err = np.sqrt(err**2 + offset_err**2)
    dims = (FRAME, Y, X)
    return xr.Dataset({
        "data": (dims, data),
        "err": (dims, np.broadcast_to(err[:, :, None], data.shape).copy()),
        "dq": (dims, np.zeros(data.shape, dtype=np.uint32)),
        "bias": ((FRAME, Y), bias),
        "rejected": ((FRAME,), np.zeros(data.shape[0], dtype=np.uint8)),
        "read_noise": ((FRAME,), read_noise),
    }, coords={Y: block[Y].values[rows], X: block[X].values[xs]})  # fmt: skip


@register("excam_bias", BiasParams, FAMILY)
def excam_bias(ds: xr.Dataset, refs: xr.Dataset | None, p: BiasParams) -> xr.Dataset:
    """Row-by-row bias: median of the reliable prescan columns per row minus ``bias_offset``."""
    geom = _geom(ds)
    rows, xs = geom.image.slices if p.region == "image" else (slice(None), slice(None))
    ny = len(range(*rows.indices(geom.frame_rows)))
    nx = len(range(*xs.indices(geom.frame_cols)))
    fchunks = ds["data"].chunks[0] if ds["data"].chunks else (ds.sizes[FRAME],)
    f64 = da.zeros((ds.sizes[FRAME], ny, nx), chunks=(fchunks, ny, nx))
    template = xr.Dataset({
        "data": ((FRAME, Y, X), f64), "err": ((FRAME, Y, X), f64),
        "dq": ((FRAME, Y, X), f64.astype(np.uint32)),
        "bias": ((FRAME, Y), da.zeros((ds.sizes[FRAME], ny), chunks=(fchunks, ny))),
        "rejected": ((FRAME,), da.zeros(ds.sizes[FRAME], chunks=(fchunks,), dtype=np.uint8)),
        "read_noise": ((FRAME,), da.zeros(ds.sizes[FRAME], chunks=(fchunks,))),
    }, coords={Y: ds[Y].values[rows], X: ds[X].values[xs]})  # fmt: skip
    out = _map_frames(ds, _bias_block, template, cols=geom.reliable_cols, rows=rows, xs=xs, offset=p.bias_offset,
                      offset_err=p.bias_offset_err, nsigma=p.outlier_nsigma)  # fmt: skip
    out.attrs = dict(ds.attrs, region=p.region, bias_offset=p.bias_offset)
    out["data"].attrs["units"] = out["err"].attrs["units"] = out["bias"].attrs["units"] = "DN"
    return record(out, "excam_bias", "COMPLETE", p)


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
    from scipy import ndimage

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


class NonlinParams(StepParams):
    threshold: float | None = Field(None, description="flag NONLINEAR where the bias-subtracted DN exceed this "
                                    "(before the correction; corgidrp threshold)")  # fmt: skip


def _nonlin_block(block: xr.Dataset, table: np.ndarray, threshold) -> xr.Dataset:
    out = block.copy(deep=True)
    gains, counts, rel = table[0, 1:], table[1:, 0], table[1:, 1:]
    data, dq = out["data"].values, out["dq"].values
    for i, g in enumerate(np.asarray(block["em_gain"].values, dtype=np.float64)):
        if threshold is not None:
            dq[i] |= np.where(data[i] > threshold, np.uint32(DQ.NONLINEAR), np.uint32(0))
        curve = emccd.relgain_curve(gains, counts, rel, g)
        data[i] *= emccd.relative_gain(data[i], counts, curve)
        if "read_noise" in out:  # noise about zero signal is scaled by the relative gain there
            out["read_noise"].values[i] *= float(emccd.relative_gain(np.array(0.0), counts, curve))
    return out


@register("excam_nonlin", NonlinParams, FAMILY)
def excam_nonlin(ds: xr.Dataset, refs: xr.Dataset | None, p: NonlinParams) -> xr.Dataset:
    """Nonlinearity: multiply by the relative gain at each pixel's DN and the frame's EM gain."""
    if refs is None or "nonlin_table" not in refs:
        return record(ds, "excam_nonlin", "SKIPPED", p, "no non_linearity_filepath")
    out = _map_frames(ds, _nonlin_block, ds, table=np.asarray(refs["nonlin_table"].values), threshold=p.threshold)
    return record(out, "excam_nonlin", "COMPLETE", p)


def to_image_area(ds: xr.Dataset) -> xr.Dataset:
    """The image area of a full-frame working dataset, with image coordinates (0..n-1)."""
    geom = _geom(ds)
    img = geom.image
    if ds.attrs.get("region") == "full":
        ds = ds.isel({Y: geom.image.slices[0], X: geom.image.slices[1]})
    out = ds.assign_coords({Y: np.arange(img.rows), X: np.arange(img.cols)})
    out.attrs = dict(ds.attrs, region="image", image_row0=img.row0, image_col0=img.col0)
    return out


# ---- L2a -> L2b -----------------------------------------------------------------------------------
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


# the FITS keywords the steps read from each frame's headers (iwa_circles, excam_frame_select; plus the
# keys of its header_range): the fused chain hands its tasks these cards only (header_cards)
HEADER_KEYS = (
    "LSAMNAME",
    "CFAMNAME",
    "DPAMNAME",
    "EACQ_ROW",
    "EACQ_COL",
    "OVEREXP",
    "Z2VAR",
    "Z3VAR",
    "Z2RES",
    "Z3RES",
)


def header_keys(params: dict) -> set[str]:
    """:data:`HEADER_KEYS` and the keywords of the job's ``excam_frame_select.header_range``."""
    return set(HEADER_KEYS) | set(params.get("excam_frame_select", {}).get("header_range", {}))


def header_cards(inputs: list[dict], keys: set[str]) -> list[dict]:
    """``inputs`` (the L1 reader's records) with each header reduced to the cards of ``keys`` (and any
    HIERARCH card): what the steps read, at a few hundred bytes per frame instead of ~17 kB."""
    keep = {k.upper() for k in keys}
    out = []
    for item in inputs:
        texts = []
        for text in item.get("fits_headers", []):
            kept, last = [], False
            for c in (text[i : i + 80] for i in range(0, len(text), 80)):
                # a long string value goes on in CONTINUE cards: keep those of a kept card
                last = (last and c.startswith("CONTINUE")) or c[:8].rstrip() in keep or c.startswith("HIERARCH")
                if last:
                    kept.append(c)
            texts.append("".join(kept))
        out.append(dict(item, fits_headers=texts))
    return out


def header_values(ds: xr.Dataset, key: str) -> list:
    """The value of FITS keyword ``key`` in each frame's headers (extension first), None if absent."""
    values = []
    for item in ds.attrs.get("inputs", []):
        value = None
        for text in reversed(item.get("fits_headers", [])):  # the image HDU last in the file: search it first
            h = fits.Header.fromstring(text)
            if key in h:
                value = h[key]
                break
        values.append(value)
    return values


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


class ElectronsParams(StepParams):
    eperdn: float = Field(9.55, gt=0, description="k gain (e-/DN)")
    shot_noise: bool = Field(True, description="add the read noise (measured in each frame's prescan) and the "
                             "ENF-amplified Poisson noise of the detected electrons to err")  # fmt: skip
    n_stages: int = Field(roman_excam.N_EM_STAGES, ge=1, description="gain-register cells (excess-noise factor)")


def _per_frame(a, nf: int) -> np.ndarray:
    """A per-frame value as apply_ufunc hands it over ((f,), (f, 1, 1) or a scalar) as (nf,) float64."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    return np.broadcast_to(a, (nf,)) if a.size == 1 else a


def _image(a) -> np.ndarray:
    """A (y, x) map as apply_ufunc hands it over (with leading axes of length 1 or none)."""
    a = np.asarray(a)
    return a.reshape(a.shape[-2:])


def _pixelwise(func, *args, nout: int, dtypes, **kwargs):
    """``func`` on (frame, y, x) DataArrays, per-frame DataArrays and (y, x) maps, lazily or in memory."""
    return xr.apply_ufunc(func, *args, kwargs=kwargs, dask="parallelized", output_dtypes=list(dtypes),
                          output_core_dims=[()] * nout)  # fmt: skip


def _electrons_np(data, err, scale, rn2, f2, shot):
    nf = data.shape[0]
    out_d, out_e = np.empty(data.shape), np.empty(data.shape)
    emccd.electrons_frames(
        data, err, _per_frame(scale, nf), _per_frame(rn2, nf), _per_frame(f2, nf), shot, out_d, out_e
    )
    return out_d, out_e


@register("excam_electrons", ElectronsParams, FAMILY)
def excam_electrons(ds: xr.Dataset, refs: xr.Dataset | None, p: ElectronsParams) -> xr.Dataset:
    """DN to detected electrons: times the k gain, over the EM gain; error with the excess-noise factor."""
    g = ds["em_gain"].astype(np.float64)
    scale = p.eperdn / g
    rn2 = (ds["read_noise"] * scale) ** 2 if p.shot_noise else xr.zeros_like(scale)
    f2 = xr.DataArray(emccd.enf(g.values, p.n_stages) ** 2, dims=FRAME)
    data, err = _pixelwise(_electrons_np, ds["data"].astype(np.float64, copy=False), ds["err"].astype(np.float64, copy=False), scale, rn2,
                           f2, nout=2, dtypes=(np.float64, np.float64), shot=p.shot_noise)  # fmt: skip
    out = ds.assign(data=data.transpose(*ds["data"].dims), err=err.transpose(*ds["err"].dims))
    out["data"].attrs["units"] = out["err"].attrs["units"] = "electron"
    out.attrs["eperdn"] = p.eperdn
    return record(out, "excam_electrons", "COMPLETE", p)


class DarkParams(StepParams):
    source: Literal["auto", "master", "synthesized"] = Field("auto", description="master dark file, or F/g + t D + C "
                                                             "from the noise maps; auto: the master dark if given")  # fmt: skip


def _synth_dark_np(data, fpn, dc, cic, g, t):
    out = np.empty(data.shape)
    nf = data.shape[0]
    emccd.subtract_synthesized_dark(data, _image(fpn), _image(dc), _image(cic), _per_frame(g, nf), _per_frame(t, nf),
                                    out)  # fmt: skip
    return out


def _master_dark_np(data, err, dark, dark_err, with_err):
    out_d, out_e = np.empty(data.shape), np.empty(data.shape)
    emccd.subtract_master_dark(data, np.broadcast_to(err, data.shape), _image(dark), _image(dark_err), with_err,
                               out_d, out_e)  # fmt: skip
    return out_d, out_e


@register("excam_dark", DarkParams, FAMILY)
def excam_dark(ds: xr.Dataset, refs: xr.Dataset | None, p: DarkParams) -> xr.Dataset:
    """Dark subtraction: a master dark, or the synthesized dark F/g + t D + C from the noise maps."""
    refs = refs if refs is not None else xr.Dataset()
    have_maps = all(k in refs for k in ("fpn", "dark_current", "cic"))
    use = p.source
    if use == "auto":
        use = "master" if "master_dark" in refs else "synthesized" if have_maps else None
    if use is None or (use == "master" and "master_dark" not in refs) or (use == "synthesized" and not have_maps):
        return record(ds, "excam_dark", "SKIPPED", p, "no master dark and no complete set of noise maps")
    data = ds["data"].astype(np.float64, copy=False)
    if use == "master":
        dark_err = refs.get("master_dark_err")
        with_err = dark_err is not None
        # err as it is: a float32 err is squared in float32, as the NumPy expression err**2 + dark_err**2 was
        new_data, new_err = _pixelwise(_master_dark_np, data, ds["err"], refs["master_dark"],
                                       dark_err if with_err else xr.zeros_like(refs["master_dark"]), nout=2,
                                       dtypes=(np.float64, np.float64), with_err=with_err)  # fmt: skip
        out = ds.assign(data=new_data, err=new_err) if with_err else ds.assign(data=new_data)
    else:
        g, t = ds["em_gain"].astype(np.float64), ds["exptime"].astype(np.float64)
        out = ds.assign(data=_pixelwise(_synth_dark_np, data, refs["fpn"], refs["dark_current"], refs["cic"], g, t,
                                        nout=1, dtypes=(np.float64,)))  # fmt: skip
    out = out.transpose(FRAME, Y, X, ...)
    out["data"].attrs["units"] = out["err"].attrs["units"] = "electron"
    return record(out, "excam_dark", "COMPLETE", p, f"{use} dark")


class DesmearParams(StepParams):
    apply: bool = Field(True, description="desmear (EXCAM has no shutter: the scene smears during the readout)")
    row_time: float = Field(roman_excam.ROW_READ_TIME, gt=0, description="parallel transfer time per row (s)")


def _desmear_block(block: xr.Dataset, row_time: float) -> xr.Dataset:
    dq = block["dq"].values
    data = np.empty(block["data"].shape, dtype=block["data"].dtype)
    for i, t in enumerate(np.asarray(block["exptime"].values, dtype=np.float64)):
        data[i] = emccd.desmear_masked(block["data"].values[i], (dq[i] & np.uint32(DQ.JUMP_DET)) != 0, row_time, t)
    out = block.copy()  # the other variables are not changed: not copied
    out["data"] = block["data"].copy(data=data)
    return out


@register("excam_desmear", DesmearParams, FAMILY)
def excam_desmear(ds: xr.Dataset, refs: xr.Dataset | None, p: DesmearParams) -> xr.Dataset:
    """Remove the readout smear (cosmic-ray pixels filled from their nearest neighbours for the smear)."""
    if not p.apply:
        return record(ds, "excam_desmear", "SKIPPED", p, "desmear off")
    if not (ds["exptime"].values > 0).all():
        return record(ds, "excam_desmear", "SKIPPED", p, "EXPTIME 0: no smear model")
    out = _map_frames(ds, _desmear_block, ds, row_time=p.row_time)
    return record(out, "excam_desmear", "COMPLETE", p)


class FlatParams(StepParams):
    pass


def _flat_np(data, err, dq, flat, flat_err, with_err):
    out = np.empty(data.shape), np.empty(data.shape), np.empty(data.shape, dtype=np.uint32)
    emccd.divide_flat(data, np.broadcast_to(err, data.shape), np.broadcast_to(dq, data.shape), _image(flat),
                      _image(flat_err), with_err, np.uint32(DQ.NO_FLAT_FIELD), *out)  # fmt: skip
    return out


@register("excam_flat", FlatParams, FAMILY)
def excam_flat(ds: xr.Dataset, refs: xr.Dataset | None, p: FlatParams) -> xr.Dataset:
    """Flat division; NaN and NO_FLAT_FIELD where the flat is 0."""
    if refs is None or "flat" not in refs:
        return record(ds, "excam_flat", "SKIPPED", p, "no flatfield_filepath")
    with_err = "flat_err" in refs
    data, err, dq = _pixelwise(_flat_np, ds["data"].astype(np.float64, copy=False),
                               ds["err"].astype(np.float64, copy=False), ds["dq"].astype(np.uint32, copy=False),
                               refs["flat"],
                               refs["flat_err"] if with_err else xr.zeros_like(refs["flat"]), nout=3,
                               dtypes=(np.float64, np.float64, np.uint32), with_err=with_err)  # fmt: skip
    out = ds.assign(data=data, err=err, dq=dq).transpose(FRAME, Y, X, ...)
    out["data"].attrs["units"] = out["err"].attrs["units"] = "electron"
    return record(out, "excam_flat", "COMPLETE", p)


class BadpixParams(StepParams):
    nan_flagged: bool = Field(True, description="set every flagged pixel to NaN (corgidrp correct_bad_pixels)")


def _badpix_np(data, dq, badpix, with_map, nan_flagged):
    out = np.empty(data.shape), np.empty(data.shape, dtype=np.uint32)
    emccd.flag_bad_pixels(data, np.broadcast_to(dq, data.shape), _image(badpix), with_map, np.uint32(DQ.DO_NOT_USE),
                          nan_flagged, *out)  # fmt: skip
    return out


@register("excam_badpix", BadpixParams, FAMILY)
def excam_badpix(ds: xr.Dataset, refs: xr.Dataset | None, p: BadpixParams) -> xr.Dataset:
    """Bad-pixel map OR'ed into DQ (DO_NOT_USE); flagged pixels set to NaN."""
    with_map = refs is not None and "badpix" in refs
    badpix = refs["badpix"] if with_map else xr.zeros_like(ds["dq"].isel({FRAME: 0}, drop=True), dtype=np.uint8)
    data, dq = _pixelwise(_badpix_np, ds["data"].astype(np.float64, copy=False), ds["dq"].astype(np.uint32, copy=False),
                          badpix, nout=2,
                          dtypes=(np.float64, np.uint32), with_map=with_map, nan_flagged=p.nan_flagged)  # fmt: skip
    out = ds.assign(dq=dq.transpose(FRAME, Y, X))
    if p.nan_flagged:
        out["data"] = data.transpose(FRAME, Y, X)
        out["data"].attrs = ds["data"].attrs
    note = "" if refs is not None and "badpix" in refs else "no badpix_filepath: flagged pixels only"
    return record(out, "excam_badpix", "COMPLETE", p, note)


# ---- products -------------------------------------------------------------------------------------
def _product(ds: xr.Dataset, level: str, with_bias: bool) -> xr.Dataset:
    keep = ["data", "err", "dq", "rejected"] + (["bias", "read_noise"] if with_bias else [])
    out = ds[keep].copy()
    for name in ("data", "err", "bias", "read_noise"):
        if name in out:
            out[name] = out[name].astype(np.float32)
    out["dq"] = out["dq"].astype(np.uint32)
    out["dq"].attrs = dq_attrs()
    unit = "DN" if level == "L2a" else "electron"
    out["data"].attrs = {"units": unit, "long_name": f"EXCAM {level} image"}
    out["err"].attrs = {"units": unit, "long_name": "1-sigma error"}
    if with_bias:
        out["bias"].attrs = {"units": "DN", "long_name": "row bias subtracted (prescan median - bias_offset)"}
        out["read_noise"].attrs = {
            "units": "DN",
            "long_name": "read noise: rms of the reliable prescan (median over rows)",
        }
    out["rejected"].attrs = {"long_name": "why the frame is left out of the data-set products (0: kept)",
                             "flag_masks": list(REJECT.values()), "flag_meanings": " ".join(REJECT)}  # fmt: skip
    out.attrs = {k: v for k, v in ds.attrs.items() if k not in ("region",)}
    out.attrs["data_level"] = level
    return out


def prescan_product(ds: xr.Dataset) -> xr.Dataset:
    """The prescan region of a full-frame L2a working dataset (``region: full``: bias subtracted, cosmic
    rays flagged, nonlinearity corrected; DN): ``data``, ``dq``, ``rejected``, for the noise maps' bias
    offset (corgidrp fits its dark model over the full frame and reads the offset in the prescan)."""
    if ds.attrs.get("region") != "full":
        raise ValueError("the prescan needs the full-frame working dataset (excam_bias region: full)")
    rows, cols = _geom(ds).prescan.slices
    out = ds[["data", "dq", "rejected"]].isel({Y: rows, X: cols})
    out.attrs = {"geometry": ds.attrs["geometry"], "data_level": "L2a prescan"}
    return out


def prescan_sums(pre: xr.Dataset) -> xr.Dataset:
    """Per prescan pixel of :func:`prescan_product`, the sum of ``data`` over the good frames (dq 0, not
    rejected) and their count ``n``: a sub-stack's masked mean frame there (lazy)."""
    good = (pre["dq"] == 0) & (pre["rejected"] == 0)
    return xr.Dataset({"sum": pre["data"].astype(np.float64).where(good, 0.0).sum(FRAME), "n": good.sum(FRAME)})


def l2a_product(ds: xr.Dataset) -> xr.Dataset:
    """The L2a group: data, err (DN), dq, per-row bias, rejected; float32 on the image area."""
    return _product(ds, "L2a", True)


def l2b_product(ds: xr.Dataset) -> xr.Dataset:
    """The L2b group: data, err (electrons), dq, rejected."""
    return _product(ds, "L2b", False)


# ---- data-set combines ----------------------------------------------------------------------------
def _frame_flags(ds: xr.Dataset) -> xr.DataArray:
    """(frame,) uint32: DO_NOT_USE for the frames marked ``rejected``, else 0."""
    if "rejected" not in ds:
        return xr.zeros_like(ds[FRAME], dtype=np.uint32)
    return xr.where(ds["rejected"] != 0, np.uint32(DQ.DO_NOT_USE), np.uint32(0)).astype(np.uint32)


def _per_pixel(func, stacks: list[xr.DataArray], frame_flags: xr.DataArray, nq: int, **kwargs) -> xr.DataArray:
    """``func(*stack_blocks, frame_flags, **kwargs) -> (nq, ty, tx)`` over pixel tiles of (frame, y, x)
    stacks whose frame axis is one chunk, as ``(q, y, x)`` float64.

    ``map_blocks`` on the (frame, y, x) blocks as they are stored, so the kernels read each row of every
    frame contiguously; ``apply_ufunc`` with a core dim would move ``frame`` last, a transposing copy of
    every block."""
    arrs = [s.transpose(FRAME, Y, X).data for s in stacks]
    flags = frame_flags.data
    ref = stacks[0]
    coords = {k: ref.coords[k] for k in (Y, X) if k in ref.coords}
    if not all(isinstance(a, da.Array) for a in arrs):
        out = func(*(np.asarray(a) for a in arrs), np.asarray(flags, np.uint32), **kwargs)
        return xr.DataArray(out, dims=("q", Y, X), coords=coords)
    arrs = da.unify_chunks(*[x for a in arrs for x in (a.rechunk({0: -1}), "fyx")])[1]
    flags = da.asarray(flags).rechunk(-1).astype(np.uint32)[:, None, None]
    chunks = ((nq,),) + arrs[0].chunks[1:]
    out = da.map_blocks(func, *arrs, flags, dtype=np.float64, chunks=chunks, meta=np.empty((0, 0, 0)), **kwargs)
    return xr.DataArray(out, dims=("q", Y, X), coords=coords)


def _combine_block(data, err, dq, flags, bad_bits):
    """(frame, ty, tx) blocks in, (6, ty, tx) out: mean, median, their errors, ngood, dq."""
    ny, nx = data.shape[1:]
    out = np.empty((6, ny, nx))
    ngood = np.empty((ny, nx), dtype=np.int64)
    dq_out = np.empty((ny, nx), dtype=np.uint32)
    emccd.combine_stack_flagged(data, err, dq.astype(np.uint32, copy=False), flags.reshape(-1), np.uint32(bad_bits),
                                out[0], out[1], out[2], out[3], ngood, dq_out)  # fmt: skip
    out[4] = ngood
    out[5] = dq_out
    return out


def combine(ds: xr.Dataset, bad_bits: int = 0xFFFFFFFF) -> tuple[xr.Dataset, xr.Dataset]:
    """Mean and median combines of a (frame, y, x) product whose chunks hold the whole frame axis.

    Pixels whose DQ has any of ``bad_bits`` (default: any flag, as corgidrp) and frames marked
    ``rejected`` are left out. Each product: ``data``, ``err`` (mean: rms(err)/sqrt(n); median: times
    sqrt(pi/2)), ``dq`` (the OR of every frame's flags where no frame is good, else 0) and ``ngood``.
    """
    stack = _per_pixel(_combine_block, [ds["data"], ds["err"], ds["dq"]], _frame_flags(ds), 6, bad_bits=bad_bits)
    unit = ds["data"].attrs.get("units", "")
    out = []
    for k, name in ((0, "mean"), (1, "median")):
        c = xr.Dataset({
            "data": stack.isel(q=k).astype(np.float32),
            "err": stack.isel(q=k + 2).astype(np.float32),
            "dq": stack.isel(q=5).astype(np.uint32),
            "ngood": stack.isel(q=4).astype(np.int32),
        })  # fmt: skip
        c["data"].attrs = {"units": unit, "long_name": f"{name} combine over good frames"}
        c["err"].attrs = {"units": unit}
        c["dq"].attrs = dq_attrs()
        c["ngood"].attrs = {"long_name": "number of good frames per pixel"}
        c.attrs = {"combine": name, "frames": int(ds.sizes[FRAME]), "bad_bits": int(bad_bits)}
        out.append(c)
    return out[0], out[1]


# ---- photon counting ------------------------------------------------------------------------------
def _pc_block(data, err, dq, flags, thresh, em_gain, niter, bad_bits, eperdn):
    from ..kernels.photon_count import photon_count_mean

    dq = dq.astype(np.uint32) | flags.astype(np.uint32)
    mean, e, ngood, q = photon_count_mean(data * eperdn, err * eperdn, dq, thresh, em_gain, bad_bits=bad_bits,
                                          niter=niter)  # fmt: skip
    return np.stack([mean, e, ngood.astype(np.float64), q.astype(np.float64)])


def photon_count(ds: xr.Dataset, eperdn: float, read_noise: float, t_factor: float = 5.0, niter: int = 2,
                 bad_bits: int = 0xFFFFFFFF) -> xr.Dataset:  # fmt: skip
    """Photon-counted mean of an L2a stack (DN; chunks holding the whole frame axis): electrons at the
    gain register's output (``DN * eperdn``) thresholded at ``t_factor * read_noise``, the counted
    fraction corrected for the threshold and coincidence losses (corgidrp ``get_pc_mean``), in
    electrons per frame per pixel before the gain register. Rejected frames and flagged pixels are
    left out; ``dq`` is the OR of the flags where no frame is good (256: a negative rate)."""
    from ..kernels.photon_count import pc_threshold

    gains = np.unique(ds["em_gain"].values)
    if gains.size != 1:
        raise ValueError(f"photon counting needs one EM gain per stack, got {gains.tolist()}")
    g = float(gains[0])
    thresh = pc_threshold(read_noise, t_factor, g)
    stack = _per_pixel(_pc_block, [ds["data"], ds["err"], ds["dq"]], _frame_flags(ds), 4, thresh=thresh, em_gain=g,
                       niter=niter, bad_bits=bad_bits, eperdn=float(eperdn))  # fmt: skip
    out = xr.Dataset({
        "data": stack.isel(q=0).astype(np.float32), "err": stack.isel(q=1).astype(np.float32),
        "ngood": stack.isel(q=2).astype(np.int32), "dq": stack.isel(q=3).astype(np.uint32)})  # fmt: skip
    out["data"].attrs = {"units": "electron", "long_name": "photon-counted mean electrons per frame"}
    out["err"].attrs = {"units": "electron"}
    out["dq"].attrs = dq_attrs()
    out.attrs = {"em_gain": g, "threshold_e": thresh, "t_factor": t_factor, "read_noise_e": read_noise,
                 "niter": niter, "frames": int(ds.sizes[FRAME])}  # fmt: skip
    return out


# ---- noise maps from darks --------------------------------------------------------------------------
def _nm_tile(means, ngood, dq, gains, times, n_total, variance):
    from ..calib import emccd_noise_maps as nm

    means, ngood, dq = (np.ascontiguousarray(np.moveaxis(a, -1, 0)) for a in (means, ngood, dq))
    fit = nm.fit_substacks(means, ngood, gains, times, n_total, variance)
    q = nm.noise_map_dq(dq, nm.unfittable_pixels(ngood))
    return np.stack([fit.fpn, fit.cic, fit.dc, fit.fpn_var, fit.cic_var, fit.dc_var, q.astype(np.float64)], axis=-1)


def noise_maps(means: list[xr.Dataset], eperdn: float, variance: str = "corgidrp") -> xr.Dataset:
    """FPN, CIC and dark-current maps with their variances from the mean L2a dark frames of at least 4
    (EM gain, exposure time) sub-stacks (each a mean combine: ``data`` DN, ``ngood``, ``dq``): per pixel
    least squares of ``mean * k = F + g C + g t D`` weighted by the good frames (corgidrp
    ``calibrate_darks_lsq``), tile by tile."""
    from ..calib import emccd_noise_maps as nm

    gains = np.array([float(m.attrs["em_gain"]) for m in means])
    times = np.array([float(m.attrs["exptime"]) for m in means])
    nm.check_substacks(gains, times)
    one = {"substack": -1}
    stack = xr.concat([m["data"].astype(np.float64) * eperdn for m in means], dim="substack").chunk(one)
    ngood = xr.concat([m["ngood"] for m in means], dim="substack").chunk(one)
    dq = xr.concat([m["dq"] for m in means], dim="substack").chunk(one)
    n_total = int(sum(int(m.attrs.get("frames", 0)) for m in means))
    fit = xr.apply_ufunc(_nm_tile, stack, ngood, dq, input_core_dims=[["substack"]] * 3, output_core_dims=[["q"]],
                         kwargs={"gains": gains, "times": times, "n_total": n_total, "variance": variance},
                         dask="parallelized", output_dtypes=[np.float64], dask_gufunc_kwargs={"output_sizes": {"q": 7}})  # fmt: skip
    names = [("fpn", "electron"), ("cic", "electron"), ("dark_current", "electron / s")]
    out = xr.Dataset()
    for k, (name, unit) in enumerate(names):
        out[name] = fit.isel(q=k).astype(np.float32)
        out[name].attrs = {"units": unit}
        out[f"{name}_err"] = np.sqrt(fit.isel(q=k + 3)).astype(np.float32)
        out[f"{name}_err"].attrs = {"units": unit}
    out["dq"] = fit.isel(q=6).astype(np.uint32)
    out["dq"].attrs = dq_attrs()
    out.attrs = {"em_gains": gains.tolist(), "exptimes": times.tolist(), "eperdn": eperdn, "frames": n_total,
                 "model": "mean * eperdn = F + g C + g t D (per pixel, weighted by good frames)", "variance": variance}  # fmt: skip
    return out
