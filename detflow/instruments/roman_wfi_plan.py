"""The plan of a Roman WFI job: L1 exposures (one or several detectors) -> L2 (and noise realizations), then
the ASDF/FITS exports (read from the store, never recomputed)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import xarray as xr
from astropy.io import fits
from astropy.wcs import WCS

from .. import schema
from .._version import __version__
from ..errors import CorruptInputError, DetflowInputError
from ..io import detector_of, expand_inputs, open_l1, skipped_record
from ..io.caldir import check_caldir, open_wfi_references
from ..io.chunking import pixel_tiles
from ..io.exporters import export_noise_asdf, export_noise_fits, export_wfi_asdf, export_wfi_fits, pit_fits_path
from ..io.provenance import log_skipped, versions
from ..steps.catalog import get_step  # noqa: F401  (registers every step the recipe may name)
from ..steps.registry import apply_recipe, record
from ..steps.wfi import l2_product
from ..steps.wfi_noise import noise_product, parse_layers
from . import roman_wfi
from .base import Instrument, Plan, Spelling
from .roman_wfi_job import WFIJob
from .roman_wfi_pit import PIT_KEYS, from_pit

log = logging.getLogger("detflow")


def read_wcs_header(path) -> str:
    """The FITS header text of a ``FITSWCS`` file, checked to hold a celestial WCS."""
    path = Path(path)
    if not path.is_file():
        raise DetflowInputError(path, "wcs", "an existing FITS header text file", "no such file")
    text = path.read_text(errors="replace")
    # cards of 80 characters, as the PIT reads it, or one card per line
    for sep in ("\n", "") if "\n" in text.strip() else ("",):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a wrong separator makes astropy warn card by card
            try:
                header = fits.Header.fromstring(text, sep=sep)
                if WCS(header).has_celestial:
                    return header.tostring()
            except Exception:
                continue
    raise DetflowInputError(path, "wcs", "a FITS header (80-character cards) with a celestial WCS",
                            "no celestial WCS in it")  # fmt: skip


DETECTOR_FIELD = "{detector}"


def build_wfi(job: WFIJob) -> dict[str, xr.Dataset]:
    """The lazy products of a WFI job, by store group: ``{"l2": ...}`` for one detector; for the exposures
    of several detectors (the 18 SCAs of a Roman exposure), ``{"l2/WFI01": ..., "l2/WFI02": ...}``,
    with each detector's reference files named by ``{detector}`` in the CALDIR paths."""
    files = expand_inputs(job.input)
    by_det: dict[str, list[Path]] = {}
    skipped: list[dict] = []  # damaged exposures left out (on_error: skip), listed in the record
    damaged = []
    for f in files:
        try:
            det = detector_of(f)
        except CorruptInputError as exc:
            if job.on_error == "raise":
                raise
            skipped.append(skipped_record(exc))
            damaged.append(exc)
            continue
        by_det.setdefault(det, []).append(f)
    if not by_det:  # nothing to go on with: each file's own error
        raise DetflowInputError.combine(damaged)
    log.info("inputs: %d L1 file(s) of %d detector(s) (%s)", len(files) - len(skipped), len(by_det), ", ".join(by_det))
    products = _build_detectors(job, by_det)
    if skipped:
        for ds in products.values():
            ds.attrs["skipped_inputs"] = skipped + list(ds.attrs.get("skipped_inputs", []))
    log_skipped(products)
    log.info("graph built: groups %s", ", ".join(products))
    return products


def _build_detectors(job: WFIJob, by_det: dict[str, list[Path]]) -> dict[str, xr.Dataset]:
    if len(by_det) == 1:
        ((det, files),) = by_det.items()
        return _build_one(job, files, det, "")
    if not any(DETECTOR_FIELD in str(v) for v in job.caldir.values()):
        raise DetflowInputError(job.source, "CALDIR", f"per-detector reference files ('{DETECTOR_FIELD}' in the "
                                f"paths) for the {len(by_det)} detectors {', '.join(sorted(by_det))}",
                                "one set for all")  # fmt: skip
    if job.output.suffix == ".asdf" or job.fits_out or (job.noise and job.noise.out):
        field = "OUT" if job.output.suffix == ".asdf" else "FITSOUT" if job.fits_out else "NOISE.OUT"
        raise DetflowInputError(job.source, field, "a .zarr store for a multi-detector exposure (exports are per "
                                "detector)", f"{len(by_det)} detectors")  # fmt: skip
    out = {}
    for det, fs in sorted(by_det.items()):
        out.update(_build_one(job, fs, det, f"/{det}"))
    return out


def _build_one(job: WFIJob, files: list[Path], detector: str, suffix: str) -> dict[str, xr.Dataset]:
    """The groups of one detector: ``l2<suffix>`` and, with a noise block, ``noise<suffix>``."""
    l1 = open_l1(files, job.chunks, skip_corrupt=job.on_error == "skip")
    ny, nx = l1.sizes[schema.Y], l1.sizes[schema.X]
    nb, l1_file = roman_wfi.border_of(l1.attrs), l1.attrs["inputs"][0]["path"]
    if ny != nx or (ny % roman_wfi.NCHANNEL and (nb or job.noise)):  # channels: reference pixels, noise
        raise DetflowInputError(l1_file, "data", "square frames" + (f", a multiple of {roman_wfi.NCHANNEL} wide "
                                "(reference-pixel channels)" if nb or job.noise else ""), f"{ny}x{nx}")  # fmt: skip
    named = {k: str(v).replace(DETECTOR_FIELD, detector) for k, v in job.caldir.items()}
    caldir = check_caldir(named, roman_wfi.CALDIR_REQUIRED, job.source)
    tile = pixel_tiles(l1.sizes[schema.READ], ny, nx, job.chunks, border=nb)
    recipe = job.resolved_recipe()
    opened = set(roman_wfi.CALDIR_REQUIRED) | {k for k, step in roman_wfi.CALDIR_STEP.items() if step in recipe}
    wfi_refs = {k: v for k, v in caldir.items() if k in opened}
    refs = open_wfi_references(wfi_refs, ny, tile, nborder=nb, source=l1_file)
    if job.wcs is not None:
        refs.attrs["wcs_header"] = read_wcs_header(str(job.wcs).replace(DETECTOR_FIELD, detector))
    all_params = job.step_params()
    params = {name: all_params.get(name, {}) for name in recipe}
    ds = apply_recipe(l1, refs, recipe, params, fuse=job.fuse)
    for item in job.not_applied:
        done_by = {**{f"CALDIR.{k}": step for k, step in roman_wfi.CALDIR_STEP.items()}, "SKYORDER": "sky"}
        if any(item.startswith(key) and step in recipe for key, step in done_by.items()):
            continue
        ds = record(ds, item.split(" ")[0], "SKIPPED", None, f"{item}: not available in detflow {__version__}")
    l2 = l2_product(l1, ds)
    l2.attrs["detector"] = detector
    l2.attrs["reference_files"] = refs.attrs["reference_files"] + [
        {"name": k, "path": str(v), "used": False} for k, v in caldir.items() if k not in wfi_refs
    ]  # fmt: skip
    l2.attrs["inputs"] = list(l1.attrs.get("inputs", []))
    if l1.attrs.get("skipped_inputs"):
        l2.attrs["skipped_inputs"] = list(l1.attrs["skipped_inputs"])
    if "wcs_header" in refs.attrs:
        l2.attrs["fits_wcs"] = refs.attrs["wcs_header"]
    l2.attrs["job"] = job.model_dump(mode="json")
    l2.attrs["versions"] = versions()
    out = {f"l2{suffix}": l2}
    if job.noise is not None:
        layers = parse_layers(job.noise.layers, job.source)
        noise = noise_product(l1, refs, ds, recipe, params, job.fuse, layers, job.noise.seed, job.noise.precision,
                              detector=detector, reference=job.noise.reference)  # fmt: skip
        noise.attrs.update({k: l2.attrs[k] for k in ("detector", "reference_files", "inputs", "job", "versions")})
        noise.attrs["recipe"] = recipe
        out[f"noise{suffix}"] = noise
    return out


def plan_wfi(job: WFIJob) -> Plan:
    """The job's plan: its groups (one per detector, and the noise realizations) in one per-frame stage;
    the ASDF/FITS exports of the committed store."""
    noise_out = job.noise.out if job.noise is not None else None

    def export(store: Path) -> list[Path]:
        out = []
        if job.output.suffix == ".asdf":
            out.append(export_wfi_asdf(store, job.output))
        if job.fits_out:
            out.append(export_wfi_fits(store, pit_fits_path(job.output)))
        if noise_out is not None:
            out.append(export_noise_asdf(store, noise_out))
            if job.fits_out:
                out.append(export_noise_fits(store, pit_fits_path(noise_out)))
        return out

    products = build_wfi(job)
    first = next(k for k in products if k.startswith("l2"))
    return Plan(products, f"detflow {job.pipeline}", exports=[export], record_group=first)


INSTRUMENT = Instrument(
    name="roman_wfi",
    job=WFIJob,
    summary="Roman WFI up-the-ramp HxRG: L1 ramps -> L2 slopes",
    needs="input, output, caldir",
    spellings=(Spelling("PIT gen_cal_image", frozenset(PIT_KEYS), from_pit, needs="IN, OUT, CALDIR"),),
    plan=plan_wfi,
)
