"""Provenance a product carries: the versions of detflow and the libraries it ran with, and the damaged inputs
a job left out (``on_error: skip``)."""

from __future__ import annotations

import logging
import platform
from importlib import metadata

import xarray as xr

from .._version import __version__

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
