"""The plan of a CMOS characterisation job (``pipeline: cmos``): section stores -> model store -> reports,
run by the executor (:mod:`detflow.runtime.executor`).

Before the plan, on the job's cluster (:mod:`detflow.runtime.cmos`, the runtime's pre-step): the ingest of
the raw trees into the section stores (an ``ingest`` block), which the plan reads, and the analyses
(``structure``, ``degradation``, :mod:`detflow.calib.cmos_analysis`), which compute in passes (per-frame
scalars, then the maps from them, then the tables from the maps). Their results come into the plan.

The plan computes nothing:

- products, the model store's groups: bias, dark and flat models (:mod:`detflow.calib.cmos`), each a
  per-pixel fit over pixel tiles with the frame axis whole, lazy (``bias_model``, ``dark_model``,
  ``flat_model``; dark needs the bias model and flat both, built as needed). In mode ``full`` every
  ``holdout_every``-th frame of each (temperature, exposure, filter) group is kept out of the fits
  (:func:`detflow.calib.cmos.holdout_mask`) and the models are evaluated on those frames (``bias_eval``...);
  synthetic frames at the asked temperatures and exposure times go to ``synthetic``; the analyses' maps
  (computed before the plan) to ``structure`` and ``degradation``;
- each group's inputs: the section stores (and the ``model_store``) it is computed from, recorded with
  their checksums by the executor (a store's: :func:`detflow.io.caldir.sha256` of a directory);
- the root's ``mode``, ``sections`` and ``ingest`` report.

The reports (:func:`detflow.reports.cmos.write_run_reports`, written from the committed store and the
analyses' results) are the plan's export, added by the runtime: instruments import no reports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from .. import schema
from ..calib import cmos as cm
from ..errors import DetflowInputError
from ..io import cmos_raw
from ..io.store import open_store
from ..steps.catalog import get_step
from .base import Instrument, Plan
from .cmos_job import CmosJob

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


def _inputs(job: CmosJob, sections: list[str], model_store: bool = False) -> list[dict]:
    """The ``inputs`` record of a group: the section stores (and the model store) it is computed from."""
    out = [{"path": str(section_store(job, s)), "section": s} for s in sections]
    return out + ([{"path": str(job.model_store), "role": "model_store"}] if model_store else [])


def build_cmos(job: CmosJob, sections: dict[str, xr.Dataset]) -> tuple[dict[str, xr.Dataset], dict[str, xr.Dataset]]:
    """``(products, models)``: the lazy model groups of the model store (no computation), each with its
    ``inputs``, and the models used."""
    models: dict[str, xr.Dataset] = {}
    products: dict[str, xr.Dataset] = {}
    need = needed_models(job.models)
    fitted = job.mode in ("full", "fit")
    train, held = {}, {}
    for s, ds in sections.items():
        mask = cm.holdout_mask(ds, job.holdout_every if job.mode == "full" else 0)
        train[s] = ds.isel({schema.FRAME: np.flatnonzero(~mask)})
        held[s] = ds.isel({schema.FRAME: np.flatnonzero(mask)})
    params = job.step_params()
    if fitted:
        for m in need:  # in build order: each model step reads the models built before it
            models[m] = get_step(MODEL_GROUPS[m])(train[m], dict(models), params[MODEL_GROUPS[m]])
        for m in need:
            products[MODEL_GROUPS[m]] = models[m].assign_attrs(inputs=_inputs(job, needed_models([m])))
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
            ins = _inputs(job, needed_models([m]) if fitted else [m], model_store=not fitted)
            step = f"{m}_eval"  # the dark and flat evaluations subtract the bias model (held-out frames fall
            # between the masters' temperatures): their steps' default bias_mode
            products[step] = get_step(step)(evals[m], dict(models), params.get(step)).assign_attrs(inputs=ins)
    if job.synthesize is not None and job.mode in ("full", "synthesize", "fit"):
        products["synthetic"] = synthetic(models, job).assign_attrs(inputs=_inputs(job, need if fitted else [],
                                                                                   model_store=not fitted))  # fmt: skip
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


def _analysis_sections(job: CmosJob, name: str) -> list[str]:
    """The section stores an analysis reads (:func:`sections_needed`): the structure every present one (the
    flats at least), the degradation the flats and, when present, the darks."""
    present = [s for s in SECTIONS if section_store(job, s).exists()]
    if name == "structure":
        return present or ["flat"]
    return [s for s in SECTIONS if s == "flat" or (s == "dark" and s in present)]


def analysis_products(job: CmosJob, results: dict) -> dict[str, xr.Dataset]:
    """Store groups of the analyses (computed before the plan): their maps (structure: flag counts, first
    detection, deviations, labels; degradation: per-group outlier maps and classes)."""
    out = {}
    for name, res in results.items():
        if res.maps is not None:
            maps = res.maps.copy()
            maps.attrs = dict(maps.attrs, analysis=name, time_unit=res.time_unit, params=res.params,
                              inputs=_inputs(job, _analysis_sections(job, name)))  # fmt: skip
            out[name] = maps
    return out


def plan_cmos(job: CmosJob, ingest: dict | None = None, analyses: dict | None = None) -> Plan:
    """The job's plan: the lazy model groups and the analyses' maps (``analyses``: their results, computed
    before the plan by the runtime; without them, as for ``detflow validate``, the plan has the model
    groups only) and the root's record (``ingest``: the ingest report of this run). A job without ``output``
    (ingest only) plans nothing."""
    if job.output is None:
        return Plan({}, "detflow cmos: nothing to compute (ingest only)")
    need = needed_models(job.models) if job.mode != "synthesize" else []
    products = build_cmos(job, open_sections(job, need))[0] if job.models else {}
    products.update(analysis_products(job, analyses or {}))
    sections = sections_needed(job)
    attrs = {"mode": job.mode, "sections": {s: str(section_store(job, s)) for s in sections}, "ingest": ingest or {},
             **run_record(products)}  # fmt: skip
    return Plan(products, "detflow cmos: models", attrs=attrs)


def run_record(products: dict[str, xr.Dataset]) -> dict[str, list]:
    """The root's ``steps`` and ``history``: every group's step records, in the order the groups were built."""
    out: dict[str, list] = {"steps": [], "history": []}
    for ds in products.values():
        for key, items in out.items():
            items += [i for i in ds.attrs.get(key, []) if i not in items]
    return out


INSTRUMENT = Instrument(
    name="cmos",
    job=CmosJob,
    summary="CMOS characterisation: raw test-section trees -> bias/dark/flat models",
    needs="stores, and ingest or output",
    plan=plan_cmos,
)
