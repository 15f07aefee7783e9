"""Build a job's lazy graph, compute it on a cluster, write the store, return the products.

``build`` does no computation (tests prove it with ``raise_if_dask_computes``); ``run`` validates,
builds, computes with progress, writes a complete store and returns it opened as a DataTree.
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import warnings
from importlib import metadata
from pathlib import Path

import xarray as xr
from distributed import Client

from .. import __version__, schema
from ..errors import CorruptInputError, DetflowInputError
from ..instruments import roman_wfi
from ..io import detector_of, expand_inputs, open_l1, skipped_record
from ..io.caldir import check_caldir, open_wfi_references, sha256
from ..io.chunking import pixel_tiles
from ..io.exporters import _excam_names, check_excam_exports, pit_fits_path
from ..io.store import StoreWriter, check_output, open_store, product_inputs
from ..steps.registry import apply_recipe, record
from ..steps.wfi import l2_product
from .cluster import get_client
from .config import WFIJob, load_job
from .submit import JobCancelled, current_job  # (and the job probe for a lock a submitted job holds)

log = logging.getLogger("detflow")

_VERSIONED = ("numpy", "dask", "distributed", "xarray", "zarr", "numba", "astropy", "asdf", "pydantic")


def versions() -> dict[str, str]:
    out = {"detflow": __version__, "python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def read_wcs_header(path) -> str:
    """The FITS header text of a ``FITSWCS`` file, checked to hold a celestial WCS."""
    from astropy.io import fits
    from astropy.wcs import WCS

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


def step_params(job: WFIJob, name: str) -> dict:
    params = dict(job.steps.get(name, {}))
    if name in ("dq_init", "ramp_fit"):
        params.setdefault("exclude_first", job.exclude_first)
    return params


DETECTOR_FIELD = "{detector}"


def build(job: WFIJob | dict | str | Path) -> dict[str, xr.Dataset]:
    """The lazy products of a job, by store group: ``{"l2": ...}`` for one detector; for the exposures
    of several detectors (the 18 SCAs of a Roman exposure), ``{"l2/WFI01": ..., "l2/WFI02": ...}``,
    with each detector's reference files named by ``{detector}`` in the CALDIR paths. For an EXCAM
    job: ``{"l2a": ..., "l2b": ...}`` (the combines are built from the written store at run time)."""
    job = load_job(job)
    if job.pipeline == "roman_excam":
        from .excam import build_excam

        return build_excam(job)[0]
    if job.pipeline == "cmos":
        from .cmos import validate_cmos

        return validate_cmos(job)
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


def skipped_inputs(products: dict[str, xr.Dataset]) -> list[dict]:
    """The damaged inputs left out of ``products`` (``on_error: skip``), once each."""
    out: list[dict] = []
    for ds in products.values():
        out += [s for s in ds.attrs.get("skipped_inputs", []) if s not in out]
    return out


def log_skipped(products: dict[str, xr.Dataset]) -> None:
    """A warning per damaged input left out: the file and why."""
    for s in skipped_inputs(products):
        log.warning("left out (on_error: skip): %s", skipped_line(s))


def skipped_line(s: dict) -> str:
    """A ``skipped_inputs`` item as the error it would have been: ``FILE: FIELD: expected WHAT, got WHY``."""
    expected = f"expected {s['expected']}, got " if s.get("expected") else ""
    return f"{s['file']}: {s['field']}: {expected}{s['reason']}"


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
    params = {name: step_params(job, name) for name in recipe}
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
        from ..steps.wfi_noise import noise_product, parse_layers

        layers = parse_layers(job.noise.layers, job.source)
        noise = noise_product(l1, refs, ds, recipe, params, job.fuse, layers, job.noise.seed, job.noise.precision,
                              detector=detector, reference=job.noise.reference)  # fmt: skip
        noise.attrs.update({k: l2.attrs[k] for k in ("detector", "reference_files", "inputs", "job", "versions")})
        noise.attrs["recipe"] = recipe
        out[f"noise{suffix}"] = noise
    return out


def checksum_futures(c: Client, products: dict[str, xr.Dataset]) -> dict:
    """Futures of the sha256 of every input and reference file of ``products``, by path."""
    files = sorted({i["path"] for ds in products.values() for i in ds.attrs.get("inputs", [])} |
                   {r["path"] for ds in products.values() for r in ds.attrs.get("reference_files", [])})  # fmt: skip
    return dict(zip(files, c.map(sha256, files, pure=False)))


def compute(c: Client, delayed, progress: bool, console, description: str) -> list:
    """Compute one store write (or a list of collections computed together) on the cluster, with a
    progress bar (a submitted job: its record's phase and cancel flag instead), and return the results;
    re-raises the first task error (the partial store is kept with the regions done, for a re-run to
    resume, or removed when the writer has no resume key)."""
    collections = delayed if isinstance(delayed, list) else [delayed]
    if log.isEnabledFor(logging.INFO):  # counting materialises the graph: only when it is shown
        from dask.base import collections_to_expr

        tasks = len(collections_to_expr(collections, optimize_graph=False).__dask_graph__())
        log.info("%s: computing %d tasks", description, tasks)
    futures = c.compute(collections)
    try:
        return _follow(c, futures, progress, console, description)
    except BaseException:
        # the keys go from the scheduler now: a failed task kept there (its futures live on in the traceback)
        # would be handed, failed, to the next run of the same graph on this client (a resume)
        c.cancel(futures, force=True)
        raise


def _follow(c: Client, futures: list, progress: bool, console, description: str) -> list:
    job = current_job()
    if job is not None:  # a submitted job: keep its record's phase, stop when it is cancelled
        from distributed import wait

        job.update(phase=description)
        while True:
            try:
                wait(futures, timeout=2.0)
                break
            except TimeoutError:
                if job.cancel_requested():
                    raise JobCancelled(f"job {job.job_id} cancelled during {description}") from None
        return c.gather(futures)
    if progress:
        from .progress import RichProgressBar

        RichProgressBar([f.key for f in futures], scheduler=c.scheduler.address, console=console,
                        description=description)  # fmt: skip
    result = c.gather(futures)
    log.info("%s: done", description)
    return result


def log_cluster(c: Client) -> None:
    """An INFO record of the cluster a job runs on."""
    if log.isEnabledFor(logging.INFO):
        threads = c.nthreads()
        log.info("cluster: %s, %d worker(s), %d thread(s)", c.scheduler.address, len(threads), sum(threads.values()))


def check_outputs(job, probe=None) -> None:
    """What every run checks before any work (``detflow run``, ``submit``): the output store absent (or
    a detflow store and ``overwrite``), not locked by another writer, its directory writable; each file
    the job exports absent (or a file and ``overwrite``)."""
    if job.store is not None:
        check_output(job.store, job.overwrite, probe=probe)
    files = []
    if job.pipeline == "roman_wfi":
        noise = [job.noise.out] if job.noise is not None and job.noise.out is not None else []
        files += ([job.output] if job.output != job.store else []) + noise
        files += [pit_fits_path(job.output)] + [pit_fits_path(n) for n in noise] if job.fits_out else []
    elif job.pipeline == "roman_excam" and job.export_dir is not None:
        check_excam_exports(job)
        files += [Path(job.export_dir) / name for name in _excam_names(job)]
    for f in files:
        check_output(f, job.overwrite, kind="file")


def resume_key(job) -> str:
    """A hash of what a job computes (not where it runs): the partial store of a run that died is found
    again by a run of the same job, which then computes only the regions not done (if its inputs are
    the same files: the writer keys the resume on their identity too, ``StoreWriter(inputs=...)``)."""
    import hashlib
    import json

    spec = {k: v for k, v in job.model_dump(mode="json").items() if k not in ("source", "cluster", "overwrite")}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def job_record_attrs() -> dict:
    """``{"job_record": ...}`` for a submitted job (its id, submission and attempt), else nothing."""
    job = current_job()
    if job is None:
        return {}
    rec = {k: v for k, v in job.record().items() if k != "job"}
    return {"job_record": dict(rec, state="finished")}


def regions_record(writer: StoreWriter) -> dict:
    """The store's ``regions`` attribute: how many there were, how many an earlier run had done, whether
    this run resumed one (and why not, when it started afresh)."""
    return dict(writer.regions, resumed=writer.resumed, **({"restarted": writer.restarted} if writer.restarted else {}))


def open_writer(job, products: dict[str, xr.Dataset], extra_inputs=()) -> StoreWriter:
    """The store writer of a job: resumable (its key: the job), keyed on the products' inputs' identity."""
    return StoreWriter(job.store, overwrite=job.overwrite, resume_key=resume_key(job),
                       inputs=product_inputs(products) + [str(p) for p in extra_inputs])  # fmt: skip


def finish_store(writer: StoreWriter, c: Client, sums: dict, job, products: dict[str, xr.Dataset],
                 groups: list[str], record: xr.Dataset, started: str) -> None:  # fmt: skip
    """Provenance and commit: each group of ``products`` gets its inputs and reference files with
    checksums, the root all of them, the job, versions, times, and ``record``'s steps and history."""
    sums = dict(zip(sums, c.gather(list(sums.values()))))
    writer.check_checksums(sums)  # a resumed store: the inputs' content is the content it was started from
    skipped = skipped_inputs(products)  # damaged inputs left out (the poison frames of a data set)
    inputs, references = [], []
    for name, ds in products.items():
        ins = [dict(i, sha256=sums[i["path"]]) for i in ds.attrs.get("inputs", [])]
        refs = [dict(r, sha256=sums[r["path"]]) for r in ds.attrs.get("reference_files", [])]
        writer.set_group_attrs(name, {"inputs": ins, "reference_files": refs})
        inputs += [i for i in ins if i not in inputs]  # groups of one exposure share their inputs
        references += [r for r in refs if r not in references]
    writer.set_root_attrs({
        "detflow_version": __version__,
        "pipeline": job.pipeline,
        "products": groups,
        "job": job.model_dump(mode="json"),
        "inputs": inputs,
        "reference_files": references,
        "versions": versions(),
        "started": started,
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "steps": record.attrs.get("steps", []),
        "history": record.attrs.get("history", []),
        "regions": regions_record(writer),
        "skipped_inputs": skipped,
        **job_record_attrs(),
    })  # fmt: skip
    if current_job() is not None:
        current_job().update(regions=regions_record(writer), skipped_inputs=skipped)
    writer.commit()
    log.info("store committed: %s", writer.path)


def run(job: WFIJob | dict | str | Path, client: Client | None = None, *, scheduler: str | None = None,
        progress: bool = True, console=None) -> xr.DataTree:  # fmt: skip
    """Run a job end to end and return the written store as a DataTree.

    ``client``: an existing dask client (else ``scheduler`` address, else the job's cluster config,
    else an embedded LocalCluster). The output store appears only when every product is written.
    """
    job = load_job(job)
    if job.pipeline == "roman_excam":
        from .excam import run_excam

        return run_excam(job, client, scheduler=scheduler, progress=progress, console=console)
    if job.pipeline == "cmos":
        from .cmos import run_cmos

        return run_cmos(job, client, scheduler=scheduler, progress=progress, console=console)
    check_outputs(job)
    products = build(job)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    with get_client(job.cluster, client, scheduler) as c:
        if console is not None and getattr(c, "dashboard_link", None):
            console.print(f"dask dashboard: {c.dashboard_link}")
        log_cluster(c)
        with open_writer(job, products) as writer:
            first = next(v for k, v in products.items() if k.startswith("l2"))
            sums = checksum_futures(c, products)  # computed on the cluster alongside the run
            writer.watch_checksums(sums)
            # one graph: tasks shared between groups run once
            compute(c, writer.add_all(products), progress, console, f"detflow {job.pipeline}")
            finish_store(writer, c, sums, job, products, list(products), first, started)
    from ..io.exporters import export_wfi_asdf, export_wfi_fits, pit_fits_path

    exports = []
    if job.output.suffix == ".asdf":
        exports.append(export_wfi_asdf(job.store, job.output))
    if job.fits_out:
        exports.append(export_wfi_fits(job.store, pit_fits_path(job.output)))
    if job.noise is not None and job.noise.out is not None:
        from ..io.exporters import export_noise_asdf, export_noise_fits

        exports.append(export_noise_asdf(job.store, job.noise.out))
        if job.fits_out:
            exports.append(export_noise_fits(job.store, pit_fits_path(job.noise.out)))
    for path in exports:
        log.info("export: %s", path)
        if console is not None:
            console.print(f"export: {path}")
    return open_store(job.store)
