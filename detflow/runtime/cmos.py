"""A CMOS characterisation campaign end to end: raw trees -> section stores -> models -> reports.

1. ``ingest`` (optional): the raw test-section trees into one store per section
   (:func:`detflow.io.cmos_raw.ingest_tree`, incremental), on the job's cluster.
2. Models (:mod:`detflow.calib.cmos`): bias, dark and flat, each a per-pixel fit over pixel tiles with
   the frame axis whole, built lazily and written in one graph into the model store (``bias_model``,
   ``dark_model``, ``flat_model``; dark needs the bias model and flat both, built as needed). In mode
   ``full`` every ``holdout_every``-th frame of each (temperature, exposure, filter) group is kept out
   of the fits and the models are evaluated on those frames (``bias_eval``...); synthetic frames at
   the asked temperatures and exposure times go to ``synthetic``.
3. Analyses (``structure``, ``degradation``, :mod:`detflow.calib.cmos_analysis`) and the reports
   (:mod:`detflow.reports.cmos`): the evaluation tables and plots, the rejected frames, the ingest report, as
   CSV/PNG/JSON in ``report_dir``; written from the store, never recomputed.

The model store is written under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import xarray as xr
from distributed import Client

from .. import schema
from .._version import __version__
from ..calib import cmos as cm
from ..calib import cmos_analysis as ca
from ..calib.cmos.frames import _temp_keys
from ..errors import DetflowInputError
from ..instruments.cmos_job import CmosJob
from ..io import cmos_raw
from ..io.store import check_output, open_store
from ..reports import cmos as rc
from .cluster import get_client
from .execute import check_outputs, compute, job_record_attrs, log_cluster, open_writer, regions_record, versions

log = logging.getLogger("detflow")
SECTIONS = ("bias", "dark", "flat")
MODEL_GROUPS = {"bias": "bias_model", "dark": "dark_model", "flat": "flat_model"}


def section_store(job: CmosJob, section: str) -> Path:
    return job.stores / f"{section}.zarr"


def needed_models(models: list[str]) -> list[str]:
    """The requested models with what they need (dark: bias; flat: bias and dark), in build order."""
    want = set(models)
    if "flat" in want:
        want |= {"bias", "dark"}
    if "dark" in want:
        want.add("bias")
    return [m for m in SECTIONS if m in want]


def sections_needed(job: CmosJob) -> list[str]:
    """The section stores a job reads: its models' (and what they need) unless it only synthesizes, the
    flats (and darks, when present) for the degradation analysis, every present one for the structure."""
    want = set(needed_models(job.models)) if job.mode != "synthesize" else set()
    present = {s for s in SECTIONS if section_store(job, s).exists()}
    if "degradation" in job.analyses:
        want |= {"flat"} | ({"dark"} & present)
    if "structure" in job.analyses:
        want |= present or {"flat"}
    return [s for s in SECTIONS if s in want]


def open_sections(job: CmosJob, sections: list[str]) -> dict[str, xr.Dataset]:
    out = {}
    for s in sections:
        path = section_store(job, s)
        if not path.exists():
            raise DetflowInputError(path, "stores", f"the {s} section store (run `detflow cmos ingest` or give an "
                                    "ingest block)", "no such store")  # fmt: skip
        out[s] = cmos_raw.open_cmos_section(path)
    return out


def holdout_mask(ds: xr.Dataset, every: int) -> np.ndarray:
    """True for the held-out frames: every ``every``-th frame (the last of each run of ``every``) of each
    (set-point temperature, exposure time, filter) group, in frame order. The set point is ``filetemp``
    (the ``T<temp>`` of the folder or file name) where known, else the logged temperature rounded to
    1 deg C: the logged temperature jitters about the set point. Groups with fewer than ``every``
    frames keep all their frames for the fit."""
    n = ds.sizes[schema.FRAME]
    if every <= 0:
        return np.zeros(n, dtype=bool)
    temp = _temp_keys(ds, np.asarray(ds["temp"].values, np.float64), 1.0)  # the models' grouping, to 1 C
    texp = np.asarray(ds["exptime"].values, np.float64) if "exptime" in ds.coords else np.zeros(n)
    filt = [str(f) for f in ds["filter"].values] if "filter" in ds.coords else ["none"] * n
    keys = pd.DataFrame({"t": np.nan_to_num(temp, nan=-1e9), "e": np.nan_to_num(texp, nan=-1.0), "f": filt})
    rank = keys.groupby(["t", "e", "f"], sort=False).cumcount().to_numpy()
    return (rank % every) == (every - 1)


def build_cmos(job: CmosJob, sections: dict[str, xr.Dataset]) -> tuple[dict[str, xr.Dataset], dict[str, xr.Dataset]]:
    """``(products, models)``: the lazy groups of the model store (no computation) and the models used."""
    models: dict[str, xr.Dataset] = {}
    products: dict[str, xr.Dataset] = {}
    need = needed_models(job.models)
    train, held = {}, {}
    for s, ds in sections.items():
        mask = holdout_mask(ds, job.holdout_every if job.mode == "full" else 0)
        train[s] = ds.isel({schema.FRAME: np.flatnonzero(~mask)})
        held[s] = ds.isel({schema.FRAME: np.flatnonzero(mask)})
    if job.mode in ("full", "fit"):
        b = job.bias
        models["bias"] = cm.build_bias_model(train["bias"], method=b.method, sigma=b.sigma, temp_step=b.temp_step,
                                             weights=b.weights, hot_k=b.hot_k)  # fmt: skip
        if "dark" in need:
            d = job.dark
            models["dark"] = cm.build_dark_model(train["dark"], models["bias"], bias_mode=d.bias_mode, method=d.method,
                                                 zero_frac_max=d.zero_frac_max, hot_k=d.hot_k, weights=d.weights)  # fmt: skip
        if "flat" in need:
            f = job.flat
            models["flat"] = cm.build_flat_model(
                train["flat"], models["dark"], models["bias"], bias_mode=f.bias_mode, method=f.method,
                normalize=f.normalize, vignetting=None if f.vignetting == "none" else f.vignetting,
                radial_order=f.radial_order, max_dtemp=f.max_dtemp, max_dexptime=f.max_dexptime)  # fmt: skip
        for m in need:
            products[MODEL_GROUPS[m]] = models[m]
    else:
        tree = open_store(job.model_store)
        for m in need:
            group = MODEL_GROUPS[m]
            if group not in tree.children:
                raise DetflowInputError(job.model_store, group, f"the {m} model of an earlier `mode: fit|full` run",
                                        f"groups {sorted(tree.children)}")  # fmt: skip
            models[m] = tree[group].to_dataset()
    if job.mode in ("full", "evaluate"):
        evals = held if job.mode == "full" else sections
        for m in need:
            if m not in job.models or evals[m].sizes[schema.FRAME] == 0:
                continue
            kw = {}
            if m in ("dark", "flat"):
                kw["bias"] = models["bias"]
                kw["bias_mode"] = "model"  # held-out frames fall between the bias masters' temperatures
            if m == "flat":
                kw["dark"] = models["dark"]
            products[f"{m}_eval"] = cm.evaluate_model(models[m], evals[m], **kw)
    if job.synthesize is not None and job.mode in ("full", "synthesize", "fit"):
        products["synthetic"] = synthetic(models, job)
    return products, models


def synthetic(models: dict[str, xr.Dataset], job: CmosJob) -> xr.Dataset:
    """Synthetic master frames from the models at the job's temperatures and exposure times (DN): the
    bias ``(temp, y, x)``, the dark-current rate and the dark frame (rate * t + bias)
    ``(temp, exptime, y, x)``, and the flat ``(band, temp, exptime, y, x)``."""
    syn = job.synthesize
    temps = [float(t) for t in syn.temps]
    out = xr.Dataset(coords={"temp": temps})
    if "bias" in models:
        out["bias"] = cm.synthesize_bias(models["bias"], temps)
        out["bias"].attrs = {"units": "DN", "long_name": "synthetic bias a + b T"}
    if syn.exptimes and "dark" in models and "A" in models["dark"]:
        rates = [[cm.synthesize_dark(models["dark"], T, t) for t in syn.exptimes] for T in temps]
        rate = xr.concat([xr.concat(r, dim="exptime") for r in rates], dim="temp")
        rate = rate.assign_coords(temp=temps, exptime=[float(t) for t in syn.exptimes])
        out["dark_rate"] = rate.transpose("temp", "exptime", schema.Y, schema.X)
        out["dark_rate"].attrs = {"units": "DN / s", "long_name": "synthetic dark current A t^gamma exp(B (T - Tmin))"}
        frame = out["dark_rate"] * out["exptime"]
        if "bias" in out:
            frame = frame + out["bias"]
        out["dark"] = frame.transpose("temp", "exptime", schema.Y, schema.X)
        out["dark"].attrs = {"units": "DN", "long_name": "synthetic dark frame: rate * t + bias(T)"}
    if syn.exptimes and "flat" in models and "A" in models["flat"]:
        bands = [syn.filter] if syn.filter else [str(b) for b in models["flat"]["band"].values]
        flats = [xr.concat([xr.concat([cm.synthesize_flat(models["flat"], band, T, t) for t in syn.exptimes],
                                      dim="exptime") for T in temps], dim="temp") for band in bands]  # fmt: skip
        flat = xr.concat(flats, dim="band").assign_coords(band=bands, temp=temps,
                                                           exptime=[float(t) for t in syn.exptimes])  # fmt: skip
        out["flat"] = flat.transpose("band", "temp", "exptime", schema.Y, schema.X)
        out["flat"].attrs = {"units": "1", "long_name": "synthetic flat A + B (T - Tref) + C (t - tref), vignetted"}
    out.attrs = {"temps": temps, "exptimes": [float(t) for t in syn.exptimes]}
    return out


def _ingest(job: CmosJob, c: Client, console) -> dict | None:
    if job.ingest is None:
        return None
    ing = job.ingest
    with dask.config.set(scheduler=c.get):
        report = cmos_raw.ingest_tree(ing.bias, ing.dark, ing.flat, job.stores, search_depth=ing.search_depth,
                                      data_scale=ing.data_scale, on_error=ing.on_error, overwrite=ing.overwrite,
                                      skip=tuple(s for s in SECTIONS if getattr(ing, s) is None))  # fmt: skip
    if ing.fits_export is not None:
        for s, store in report.stores.items():
            cmos_raw.export_fits(store, ing.fits_export / s, overwrite=True)
    for s, sec in report.sections.items():
        line = (f"ingest {s}: {len(sec.ingested)} new frames, {sec.already} already in {sec.store}, "
                f"{len(sec.skipped)} skipped")  # fmt: skip
        if console is not None:
            console.print(line)
        else:
            log.info(line)
        for item in sec.skipped:
            log.warning("left out (on_error: skip): %s%s", item["reason"],
                        "" if item["path"] == item["file"] else f" (frame {item['path']})")  # fmt: skip
    return report.to_dict()


def run_cmos(job: CmosJob, client: Client | None = None, *, scheduler: str | None = None, progress: bool = True,
             console=None) -> xr.DataTree | None:  # fmt: skip
    """Run a CMOS job; return the model store as a DataTree (None for an ingest-only job)."""
    check_outputs(job)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    with get_client(job.cluster, client, scheduler) as c:
        if console is not None and getattr(c, "dashboard_link", None):
            console.print(f"dask dashboard: {c.dashboard_link}")
        log_cluster(c)
        ingest_report = _ingest(job, c, console)
        if job.output is None:
            return None
        sections = open_sections(job, sections_needed(job))
        products, _ = build_cmos(job, sections) if job.models else ({}, {})
        with dask.config.set(scheduler=c.get):
            analyses = run_analyses(job, sections)
        products.update(analysis_products(analyses))
        inputs = [section_store(job, s) for s in sections] + ([job.model_store] if job.model_store else [])
        with open_writer(job, products, inputs) as writer:
            compute(c, writer.add_all(products), progress, console, "detflow cmos: models")
            writer.set_root_attrs({
                "detflow_version": __version__, "pipeline": "cmos", "mode": job.mode, "products": list(products),
                "job": job.model_dump(mode="json"), "versions": versions(), "started": started,
                "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "sections": {s: str(section_store(job, s)) for s in sections},
                "ingest": ingest_report or {},
                "regions": regions_record(writer),
                **job_record_attrs(),
            })  # fmt: skip
            writer.commit()
        log.info("store committed: %s", job.output)
    write_reports(job, ingest_report, analyses, console)
    return open_store(job.output)


def run_analyses(job: CmosJob, sections: dict[str, xr.Dataset]) -> dict:
    """The analyses asked for (:mod:`detflow.calib.cmos_analysis`), computed under the active scheduler:
    their results by name (tables and computed maps; the per-frame cubes stay lazy)."""
    if not job.analyses:
        return {}
    out = {}
    if "structure" in job.analyses:
        out["structure"] = ca.structure_analysis(bias=sections.get("bias"), dark=sections.get("dark"),
                                                 flat=sections.get("flat"))  # fmt: skip
    if "degradation" in job.analyses:
        out["degradation"] = ca.degradation_analysis(sections["flat"], dark=sections.get("dark"))
    return out


def analysis_products(results: dict) -> dict[str, xr.Dataset]:
    """Store groups of the analyses: their maps (structure: flag counts, first detection, deviations,
    labels; degradation: per-group outlier maps and classes)."""
    out = {}
    for name, res in results.items():
        if res.maps is not None:
            maps = res.maps.copy()
            maps.attrs = dict(maps.attrs, analysis=name, time_unit=res.time_unit, params=res.params)
            out[name] = maps
    return out


def write_reports(job: CmosJob, ingest_report: dict | None, analyses: dict | None = None, console=None) -> list[Path]:
    """The tables and plots of a finished model store, read back from it: evaluation summaries (CSV and
    PNG), the frames the models left out (CSV), the analyses' tables and plots, the ingest report. The plots
    are plain ``matplotlib.figure.Figure`` objects, so the caller's pyplot backend is left alone (a notebook
    that runs a job keeps its inline plots)."""
    out_dir = job.reports
    out_dir.mkdir(parents=True, exist_ok=True)
    tree = open_store(job.output)
    written: list[Path] = []
    for m in SECTIONS:
        if f"{m}_eval" in tree.children:
            written += rc.write_evaluation_report(tree[f"{m}_eval"].to_dataset().compute(), out_dir, m)
    rejected = rejected_frames(tree)
    if rejected:
        path = out_dir / "rejected_frames.csv"
        pd.DataFrame(rejected).to_csv(path, index=False)
        written.append(path)
    if analyses:
        if "structure" in analyses:
            written += list(rc.write_structure_report(analyses["structure"], out_dir, overwrite=True).values())
        if "degradation" in analyses:
            written += list(rc.write_degradation_report(analyses["degradation"], out_dir, overwrite=True).values())
    if ingest_report:
        path = out_dir / "ingest_report.json"
        path.write_text(json.dumps(ingest_report, indent=1, default=str))
        written.append(path)
    if console is not None:
        console.print(f"reports: {len(written)} files in {out_dir}")
    return written


def rejected_frames(tree: xr.DataTree) -> list[dict]:
    """Frames the dark and flat models left out, with why: from the model store."""
    out = []
    for m, reasons in (("dark", cm.REJECT), ("flat", cm.REJECT)):
        group = MODEL_GROUPS[m]
        if group not in tree.children or "rejected" not in tree[group].data_vars:
            continue
        node = tree[group]
        flags = node["rejected"].values
        paths = node["path"].values if "path" in node.coords else np.arange(flags.size)
        for p, f in zip(paths, flags):
            if int(f):
                out.append({"model": m, "path": str(p), "reasons": " ".join(k for k, bit in reasons.items() if int(f) & bit)})
    return out


def plan_ingest(job: CmosJob) -> dict[str, cmos_raw.SectionPlan]:
    """The ingest's own checks of the raw trees, by section (what it would write; nothing written)."""
    if job.ingest is None:
        return {}
    ing = job.ingest
    return {s: cmos_raw.plan_section(getattr(ing, s), caltype=s.upper(), search_depth=ing.search_depth,
                                     on_error=ing.on_error, store=None if ing.overwrite else section_store(job, s))
            for s in SECTIONS if getattr(ing, s) is not None}  # fmt: skip


def validate_cmos(job: CmosJob, plans: dict | None = None) -> dict[str, xr.Dataset]:
    """Check a CMOS job without running it: the raw trees (every frame's file, size, log row and config,
    reading no pixels; ``plans``: :func:`plan_ingest`'s, if already made) and, where the section stores
    exist, the lazy model graph."""
    if plans is None:
        plan_ingest(job)
    if job.output is not None:
        check_output(job.output, job.overwrite)
    if job.output is None or not job.models:
        return {}
    need = needed_models(job.models) if job.mode != "synthesize" else []
    if any(not section_store(job, s).exists() for s in need):
        return {}  # the stores come from this job's ingest
    products, _ = build_cmos(job, open_sections(job, need))
    return products
