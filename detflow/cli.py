"""The ``detflow`` command line: thin, it parses, validates and calls the runtime."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import DetflowInputError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="detflow: detector calibration pipelines on dask.")  # fmt: skip
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


@app.command()
def run(
    job: Path = typer.Argument(..., help="job YAML (detflow or PIT gen_cal_image spelling)"),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="address of a running dask scheduler"),
    workers: Optional[int] = typer.Option(None, "--workers", help="LocalCluster worker processes (default 1)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="threads per worker (default: cores / workers)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output store"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
) -> None:
    """Run a job on an embedded LocalCluster (default) or an existing scheduler; write its store."""
    from .runtime.config import load_job
    from .runtime.run import run as run_job

    try:
        cfg = load_job(job)
        updates = {}
        if overwrite:
            updates["overwrite"] = True
        cluster = {k: v for k, v in (("n_workers", workers), ("threads_per_worker", threads)) if v}
        if cluster:
            updates["cluster"] = cfg.cluster.model_copy(update=cluster)
        cfg = cfg.model_copy(update=updates)
        tree = run_job(cfg, scheduler=scheduler, progress=not no_progress, console=console)
    except DetflowInputError as exc:
        _fail(exc)
    out.print(f"wrote {cfg.store}" + (f" and {cfg.output}" if cfg.output != cfg.store else ""))
    for node in tree.subtree:
        if node.has_data:
            out.print(f"  group {node.path}: " + ", ".join(
                f"{k}{tuple(v.shape)}" for k, v in node.data_vars.items() if not k.startswith(("border", "dq_b"))))  # fmt: skip


@app.command()
def validate(job: Path = typer.Argument(..., help="job YAML")) -> None:
    """Check a job (keys, reference files, inputs) without running anything."""
    from .io.store import check_output
    from .runtime.config import load_job
    from .runtime.run import build

    try:
        cfg = load_job(job)
        check_output(cfg.store, cfg.overwrite)
        noise = getattr(cfg, "noise", None)
        if noise is not None and noise.out is not None:
            check_output(noise.out, cfg.overwrite)
        products = build(cfg)
    except DetflowInputError as exc:
        _fail(exc)
    for name, ds in products.items():
        out.print(f"ok: group {name!r} " + ", ".join(f"{k}{tuple(v.shape)}" for k, v in ds.data_vars.items()
                                                     if not k.startswith(("border", "dq_b"))))  # fmt: skip
        if "layers" in ds.attrs:
            out.print(f"noise layers: {', '.join(ds.attrs['layers'])} (seed {ds.attrs['seed']})")
        else:
            out.print("steps: " + ", ".join(f"{s['name']} ({s['status']})" for s in ds.attrs.get("steps", [])))


@app.command()
def steps(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """List the registered steps with their parameters and defaults."""
    from .steps.registry import all_steps

    reg = all_steps()
    if as_json:
        out.print_json(json.dumps({n: {"family": s.family, "summary": s.summary,
                                       "params": s.params.model_json_schema().get("properties", {})}
                                   for n, s in reg.items()}))  # fmt: skip
        return
    for name, step in reg.items():
        table = Table(title=f"{name} [{step.family}]: {step.summary}", title_justify="left")
        table.add_column("parameter")
        table.add_column("default")
        table.add_column("description")
        for pname, field in step.params.model_fields.items():
            table.add_row(pname, repr(field.default), field.description or "")
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


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
