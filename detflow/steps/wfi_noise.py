"""Noise realizations of a WFI L2 image: the layer language of the PIT ``gen_noise_image``.

A layer code is a string of directives, each a capital letter with lower-case/number flags:

* ``R`` read noise: white noise per resultant (the ``read`` map / sqrt(N)), reference pixels rebuilt
  from the dark cube plus white and reset noise, correlated 1/f noise per channel (``C_PINK`` common,
  ``U_PINK`` per channel) and the amp33 output; the noisy L1 is calibrated like the science and the
  layer is the difference of the two L2 images. Flags: ``a`` add the noise to the science exposure
  (otherwise to the dark cube, against the calibrated dark cube); ``z<k>`` clip at
  median +/- k IQR/1.349.
* ``P`` Poisson noise of the pre-sky slope (``b<order>``: of its Legendre sky model only). Flag ``r``
  resamples every frame's counts and propagates them through the pixel's ramp weights up to its last
  used resultant; without ``r`` the Gaussian limit with the same variance (the PIT leaves plain ``P``
  a placeholder that adds nothing).
* ``O`` pseudo-Poisson bias realizations: Pearson-family deviates with the moments of Poisson noise
  through the ramp weights (Laliotis et al. 2024).
* ``S<order>`` subtract the Legendre sky of that order fitted to the layer itself.
* ``C...`` a comment (lower case only).

Directives apply in the PIT's order: R, O, P, S. Every random deviate is addressed by (seed, frame,
layer, component, resultant or channel, full-frame pixel): a realization never depends on chunking,
task order or worker count.

What is shared instead of recomputed (all exact):

* the baseline calibrations: the science L2 for every ``a`` layer is the run's own product, and the
  calibrated dark cube is built once for all other ``R`` layers;
* everything derived from reference files alone (IPC-deconvolved dark and flat, pixel areas, masks,
  linearity and saturation inputs, ramp weights): the layer graphs call the same functions on the same
  inputs, so their tasks have the same keys and dask computes them once;
* ``P``, ``O``: no re-run of the pipeline. For its final configuration (segments, skipped resultants,
  signal level) the slope is a linear function of the resultants, ``slope = sum_i K_i R_i``, so the
  slope noise is the pixel's weights ``K`` applied to the resampled resultant perturbations (``Pr``),
  with the variance ``K' S_P K`` (``P``) or the moments (``O``) of those weights. The weights are the
  science fit's own (:func:`science_weights`: the ramp fit's input is rebuilt, once for all these
  layers, and fitted again for its weights); with ``ramp_fit.pit_compat`` the PIT's, of the ramp
  truncated by saturation at the RAMP_OPT_PARS signal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .. import schema
from ..errors import DetflowInputError
from ..instruments.roman_wfi import Geometry, border_of
from ..kernels import noise as knoise
from ..kernels import ramp as kramp
from ..kernels import ramp_gls as kgls
from ..kernels import rng as krng
from ..kernels import sky as ksky
from ..schema import DQ, FRAME, READ, X, Y
from .registry import apply_recipe
from .wfi import RampFitParams, ramp_tables_for
from .wfi.common import _frame, _nframes, _read_patterns, _tile
from .wfi.ramp import _ramp_inputs

LAYER = "layer"
# stream components (the second element of every stream key path)
_WHITE, _RESET, _COMMON, _CHANNEL, _A33_WHITE, _A33_PINK, _POISSON, _BIAS = range(8)


@dataclass(frozen=True)
class LayerSpec:
    code: str
    read: bool = False
    add: bool = False  # R: add to the science exposure
    zclip: float | None = None
    bias: bool = False  # O
    poisson: bool = False
    poisson_sky_order: int | None = None  # P b<order>: the sky model only
    resample: bool = False  # P r
    sky_order: int | None = None  # S<order>


_FLAGS = {
    "R": re.compile(r"^(?=(?:[^a]*a)?[^a]*$)(?=(?:[^z]*z)?[^z]*$)(?:a|z\d+(?:\.\d*)?|z\.\d+)*$"),
    "P": re.compile(r"^(?=(?:[^b]*b)?[^b]*$)(?=(?:[^r]*r)?[^r]*$)(?:b\d*|r)*$"),
    "S": re.compile(r"^\d*$"),
    "O": re.compile(r"^$"),
    "C": re.compile(r"^[^A-Z]*$"),
}
_FLAG_HELP = {"R": "R[a][z<k>]", "P": "P[b<order>][r]", "S": "S<order>", "O": "O", "C": "C<comment, no capitals>"}


def parse_layer(code: str, source=None, field: str = "NOISE.LAYER") -> LayerSpec:
    """Parse one layer code; an unknown directive or flag is one error naming the code."""

    def bad(why: str):
        return DetflowInputError(source, field, "layer codes of R[a][z<k>], P[b<order>][r], O, S<order>, C...",
                                 f"{code!r} ({why})")  # fmt: skip

    if not isinstance(code, str) or not code or not code[0].isupper():
        raise bad("must start with a directive letter")
    if "C" in code:  # a comment runs to the end of the code
        code_part, _, comment = code.partition("C")
        if any(ch.isupper() for ch in comment):
            raise bad("a comment takes no capital letters")
    else:
        code_part = code
    seen: dict[str, str] = {}
    for letter, flags in re.findall(r"([A-Z])([^A-Z]*)", code_part):
        if letter not in _FLAGS:
            raise bad(f"unknown directive {letter!r}")
        if letter in seen:
            raise bad(f"directive {letter!r} given twice")
        if not _FLAGS[letter].match(flags):
            raise bad(f"flags {flags!r} of {letter!r}; expected {_FLAG_HELP[letter]}")
        seen[letter] = flags
    spec = {"code": code}
    if "R" in seen:
        f = seen["R"]
        z = re.search(r"z(\d*\.?\d*)", f)
        spec.update(read=True, add="a" in f, zclip=float(z.group(1)) if z else None)
        if z and not spec["zclip"] > 0:
            raise bad("z<k> needs k > 0")
    if "O" in seen:
        spec["bias"] = True
    if "P" in seen:
        f = seen["P"]
        b = re.search(r"b(\d*)", f)
        spec.update(poisson=True, resample="r" in f, poisson_sky_order=int("0" + b.group(1)) if b else None)
    if "S" in seen:
        spec["sky_order"] = int("0" + seen["S"])
    return LayerSpec(**spec)


def parse_layers(codes: list[str], source=None) -> list[LayerSpec]:
    return [parse_layer(c, source, f"NOISE.LAYER[{i}]") for i, c in enumerate(codes)]


# ---- the noisy L1 ---------------------------------------------------------------------------------
def _noisy_block(src, border, rn, reset, corr, white_keys, reset_keys, inv_sqrt_n, *, nb: int, nside: int,
                 block_info=None):  # fmt: skip
    """One (frame, read, y, x) tile of the noisy L1 (uint16), in the PIT's arithmetic."""
    (f0, _), _, (y0, y1), (x0, x1) = block_info[0]["array-location"]
    nf, nr, ny, nx = src.shape
    yy = np.arange(y0, y1)[:, None]
    xx = np.arange(x0, x1)[None, :]
    active = (yy >= nb) & (yy < nside - nb) & (xx >= nb) & (xx < nside - nb)
    out = np.empty(src.shape, dtype=np.uint16)
    for f in range(nf):
        reset_field = krng.normals(int(reset_keys[f, 0, 0, 0]), y0, x0, ny, nx, nside).astype(np.float32)
        reset_field *= reset[0, 0]
        for k in range(nr):
            white = krng.normals(int(white_keys[f, k, 0, 0]), y0, x0, ny, nx, nside).astype(np.float32)
            white *= rn[0, 0] * np.float32(inv_sqrt_n[f, k, 0, 0])
            sci = np.round(np.clip(src[f, k].astype(np.float32) + white, 0, 65535))
            ref = border[f, k].astype(np.float32) + white + reset_field
            value = np.where(active, sci, ref) + corr[f, k]
            out[f, k] = np.clip(np.round(value), 0, 65535).astype(np.uint16)
    return out


def _keys(seed: int, nframe: int, nread: int, layer: int, comp: int) -> np.ndarray:
    return np.array([[krng.stream_key(seed, f, layer, comp, k) for k in range(nread)] for f in range(nframe)],
                    dtype=np.uint64)  # fmt: skip


def _correlated(l1: xr.Dataset, refs: xr.Dataset, seed: int, layer: int, geom: Geometry) -> tuple[da.Array, bool]:
    """(frame, read, y, x + w) correlated noise (image 1/f, then the amp33 output if rebuilt)."""
    anc = refs["read_anc"].attrs if "read_anc" in refs else {}
    c_pink, u_pink = float(anc.get("C_PINK", 0.0)), float(anc.get("U_PINK", 0.0))
    pink = refs["read_pink_model"].attrs if "read_pink_model" in refs else None
    with_amp33 = ("amp33" in l1 and pink is not None and bool(pink.get("valid", True))
                  and "read_amp33_std" in refs and "read_amp33_med" in refs)  # fmt: skip
    amp33 = None
    if with_amp33:  # dask arrays inside the dict: the delayed tasks depend on them, nothing computes now
        amp33 = {"med": refs["read_amp33_med"].data.astype(np.float64), "std": refs["read_amp33_std"].data.astype(np.float64),
                 "M_PINK": float(pink["M_PINK"]), "RU_PINK": float(pink["RU_PINK"])}  # fmt: skip
    n, cw = geom.nside, geom.channel_width
    width = n + (cw if with_amp33 else 0)
    nframes = np.asarray(l1["read_nframes"].values)
    frames = []
    for f in range(l1.sizes[FRAME]):
        reads = []
        for k in range(l1.sizes[READ]):
            keys = {"common": krng.stream_key(seed, f, layer, _COMMON, k),
                    "amp33_white": krng.stream_key(seed, f, layer, _A33_WHITE, k),
                    "amp33_pink": krng.stream_key(seed, f, layer, _A33_PINK, k)}  # fmt: skip
            chan = [krng.stream_key(seed, f, layer, _CHANNEL, k, ch) for ch in range(geom.nchannel)]
            task = dask.delayed(knoise.correlated_frame, pure=True)(
                keys, chan, n, geom.nchannel, int(nframes[f, k]), c_pink, u_pink, amp33
            )
            reads.append(da.from_delayed(task, (n, width), dtype=np.float32))
        frames.append(da.stack(reads))
    return da.stack(frames), with_amp33


def _base_amp33(l1: xr.Dataset, refs: xr.Dataset) -> xr.DataArray:
    """A noiseless amp33 output: its reference median, as raw counts."""
    a33 = l1["amp33"]
    med = refs["read_amp33_med"].data
    top = np.iinfo(a33.dtype).max
    vals = da.broadcast_to(da.clip(da.round(med), 0, top).astype(a33.dtype)[None, None], a33.shape)
    return a33.copy(data=vals.rechunk(a33.data.chunks))


def noisy_l1(l1: xr.Dataset, refs: xr.Dataset, seed: int, layer: int, add: bool,
             reference: str = "add") -> xr.Dataset:  # fmt: skip
    """The L1 of one ``R`` layer: the science (``add``) or the dark cube with the read noise added.

    ``reference="add"``: the reference border and amp33 get the noise on top of what the base exposure
    has (for the dark cube: the dark and a noiseless amp33), so the two runs differ by the noise alone.
    ``"replace"``: the PIT's construction, border = dark + noise and amp33 = median + noise, which leaves
    the base exposure's own correlated noise uncorrected in the noisy run (it leaks into the layer).
    """
    geom = Geometry.for_shape(l1.sizes[Y], l1.sizes[X], border_of(l1.attrs))
    nread, nframe = l1.sizes[READ], l1.sizes[FRAME]
    data = l1["data"]
    chunks = data.data.chunks
    src = data.data if add else _dark_as_l1(l1, refs).data
    dark = _dark_cube(l1, refs).data.astype(np.float32)
    border = da.broadcast_to(dark[None], src.shape, chunks=chunks) if reference == "replace" else src
    rn = refs["read_data"].astype(np.float32).data
    reset = (refs["read_resetnoise"].astype(np.float32).data if "read_resetnoise" in refs
             else da.zeros_like(rn))  # fmt: skip
    corr, with_amp33 = _correlated(l1, refs, seed, layer, geom)
    n = geom.nside
    img_corr = corr[..., :n].rechunk(chunks)
    white_keys = _keys(seed, nframe, nread, layer, _WHITE)[:, :, None, None]
    reset_keys = np.array([krng.stream_key(seed, f, layer, _RESET) for f in range(nframe)],
                          dtype=np.uint64)[:, None, None, None]  # fmt: skip
    inv_sqrt_n = (1.0 / np.sqrt(np.asarray(l1["read_nframes"].values, np.float64)))[:, :, None, None]
    noisy = da.map_blocks(
        _noisy_block, src, border, rn[None, None],
        reset[None, None], img_corr,
        da.from_array(white_keys, chunks=((1,) * nframe, (nread,), 1, 1)),
        da.from_array(reset_keys, chunks=((1,) * nframe, 1, 1, 1)),
        da.from_array(inv_sqrt_n, chunks=((1,) * nframe, (nread,), 1, 1)),
        nb=geom.nborder, nside=n, dtype=np.uint16, chunks=chunks,
    )  # fmt: skip
    out = l1.copy()
    out["data"] = data.copy(data=noisy)
    if with_amp33:
        a33 = l1["amp33"]
        c33 = corr[..., n:].rechunk(a33.data.chunks)
        if reference == "add":  # the noise part of the rebuilt output on top of the base amp33
            base = a33 if add else _base_amp33(l1, refs)
            c33 = base.data.astype(np.float32) + c33 - refs["read_amp33_med"].data.astype(np.float32)[None, None]
        vals = da.clip(da.round(c33), 0, np.iinfo(a33.dtype).max).astype(a33.dtype)
        out["amp33"] = a33.copy(data=vals)
    return out


def _dark_cube(l1: xr.Dataset, refs: xr.Dataset) -> xr.DataArray:
    """The last ``nread`` planes of the dark cube (the PIT allows one leading reference read)."""
    nread = l1.sizes[READ]
    path = next((r["path"] for r in refs.attrs.get("reference_files", []) if r["name"] == "dark"), None)
    if "dark_data" not in refs:
        raise DetflowInputError(path, "roman.data", "a dark reference with a roman.data cube (R noise layers)",
                                "no cube")  # fmt: skip
    k = refs.sizes["dark_k"]
    if k - nread not in (0, 1):
        raise DetflowInputError(path, "roman.data", f"{nread} or {nread + 1} planes (one per resultant)", f"{k}")
    cube = refs["dark_data"].isel(dark_k=slice(k - nread, k)).rename(dark_k=READ)
    return cube.transpose(READ, Y, X)


def _dark_as_l1(l1: xr.Dataset, refs: xr.Dataset) -> xr.DataArray:
    """The dark cube as raw L1 counts (truncated to the L1 integer type, as the PIT casts it)."""
    cube = _dark_cube(l1, refs)
    top = np.iinfo(l1["data"].dtype).max
    arr = da.clip(cube.data, 0, top).astype(l1["data"].dtype)
    arr = da.broadcast_to(arr[None], l1["data"].shape, chunks=l1["data"].data.chunks)
    return l1["data"].copy(data=arr)


# ---- per-pixel truncation and the Poisson-type layers ----------------------------------------------
def _ntrunc_block(gdq, *, n):
    """Number of used resultants per pixel as the PIT's SLICEOUT defines it: up to the resultant before
    the first newly saturated one, the full ramp when none (or when the first resultant saturates)."""
    sat = (gdq & np.uint32(DQ.SATURATED)) != 0
    new = sat[..., 1:] & ~sat[..., :-1]
    has = new.any(axis=-1)
    first = np.argmax(new, axis=-1)  # index into 1.. minus one = the last used resultant
    endslice = np.where(has, first, -1)
    return np.where(endslice > 0, endslice + 1, n).astype(np.int64)


def ntrunc(sat_ds: xr.Dataset) -> xr.DataArray:
    """(frame, y, x) number of used resultants, from a dataset after the saturation step."""
    n = sat_ds.sizes[READ]
    return xr.apply_ufunc(_ntrunc_block, sat_ds["groupdq"], input_core_dims=[[READ]], kwargs={"n": n},
                          dask="parallelized", output_dtypes=[np.int64])  # fmt: skip


def _weights_block(data, gdq, pdq, gain, rn, *tables, ncore):
    nf = _nframes((data, 1), (gdq, 1), (pdq, 0))
    ny, nx, n = np.broadcast_shapes(data.shape[-3:], gdq.shape[-3:])
    w = np.empty((nf, ny, nx, n), dtype=np.float64)
    scratch = [np.empty((ny, nx), dtype=t) for t in (np.float32, np.float32, np.float32, np.uint32)]
    for f in range(nf):
        kgls.fit_ramps_weights(_tile(data, f, (ny, nx, n)), _tile(gdq, f, (ny, nx, n)), _tile(pdq, f, (ny, nx)),
                               _tile(gain, f, (ny, nx)), _tile(rn, f, (ny, nx)),
                               *(_frame(t, f, nc)[0, 0] for t, nc in zip(tables, ncore)), *scratch,
                               np.zeros((0, 0, 0), np.uint32), w[f])  # fmt: skip
    return w.astype(np.float32)


def science_weights(l1: xr.Dataset, refs: xr.Dataset, recipe: list[str], params: dict, fuse: bool) -> xr.DataArray:
    """(frame, y, x, read) the weights ``K`` of every pixel's slope in the science run, ``slope = sum K R``.

    The default fit: the recipe up to the ramp fit, then :func:`detflow.kernels.ramp_gls.fit_ramps_weights`
    with the science run's parameters (the weights of its segments, skipped resultants and signal level).
    ``ramp_fit.pit_compat``: the PIT's fixed weights of the ramp truncated by saturation (:func:`ntrunc`).
    """
    p = RampFitParams(**params.get("ramp_fit", {}))
    if p.pit_compat:
        tables = ramp_tables_for(l1, p)
        prefix = list(recipe[: recipe.index("saturation") + 1]) if "saturation" in recipe else []
        sat_ds = apply_recipe(l1, refs, prefix, {k: params.get(k, {}) for k in prefix}, fuse=fuse) if prefix else None
        if sat_ds is None:
            L = xr.full_like(l1["data"].isel({READ: 0}, drop=True), l1.sizes[READ], dtype=np.int64)
        else:
            L = ntrunc(sat_ds)
        w = tables["weights"].values[0].astype(np.float32)  # one read pattern: the first frame's
        return xr.apply_ufunc(lambda t: w[t], L.transpose(FRAME, Y, X), output_core_dims=[[READ]],
                              dask="parallelized", output_dtypes=[np.float32],
                              dask_gufunc_kwargs={"output_sizes": {READ: w.shape[1]}})  # fmt: skip
    prefix = list(recipe[: recipe.index("ramp_fit")]) if "ramp_fit" in recipe else list(recipe)
    pre = apply_recipe(l1, refs, prefix, {k: params.get(k, {}) for k in prefix}, fuse=fuse)
    extra, core = _ramp_inputs(pre, p, {})
    return xr.apply_ufunc(
        _weights_block, pre["data"].astype(np.float32, copy=False), pre["groupdq"], pre["pixeldq"],
        refs["gain_data"].astype(np.float32, copy=False), refs["read_data"].astype(np.float32, copy=False),
        *extra, kwargs={"ncore": [len(c) for c in core]}, input_core_dims=[[READ], [READ], [], [], [], *core],
        output_core_dims=[[READ]], dask="parallelized", output_dtypes=[np.float32],
    ).transpose(FRAME, Y, X, READ)  # fmt: skip


def _pixel_stream_block(*arrays, fn, key_table, nside, nb, block_info=None, **kw):
    """``arrays``: (frame, y, x, 1) maps, then the (frame, y, x, read) weights."""
    (f0, f1), (y0, y1), (x0, x1) = block_info[0]["array-location"][:3]
    out = np.empty(arrays[0].shape[:3], dtype=np.float64)
    for i, f in enumerate(range(f0, f1)):
        fn(*(a[i, ..., 0] for a in arrays[:-1]), arrays[-1][i], key=int(key_table[f]), y0=y0 + nb, x0=x0 + nb,
           stride=nside, out=out[i], **kw)  # fmt: skip
    return out.astype(np.float32)


def _resampled(sky, gain, w, *, key, y0, x0, stride, out, frame_time, first, nfr, tbar, tau):
    knoise.poisson_resampled_slopes(sky, gain, frame_time, first, nfr, w, np.uint64(key), y0, x0, stride, out)


def _gaussian(sky, gain, w, *, key, y0, x0, stride, out, frame_time, first, nfr, tbar, tau):
    coef = np.empty(sky.shape)
    knoise.poisson_coefficients(w, tbar, tau, coef)
    knoise.poisson_gaussian_slopes(sky, gain, coef, np.uint64(key), y0, x0, stride, out)


def _pearson(gi, gain, w, *, key, y0, x0, stride, out, frame_time, first, nfr, tbar, tau):
    from ..kernels import pearson as kpearson

    ny, nx = gi.shape
    idx = ((y0 + np.arange(ny))[:, None] * stride + (x0 + np.arange(nx))[None, :]).astype(np.int64)
    t = [np.empty((ny, nx)) for _ in range(3)]
    kpearson.tilde_nus_pixels(w, first, nfr, frame_time, *t)
    out[:] = 0.0
    sel = np.any(w != 0, axis=-1)  # no weights (no slope): no draw
    if sel.any():
        out[sel] = kpearson.pearson_draws(*(a[sel] for a in t), gi[sel].astype(np.float64), key, idx[sel]) / gain[sel]


def _per_pixel(fn, arrays: list[xr.DataArray], weights: xr.DataArray, keys: list[int], nside: int, nb: int,
               **kw) -> xr.DataArray:  # fmt: skip
    """Apply a per-pixel noise generator tile by tile over (frame, y, x) active-region arrays and the
    (frame, y, x, read) slope weights of the pixels."""
    arrays = [a.transpose(FRAME, Y, X) for a in xr.broadcast(*arrays)]
    like = arrays[0]
    chunks = like.chunks or tuple((s,) for s in like.shape)
    blocks = [da.asarray(a.data).rechunk(chunks)[..., None] for a in arrays]
    blocks.append(da.asarray(weights.transpose(FRAME, Y, X, READ).data).rechunk((*chunks, -1)))
    arr = da.map_blocks(_pixel_stream_block, *blocks, fn=fn, key_table=np.asarray(keys, np.uint64), nside=nside,
                        nb=nb, drop_axis=3, dtype=np.float32, **kw)  # fmt: skip
    return like.copy(data=arr).astype(np.float32)


# ---- layers ---------------------------------------------------------------------------------------
def _whole_image(a: xr.DataArray, fn) -> xr.DataArray:
    """Apply ``fn`` to each (y, x) image whole (a global statistic) and return it tiled like ``a``."""
    chunks = a.chunks
    whole = a.copy(data=da.asarray(a.data).rechunk({a.get_axis_num(Y): -1, a.get_axis_num(X): -1}))
    out = xr.apply_ufunc(fn, whole, input_core_dims=[[Y, X]], output_core_dims=[[Y, X]], vectorize=True,
                         dask="parallelized", output_dtypes=[np.float32])  # fmt: skip
    out = out.transpose(*a.dims)
    return out.copy(data=out.data.rechunk(chunks)) if chunks else out


def detector_number(detector: str | None) -> int:
    """The SCA number of a detector name (``WFI07`` -> 7; 0 when it has none)."""
    digits = re.findall(r"\d+", detector or "")
    return int(digits[-1]) if digits else 0


def noise_product(l1: xr.Dataset, refs: xr.Dataset, main: xr.Dataset, recipe: list[str], params: dict,
                  fuse: bool, layers: list[LayerSpec], seed: int, precision: int = 32,
                  detector: str | None = None, reference: str = "add") -> xr.Dataset:  # fmt: skip
    """The lazy ``noise`` (frame, layer, y, x) cube of a WFI job on the active region.

    ``main`` is the job's full-frame calibrated dataset (``apply_recipe`` output), ``recipe`` and
    ``params`` the ones it was made with, so ``R`` layers calibrate exactly like the science. The
    detector's number joins the seed, so the SCAs of one exposure get independent realizations.
    """
    user_seed, seed = seed, (int(seed), detector_number(detector))
    geom = Geometry.for_shape(l1.sizes[Y], l1.sizes[X], border_of(l1.attrs))
    nb, n = geom.nborder, geom.nside
    act = {Y: slice(nb, n - nb), X: slice(nb, n - nb)}

    def l2_data(ds: xr.Dataset) -> xr.DataArray:
        return ds["data"].transpose(FRAME, Y, X).isel(act).astype(np.float32)

    base = l2_data(main)
    presky = l2_data(main.assign(data=main["data_withsky"])) if "data_withsky" in main else base
    dark_base = None
    need_ramp = any(s.poisson or s.bias for s in layers)
    if need_ramp:
        weights = science_weights(l1, refs, recipe, params, fuse).isel(act)
        gain = refs["gain_data"].astype(np.float32).isel(act).clip(1e-4, 1e4)
        rps = _read_patterns(l1)
        ft = float(l1["frame_time"].values[0])
        tbar, tau, nfr = kramp.resultant_times(rps[0], ft)  # one read pattern per job: the first frame's
        ramp = {"frame_time": ft, "first": np.array([r[0] for r in rps[0]], np.int64), "nfr": nfr, "tbar": tbar,
                "tau": tau}  # fmt: skip
    out_layers = []
    for i, spec in enumerate(layers):
        diff = xr.zeros_like(base)
        if spec.read:
            noisy = noisy_l1(l1, refs, seed, i, spec.add, reference)
            run = apply_recipe(noisy, refs, recipe, params, fuse=fuse)
            if spec.add:
                ref = base
            else:
                if dark_base is None:
                    dark_l1 = l1.copy()
                    dark_l1["data"] = _dark_as_l1(l1, refs)
                    if reference == "add" and "amp33" in l1 and "read_amp33_med" in refs:
                        dark_l1["amp33"] = _base_amp33(l1, refs)
                    dark_base = l2_data(apply_recipe(dark_l1, refs, recipe, params, fuse=fuse))
                ref = dark_base
            diff = l2_data(run) - ref
            if spec.zclip is not None:
                diff = _whole_image(diff, lambda im, k=spec.zclip: knoise.zclip(im, k))
        frame_keys = [krng.stream_key(seed, f, i, _BIAS) for f in range(l1.sizes[FRAME])]
        if spec.bias:
            diff = diff + _per_pixel(_pearson, [gain * presky, gain], weights, frame_keys, n, nb, **ramp)
        if spec.poisson:
            level = presky
            if spec.poisson_sky_order is not None:
                level = _whole_image(presky, lambda im, o=spec.poisson_sky_order: ksky.medfit(im, o)[1])
            keys = [krng.stream_key(seed, f, i, _POISSON) for f in range(l1.sizes[FRAME])]
            if spec.resample and l1.sizes[FRAME] > 1 and len({str(r) for r in rps}) > 1:
                raise DetflowInputError(None, "NOISE.LAYER", "one read pattern per job for P...r layers",
                                        "several")  # fmt: skip
            fn = _resampled if spec.resample else _gaussian
            diff = diff + _per_pixel(fn, [level, gain], weights, keys, n, nb, **ramp)
        if spec.sky_order is not None:
            diff = _whole_image(diff, lambda im, o=spec.sky_order: (im - ksky.medfit(im, o)[1]).astype(np.float32))
        out_layers.append(diff.astype(np.float32))
    cube = xr.concat(out_layers, dim=LAYER, coords="minimal", compat="override", join="override")
    cube = cube.transpose(FRAME, LAYER, Y, X).assign_coords({LAYER: [s.code for s in layers]})
    if precision == 16:
        cube = cube.astype(np.float16)
    cube = cube.drop_vars([c for c in cube.coords if c not in (FRAME, LAYER, Y, X, "source_file")])
    cube.attrs = {"units": schema.UNITS["DN/s"], "long_name": "noise realizations of the L2 slope"}
    return xr.Dataset({"noise": cube}, attrs={"seed": int(user_seed), "layers": [s.code for s in layers],
                                              "precision": int(precision), "product": "roman_wfi_noise"})  # fmt: skip
