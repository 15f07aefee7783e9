"""The version check: detflow, dask and distributed must agree on the client, the scheduler and every worker."""

from __future__ import annotations

import warnings

from distributed import Client
from distributed.versions import error_message, scheduler_relevant_packages

from .base import DetflowClusterError

STRICT_PACKAGES = ("detflow", "dask", "distributed")  # a mismatch is an error
WARN_PACKAGES = ("numpy", "numba", "zarr", "xarray")  # a mismatch is a warning


def _make_probe():
    # a closure, so cloudpickle sends it by value: it runs on a worker or scheduler without detflow installed
    def probe(import_detflow: bool = True) -> dict[str, str | None]:
        import importlib as _il
        import importlib.metadata as _md
        import sys as _sys

        out: dict[str, str | None] = {}
        mod = _sys.modules.get("detflow")
        if mod is None and import_detflow:
            try:
                mod = _il.import_module("detflow")
            except Exception:  # noqa: BLE001 - reported as missing
                mod = None
        if mod is not None:
            out["detflow"] = getattr(mod, "__version__", None)
        else:
            try:
                out["detflow"] = _md.version("detflow")
            except Exception:  # noqa: BLE001
                out["detflow"] = None
        return out

    return probe


def detflow_version() -> str | None:
    """The version of the detflow this process runs (its ``__version__``; installed metadata if it has none)."""
    return _make_probe()(False)["detflow"]


def cluster_versions(client: Client) -> dict[str, dict[str, str | None]]:
    """``{"client": {...}, "scheduler": {...}, <worker address>: {...}}`` for detflow and the packages in
    :data:`STRICT_PACKAGES` and :data:`WARN_PACKAGES` (None: not installed there)."""
    probe = _make_probe()
    extra = [p for p in WARN_PACKAGES if p not in ("numpy",)]
    info = client.get_versions(check=False, packages=extra)
    pkgs = tuple(p for p in STRICT_PACKAGES + WARN_PACKAGES if p != "detflow")

    def pick(d):
        packages = (d or {}).get("packages") or {}
        return {p: packages.get(p) for p in pkgs}

    table = {"client": {"detflow": detflow_version(), **pick(info.get("client"))}}
    table["scheduler"] = {**client.run_on_scheduler(probe, False), **pick(info.get("scheduler"))}
    workers = client.run(probe) if info.get("workers") else {}
    for addr, d in sorted((info.get("workers") or {}).items()):
        table[addr] = {"detflow": (workers.get(addr) or {}).get("detflow"), **pick(d)}
    return table


def check_versions(client: Client, *, strict: bool = True) -> dict[str, dict[str, str | None]]:
    """Compare the versions of the client, the scheduler and every worker (those connected now).

    detflow, dask or distributed differing anywhere raises :class:`DetflowClusterError` listing what
    differs where (``strict=False``: a warning instead); numpy, numba, zarr or xarray differing between
    the client and the workers warns. What differs is decided by distributed's own check
    (``distributed.versions.error_message``: the scheduler counts for dask and distributed); a scheduler's
    detflow counts when it has one (missing there is fine: it runs no detflow code). Returns the table."""
    table = cluster_versions(client)
    where = client.scheduler.address if client.scheduler else "cluster"
    errors, warns = [], []
    for pkg in STRICT_PACKAGES + WARN_PACKAGES:
        seen = _mismatch(pkg, table)
        if seen:
            (errors if pkg in STRICT_PACKAGES else warns).append(f"{pkg}: " + _describe(seen))
    if warns:
        warnings.warn(f"{where}: versions differ (results may differ slightly): " + "; ".join(warns),
                      stacklevel=2)  # fmt: skip
    if errors:
        msg = "; ".join(errors)
        if strict:
            raise DetflowClusterError(where, "versions", "the same detflow, dask and distributed on the client, "
                                      "the scheduler and every worker", msg)  # fmt: skip
        warnings.warn(f"{where}: versions: {msg}", stacklevel=2)
    return table


def _mismatch(pkg: str, table: dict[str, dict[str, str | None]]) -> dict[str, str | None] | None:
    """``{node: version}`` of the nodes compared for ``pkg`` when distributed's check finds they differ."""
    rows = {name: {"packages": {pkg: row.get(pkg)}} for name, row in table.items()}
    client_row, scheduler_row = rows.pop("client"), rows.pop("scheduler")
    if pkg == "detflow" and table["scheduler"].get(pkg) is not None:
        rows = {"scheduler": scheduler_row, **rows}  # (error_message compares a scheduler for its own packages)
    if not error_message(scheduler_row, rows, client_row)["warning"]:
        return None
    compared = ["client"] + ["scheduler"] * (pkg in scheduler_relevant_packages) + list(rows)
    return {name: table[name].get(pkg) for name in dict.fromkeys(compared)}


def _describe(seen: dict[str, str | None]) -> str:
    parts = []
    workers: dict[str | None, list[str]] = {}
    for name, v in seen.items():
        if name in ("client", "scheduler"):
            parts.append(f"{name} {v or 'missing'}")
        else:
            workers.setdefault(v, []).append(name)
    for v, names in workers.items():
        label = f"worker {names[0]}" if len(names) == 1 else f"{len(names)} workers ({', '.join(names)})"
        parts.append(f"{label} {v or 'missing'}")
    return ", ".join(parts)
