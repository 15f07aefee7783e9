"""Exporters: FITS for ds9 and older tools, from a written store (they never recompute the science)."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS, FITSFixedWarning

from .._version import __version__
from ..instruments.roman_excam import corgi_bits
from ..kernels.mask import grow_bits
from ..schema import PIXEL_MASK_1, mask_sizes
from .roman_dm import fits_to_gwcs, image_model, write_model
from .store import atomic_write, open_store

BAD_VALUE = -1000.0


def pit_fits_path(output: str | Path) -> Path:
    """Where the PIT's ``FITSOUT`` puts the FITS file: the output name without its 5-character
    extension (``.asdf`` there, ``.zarr`` here) plus ``_asdf_to.fits``."""
    s = str(output)
    return Path(s[:-5] + "_asdf_to.fits")


# the keywords of a FITS WCS (any alternate letter): replaced by the moved WCS, never copied unchanged
_WCS_KEY = re.compile(r"^(WCSAXES|WCSNAME|CTYPE|CRPIX|CRVAL|CDELT|CUNIT|CROTA|CD\d+_|PC\d+_|PV\d+_|PS\d+_|LONPOLE|"
                      r"LATPOLE|RADESYS|EQUINOX|A_|B_|AP_|BP_|CPDIS|CPERR|DP\d|D2IM)")  # fmt: skip


def product_wcs(header_text: str, y: np.ndarray, x: np.ndarray) -> tuple[fits.Header, WCS | None]:
    """The WCS of a product whose rows and columns are the detector pixels ``y`` and ``x``.

    ``header_text`` is the job's WCS (``FITSWCS``), for 0-based full-frame detector pixel indices; the
    product's arrays start elsewhere (the active region at pixel 4, a subarray anywhere), so the WCS is
    moved onto the array with astropy's ``WCS.slice`` (CRPIX and the SIP reference point move together).
    Returns the header cards to write (the moved WCS and the file's other cards) and the moved WCS, or
    only the other cards and a HISTORY line when ``y``/``x`` are not a contiguous range."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        full = fits.Header.fromstring(header_text)
        hdr = fits.Header([card for card in full.cards if not _WCS_KEY.match(card.keyword)])
        y, x = np.asarray(y), np.asarray(x)
        if not all(len(c) and np.array_equal(c, np.arange(c[0], c[0] + len(c))) for c in (y, x)):
            hdr.add_history("detflow: no WCS: the pixels are not a contiguous detector region")
            return hdr, None
        moved = WCS(full).slice((slice(int(y[0]), int(y[-1]) + 1), slice(int(x[0]), int(x[-1]) + 1)))
        hdr.extend(moved.to_header(relax=True), unique=True)
    hdr.add_comment(f"WCS moved from full-frame detector pixels: array pixel (0, 0) = detector (x, y) = "
                    f"({int(x[0])}, {int(y[0])})")  # fmt: skip
    return hdr, moved


def export_wfi_fits(store: str | Path, path: str | Path, frame: int = 0) -> Path:
    """PIT ``FITSOUT`` layout: primary = slope, HDU 1 = dq, HDU 2 = slope where good else -1000 (good:
    not masked by the grown flags of ``PIXEL_MASK_1``; saturated pixels are kept), with the WCS (moved
    onto the exported pixels) and provenance keywords. Written under a temporary name and renamed:
    complete or absent."""
    tree = open_store(store)
    l2 = tree["l2"].to_dataset().isel(frame=frame)
    data = l2["data"].values.astype(np.float32)
    dq = l2["dq"].values.astype(np.uint32)
    masked = np.empty(dq.shape, dtype=bool)
    grow_bits(dq, mask_sizes(PIXEL_MASK_1), masked)
    hdr = fits.Header()
    if "fits_wcs" in tree["l2"].attrs:
        hdr.extend(product_wcs(tree["l2"].attrs["fits_wcs"], l2["y"].values, l2["x"].values)[0], unique=True)
    hdr["BUNIT"] = (l2["data"].attrs.get("units", "DN / s"), "slope units")
    hdr["ORIGIN"] = "detflow"
    hdr["DFVERS"] = (__version__, "detflow version")
    hdr["DFSTORE"] = (str(Path(store).name), "detflow store this was exported from")
    if "source_file" in l2.coords:
        hdr["DFINPUT"] = (str(l2["source_file"].values), "L1 input file")
    for i, step in enumerate(tree.attrs.get("steps", [])[:99]):
        hdr[f"DFSTEP{i:02d}"] = f"{step['name']}={step['status']}"
    hdus = fits.HDUList([fits.PrimaryHDU(data, header=hdr),
                         fits.ImageHDU(dq, name="DQ"),
                         fits.ImageHDU(np.where(masked, np.float32(BAD_VALUE), data).astype(np.float32), name="GOOD")])  # fmt: skip
    return atomic_write(path, hdus.writeto)


_L2_ARRAYS = {"data": np.float32, "dq": np.uint32, "err": np.float16, "var_poisson": np.float16,
              "var_rnoise": np.float16, "amp33": np.uint16, "border_ref_pix_left": np.float32,
              "border_ref_pix_right": np.float32, "border_ref_pix_top": np.float32,
              "border_ref_pix_bottom": np.float32, "dq_border_ref_pix_left": np.uint32,
              "dq_border_ref_pix_right": np.uint32, "dq_border_ref_pix_top": np.uint32,
              "dq_border_ref_pix_bottom": np.uint32}  # fmt: skip
_L2_ABSENT_SHAPES = {"amp33": (0, 0, 0), "border_ref_pix_left": (0, 0, 0), "border_ref_pix_right": (0, 0, 0),
                     "border_ref_pix_top": (0, 0, 0), "border_ref_pix_bottom": (0, 0, 0)}  # fmt: skip


def export_wfi_asdf(store: str | Path, path: str | Path, frame: int = 0) -> Path:
    """An L2 ASDF as the PIT ``gen_cal_image`` writes it: ``roman`` a roman_datamodels ``ImageModel``
    (``data``, ``dq``, ``err``, ``var_rnoise``, ``var_poisson`` (float16, as the schema has them), the
    border reference pixels and their DQ, ``amp33``, ``data_withsky``; ``meta`` from the L1 file's
    metadata, the step statuses in ``cal_step``, the WCS as a gwcs), and ``processinfo`` beside it with
    the sky, the ramp weights, the configuration, the full-precision step record and the log. Complete
    or absent."""
    tree = open_store(store)
    l2 = tree["l2"].to_dataset().isel(frame=frame)
    arrays, absent = {}, []
    for name, dtype in _L2_ARRAYS.items():
        if name in l2:
            with np.errstate(over="ignore"):  # float16: variances above 65504 become inf
                arrays[name] = np.ascontiguousarray(l2[name].values.astype(dtype))
        else:
            arrays[name] = np.zeros(_L2_ABSENT_SHAPES.get(name, l2["data"].shape), dtype)
            absent.append(name)
    for name, dtype in (("dq2", np.uint32), ("chisq", np.float16), ("dumo", np.float16)):  # detflow has none
        arrays[name] = np.zeros(l2["data"].shape, dtype)
        absent.append(name)
    withsky = l2["data_withsky"].values.astype(np.float32) if "data_withsky" in l2 else arrays["data"]
    attrs = tree.attrs
    inputs = attrs.get("inputs", [])
    l1_meta = inputs[frame].get("meta", {}) if len(inputs) > frame else {}
    wcs_header, gwcs = None, None
    if "fits_wcs" in tree["l2"].attrs:
        hdr, moved = product_wcs(tree["l2"].attrs["fits_wcs"], l2["y"].values, l2["x"].values)
        wcs_header = hdr.tostring()
        gwcs = fits_to_gwcs(moved.to_header(relax=True)) if moved is not None else None
    meta = {"calibration_software_name": "detflow", "calibration_software_version": __version__,
            "product_type": "l2", "file_date": Time.now()}  # fmt: skip
    steps = {s["name"]: s.get("params", {}) for s in attrs.get("steps", [])}
    processinfo = {
        "medsky": float(l2["sky_mode"].values) if "sky_mode" in l2 else None,
        "skyorder": int(steps.get("sky", {}).get("order") or -1),
        "skycoefs": l2["sky_coefs"].values.astype(np.float32) if "sky_coefs" in l2 else np.zeros(0, np.float32),
        "weights": l2["ramp_weights"].values.astype(np.float32) if "ramp_weights" in l2.coords else None,
        "ramp_opt_pars": {k: steps.get("ramp_fit", {}).get(k) for k in ("slope", "gain", "sigma_read")},
        "exclude_first": steps.get("ramp_fit", {}).get("exclude_first"),
        "ramp_fit": {k: steps.get("ramp_fit", {}).get(k) for k in ("pit_compat", "one_resultant", "jump_detection")},
        "config": attrs.get("job", {}),
        "log": attrs.get("history", []),
        "l1_meta": l1_meta,
        "cal_step": {s["name"]: s["status"] for s in attrs.get("steps", [])},
        "wcs_header": wcs_header,  # the FITS WCS of roman.data's pixels (0-based: FITS CRPIX - 1)
        "placeholder_arrays": absent,  # arrays the schema requires that detflow does not compute (zeros)
    }
    model = image_model(arrays, l1_meta, meta, processinfo["cal_step"], gwcs, extra={"data_withsky": withsky})
    return write_model(path, model, {"processinfo": processinfo})


def export_noise_asdf(store: str | Path, path: str | Path, frame: int = 0) -> Path:
    """The noise cube as the PIT ``gen_noise_image`` writes it: ``{"config": ..., "noise": (layer, y, x)}``
    (float16 or float32 as stored), with the layer codes and seed beside it. Complete or absent."""
    import asdf

    tree = open_store(store)
    noise = tree["noise"].to_dataset()
    cube = noise["noise"].isel(frame=frame).values
    out = {"config": tree.attrs.get("job", {}), "noise": cube, "layers": list(noise.attrs.get("layers", [])),
           "seed": noise.attrs.get("seed")}  # fmt: skip
    return atomic_write(path, asdf.AsdfFile(out).write_to)


def export_noise_fits(store: str | Path, path: str | Path, frame: int = 0) -> Path:
    """The noise cube as one float32 primary HDU (FITS has no float16), layer codes in LAYERn keywords,
    the WCS of the ``l2`` product moved onto the cube's pixels (axes 1 and 2; axis 3 is the layer)."""
    tree = open_store(store)
    noise = tree["noise"].to_dataset()
    hdr = fits.Header()
    if "l2" in tree.children and "fits_wcs" in tree["l2"].attrs:
        cards, moved = product_wcs(tree["l2"].attrs["fits_wcs"], noise["y"].values, noise["x"].values)
        hdr.extend(cards, unique=True)
        if moved is not None:  # the third axis: the layer index (with SIP, astropy reads it with WCS(h, naxis=2))
            hdr["WCSAXES"] = 3
            hdr.update({"CTYPE3": ("LAYER", "layer index, 0-based (LAYERn)"), "CRPIX3": 1.0, "CRVAL3": 0.0,
                        "CDELT3": 1.0})  # fmt: skip
    hdu = fits.PrimaryHDU(noise["noise"].isel(frame=frame).values.astype(np.float32), header=hdr)
    hdu.header["SEED"] = (int(noise.attrs.get("seed", 0)), "noise realization seed")
    for i, code in enumerate(noise.attrs.get("layers", [])):
        hdu.header[f"LAYER{i}"] = (str(code), f"layer {i} code")
    hdu.header["CREATOR"] = f"detflow {__version__}"
    return atomic_write(path, hdu.writeto)


# ---- Roman Coronagraph EXCAM: the II&T file set ---------------------------------------------------
EXCAM_FRAME_FILES = ("L2a_image", "L2a_bpmap", "L2b_image", "L2b_bpmap")
EXCAM_SET_FILES = ("mean_comb_image", "mean_comb_bpmap", "median_comb_image", "median_comb_bpmap")
EXCAM_DEFAULT_NAME = "excam"
# structural cards of an L1 HDU: the exported HDUs write their own
_STRUCTURAL = re.compile(r"^(SIMPLE|BITPIX|NAXIS\d*|EXTEND|XTENSION|PCOUNT|GCOUNT|BSCALE|BZERO|BLANK|EXTNAME|EXTVER|"
                         r"CHECKSUM|DATASUM|BUNIT)$")  # fmt: skip


def excam_dataset_name(files) -> str:
    """The name of a data set's combined files, from its L1 file names, as II&T names them (frames
    ``CGI_EXCAM_L1_XXXXXXi.fits`` give ``CGI_EXCAM_L1_XXXXXX_mean_comb_image.fits``): the file stems'
    longest common beginning (one file: its stem). It may end inside the number the names end with (the
    frame counter: II&T's ``XXXXXX``), not inside any other word or number: there it is cut back to the
    last ``_``, ``-`` or ``.`` (``cgi_<visit>_<time>_l1_`` names give ``cgi_<visit>``). Files of several
    data sets get what their names share (``CGI_EXCAM_L1_00000123`` for ids 0000012345 and 0000012399);
    ``excam`` when they share nothing."""
    stems = sorted({Path(f).stem for f in files})
    if not stems:
        return EXCAM_DEFAULT_NAME
    common = os.path.commonprefix(stems)
    head = common.rstrip("0123456789")
    ends_in_counter = all(re.fullmatch(re.escape(head) + r"\d+", s) for s in stems)
    at_boundary = all(s[len(common) : len(common) + 1] in ("", "_", "-", ".") for s in stems)
    if not (ends_in_counter or at_boundary):  # inside a word or an inner number: back to the last separator
        common = common[: max(common.rfind(c) for c in "_-.") + 1]
    return common.rstrip("_-.") or EXCAM_DEFAULT_NAME


def excam_export_name(job) -> str:
    """``export_prefix`` if the job gives one, else :func:`excam_dataset_name` of its L1 files."""
    from . import expand_inputs

    return job.export_prefix or excam_dataset_name(expand_inputs(job.input))


def _excam_names(job) -> list[str]:
    from . import expand_inputs

    stems = [Path(f).stem for f in expand_inputs(job.input)]
    names = [f"{s}_{kind}.fits" for s in stems for kind in EXCAM_FRAME_FILES]
    return names + [f"{excam_export_name(job)}_{kind}.fits" for kind in EXCAM_SET_FILES]


def check_excam_exports(job) -> None:
    """Refuse (before any work) an export that would replace files, unless the job says overwrite."""
    from ..errors import OutputExistsError

    if job.export_dir is None or job.overwrite or not Path(job.export_dir).exists():
        return
    clash = [n for n in _excam_names(job) if (Path(job.export_dir) / n).exists()]
    if clash:
        raise OutputExistsError(Path(job.export_dir) / clash[0], "export_dir", "files that do not exist yet (or "
                                "overwrite: true)", f"{len(clash)} exist")  # fmt: skip


def _l1_headers(inputs: list[dict], src: str, i: int | None = None) -> tuple[fits.Header, fits.Header]:
    """The primary and image-HDU cards of the L1 file ``src`` as the run read them (the ``inputs``
    attribute; frame ``i``'s entry first), without the structural ones; empty headers if not recorded."""
    recs = ([inputs[i]] if i is not None and i < len(inputs) else []) + list(inputs)
    rec = next((r for r in recs if Path(str(r.get("path", ""))).name == Path(str(src)).name), None)
    if rec is None or not rec.get("fits_headers"):
        return fits.Header(), fits.Header()
    hdrs = [fits.Header.fromstring(text) for text in rec["fits_headers"]]
    img = next((k for k, h in enumerate(hdrs) if h.get("NAXIS") == 2), 0)  # the frame's HDU, as the reader took it

    def strip(h: fits.Header) -> fits.Header:
        return fits.Header([c for c in h.cards if not _STRUCTURAL.match(c.keyword)])

    return strip(hdrs[0]), (strip(hdrs[img]) if img else fits.Header())


def _set_level(hdr: fits.Header, level: str) -> None:
    """The data level under II&T's keyword (a HIERARCH card: more than 8 characters) and corgidrp's."""
    hdr["HIERARCH DATA_LEVEL"] = (level, "data level")
    hdr["DATALVL"] = (level, "data level")


def _excam_header(attrs: dict, level: str, extra: dict | None = None, l1: fits.Header | None = None) -> fits.Header:
    """Primary header: the L1 file's primary cards (``l1``), then the processing keywords."""
    hdr = l1.copy() if l1 is not None else fits.Header()
    _set_level(hdr, level)
    hdr["ORIGIN"] = "detflow"
    hdr["DFVERS"] = (__version__, "detflow version")
    job = attrs.get("job", {})
    for key, card in (("fwc_em_e", "FWC_EM_E"), ("fwc_pp_e", "FWC_PP_E"), ("eperdn", "EPERDN"),
                      ("bias_offset", "BIAS_OFF")):  # fmt: skip
        if key in attrs:
            hdr[card] = (float(attrs[key]), key)
    hdr["EMGAIN"] = (float(attrs.get("em_gain", np.nan)), "EM gain used")
    hdr["EXPTIME"] = (float(attrs.get("exptime", np.nan)), "s")
    for key in ("non_linearity_filepath", "dark_current_map", "fixed_pattern_noise", "EXCAM_clock_induced_charge",
                "flatfield_filepath", "badpix_filepath", "master_dark_filepath"):  # fmt: skip
        if job.get(key):
            hdr.add_comment(f"{key} = {job[key]}")
    for k, v in (extra or {}).items():
        hdr[k] = v
    return hdr


def _write_pair(path: Path, data: np.ndarray, hdr: fits.Header, ext: fits.Header, level: str, unit: str) -> None:
    """Primary ``hdr`` + an image HDU with the L1 image-HDU cards ``ext``; FILENAME is this file's name."""
    hdr = hdr.copy()
    hdr["FILENAME"] = (path.name, "this file")
    image = fits.ImageHDU(data, header=ext.copy(), name="IMAGE")
    _set_level(image.header, level)
    image.header["BUNIT"] = unit
    hdus = fits.HDUList([fits.PrimaryHDU(header=hdr), image])
    # carried L1 cards are written as astropy can write them (a nonstandard card fixed, not refused)
    atomic_write(path, lambda tmp: hdus.writeto(tmp, output_verify="silentfix"))


def export_excam_fits(store: str | Path, outdir: str | Path, prefix: str | None = None, png: bool = False,
                      overwrite: bool = False) -> list[Path]:  # fmt: skip
    """The II&T file set from a written EXCAM store: per frame ``<L1 name>_L2a_image.fits``,
    ``_L2a_bpmap.fits``, ``_L2b_image.fits``, ``_L2b_bpmap.fits``; per data set
    ``<prefix>_{mean,median}_comb_{image,bpmap}.fits`` (``<prefix>_<group>_...`` per EXPTIME/gain
    group; ``prefix`` None: :func:`excam_dataset_name` of the store's L1 files). Each file: primary HDU
    with the L1 file's primary keywords, ``DATA_LEVEL``/``DATALVL`` and the processing keywords; image
    HDU with the L1 image HDU's keywords (a combined file: those of the set's first frame, as corgidrp's
    combines keep). bpmaps hold corgidrp's DQ bits (1 bad, 2 hot, 4 no flat, 32 saturated, 64 nonlinear,
    128 cosmic ray; 0 good). With ``png`` also quicklooks. Each file is written under a temporary name
    and renamed."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    tree = open_store(store)
    if prefix is None:
        prefix = excam_dataset_name([str(f) for node in tree.subtree if (node.name or "").startswith("l2b")
                                     and "source_file" in node.coords for f in node["source_file"].values])  # fmt: skip
    written: list[Path] = []
    for node in tree.subtree:
        name = node.name
        if not node.has_data or not (name.startswith(("l2a", "l2b", "mean_comb", "median_comb"))):
            continue
        parent = node.parent.path if node.parent is not None and node.parent.name in ("l2a", "l2b", "mean_comb",
                                                                                     "median_comb") else None  # fmt: skip
        kind = node.parent.name if parent else name
        group_tag = f"_{name}" if parent else ""
        ds = node.to_dataset()
        if kind in ("l2a", "l2b"):
            level = "L2a" if kind == "l2a" else "L2b"
            files = ds["source_file"].values
            inputs = ds.attrs.get("inputs", [])
            for i, src in enumerate(files):
                frame = ds.isel(frame=i)
                stem = Path(str(src)).stem
                pri, ext = _l1_headers(inputs, str(src), i)
                hdr = _excam_header(ds.attrs, level, {"L1FILE": (str(src), "L1 input file"),
                                                      "REJECTED": int(frame["rejected"])}, pri)  # fmt: skip
                for suffix, arr, unit in ((f"{level}_image", frame["data"].values.astype(np.float32),
                                           ds["data"].attrs.get("units", "")),
                                          (f"{level}_bpmap", corgi_bits(frame["dq"].values), "")):  # fmt: skip
                    path = outdir / f"{stem}_{suffix}.fits"
                    if path.exists() and not overwrite:
                        continue  # checked before the run; a second group of the same file cannot clash
                    _write_pair(path, arr, hdr, ext, level, unit)
                    written.append(path)
                if png:
                    written.append(_excam_png(frame["data"].values, outdir / f"{stem}_{level}_image.png",
                                              f"{stem} {level}"))  # fmt: skip
        elif kind in ("mean_comb", "median_comb"):
            pri, ext = fits.Header(), fits.Header()
            source = ds.attrs.get("source_group")
            if source and source in tree and "source_file" in tree[source].coords:
                first = str(tree[source]["source_file"].values[0])
                pri, ext = _l1_headers(tree[source].attrs.get("inputs", []), first, 0)
            hdr = _excam_header(ds.attrs, "L2b", {"NFRAMES": int(ds.attrs.get("frames", 0)),
                                                  "NREJECT": int(ds.attrs.get("frames_rejected", 0))}, pri)  # fmt: skip
            for suffix, arr, unit in (("image", ds["data"].values.astype(np.float32), ds["data"].attrs.get("units", "")),
                                      ("bpmap", corgi_bits(ds["dq"].values), "")):  # fmt: skip
                path = outdir / f"{prefix}{group_tag}_{kind}_{suffix}.fits"
                _write_pair(path, arr, hdr, ext, "L2b", unit)
                written.append(path)
            if png:
                written.append(_excam_png(ds["data"].values, outdir / f"{prefix}{group_tag}_{kind}_image.png", kind))
    return written


def _excam_png(img: np.ndarray, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5), constrained_layout=True)
    finite = img[np.isfinite(img)]
    lo, hi = np.percentile(finite, [1, 99.5]) if finite.size else (0, 1)
    im = ax.imshow(img, origin="lower", vmin=lo, vmax=hi, cmap="magma")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
