"""The ``detflow`` command line: thin, it parses, validates and calls the runtime. (Over 500 lines: one
function per command with its options and help text, sharing the one-line error and exit-status handling
defined here; none of it computes.)"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from .errors import DetflowInputError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="detflow: detector calibration pipelines on dask.")  # fmt: skip
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _fail(exc: Exception) -> None:
    """Exit with status 2 and one line per error (a :class:`DetflowInputError` may carry several)."""
    for err in getattr(exc, "errors", None) or [exc]:
        console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="log each stage (inputs, graph, cluster, "
                                       "compute phases, store, exports) to stderr")) -> None:  # fmt: skip
    # the `detflow` logger to stderr: warnings (damaged inputs left out...) always, each stage with --verbose;
    # rich on a terminal, else plain lines (never wrapped: file names stay whole for grep)
    from rich.logging import RichHandler

    logger = logging.getLogger("detflow")
    logger.handlers = [h for h in logger.handlers if not getattr(h, "detflow_cli", False)]  # one per process
    if sys.stderr.isatty():
        handler = RichHandler(console=Console(stderr=True), show_path=False, markup=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.detflow_cli = True
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


# options shared by several commands
_SCHED = typer.Option(None, "--scheduler", help="address of a running dask scheduler (tcp:// or tls://)")
_SFILE = typer.Option(None, "--scheduler-file", help="a dask scheduler file")
_PROFILE = typer.Option(None, "--profile", help="a cluster profile (name or YAML path; deploy/profiles)")
_OVERWRITE = typer.Option(False, "--overwrite", help="replace an existing output store")
_NO_PROGRESS = typer.Option(False, "--no-progress", help="no progress bar")
_JSON = typer.Option(False, "--json", help="machine-readable output")
_STORES = typer.Option(..., "--stores", help="folder of the section stores")


@app.command()
def run(
    job: Path = typer.Argument(..., help="job YAML (detflow or PIT gen_cal_image spelling)"),
    scheduler: Optional[str] = _SCHED,
    scheduler_file: Optional[Path] = _SFILE,
    profile: Optional[str] = _PROFILE,
    workers: Optional[int] = typer.Option(None, "--workers", help="LocalCluster worker processes (default 1)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="threads per worker (default: cores / workers)"),
    overwrite: bool = _OVERWRITE,
    no_progress: bool = _NO_PROGRESS,
) -> None:
    """Run a job on an embedded LocalCluster (default) or an existing scheduler; write its store."""
    from .runtime.job import load_job
    from .runtime.run import run as run_job

    try:
        cfg = load_job(job)
        updates = {}
        if overwrite:
            updates["overwrite"] = True
        cluster = {k: v for k, v in (("n_workers", workers), ("threads_per_worker", threads),
                                     ("scheduler_file", scheduler_file), ("profile", profile)) if v}  # fmt: skip
        if cluster:
            updates["cluster"] = cfg.cluster.model_copy(update=cluster)
        cfg = cfg.model_copy(update=updates)
        tree = run_job(cfg, scheduler=scheduler, progress=not no_progress, console=console)
    except DetflowInputError as exc:
        _fail(exc)
    if tree is None:  # a CMOS ingest-only job
        out.print(f"section stores in {cfg.stores}")
        return
    out.print(f"wrote {cfg.store}" + (f" and {cfg.output}" if cfg.output != cfg.store else ""))
    for node in tree.subtree:
        if node.has_data:
            out.print(f"  group {node.path}: " + ", ".join(
                f"{k}{tuple(v.shape)}" for k, v in node.data_vars.items() if not k.startswith(("border", "dq_b"))))  # fmt: skip
    _print_skipped(tree.attrs.get("skipped_inputs", []))


def _print_skipped(skipped: list[dict]) -> None:
    """The exit summary of the damaged inputs a job left out (``on_error: skip``): each with its reason."""
    from .runtime.run import skipped_line

    if skipped:
        out.print(f"left out {len(skipped)} damaged input(s) (on_error: skip):", highlight=False)
    for s in skipped:
        out.print(f"  {skipped_line(s)}", highlight=False)


@app.command()
def validate(job: Path = typer.Argument(..., help="job YAML")) -> None:
    """Check a job (keys, inputs, reference files, outputs and exports) without running or writing anything."""
    from .runtime.cmos import plan_ingest, validate_cmos
    from .runtime.job import load_job
    from .runtime.run import build, check_outputs, skipped_inputs

    plans = {}
    try:
        cfg = load_job(job)
        check_outputs(cfg)  # what run refuses: an existing store, export files it would replace
        if cfg.pipeline == "cmos":
            plans = plan_ingest(cfg)  # the ingest's own checks of the raw trees
            products = validate_cmos(cfg, plans)
        else:
            products = build(cfg)
    except DetflowInputError as exc:
        _fail(exc)
    for s, plan in plans.items():
        out.print(f"ok: ingest {s}: {len(plan.frames)} new frame(s) from {len(plan.records)} attempt(s), {plan.known} "
                  f"already in {cfg.stores / f'{s}.zarr'}, {len(plan.skipped)} left out", highlight=False)  # fmt: skip
        for item in plan.skipped:
            out.print(f"  left out (on_error: skip): {item['reason']}", highlight=False)
    if cfg.pipeline == "cmos" and cfg.output is not None and cfg.models and not products:
        out.print(f"models {', '.join(cfg.models)}: checked when the ingest has written the section stores")
    for name, ds in products.items():
        out.print(f"ok: group {name!r} " + ", ".join(f"{k}{tuple(v.shape)}" for k, v in ds.data_vars.items()
                                                     if not k.startswith(("border", "dq_b"))))  # fmt: skip
        if "layers" in ds.attrs:
            out.print(f"noise layers: {', '.join(ds.attrs['layers'])} (seed {ds.attrs['seed']})")
        elif ds.attrs.get("steps"):  # nothing has run: the steps are planned (or will be recorded as skipped)
            out.print("steps: " + ", ".join(f"{s['name']} ({'planned' if s['status'] == 'COMPLETE' else s['status']})"
                                            for s in ds.attrs["steps"]))  # fmt: skip
    _print_skipped(skipped_inputs(products))
    out.print(f"ok: {job} (nothing was run or written)")


@app.command()
def steps(
    family: Optional[str] = typer.Option(None, "--family", help="only this family's steps (roman_wfi, cmos...)"),
    as_json: bool = _JSON,
) -> None:
    """List the registered steps by family: what each does, whether it maps frame by frame or reduces an axis
    (frame: combines, model fits), its parameters and their defaults."""
    from .steps.catalog import all_steps, families

    reg = all_steps()
    names = families()
    if family is not None and family not in names:
        _fail(DetflowInputError(None, "--family", f"one of {', '.join(names)}", repr(family)))
    shown = [family] if family is not None else names
    if as_json:
        out.print_json(json.dumps({n: {"family": s.family, "kind": s.kind, "reduces": s.reduces,
                                       "summary": s.summary,
                                       "params": s.params.model_json_schema().get("properties", {})}
                                   for n, s in reg.items() if s.family in shown}))  # fmt: skip
        return
    for fam in shown:
        members = [s for s in reg.values() if s.family == fam]
        out.rule(f"[bold]{fam}[/]: {len(members)} steps", characters="=")
        for i, step in enumerate(members):
            kind = "map" if step.reduces is None else f"reduce {step.reduces}"
            out.print(("\n" if i else "") + f"[bold]{step.name}[/] ({kind})", highlight=False)
            out.print(Padding(Text(step.summary), (0, 0, 0, 2)), soft_wrap=False)
            if not step.params.model_fields:
                out.print("  (no parameters)")
                continue
            table = Table(box=None, padding=(0, 1, 0, 2), show_edge=False, header_style="dim")
            table.add_column("parameter", no_wrap=True)
            table.add_column("default", max_width=20, overflow="fold")
            table.add_column("description")
            for pname, field in step.params.model_fields.items():
                default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
                table.add_row(pname, escape(default), escape(field.description or ""))
            out.print(table)


@app.command()
def info(store: Path = typer.Argument(..., help="a detflow zarr store")) -> None:
    """Summarise a store: groups, variables, steps, inputs and versions."""
    from .io.store import store_summary

    if not store.exists():
        _fail(DetflowInputError(store, "store", "an existing zarr store", "no such path"))
    s = store_summary(store)
    attrs = s["attrs"]
    out.print(f"[bold]{s['path']}[/]  pipeline={attrs.get('pipeline')}  detflow={attrs.get('detflow_version')}")
    out.print(f"run: {attrs.get('started')} -> {attrs.get('finished')}")
    for name, g in s["groups"].items():
        out.print(f"[bold]group {name}[/] dims={g['dims']}")
        for v, meta in g["variables"].items():
            out.print(f"  {v:28s} {str(tuple(meta['dims'])):40s} {meta['dtype']:8s} {meta['units'] or ''}")
    out.print("steps: " + ", ".join(f"{st['name']}={st['status']}" for st in attrs.get("steps", [])))
    for item in attrs.get("inputs", []):
        out.print(f"input: {item.get('path')} sha256={str(item.get('sha256'))[:16]}...")
    for item in attrs.get("reference_files", []):
        out.print(f"reference: {item.get('name')}: {item.get('path')}")


@app.command()
def demo(
    outdir: Path = typer.Option(Path("demo_output"), "--out", help="where to write data and products"),
    nside: int = typer.Option(1024, "--nside", help="detector size (4096 for a full Roman SCA)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="LocalCluster worker processes"),
) -> None:
    """Simulate a Roman WFI exposure, run L1 -> L2 on a LocalCluster, write a store and a PNG."""
    from .demo import run_demo

    try:
        store, png = run_demo(outdir, nside=nside, workers=workers, console=console)
    except DetflowInputError as exc:
        _fail(exc)
    out.print(f"store: {store.resolve()}")
    out.print(f"quicklook: {png.resolve()}")


# ---- detflow sim ... ---------------------------------------------------------------------------------------
sim_app = typer.Typer(no_args_is_help=True, help="Simulated data of each family, with a ready-to-run job beside it.")
app.add_typer(sim_app, name="sim")
_OUTDIR = typer.Argument(..., help="folder for the data, its truth and the job YAML (nothing is overwritten)")
_SEED = typer.Option(0, "--seed", help="random seed (the same seed gives the same data)")


def _simulated(make, *args) -> None:
    try:
        job, wrote = make(*args)
    except DetflowInputError as exc:
        _fail(exc)
    out.print(", ".join(f"{k}: {v}" for k, v in wrote.items()), highlight=False)
    out.print(f"job: {job}", highlight=False)
    out.print(f"run it: detflow run {job}", highlight=False)


@sim_app.command("wfi")
def sim_wfi(
    outdir: Path = _OUTDIR,
    nside: int = typer.Option(1024, "--nside", min=128, help="detector side (4096: a full Roman SCA)"),
    exposures: int = typer.Option(1, "--exposures", min=1, help="L1 exposures"),
    seed: int = _SEED,
) -> None:
    """Roman WFI L1 exposures, reference files and truth; a job running gen_cal_image's steps on them."""
    from .sim.jobs import wfi_job

    _simulated(wfi_job, outdir, nside, exposures, seed)


@sim_app.command("excam")
def sim_excam(
    outdir: Path = _OUTDIR,
    frames: int = typer.Option(10, "--frames", min=1, help="L1 frames (SCI, 1200 x 2200)"),
    em_gain: float = typer.Option(100.0, "--em-gain", min=1, help="EM gain"),
    exptime: float = typer.Option(5.0, "--exptime", help="exposure time (s)"),
    seed: int = _SEED,
) -> None:
    """Roman Coronagraph EXCAM L1 frames, calibration files and truth; a job taking them L1 -> L2b."""
    from .sim.jobs import excam_job

    _simulated(excam_job, outdir, frames, em_gain, exptime, seed)


@sim_app.command("cmos")
def sim_cmos(
    outdir: Path = _OUTDIR,
    size: int = typer.Option(128, "--size", min=8, help="frame side (pixels)"),
    frames: int = typer.Option(5, "--frames", min=2, help="frames per attempt (bias, dark, flat)"),
    temps: list[float] = typer.Option([-10.0, 0.0, 10.0, 25.0], "--temp", help="set-point temperatures (repeat)"),
    seed: int = _SEED,
) -> None:
    """A CMOS campaign's raw test-section trees and truth; a job ingesting them and building the models."""
    from .sim.jobs import cmos_job

    _simulated(cmos_job, outdir, size, frames, tuple(temps), seed)


# ---- jobs on a running cluster: submit, status, wait, cancel, jobs; clean ------------------------------------
_TIMEOUT = typer.Option(None, "--timeout", help="seconds the scheduler has to answer (default: the profile's, 30)")


@contextlib.contextmanager
def _cluster_client(scheduler: Optional[str], scheduler_file: Optional[Path], profile: Optional[str],
                    timeout: Optional[float] = None):  # fmt: skip
    """A client of a *running* cluster (an embedded LocalCluster would die with this command). A scheduler
    that does not answer within ``timeout`` (connecting, and every call after: dask's comm timeout), or a
    detflow error in the body, is one line and exit status 2."""
    import os

    import dask

    from .runtime.cluster import connect

    if not (scheduler or scheduler_file or profile or os.environ.get("DETFLOW_SCHEDULER_ADDRESS")):
        _fail(DetflowInputError(None, "cluster", "--scheduler ADDRESS, --scheduler-file F or --profile NAME (or "
                                "DETFLOW_SCHEDULER_ADDRESS): a running cluster to submit to", "none given"))  # fmt: skip
    conf = {"distributed.comm.timeouts.connect": f"{timeout}s"} if timeout else {}
    with dask.config.set(conf):
        try:
            with connect(profile, address=scheduler, scheduler_file=scheduler_file, warmup=False, timeout=timeout) as c:
                yield c
        except DetflowInputError as exc:
            _fail(exc)


@app.command()
def submit(
    job: Path = typer.Argument(..., help="job YAML"),
    scheduler: Optional[str] = _SCHED,
    scheduler_file: Optional[Path] = _SFILE,
    profile: Optional[str] = _PROFILE,
    overwrite: bool = _OVERWRITE,
    timeout: Optional[float] = _TIMEOUT,
) -> None:
    """Submit a job to a running dask cluster and return at once with its id (it runs on after exit). Checks
    first what `run` checks: the inputs, the output (absent, or a detflow store and --overwrite), its lock."""
    from .runtime.job import load_job
    from .runtime.submit import record_path
    from .runtime.submit import submit as submit_job

    try:
        cfg = load_job(job)
        if overwrite:
            cfg = cfg.model_copy(update={"overwrite": True})
    except DetflowInputError as exc:
        _fail(exc)
    with _cluster_client(scheduler, scheduler_file, profile, timeout) as c:
        job_id = submit_job(cfg, c)
        address = c.scheduler.address
    out.print(job_id)
    console.print(f"submitted to {address}; record: {record_path(cfg)}; "
                  f"`detflow wait {job_id} --scheduler {address}`")  # fmt: skip


def _record_table(recs: list[dict]) -> Table:
    table = Table(title_justify="left")
    for col in ("job", "state", "submitted", "started", "finished", "output", "error"):
        table.add_column(col, overflow="fold")
    for r in recs:
        table.add_row(r["id"], r.get("state", ""), r.get("submitted", ""), r.get("started", ""),
                      r.get("finished", ""), r.get("output", ""), (r.get("error") or r.get("note") or "")[:300])  # fmt: skip
    return table


@app.command()
def jobs(
    scheduler: Optional[str] = _SCHED,
    scheduler_file: Optional[Path] = _SFILE,
    profile: Optional[str] = _PROFILE,
    as_json: bool = _JSON,
    timeout: Optional[float] = _TIMEOUT,
) -> None:
    """List the jobs the cluster knows: state, start, end, output store, error."""
    from .runtime.submit import jobs as list_jobs

    with _cluster_client(scheduler, scheduler_file, profile, timeout) as c:
        recs = list_jobs(c)
    if as_json:
        out.print_json(json.dumps([{k: v for k, v in r.items() if k != "job"} for r in recs], default=str))
    else:
        out.print(_record_table(recs))


@app.command()
def status(
    job_id: Optional[str] = typer.Argument(None, help="job id (default: every job)"),
    scheduler: Optional[str] = _SCHED,
    scheduler_file: Optional[Path] = _SFILE,
    profile: Optional[str] = _PROFILE,
    record: Optional[Path] = typer.Option(None, "--record", help="read a <output>.job.json instead of the scheduler"),
    as_json: bool = _JSON,
    timeout: Optional[float] = _TIMEOUT,
) -> None:
    """A job's state (or every job's): from the scheduler, or from the record beside its output (checked
    against the scheduler it names: `lost` when that no longer runs the job, `unknown` when it does not answer)."""
    from .runtime.submit import jobs as list_jobs
    from .runtime.submit import record_status

    if record is not None:
        try:
            recs = [record_status(record, timeout or 10.0, profile)]
        except (OSError, ValueError) as exc:
            _fail(DetflowInputError(record, "record", "a job record (<output>.job.json)",
                                    f"{type(exc).__name__}: {exc}"))  # fmt: skip
    else:
        with _cluster_client(scheduler, scheduler_file, profile, timeout) as c:
            recs = [r for r in list_jobs(c) if job_id is None or r["id"] == job_id]
        if job_id is not None and not recs:
            _fail(DetflowInputError(None, "job", "the id of a job this scheduler knows", job_id))
    if as_json:
        out.print_json(json.dumps([{k: v for k, v in r.items() if k != "job"} for r in recs], default=str))
    else:
        out.print(_record_table(recs))


@app.command()
def wait(
    job_id: str = typer.Argument(..., help="job id"),
    scheduler: Optional[str] = _SCHED,
    scheduler_file: Optional[Path] = _SFILE,
    profile: Optional[str] = _PROFILE,
    timeout: Optional[float] = typer.Option(
        None,
        "--timeout",
        help="give up after this many seconds (the scheduler has this long, 30 s at most, to answer each call)",
    ),  # fmt: skip
) -> None:
    """Wait for a job with progress (its phase and the cluster's tasks); exit 1 unless it finished, 2 if the
    scheduler stops answering or the timeout passes."""
    from rich.live import Live

    from .runtime.submit import wait as wait_job

    answer = min(timeout, 30.0) if timeout else None
    with (
        _cluster_client(scheduler, scheduler_file, profile, answer) as c,
        Live(console=console, transient=True) as live,
    ):

        def show(rec, tasks):
            busy = ", ".join(f"{n} {k}" for k, n in sorted(tasks.items()))
            live.update(f"{job_id}: {rec.get('state')} {rec.get('phase', '')} | cluster tasks: {busy}")

        try:
            rec = wait_job(c, job_id, timeout=timeout, on_poll=show)
        except KeyError:
            _fail(DetflowInputError(None, "job", "the id of a job this scheduler knows", job_id))
        except TimeoutError as exc:
            _fail(exc)
    out.print(f"{job_id}: {rec.get('state')}" + (f": {rec['error']}" if rec.get("error") else ""))
    if rec.get("state") != "finished":
        raise typer.Exit(1)


@app.command()
def cancel(
    job_id: str = typer.Argument(..., help="job id"),
    scheduler: Optional[str] = _SCHED,
    scheduler_file: Optional[Path] = _SFILE,
    profile: Optional[str] = _PROFILE,
    timeout: Optional[float] = _TIMEOUT,
) -> None:
    """Cancel a job: it stops at its next poll; its partial store is kept (resume: submit it again;
    remove: detflow clean OUTPUT)."""
    from .runtime.submit import cancel as cancel_job

    with _cluster_client(scheduler, scheduler_file, profile, timeout) as c:
        try:
            rec = cancel_job(c, job_id)
        except KeyError:
            _fail(DetflowInputError(None, "job", "the id of a job this scheduler knows", job_id))
    out.print(f"{job_id}: cancel requested (state {rec.get('state')})")


@app.command()
def clean(
    output: Path = typer.Argument(..., help="the output (store) a run failed to write"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list what would be removed, remove nothing"),
    force: bool = typer.Option(
        False,
        "--force",
        help="also remove a lock whose holder cannot be checked from "
        "here (a run on another host: only when you know it is gone)",
    ),  # fmt: skip
) -> None:
    """Remove what failed or killed runs left beside OUTPUT: partial stores (OUTPUT.partial-*), a stale lock,
    the record of a failed, cancelled or lost job. Refuses while a live run or job holds the output, and
    anything that is not detflow's."""
    from .io.cleanup import clean_output
    from .runtime.submit import job_alive

    try:
        found = clean_output(output, dry_run=dry_run, force=force, probe=job_alive)
    except DetflowInputError as exc:
        _fail(exc)
    for path, why in found:
        out.print(f"{'would remove' if dry_run else 'removed'}: {path} ({why})")
    if not found:
        out.print(f"nothing to clean beside {output}")


# ---- detflow cmos ... --------------------------------------------------------------------------------------
cmos_app = typer.Typer(no_args_is_help=True, help="CMOS characterisation: raw ingest, bias/dark/flat models, analyses.")
app.add_typer(cmos_app, name="cmos")


def _run_cmos(job: dict, scheduler: Optional[str], no_progress: bool) -> None:
    from .runtime.job import load_job
    from .runtime.run import run as run_job

    try:
        cfg = load_job(job)
        tree = run_job(cfg, scheduler=scheduler, progress=not no_progress, console=console)
    except DetflowInputError as exc:
        _fail(exc)
    if tree is None:
        out.print(f"section stores in {cfg.stores}")
        return
    out.print(f"wrote {cfg.output}; reports in {cfg.reports}")
    for node in tree.subtree:
        if node.has_data:
            out.print(f"  group {node.path}: " + ", ".join(f"{k}{tuple(v.shape)}" for k, v in node.data_vars.items()))


@cmos_app.command("ingest")
def cmos_ingest(
    bias: Optional[Path] = typer.Argument(None, help="TestSection1 (bias)"),
    dark: Optional[Path] = typer.Argument(None, help="TestSection2 (darks)"),
    flat: Optional[Path] = typer.Argument(None, help="TestSection3 (flats)"),
    out_dir: Path = typer.Option(..., "--out", help="folder of the section stores (bias.zarr, dark.zarr, flat.zarr)"),
    search_depth: int = typer.Option(6, "--search-depth", help="folder levels searched for attempts"),
    skip_bias: bool = typer.Option(False, "--skip-bias"),
    skip_dark: bool = typer.Option(False, "--skip-dark"),
    skip_flat: bool = typer.Option(False, "--skip-flat"),
    data_scale: Optional[float] = typer.Option(None, "--data-scale", help="e.g. 16 for 12-bit data in 16 bits"),
    on_error: str = typer.Option("raise", "--on-error", help="raise, or skip bad frames and list them"),
    fits: Optional[Path] = typer.Option(None, "--fits", help="also export one FITS file per frame here"),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="ingest every frame again into new section stores (they replace the existing ones when complete)",
    ),  # fmt: skip
    scheduler: Optional[str] = _SCHED,
    no_progress: bool = _NO_PROGRESS,
) -> None:
    """Ingest raw test-section trees into one zarr store per section (only new frames on a re-run)."""
    ingest = {"bias": None if skip_bias else bias, "dark": None if skip_dark else dark,
              "flat": None if skip_flat else flat, "search_depth": search_depth, "data_scale": data_scale,
              "on_error": on_error, "fits_export": fits, "overwrite": overwrite}  # fmt: skip
    _run_cmos({"pipeline": "cmos", "stores": out_dir, "ingest": ingest}, scheduler, no_progress)


def _model_command(model: str):
    def command(
        stores: Path = _STORES,
        output: Path = typer.Option(..., "--out", help="model store (.zarr)"),
        mode: str = typer.Option("full", "--mode", help="full | fit | synthesize | evaluate"),
        model_store: Optional[Path] = typer.Option(None, "--model-store", help="models of an earlier run"),
        temp: list[float] = typer.Option([], "--temp", help="synthesize at this temperature (repeat)"),
        exptime: list[float] = typer.Option([], "--exptime", help="... and exposure time (repeat)"),
        holdout_every: int = typer.Option(5, "--holdout-every", help="every n-th frame per group held out"),
        overwrite: bool = _OVERWRITE,
        scheduler: Optional[str] = _SCHED,
        no_progress: bool = _NO_PROGRESS,
    ) -> None:
        job = {"pipeline": "cmos", "stores": stores, "output": output, "models": [model], "mode": mode,
               "model_store": model_store, "holdout_every": holdout_every, "overwrite": overwrite}  # fmt: skip
        if temp:
            job["synthesize"] = {"temps": temp, "exptimes": exptime}
        _run_cmos(job, scheduler, no_progress)

    command.__doc__ = (f"Build the {model} model (and what it needs) from the section stores; evaluate it on "
                       "held-out frames; synthesize at --temp/--exptime.")  # fmt: skip
    return command


for _m in ("bias", "dark", "flat"):
    cmos_app.command(_m)(_model_command(_m))


@cmos_app.command("analyse")
def cmos_analyse(
    kind: str = typer.Argument(..., help="structure | degradation"),
    stores: Path = _STORES,
    output: Path = typer.Option(..., "--out", help="analysis store (.zarr); tables and plots beside it"),
    overwrite: bool = _OVERWRITE,
    scheduler: Optional[str] = _SCHED,
    no_progress: bool = _NO_PROGRESS,
) -> None:
    """Structure (trends, new structures) or degradation (outgassing) analysis of the section stores."""
    if kind not in ("structure", "degradation"):
        _fail(DetflowInputError(None, "analysis", "structure or degradation", kind))
    job = {"pipeline": "cmos", "stores": stores, "output": output, "models": [], "mode": "fit", "analyses": [kind],
           "overwrite": overwrite}  # fmt: skip
    _run_cmos(job, scheduler, no_progress)


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
