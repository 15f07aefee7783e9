"""What a CMOS job computes before its plan can be built (:func:`prepare_cmos`, run by :func:`detflow.run`
on the job's cluster before the executor), and its checks without running (``detflow validate``).

1. ``ingest`` (optional): the raw test-section trees into one store per section
   (:func:`detflow.io.cmos_raw.ingest_tree`, incremental). The plan reads these stores.
2. The analyses (``structure``, ``degradation``, :mod:`detflow.calib.cmos_analysis`): they compute in
   passes (the per-frame scalars, then the maps from them, then the tables from the maps), so they run
   here, on the job's cluster; their maps become store groups of the plan, their tables reports.

Then the executor runs the plan (:func:`detflow.instruments.cmos_plan.plan_cmos`): the models, written
into the model store with their inputs' checksums, and its export, added here (instruments import no
reports): the reports (:func:`detflow.reports.cmos.write_run_reports`), from the committed store and the
analyses' results.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

import dask
import xarray as xr
from distributed import Client

from ..calib import cmos_analysis as ca
from ..instruments.base import Plan
from ..instruments.cmos_job import CmosJob
from ..instruments.cmos_plan import SECTIONS, needed_models, open_sections, plan_cmos, section_store, sections_needed
from ..io import cmos_raw
from ..io.store import check_output, open_store
from ..reports import cmos as rc

log = logging.getLogger("detflow")


def prepare_cmos(job: CmosJob, c: Client, console=None) -> Callable[[CmosJob], Plan] | None:
    """Ingest (an ``ingest`` block) and run the analyses on ``c``; return the job's plan function with
    their results (None: an ingest-only job, nothing more to run)."""
    report = _ingest(job, c, console)
    if job.output is None:
        return None
    analyses = {}
    if job.analyses:
        sections = open_sections(job, sections_needed(job))
        with dask.config.set(scheduler=c.get):
            analyses = run_analyses(job, sections)
    return functools.partial(_plan, ingest=report, analyses=analyses)


def _plan(job: CmosJob, ingest: dict | None, analyses: dict) -> Plan:
    """The job's plan with the reports as its export (from the committed store and the analyses' results)."""
    plan = plan_cmos(job, ingest=ingest, analyses=analyses)

    def reports(store: Path) -> list[str]:
        written = rc.write_run_reports(open_store(store), job.reports, ingest, analyses)
        return [f"{len(written)} report files in {job.reports}"]

    plan.exports.append(reports)
    return plan


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


def run_analyses(job: CmosJob, sections: dict[str, xr.Dataset]) -> dict:
    """The analyses asked for (:mod:`detflow.calib.cmos_analysis`), computed under the active scheduler:
    their results by name (tables and computed maps; the per-frame cubes stay lazy)."""
    out = {}
    if "structure" in job.analyses:
        out["structure"] = ca.structure_analysis(bias=sections.get("bias"), dark=sections.get("dark"),
                                                 flat=sections.get("flat"))  # fmt: skip
    if "degradation" in job.analyses:
        out["degradation"] = ca.degradation_analysis(sections["flat"], dark=sections.get("dark"))
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
    exist, the plan's lazy model groups."""
    if plans is None:
        plan_ingest(job)
    if job.output is not None:
        check_output(job.output, job.overwrite)
    if job.output is None or not job.models:
        return {}
    need = needed_models(job.models) if job.mode != "synthesize" else []
    if any(not section_store(job, s).exists() for s in need):
        return {}  # the stores come from this job's ingest
    return plan_cmos(job).products
