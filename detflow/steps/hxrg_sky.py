"""Sky from dithers (family ``hxrg_ground``): each frame's sky from the other dithers of its run.

For frame ``j``: the peers (the other frames of its run, ``peers: run``, or every other frame, ``all``),
each levelled by its sigma-clipped mean (the offsets between the frames' sky levels removed), combined pixel
by pixel by the median or Tukey's biweight (astropy ``biweight_location``), plus frame ``j``'s own level;
pixels no peer covers are filled by the mean of the sky around them (a ``fill_box`` box). With
``mask_objects`` a second pass: the objects of each frame found on the first pass's sky-subtracted frame
(photutils ``detect_sources``, ``detect_sigma`` above the noise, ``npixels`` connected), grown by
``dilate`` pixels and left out, then the sky combined again (extended sources then do not bias it).
A frame with no peer (a run of one dither) keeps its data: no sky, recorded in ``sky_skipped``.
The combine reduces ``frame`` tile by tile; levels, masks and hole filling take one task per frame.
"""

from __future__ import annotations

import warnings
from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr
from astropy.stats import biweight_location, mad_std, sigma_clipped_stats
from photutils.segmentation import detect_sources
from pydantic import Field
from scipy.ndimage import binary_dilation, uniform_filter

from ..schema import FRAME, X, Y
from .registry import StepParams, record, register

FAMILY = "hxrg_ground"


class SkyParams(StepParams):
    peers: Literal["run", "all"] = Field("run", description="the frames a sky is made of: the other dithers of the "
                                         "frame's run, or every other frame")  # fmt: skip
    method: Literal["median", "biweight"] = Field("median", description="combine: median or Tukey biweight")
    sigma: float = Field(3.0, gt=0, description="clipping threshold (std) of the frames' levels")
    fill_box: int = Field(15, ge=3, description="box (pixels) of the local mean that fills holes")
    mask_objects: bool = Field(True, description="a second pass with the objects masked")
    detect_sigma: float = Field(3.0, gt=0, description="object detection threshold (noise sigmas)")
    npixels: int = Field(5, ge=1, description="connected pixels of an object")
    dilate: int = Field(3, ge=0, description="pixels the object masks grow by")


def _levels(data: np.ndarray, sigma: float) -> np.ndarray:
    out = []
    for f in data:
        good = f[np.isfinite(f)]
        out.append(float(sigma_clipped_stats(good, sigma=sigma, maxiters=5)[1]) if good.size else np.nan)
    return np.array(out)


def peer_sets(runs: np.ndarray, peers: str) -> list[np.ndarray]:
    """For each frame, the indices of the frames its sky is made of."""
    idx = np.arange(len(runs))
    return [idx[(idx != j) & ((runs == runs[j]) if peers == "run" else True)] for j in idx]


def _combine_block(data: np.ndarray, levels: np.ndarray, sets: list, method: str) -> np.ndarray:
    out = np.full(data.shape, np.nan)
    levels = np.asarray(levels).reshape(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for j, peers in enumerate(sets):
            if len(peers):
                v = data[peers] - levels[peers, None, None]
                c = np.nanmedian(v, axis=0) if method == "median" else biweight_location(v, axis=0, ignore_nan=True)
                out[j] = c + levels[j]
    return out


def fill_holes(sky: np.ndarray, box: int) -> np.ndarray:
    """NaN pixels of a 2-D ``sky`` set to the mean of the finite pixels in the ``box`` around them (grown
    until every hole is filled)."""
    out = sky.copy()
    while np.isnan(out).any() and np.isfinite(out).any():
        good = np.isfinite(out)
        num = uniform_filter(np.where(good, out, 0.0), box, mode="nearest")
        den = uniform_filter(good.astype(np.float64), box, mode="nearest")
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(good, out, np.where(den > 0, num / den, np.nan))
        box *= 2
    return out


def object_mask(image: np.ndarray, p: SkyParams) -> np.ndarray:
    """Objects of a sky-subtracted frame (photutils detect_sources), grown by ``dilate`` pixels."""
    good = np.isfinite(image)
    if not good.any():
        return np.zeros(image.shape, bool)
    noise = mad_std(image[good])
    segm = detect_sources(np.where(good, image, 0.0), p.detect_sigma * noise, n_pixels=p.npixels)
    mask = np.zeros(image.shape, bool) if segm is None else segm.data > 0
    return binary_dilation(mask, iterations=p.dilate) if p.dilate and mask.any() else mask


def _per_frame(fn, arr, *args):
    if isinstance(arr, da.Array):
        return arr.rechunk({0: 1, 1: -1, 2: -1}).map_blocks(lambda b: np.stack([fn(f, *args) for f in b]),
                                                             dtype=np.float64)  # fmt: skip
    return np.stack([fn(f, *args) for f in arr])


def _sky(data, sets, p: SkyParams, tiles):
    if isinstance(data, da.Array):
        levels = data.rechunk({0: 1, 1: -1, 2: -1}).map_blocks(_levels, p.sigma, drop_axis=(1, 2), dtype=np.float64)
        levels = levels.rechunk(-1)
        d = data.rechunk({0: -1, 1: tiles[0], 2: tiles[1]})
        sky = da.map_blocks(_combine_block, d, levels[:, None, None], sets=sets, method=p.method, dtype=np.float64)
    else:
        sky = _combine_block(data, _levels(data, p.sigma), sets, p.method)
    return _per_frame(fill_holes, sky, p.fill_box)


@register("hxrg_sky", SkyParams, FAMILY)
def hxrg_sky(ds: xr.Dataset, refs: xr.Dataset | None, p: SkyParams) -> xr.Dataset:
    """Each frame's sky from its peers subtracted (``data``), the sky itself as ``sky`` (see the module)."""
    runs = ds["run"].values if "run" in ds.coords else np.zeros(ds.sizes[FRAME], int)
    sets = peer_sets(np.asarray(runs), p.peers)
    lonely = [j for j, s in enumerate(sets) if len(s) == 0]
    names = [str(n) for n in ds["source_file"].values] if "source_file" in ds.coords else list(map(str, lonely))
    if len(lonely) == len(sets):
        out = ds.copy()
        out.attrs["sky_skipped"] = [names[j] for j in lonely]
        return record(out, "hxrg_sky", "SKIPPED", p, "one dither per run: no peer to make a sky of")
    data = ds["data"].transpose(FRAME, Y, X).data
    if "dq" in ds:
        data = da.where(ds["dq"].data & 1, np.nan, data) if isinstance(data, da.Array) else \
            np.where(ds["dq"].values & 1, np.nan, data)  # fmt: skip
    tiles = data.chunksize[1:] if isinstance(data, da.Array) else None
    sky = _sky(data, sets, p, tiles)
    if p.mask_objects:
        mask = _per_frame(object_mask, data - sky, p) if not isinstance(data, da.Array) else \
            (data - sky).rechunk({0: 1, 1: -1, 2: -1}).map_blocks(
                lambda b: np.stack([object_mask(f, p) for f in b]), dtype=bool)  # fmt: skip
        masked = da.where(mask, np.nan, data) if isinstance(data, da.Array) else np.where(mask, np.nan, data)
        sky = _sky(masked, sets, p, tiles)
    keep = np.zeros(len(sets), bool)
    keep[lonely] = True
    sky_xr = xr.DataArray(sky, dims=(FRAME, Y, X)).where(~xr.DataArray(keep, dims=(FRAME,)))
    out = ds.copy()
    out["sky"] = sky_xr.assign_attrs(units=ds["data"].attrs.get("units", ""), long_name="sky from the dithers")
    out["data"] = (ds["data"] - sky_xr.fillna(0.0)).assign_attrs(ds["data"].attrs)
    if isinstance(out["data"].data, da.Array):
        out["sky"] = out["sky"].chunk(ds["data"].chunksizes)
        out["data"] = out["data"].chunk(ds["data"].chunksizes)
    out.attrs["sky_skipped"] = [names[j] for j in lonely]
    return record(out, "hxrg_sky", "COMPLETE", p, f"{len(lonely)} frame(s) without a peer" if lonely else "")
