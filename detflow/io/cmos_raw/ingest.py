"""CMOS ingest: raw test-section trees into one section store each (:func:`ingest_section`,
:func:`ingest_tree`), holding each store's output lock (:mod:`detflow.io.lock`) while it plans and writes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import zarr

from ...errors import DetflowInputError
from ...instruments import cmos
from ...schema import sanitize_attrs
from ..lock import OutputLock
from .export import write_fits_index
from .plan import SectionPlan, plan_section
from .section import FRAME_CHUNK, GROUP, TILE
from .writer import _write_plan, recover_swap


@dataclass
class SectionReport:
    """What one section ingest did."""

    caltype: str
    root: Path
    store: Path | None
    ingested: list[str]  # paths of the frames written by this ingest
    already: int  # frames that were in the store before
    skipped: list[dict]  # {"path", "caltype", "file", "field", "reason"}
    n_frames: int  # frames in the store after the ingest
    leftovers: dict[str, list[str]] = field(default_factory=dict)  # partial stores found: removed / others (left)

    def to_dict(self) -> dict:
        return sanitize_attrs({"caltype": self.caltype, "root": self.root, "store": self.store,
                               "ingested": len(self.ingested), "already": self.already, "n_frames": self.n_frames,
                               "skipped": self.skipped, "leftovers": self.leftovers})  # fmt: skip


@dataclass
class IngestReport:
    """What :func:`ingest_tree` did: one :class:`SectionReport` per section, and the FITS index."""

    sections: dict[str, SectionReport]
    index: Path | None

    @property
    def stores(self) -> dict[str, Path]:
        return {k: s.store for k, s in self.sections.items() if s.store is not None}

    @property
    def ingested(self) -> dict[str, int]:
        return {k: len(s.ingested) for k, s in self.sections.items()}

    @property
    def skipped(self) -> list[dict]:
        return [item for s in self.sections.values() for item in s.skipped]

    def to_dict(self) -> dict:
        return {"sections": {k: s.to_dict() for k, s in self.sections.items()}, "index": str(self.index)}


def _check_scale(data_scale: float | None, store: Path, overwrite: bool) -> float:
    if data_scale is not None:
        try:
            ok = math.isfinite(float(data_scale)) and float(data_scale) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise DetflowInputError(None, "data_scale", "a positive number (16 for 12-bit data stored in 16 bits)",
                                    data_scale)  # fmt: skip
    if store.exists() and not overwrite:
        try:
            recorded = zarr.open_group(str(store), path=GROUP, mode="r").attrs.get("data_scale", 1)
        except Exception as exc:  # noqa: BLE001  (any failure to read it: not a section store)
            raise DetflowInputError(store, "store", "a CMOS section store written by ingest_section (or "
                                    "overwrite=True)", f"{type(exc).__name__}: {exc}") from None  # fmt: skip
        if data_scale is not None and float(data_scale) != float(recorded):
            raise DetflowInputError(store, "data_scale", f"{recorded} as recorded in the store (or overwrite=True)",
                                    data_scale)  # fmt: skip
        return recorded
    if data_scale is None:
        return 1
    return int(data_scale) if float(data_scale).is_integer() else float(data_scale)


def _check_chunks(frame_chunk: int, tile: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    try:
        ok = len(tuple(tile)) == 2 and all(int(v) == v and v >= 1 for v in (frame_chunk, *tile))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise DetflowInputError(None, "frame_chunk/tile", "positive integers (frames; (rows, columns))",
                                (frame_chunk, tile))  # fmt: skip
    return int(frame_chunk), (int(tile[0]), int(tile[1]))


def _finish(plan: SectionPlan, out: Path, data_scale: float | None, fc: int, tile: tuple[int, int],
            overwrite: bool, recovered: list[str]) -> SectionReport:  # fmt: skip
    store, leftovers = _write_plan(plan, out, data_scale, fc, tile, overwrite)
    n = int(zarr.open_group(str(store), path=GROUP, mode="r")["data"].shape[0]) if store else 0
    return SectionReport(plan.caltype, plan.root, store, [m["path"] for m in plan.frames], plan.known, plan.skipped, n,
                         {**leftovers, "swap": recovered})  # fmt: skip


@contextlib.contextmanager
def _locked(outs: Iterable[Path]):
    """Hold the output lock (:mod:`detflow.io.lock`) of every section store an ingest writes: a second
    ingest (or run) into the same store is refused at once instead of sharing its partial store."""
    with contextlib.ExitStack() as stack:
        for out in outs:
            out.parent.mkdir(parents=True, exist_ok=True)
            stack.callback(OutputLock(out).acquire().release)
        yield


def ingest_section(section_root: str | Path, out_store: str | Path, *, caltype: str | None = None,
                   search_depth: int = cmos.SEARCH_DEPTH, data_scale: float | None = None, on_error: str = "raise",
                   frame_chunk: int = FRAME_CHUNK, tile: tuple[int, int] = TILE, overwrite: bool = False,
                   index: bool = True) -> SectionReport:  # fmt: skip
    """Ingest one test section into ``out_store`` (appending the frames not in it yet) and refresh the index.

    ``caltype`` defaults to the section folder name; ``data_scale`` (default 1, or the store's) is
    recorded, not applied; ``frame_chunk`` and ``tile`` set the zarr chunks of a new store (an append
    keeps the store's). ``overwrite`` re-ingests everything into a new store. Every frame is validated
    before any data are written; ``on_error="skip"`` lists bad frames in the report instead of raising.
    With ``index``, ``fits_index.csv`` next to the store is rewritten from every CMOS store there."""
    out = Path(out_store)
    frame_chunk, tile = _check_chunks(frame_chunk, tile)
    with _locked([out]):
        recovered = recover_swap(out)
        scale = _check_scale(data_scale, out, overwrite)
        plan = plan_section(section_root, caltype=caltype, search_depth=search_depth, on_error=on_error,
                            store=None if overwrite else out)  # fmt: skip
        report = _finish(plan, out, scale, frame_chunk, tile, overwrite, recovered)
    if index and report.store is not None:
        write_fits_index(out.parent)
    return report


def ingest_tree(bias_root: str | Path | None, dark_root: str | Path | None, flat_root: str | Path | None,
                out_dir: str | Path, *, skip: Iterable[str] = (), search_depth: int = cmos.SEARCH_DEPTH,
                data_scale: float | None = None, on_error: str = "raise", frame_chunk: int = FRAME_CHUNK,
                tile: tuple[int, int] = TILE, overwrite: bool = False) -> IngestReport:  # fmt: skip
    """Ingest the three sections into ``out_dir/{bias,dark,flat}.zarr`` and write ``out_dir/fits_index.csv``.

    ``skip`` names sections not to ingest (``"bias"``, ``"dark"``, ``"flat"``); a root of None is
    skipped too. All sections are validated before any store is written."""
    out_dir = Path(out_dir)
    frame_chunk, tile = _check_chunks(frame_chunk, tile)
    skip_set = {str(s).upper() for s in skip}
    unknown = skip_set - set(cmos.CALTYPES)
    if unknown:
        raise DetflowInputError(None, "skip", "section names among bias, dark, flat", sorted(unknown))
    roots = {cal: root for cal, root in zip(cmos.CALTYPES, (bias_root, dark_root, flat_root))
             if root is not None and cal not in skip_set}  # fmt: skip
    outs = {cal: out_dir / f"{cal.lower()}.zarr" for cal in roots}
    with _locked(outs.values()):
        plans: dict[str, tuple[SectionPlan, Path, float, list[str]]] = {}
        for cal, root in roots.items():
            out = outs[cal]
            recovered = recover_swap(out)
            scale = _check_scale(data_scale, out, overwrite)
            plans[cal] = (plan_section(root, caltype=cal, search_depth=search_depth, on_error=on_error,
                                       store=None if overwrite else out), out, scale, recovered)  # fmt: skip
        sections = {cal: _finish(plan, out, scale, frame_chunk, tile, overwrite, recovered)
                    for cal, (plan, out, scale, recovered) in plans.items()}  # fmt: skip
    idx = write_fits_index(out_dir) if any(s.store for s in sections.values()) else None
    return IngestReport(sections, idx)
